"""Video jobs on disk: submit, progress, cancel, run/resume on the engine."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from .engine import Engine
from .schema import RequestError, parse_options


class VideoJobs:
    """Video jobs on disk, shared by the API and engine processes of one machine.

    ``<root>/<key>/`` holds the input, ``frames.jsonl`` (one line per finished frame, flushed, so an
    interrupted job resumes where it stopped), ``progress.json`` and, when asked for, a ``cancel``
    flag. ``key`` hashes the video bytes, the expression and the options, so resubmitting the same
    job (or BentoML's retry) picks up the finished frames. ``<root>/tasks/<task_id>`` maps a
    BentoML task to its job.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        (self.root / "tasks").mkdir(parents=True, exist_ok=True)

    @staticmethod
    def key(video: bytes, expression: str, options: dict) -> str:
        import hashlib

        h = hashlib.sha256(video)
        h.update(json.dumps([expression, options], sort_keys=True).encode())
        return h.hexdigest()[:32]

    def create(self, task_id: str, video: bytes, suffix: str, expression: str, options: dict) -> dict:
        key = self.key(video, expression, options)
        d = self.root / key
        d.mkdir(exist_ok=True)
        path = d / f"input{suffix}"
        if not path.is_file():
            tmp = path.with_suffix(".part")
            tmp.write_bytes(video)
            tmp.replace(path)
        (d / "cancel").unlink(missing_ok=True)
        (self.root / "tasks" / task_id).write_text(key)
        return {"key": key, "video_path": str(path), "expression": expression, "options": options}

    def _dir(self, task_id: str) -> Path:
        ref = self.root / "tasks" / Path(task_id).name
        if not ref.is_file():
            raise RequestError(f"unknown task_id {task_id!r}", 404)
        return self.root / ref.read_text().strip()

    def progress(self, task_id: str) -> dict:
        p = self._dir(task_id) / "progress.json"
        return json.loads(p.read_text()) if p.is_file() else {"state": "queued", "done": 0, "total": None}

    def cancel(self, task_id: str) -> dict:
        d = self._dir(task_id)
        (d / "cancel").write_text("1")
        return {"task_id": task_id, "cancel_requested": True, **self.progress(task_id)}

    def run(self, engine: "Engine", job: dict) -> dict:
        """Run (or resume) a job on the engine; returns the result document."""
        from ..jsonl import JsonlWriter, read_jsonl
        from ..pipeline.result import rle_to_mask
        from ..pipeline.video import VideoConfig, frame_doc, iter_video, overlay_video_from_docs, video_fps

        d = self.root / job["key"]
        frames_path = d / "frames.jsonl"
        done = read_jsonl(frames_path, repair=True)
        opts = job["options"]
        total = _count_frames(job["video_path"])

        def save_progress(state: str, n: int, **extra) -> None:
            tmp = d / "progress.tmp"
            tmp.write_text(json.dumps({"state": state, "done": n, "total": total, "resumed_from": len(done), **extra}))
            tmp.replace(d / "progress.json")

        prev = rle_to_mask(done[-1]["segmentation"]) if done else None
        options = parse_options(opts, "segment_video")
        video = VideoConfig(window=options.window)
        overrides = options.overrides()
        cancelled = False

        def cancel() -> bool:
            nonlocal cancelled
            cancelled = cancelled or (d / "cancel").is_file()
            return cancelled

        n = len(done)
        save_progress("running", n)
        with JsonlWriter(frames_path) as out:
            gen = iter_video(engine.grounder, job["video_path"], job["expression"], video, cancel=cancel,
                             start=len(done), prev_mask=prev, **overrides)
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
            save_progress("cancelled", len(records))
            return {"cancelled": True, "done": len(records), "total": total}
        result = {"expression": job["expression"], "frames": [{k: v for k, v in r.items() if k != "id"} for r in records],
                  "fps": video_fps(job["video_path"])}
        best = max(range(len(records)), key=lambda i: records[i]["confidence"]) if records else 0
        result["keyframe"] = best
        if options.return_overlay:
            path = overlay_video_from_docs(job["video_path"], records, d / "overlay.mp4", result["fps"])
            result["overlay_mp4_base64"] = base64.b64encode(path.read_bytes()).decode("ascii")
        save_progress("done", len(records))
        return result


def _count_frames(path: str) -> int | None:
    """Frames in a video file (container metadata) or zip; None when unknown."""
    import zipfile

    from ..pipeline.video import IMAGE_SUFFIXES

    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            return sum(Path(n).suffix.lower() in IMAGE_SUFFIXES for n in z.namelist())
    try:
        import av

        with av.open(path) as c:
            return int(c.streams.video[0].frames) or None
    except Exception:
        return None
