"""The engine: one loaded ``Grounder`` behind a lock, running jobs in batches grouped by config.
The REST service's batchable API, the gRPC server and video jobs all call it."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image

from ..pipeline.result import GroundingResult
from .schema import Options, RequestError
from .settings import Settings


@dataclass
class Job:
    """One (image, expression) to ground; ``image`` is uint8 RGB ``[H, W, 3]``."""

    image: np.ndarray
    expression: str
    overrides: dict
    use_segmenter: bool = True
    answer: bool = False  # a visual question (+ answer): grounded with the generic-prompt contrast


class Engine:
    """A loaded ``Grounder`` behind a lock, running jobs in batches grouped by config."""

    def __init__(self, grounder, settings: Settings):
        self.grounder = grounder
        self.settings = settings
        self.lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> "Engine":
        from ..pipeline.grounder import Grounder

        g = Grounder.from_pretrained(settings.model, segmenter=settings.segmenter or None,
                                     device=settings.device or None, dtype=settings.dtype or None)
        return cls(g, settings)

    def info(self) -> dict:
        g = self.grounder
        return {"model": str(g.model_id), "arch": g.backend.arch, "segmenter": g.segmenter.name,
                "device": str(g.backend.device), "dtype": str(g.backend.dtype).replace("torch.", ""),
                "grpc_port": self.settings.grpc_port, "max_batch_size": self.settings.max_batch_size}

    def run_payload(self, jobs: list[dict]) -> list[dict]:
        """``run`` over plain dicts, for callers across a process boundary (BentoML services)."""
        out = []
        for r in self.run([Job(**j) for j in jobs]):
            if isinstance(r, RequestError):
                out.append({"error": str(r), "status": r.status})
            else:
                out.append(asdict(r))
        return out

    def run(self, jobs: list[Job]) -> list[GroundingResult | RequestError]:
        """Results in job order; a job whose overrides are invalid gets its ``RequestError``."""
        groups: dict[tuple, list[int]] = {}
        for i, j in enumerate(jobs):
            groups.setdefault((json.dumps(j.overrides, sort_keys=True), j.use_segmenter, j.answer), []).append(i)
        out: list[Any] = [None] * len(jobs)
        for (key, use_seg, answer), idx in groups.items():
            t0 = time.perf_counter()
            run = self.grounder.answer_batch if answer else self.grounder.segment_batch
            try:
                with self.lock:
                    results = run([(jobs[i].image, jobs[i].expression) for i in idx], use_segmenter=use_seg,
                                  **json.loads(key))
            except ValueError as e:
                for i in idx:
                    out[i] = RequestError(str(e))
                continue
            for i, r in zip(idx, results):
                r.timings_ms["batch_size"] = float(len(idx))
                r.timings_ms["engine"] = (time.perf_counter() - t0) * 1000
                out[i] = r
        return out


def jobs_for(image: Image.Image, exprs: list[str], opts: Options, use_segmenter: bool,
             answer: bool = False) -> list[Job]:
    rgb = np.asarray(image)
    return [Job(rgb, e, opts.overrides(), use_segmenter, answer) for e in exprs]


def raise_first_error(results: list) -> list[GroundingResult]:
    """Results as ``GroundingResult`` (payload dicts converted); the first error is raised."""
    out = []
    for r in results:
        if isinstance(r, dict):
            r = RequestError(r["error"], r["status"]) if "error" in r else GroundingResult(**r)
        if isinstance(r, RequestError):
            raise r
        out.append(r)
    return out


