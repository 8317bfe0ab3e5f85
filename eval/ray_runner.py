"""Evaluation runs on Ray: a pool of actors that each hold the model, fed batches of samples.

The driver owns ``results.jsonl`` exactly as a local run does (same records, same resume, same
``summary.json`` / ``eval merge``): it reads the dataset's annotations to know the sample ids,
skips those already recorded, and hands out batches of sample indices; each actor loads the
model once (``Grounder.from_pretrained`` with the run's model, segmenter, device, dtype) and the
dataset's annotations, reads the images or frames itself and returns one record per sample
(``runner.record_or_error``: a sample that raises is retried, then recorded as an error).

Faults are Ray's to handle: actors are created with ``max_restarts`` and ``max_task_retries``, so
a killed actor process is restarted and the batch it was working on runs again there. Results
come back per batch, and the driver appends a record only if its id is not recorded yet, so a
batch that ran twice is recorded once. A killed driver loses only batches in flight; rerunning
the command resumes. ``--ray local`` starts a Ray instance on this machine (CPUs bounded by
``actors × cpus_per_actor``, no dashboard) and stops it at the end; ``auto`` or an address joins a
running cluster (``ray start --head`` …), where every node needs this project installed.
"""

from __future__ import annotations

import json
import os
import time
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm import tqdm

from .runner import RunConfig, finish_run, load_dataset, open_run, sample_ids, select


@dataclass(frozen=True)
class RayOptions:
    address: str = "local"  # local | auto | ray://host:port or host:port
    actors: int = 2
    gpus_per_actor: float = 0.0
    cpus_per_actor: float = 1.0
    batch_size: int = 4  # samples per task
    attempts: int = 2  # per sample, before it is recorded as an error
    max_restarts: int = 3  # per actor
    in_flight: int = 2  # tasks queued per actor
    dashboard: bool = False

    def __post_init__(self):
        if self.actors < 1 or self.batch_size < 1 or self.attempts < 1 or self.in_flight < 1:
            raise ValueError("--actors, --batch-size, attempts and in_flight must be ≥ 1")
        if self.cpus_per_actor <= 0 or self.gpus_per_actor < 0:
            raise ValueError("--cpus-per-actor must be > 0 and --gpus-per-actor ≥ 0")


@dataclass(frozen=True)
class ModelSpec:
    """What each actor loads (as a local run would)."""

    model: str
    segmenter: str = ""
    device: str | None = None
    dtype: str | None = None
    threads: int = 0  # torch threads per actor; 0 = its CPU share


class EvalWorker:
    """One actor: the model and the dataset's annotations, loaded once; batches of indices in,
    records out."""

    def __init__(self, cfg: dict, spec: dict, run_dir: str, threads: int, frame_batch: int = 4):
        import torch

        from grounding import Grounder

        torch.set_num_threads(max(1, threads))
        self.cfg = RunConfig(**{**cfg, "shard": tuple(cfg["shard"])})
        spec = ModelSpec(**spec)
        self.grounder = Grounder.from_pretrained(
            spec.model, segmenter=spec.segmenter or None, device=spec.device, dtype=spec.dtype
        )
        self.ds = load_dataset(self.cfg)
        self.ids = sample_ids(self.cfg, self.ds)
        self.run_dir = Path(run_dir)
        self.frame_batch = frame_batch

    def pid(self) -> int:
        return os.getpid()

    def run(self, indices: list[int], attempts: int) -> list[dict]:
        from .runner import record_or_error

        return [
            record_or_error(self.cfg, self.grounder, self.ds, i, self.ids[i], self.run_dir, attempts, self.frame_batch)
            for i in indices
        ]


class LocalRay:
    """A Ray instance on this machine for one run: CPUs bounded by the actors' share, no dashboard,
    ``eval.ray_watchdog`` to end it if this driver is killed, and after ``ray.shutdown`` a sweep of
    the processes Ray started (some of its agents outlive it)."""

    def __init__(self, opts: RayOptions):
        import subprocess
        import sys
        import uuid

        import ray

        from .ray_watchdog import MARKER_VAR, descendants

        self.marker = uuid.uuid4().hex
        self._before = descendants(os.getpid())
        env = {k: v for k, v in os.environ.items() if k != MARKER_VAR}
        self.watchdog = subprocess.Popen(
            [sys.executable, "-m", "eval.ray_watchdog", str(os.getpid()), self.marker],
            env=env,
            start_new_session=True,
            cwd=Path(__file__).resolve().parents[1],
        )
        self._before.add(self.watchdog.pid)
        self._previous = os.environ.get(MARKER_VAR)
        os.environ[MARKER_VAR] = self.marker  # inherited by every process Ray starts from here
        cpus = max(1, min(os.cpu_count() or 1, int(round(opts.actors * opts.cpus_per_actor + 0.499))))
        try:
            ray.init(
                num_cpus=cpus,
                num_gpus=None,
                include_dashboard=opts.dashboard,
                log_to_driver=False,
                configure_logging=False,
                runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}},
            )
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        import ray

        from .ray_watchdog import MARKER_VAR, descendants, kill_all, marked

        ours = descendants(os.getpid()) - self._before  # Ray's processes, before they are reparented
        if ray.is_initialized():
            ray.shutdown()
        if self._previous is None:
            os.environ.pop(MARKER_VAR, None)
        else:
            os.environ[MARKER_VAR] = self._previous
        kill_all(ours | set(marked(self.marker)))
        self.watchdog.terminate()
        try:
            self.watchdog.wait(timeout=10)
        except Exception:  # noqa: BLE001
            self.watchdog.kill()


def _init_ray(opts: RayOptions) -> LocalRay | None:
    """Start (``local``) or join a Ray instance; the ``LocalRay`` to close, if one was started."""
    import ray

    if ray.is_initialized():
        return None
    if opts.address == "local":
        return LocalRay(opts)
    ray.init(address=opts.address, log_to_driver=False, configure_logging=False)
    return None


def run_ray(
    cfg: RunConfig, spec: ModelSpec, run_dir: Path, opts: RayOptions, frame_batch: int = 4, on_actors=None
) -> dict:
    """The run on a Ray actor pool; returns the summary as ``runner.run_local`` does.
    ``on_actors(actors)`` is called once the actors are up (tests use it to kill one)."""
    import ray

    run_dir = Path(run_dir).resolve()
    ds = load_dataset(cfg)
    ids = sample_ids(cfg, ds)
    log = open_run(run_dir, cfg)
    todo = [i for i in select(len(ids), cfg.limit, cfg.shard) if ids[i] not in log.done]
    local, joined = None, False
    try:
        if todo:
            joined = not ray.is_initialized()
            local = _init_ray(opts)
            threads = spec.threads or max(1, int(opts.cpus_per_actor))
            Worker = ray.remote(EvalWorker).options(
                num_cpus=opts.cpus_per_actor,
                num_gpus=opts.gpus_per_actor,
                max_restarts=opts.max_restarts,
                max_task_retries=-1,
            )
            cfg_dict = asdict(cfg)
            actors = [
                Worker.remote(cfg_dict, asdict(spec), str(run_dir), threads, frame_batch) for _ in range(opts.actors)
            ]
            t0 = time.perf_counter()
            ray.get([a.pid.remote() for a in actors])  # the models are loaded
            startup_s = time.perf_counter() - t0
            if on_actors is not None:
                on_actors(actors)
            t1 = time.perf_counter()
            _dispatch(actors, todo, ids, log, opts, cfg)
            work_s = time.perf_counter() - t1
            (run_dir / "ray.json").write_text(
                json.dumps(
                    {
                        "address": opts.address,
                        "actors": opts.actors,
                        "cpus_per_actor": opts.cpus_per_actor,
                        "gpus_per_actor": opts.gpus_per_actor,
                        "batch_size": opts.batch_size,
                        "samples": len(todo),
                        "startup_s": round(startup_s, 3),
                        "work_s": round(work_s, 3),
                        "samples_per_s": round(len(todo) / work_s, 3) if work_s > 0 else None,
                    }
                )
                + "\n"
            )
    finally:
        log.close()
        if local is not None:
            local.close()
        elif joined and ray.is_initialized():
            ray.shutdown()  # disconnect from the cluster we joined
    return finish_run(cfg, run_dir)


def _dispatch(actors, todo: list[int], ids: list[str], log, opts: RayOptions, cfg: RunConfig) -> None:
    """Batches to actors, ``in_flight`` each; records appended as batches finish (each id once).
    A batch whose actor is gone for good goes to another actor."""
    import ray
    from ray.exceptions import RayActorError

    batches = deque(todo[k : k + opts.batch_size] for k in range(0, len(todo), opts.batch_size))
    pending: dict = {}  # future → (actor index, batch)
    alive = set(range(len(actors)))
    bar = tqdm(
        total=len(log.records) + len(todo),
        initial=len(log.records),
        desc=f"{cfg.dataset} {cfg.split} (ray)",
        unit="sample",
        dynamic_ncols=True,
        smoothing=0.1,
    )

    def submit(a: int) -> None:
        while batches and sum(1 for v in pending.values() if v[0] == a) < opts.in_flight:
            batch = batches.popleft()
            pending[actors[a].run.remote(batch, opts.attempts)] = (a, batch)

    try:
        for a in alive:
            submit(a)
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            fut = done[0]
            a, batch = pending.pop(fut)
            try:
                records = ray.get(fut)
            except RayActorError:  # the actor is gone past its restarts: its batch goes elsewhere
                alive.discard(a)
                if not alive:
                    raise RuntimeError("every Ray actor died; rerun the command to resume") from None
                batches.appendleft(batch)
                for b in alive:
                    submit(b)
                continue
            new = 0
            for rec in records:
                if rec["id"] not in log.done:
                    log.append(rec)
                    new += 1
            bar.update(new)
            submit(a)
    finally:
        bar.close()
