"""Video jobs on disk: submit, progress, cancel, run/resume on the engine, retention."""

from __future__ import annotations

import base64
import json
import logging
import shutil
import time
from pathlib import Path

from .engine import Engine
from .lifecycle import SHUTDOWN
from .schema import RequestError, parse_options
from .settings import Settings

logger = logging.getLogger("bentoml.grounding")
FINISHED = ("done", "cancelled", "failed", "interrupted")


class VideoJobs:
    """Video jobs on disk, shared by the API and engine processes of one machine.

    ``<root>/<key>/`` holds the input, ``frames.jsonl`` (one line per finished frame, flushed, so an
    interrupted job resumes where it stopped), ``progress.json`` and, when asked for, a ``cancel``
    flag. ``key`` hashes the video bytes, the expression and the options, so resubmitting the same
    job (or BentoML's retry) picks up the finished frames. ``<root>/tasks/<task_id>`` maps a
    BentoML task to its job.

    States: ``queued`` → ``running`` → ``done`` | ``cancelled`` | ``failed`` (with ``error``) |
    ``interrupted`` (the server shut down; resubmit to resume). A finished job drops its input
    video (a resubmission brings it again). Retention (``prune``, run at every submit): finished
    jobs older than ``jobs_ttl_h`` go, then the oldest finished ones until the folder is under
    ``jobs_max_gb``; running and queued jobs are never touched.
    """

    def __init__(self, root: str | Path, settings: Settings | None = None):
        self.root = Path(root)
        self.settings = settings or Settings()
        (self.root / "tasks").mkdir(parents=True, exist_ok=True)

    @staticmethod
    def key(video: bytes | Path, expression: str, options: dict) -> str:
        """The job's folder name: a hash of the video, the expression and the options (same inputs, same folder: a
        resubmitted job resumes)."""
        import hashlib

        h = hashlib.sha256()
        if isinstance(video, (bytes, bytearray)):
            h.update(video)
        else:
            with open(video, "rb") as f:
                while chunk := f.read(2**20):
                    h.update(chunk)
        h.update(json.dumps([expression, options], sort_keys=True).encode())
        return h.hexdigest()[:32]

    def create(self, task_id: str, video: bytes | Path, suffix: str, expression: str, options: dict) -> dict:
        """Store the video of task ``task_id`` in its job folder (pruning old ones first) and return the task
        document."""
        self.prune()
        key = self.key(video, expression, options)
        d = self.root / key
        d.mkdir(exist_ok=True)
        path = d / f"input{suffix}"
        if not path.is_file():
            tmp = path.with_suffix(".part")
            if isinstance(video, (bytes, bytearray)):
                tmp.write_bytes(video)
            else:
                shutil.copyfile(video, tmp)
            tmp.replace(path)
        (d / "cancel").unlink(missing_ok=True)
        progress = d / "progress.json"
        if progress.is_file() and self._state(d) in FINISHED:  # resubmitted: queued again
            progress.unlink()
        (self.root / "tasks" / Path(task_id).name).write_text(key)
        return {"key": key, "video_path": str(path), "expression": expression, "options": options}

    @staticmethod
    def _state(d: Path) -> str:
        try:
            return json.loads((d / "progress.json").read_text()).get("state", "queued")
        except (OSError, ValueError):
            return "queued"

    def prune(self, now: float | None = None) -> list[str]:
        """Apply the retention policy; returns the keys deleted."""
        now = time.time() if now is None else now
        jobs = []
        for d in self.root.iterdir():
            if d.name == "tasks" or not d.is_dir():
                continue
            size = sum(f.stat().st_size for f in d.rglob("*") if f.is_file())
            finished = self._state(d) in FINISHED
            stamp = max((f.stat().st_mtime for f in d.iterdir()), default=d.stat().st_mtime)
            jobs.append((stamp, d, size, finished))
        jobs.sort(key=lambda j: j[0])
        total = sum(j[2] for j in jobs)
        cap = self.settings.jobs_max_gb * 2**30
        ttl = self.settings.jobs_ttl_h * 3600
        deleted = []
        for stamp, d, size, finished in jobs:
            expired = now - stamp > ttl  # a queued/running job untouched this long is abandoned
            if not (finished or expired):
                continue
            if expired or total > cap:
                shutil.rmtree(d, ignore_errors=True)
                total -= size
                deleted.append(d.name)
        if deleted:
            gone = set(deleted)
            for ref in (self.root / "tasks").iterdir():
                try:
                    if ref.read_text().strip() in gone:
                        ref.unlink()
                except OSError:
                    pass
            logger.info("video jobs: retention deleted %d finished job(s)", len(deleted))
        return deleted

    def _dir(self, task_id: str) -> Path:
        ref = self.root / "tasks" / Path(task_id).name
        if not ref.is_file():
            raise RequestError(
                f"unknown task_id {task_id!r} (or its job was deleted by retention)", 404, field="task_id"
            )
        return self.root / ref.read_text().strip()

    def progress(self, task_id: str) -> dict:
        """The task's progress document (``state``, ``done``, ``total``); ``queued`` before the first frame."""
        p = self._dir(task_id) / "progress.json"
        return json.loads(p.read_text()) if p.is_file() else {"state": "queued", "done": 0, "total": None}

    def cancel(self, task_id: str) -> dict:
        """Ask the task to stop after its current frame (its finished frames stay on disk)."""
        d = self._dir(task_id)
        (d / "cancel").write_text("1")
        return {"task_id": task_id, "cancel_requested": True, **self.progress(task_id)}

    def run(self, engine: "Engine", job: dict) -> dict:
        """Run (or resume) a job on the engine; returns the result document. A job that raises
        is recorded as ``failed`` with the reason (and the error re-raised)."""
        d = self.root / job["key"]
        try:
            return self._run(engine, job)
        except Exception as e:
            reason = str(e) if isinstance(e, (ValueError, FileNotFoundError)) else f"internal error: {type(e).__name__}"
            progress = {"state": "failed", "error": reason}
            try:
                progress = {**json.loads((d / "progress.json").read_text()), **progress}
            except (OSError, ValueError):
                pass
            if d.is_dir():
                tmp = d / "progress.tmp"
                tmp.write_text(json.dumps(progress))
                tmp.replace(d / "progress.json")
            raise

    def _run(self, engine: "Engine", job: dict) -> dict:
        from ..jsonl import JsonlWriter, read_jsonl
        from ..pipeline.frames import video_fps
        from ..pipeline.propagate import require_tracker
        from ..pipeline.result import rle_to_mask
        from ..pipeline.video import VideoConfig, iter_video, keyframe_of
        from ..pipeline.video_output import frame_doc, overlay_video_from_docs

        d = self.root / job["key"]
        frames_path = d / "frames.jsonl"
        done = read_jsonl(frames_path, repair=True)
        opts = job["options"]
        total = _count_frames(job["video_path"])

        def save_progress(state: str, n: int, **extra) -> None:
            """Write the progress document atomically (a reader never sees half of it)."""
            tmp = d / "progress.tmp"
            tmp.write_text(json.dumps({"state": state, "done": n, "total": total, "resumed_from": len(done), **extra}))
            tmp.replace(d / "progress.json")

        prev = rle_to_mask(done[-1]["segmentation"]) if done else None
        options = parse_options(opts, "segment_video")
        try:  # the options' ranges are the schema's; what VideoConfig refuses is their combination
            video = VideoConfig(
                window=options.window,
                maps=options.maps,
                propagate=options.propagate,
                keyframe_every=options.keyframe_every,
            )
        except ValueError as e:
            raise RequestError(str(e), field="maps") from None
        if options.maps == "clip":
            try:
                engine.grounder.map_stage.require_video()
            except ValueError as e:
                raise RequestError(str(e), field="maps") from None
        if options.propagate:
            try:
                require_tracker(engine.grounder)
            except ValueError as e:
                raise RequestError(f"{e} (GROUNDING_SEGMENTER)", field="propagate") from None
        overrides = options.overrides()
        cancelled = False

        def cancel() -> bool:
            """Ask the task to stop after its current frame (its finished frames stay on disk)."""
            nonlocal cancelled
            cancelled = cancelled or (d / "cancel").is_file() or SHUTDOWN.draining
            return cancelled

        n = len(done)
        save_progress("running", n)
        with JsonlWriter(frames_path) as out:
            gen = iter_video(
                engine.grounder,
                job["video_path"],
                job["expression"],
                video,
                cancel=cancel,
                start=len(done),
                prev_mask=prev,
                **overrides,
            )
            while True:
                with engine.lock:  # one frame at a time: image requests interleave with long videos
                    f = next(gen, None)
                if f is None:
                    break
                out.write({"id": f.index, **frame_doc(f)})
                n += 1
                save_progress("running", n)
        records = read_jsonl(frames_path)
        if cancelled:
            state = "interrupted" if SHUTDOWN.draining and not (d / "cancel").is_file() else "cancelled"
            save_progress(state, len(records))
            return {"cancelled": True, "done": len(records), "total": total, "state": state}
        result = {
            "expression": job["expression"],
            "frames": [{k: v for k, v in r.items() if k != "id"} for r in records],
            "fps": video_fps(job["video_path"]),
        }
        best = keyframe_of((r.get("dit", True), r["confidence"]) for r in records)
        result["keyframe"] = best
        if options.return_overlay:
            path = overlay_video_from_docs(job["video_path"], records, d / "overlay.mp4", result["fps"])
            result["overlay_mp4_base64"] = base64.b64encode(path.read_bytes()).decode("ascii")
        save_progress("done", len(records))
        Path(job["video_path"]).unlink(missing_ok=True)  # finished: the frames are kept, the input is not
        return result


def _count_frames(path: str) -> int | None:
    """Frames in a video file (container metadata) or zip; None when unknown."""
    import zipfile

    from ..pipeline.frames import IMAGE_SUFFIXES

    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            return sum(Path(n).suffix.lower() in IMAGE_SUFFIXES for n in z.namelist())
    try:
        import av

        with av.open(path) as c:
            return int(c.streams.video[0].frames) or None
    except Exception:
        return None
