"""The engine: one loaded ``Grounder`` behind a lock, running jobs in batches grouped by config.
The REST service's batchable API, the gRPC server and video jobs all call it."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image

from ..config import UnsupportedOption
from ..pipeline.result import GroundingResult, Instance
from .lifecycle import START
from .schema import Options, RequestError, option_for
from .settings import Settings
from .startup import not_started


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
    def from_settings(cls, settings: Settings, worker_index: int = 1) -> "Engine":
        """Load the model; worker ``i`` of several on CUDA takes GPU ``(i-1) mod count``."""
        from ..pipeline.grounder import Grounder

        device = settings.device or None
        if device == "cuda" and settings.workers > 1:
            import torch

            device = worker_device(worker_index, torch.cuda.device_count())
        g = Grounder.from_pretrained(
            settings.model,
            segmenter=settings.segmenter or None,
            device=device,
            dtype=settings.dtype or None,
            memory=settings.memory(),
        )
        return cls(g, settings)

    def info(self) -> dict:
        """What is loaded, the model card (what it knows, whether it was calibrated) and the
        defaults a client may want to show (``threshold``, ``resolution``, ``instances``)."""
        g = self.grounder
        cfg = g.config
        return {
            "model": str(g.model_id),
            "arch": g.backend.arch,
            "segmenter": g.segmenter.name,
            "device": str(g.backend.device),
            "dtype": str(g.backend.dtype).replace("torch.", ""),
            "card": cfg.card.to_info(),
            "defaults": {
                "threshold": cfg.threshold,
                "resolution": cfg.resolution,
                "instances": cfg.instances.mode,
                "proposals": cfg.proposals.mode,
            },
            "proposals": g.mask_stage.proposal_modes(),  # the ``proposals`` values this model serves
            "grpc_port": self.settings.grpc_port,
            "max_batch_size": self.settings.max_batch_size,
        }

    def run_payload(self, jobs: list[dict]) -> list[dict]:
        """``run`` over plain dicts, for callers across a process boundary (BentoML services)."""
        out = []
        for r in self.run([Job(**j) for j in jobs]):
            if isinstance(r, RequestError):
                out.append({"error": str(r), "status": r.status, "field": r.field})
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
                    results = run(
                        [(jobs[i].image, jobs[i].expression) for i in idx], use_segmenter=use_seg, **json.loads(key)
                    )
            except UnsupportedOption as e:  # a valid option this model cannot serve: named
                for i in idx:
                    out[i] = RequestError(str(e), field=option_for(e.option))
                continue
            except ValueError as e:
                for i in idx:
                    out[i] = RequestError(str(e))
                continue
            for i, r in zip(idx, results):
                r.timings_ms["batch_size"] = float(len(idx))
                r.timings_ms["engine"] = (time.perf_counter() - t0) * 1000
                out[i] = r
        return out


def worker_device(worker_index: int, gpus: int) -> str:
    """The CUDA device of engine worker ``worker_index`` (1-based, BentoML's) among ``gpus``."""
    if gpus < 1:
        raise RuntimeError("GROUNDING_DEVICE=cuda but no CUDA device is visible")
    return f"cuda:{(worker_index - 1) % gpus}"


logger = logging.getLogger("bentoml.grounding")


class EngineCalls:
    """The REST worker's calls into the engine service, bounded in time.

    - While the engine is down or restarting (its socket is held by BentoML's process manager, so
      a call would wait in the backlog), a call is answered 503 at once: readiness is probed with a
      1 s budget, at most once per ``READY_TTL_S`` while answers keep coming.
    - A connection closed under a call (a worker killed, or a pooled keep-alive connection closed)
      is retried once the engine is ready again, within what is left of the call's budget: such a
      call takes at most ``Settings.engine_timeout()`` in all.
    - An answer that never comes is given up after ``Settings.engine_timeout()`` (the batching
      queue's ``max_latency_ms`` plus the engine's working margin) and the call retried once with
      a budget of its own if the engine is ready (jobs are pure, so a repeat is safe); else 503.
    """

    READY_TTL_S = 2.0
    FAILURE_PROBE_S = 5.0

    def __init__(self, client, settings: Settings):
        self.client = client
        self.settings = settings
        self._good = 0.0  # monotonic time of the last answer or good probe
        self._asked = -1e9  # monotonic time of the last start-failure probe

    async def ready(self) -> bool:
        """Whether the engine answers (cached for ``READY_TTL_S``; never after a failed start)."""
        if START.failure is not None:  # a failed start is final (startup.py): no probe
            return False
        if time.monotonic() - self._good < self.READY_TTL_S:
            return True
        try:
            ok = bool(await asyncio.wait_for(self.client.is_ready(1), 1.0))
        except Exception:  # timeout, refused, reset: not ready
            ok = False
        if ok:
            self._good = time.monotonic()
        else:
            await self._learn_failure()
        return ok

    async def _learn_failure(self) -> None:
        """Ask a not-ready engine whether its start failed (it answers at once when it did; while it
        loads, the call times out) and keep the line in ``START``. At most once per
        ``FAILURE_PROBE_S``: a failed start is final, so learning it a little late costs nothing,
        while an engine restarting after a crash must not cost every waiting request a probe."""
        now = time.monotonic()
        if now - self._asked < self.FAILURE_PROBE_S:
            return
        self._asked = now
        try:
            state = await asyncio.wait_for(self.client.to_async.status(), 1.0)
        except Exception:  # loading, restarting or gone: nothing learnt
            return
        if state.get("failure"):
            START.failure = state["failure"]

    def unavailable(self) -> RequestError:
        """The 503 for a call made while the engine cannot answer: its start failure, or "retry"."""
        if START.failure is not None:
            return RequestError(not_started(START.failure), 503)
        return RequestError("grounding engine unavailable (starting or restarting); retry shortly", 503)

    async def _call(self, fn, *args):
        import aiohttp
        import httpx
        from bentoml.exceptions import ServiceUnavailable

        budget = self.settings.engine_timeout()
        if not await self.ready():
            raise self.unavailable()
        deadline = time.monotonic() + budget
        for attempt in range(2):
            try:
                out = await asyncio.wait_for(fn(*args), max(deadline - time.monotonic(), 0.0))
                self._good = time.monotonic()
                return out
            except asyncio.TimeoutError:
                retry = attempt == 0 and await self.ready()  # never a retry sent to an engine that is down
                logger.warning("no engine answer in %.0f s; %s", budget, "retrying" if retry else "giving up")
                if not retry:
                    break
                deadline = time.monotonic() + budget  # an answer that never came: the retry has its own budget
            except ServiceUnavailable:
                raise RequestError(
                    "grounding engine overloaded (batch queue over its latency budget); retry shortly", 503
                ) from None
            except (aiohttp.ClientError, httpx.TransportError, ConnectionError) as e:
                # a call cut by a crash is retried once the engine is back, within what is left of its budget
                logger.warning("engine connection lost (%s); retrying when it is ready", type(e).__name__)
                self._good = 0.0
                while not await self.ready():
                    if time.monotonic() > deadline:
                        raise self.unavailable() from None
                    await asyncio.sleep(0.5)
        raise self.unavailable()

    async def run(self, jobs: list[dict]) -> list[dict]:
        """Image jobs (``Job`` dicts) through the engine, bounded by the engine timeout."""
        return await self._call(self.client.to_async.run, jobs)

    async def info(self) -> dict:
        """The engine's ``/info`` document (model, backbone, card, options), bounded by the engine timeout."""
        return await self._call(self.client.to_async.info)

    async def video(self, job: dict) -> dict:
        """A video job: no time limit (it runs as long as the video), but a lost engine is a 503
        (every finished frame is on disk: resubmitting the job resumes it)."""
        import aiohttp
        import httpx

        if not await self.ready():
            raise self.unavailable()
        try:
            return await self.client.to_async.video(job)
        except (aiohttp.ClientError, httpx.TransportError, ConnectionError) as e:
            self._good = 0.0
            raise RequestError(
                f"the engine went away during the job ({type(e).__name__}); resubmit it to resume "
                "from the last finished frame",
                503,
            ) from None


def jobs_for(
    image: Image.Image, exprs: list[str], opts: Options, use_segmenter: bool, answer: bool = False
) -> list[Job]:
    """One engine ``Job`` per expression over the same image, with the options' config overrides."""
    rgb = np.asarray(image)
    return [Job(rgb, e, opts.overrides(), use_segmenter, answer) for e in exprs]


def raise_first_error(results: list) -> list[GroundingResult]:
    """Results as ``GroundingResult`` (payload dicts converted); the first error is raised."""
    out = []
    for r in results:
        if isinstance(r, dict):
            if "error" in r:
                r = RequestError(r["error"], r["status"], field=r.get("field"))
            else:
                found = [Instance(**{**i, "box": tuple(i["box"])}) for i in r.get("instances", [])]
                r = GroundingResult(**{**r, "instances": found})
        if isinstance(r, RequestError):
            raise r
        out.append(r)
    return out
