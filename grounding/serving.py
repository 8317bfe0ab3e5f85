"""Request handling shared by the REST service and the gRPC server: validation, the engine that
batches jobs through one ``Grounder``, and the response documents."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .images import ImageTooLarge, open_image
from .result import GroundingResult, mask_to_rle
from .settings import Settings
from .answers import answer_prompt
from .tokens import validate_expression

MASK_FORMATS = ("rle", "polygon", "png")
HEATMAP_FORMATS = ("png", "array")
SINK_MODES = ("suppress", "redirect")
VIEW_MODES = ("global", "assembled")


class RequestError(ValueError):
    """Bad input: ``status`` is the HTTP code (400, 413, 415); gRPC maps all to INVALID_ARGUMENT."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass
class Options:
    """Per-request switches (REST form/JSON fields, gRPC ``Options``)."""

    return_heatmap: bool = False  # heatmap as a base64 8-bit PNG in each result
    return_mask_png: bool = False  # mask as a base64 PNG in each result (besides ``segmentation``)
    mask_format: str = "rle"  # segmentation as COCO RLE, polygons, or a base64 PNG
    heatmap_format: str = "png"  # /ground: "png" (base64 8-bit PNG) or "array" (floats, image size)
    threshold: float | None = None  # fraction of the map's max for the region / box
    magnets: bool | None = None
    sinks: bool | None = None
    sinks_mode: str | None = None
    redistribution: bool | None = None
    seed: int | None = None
    views: str | None = None  # "global" | "assembled"

    def overrides(self) -> dict[str, Any]:
        """Grounding config overrides these options ask for."""
        out: dict[str, Any] = {}
        if self.threshold is not None:
            out["threshold"] = float(self.threshold)
        if self.magnets is not None:
            out["magnets.enabled"] = bool(self.magnets)
        if self.sinks is not None:
            out["sinks.enabled"] = bool(self.sinks)
        if self.sinks_mode is not None:
            out["sinks.mode"] = self.sinks_mode
        if self.redistribution is not None:
            out["redistribution.enabled"] = bool(self.redistribution)
        if self.seed is not None:
            out["seed"] = int(self.seed)
        if self.views is not None:
            out["views.mode"] = self.views
        return out


def parse_options(values: dict[str, Any]) -> Options:
    """Validate option values (``None`` = not given) into ``Options``; ``RequestError`` if bad."""
    names = {f.name for f in fields(Options)}
    unknown = set(values) - names
    if unknown:
        raise RequestError(f"unknown options: {sorted(unknown)}")
    given = {k: v for k, v in values.items() if v is not None}
    opts = Options(**given)
    if opts.mask_format not in MASK_FORMATS:
        raise RequestError(f"mask_format must be one of {MASK_FORMATS}, got {opts.mask_format!r}")
    if opts.heatmap_format not in HEATMAP_FORMATS:
        raise RequestError(f"heatmap_format must be one of {HEATMAP_FORMATS}, got {opts.heatmap_format!r}")
    if opts.sinks_mode is not None and opts.sinks_mode not in SINK_MODES:
        raise RequestError(f"sinks_mode must be one of {SINK_MODES}, got {opts.sinks_mode!r}")
    if opts.views is not None and opts.views not in VIEW_MODES:
        raise RequestError(f"views must be one of {VIEW_MODES}, got {opts.views!r}")
    if opts.threshold is not None and not (0.0 < float(opts.threshold) < 1.0):
        raise RequestError(f"threshold must be in (0, 1), got {opts.threshold}")
    return opts


def parse_expressions(expression, settings: Settings) -> list[str]:
    """One expression or a list → cleaned list; ``RequestError`` naming what is wrong."""
    if expression is None:
        raise RequestError("missing field: expression")
    if isinstance(expression, str):
        text = expression.strip()
        if text.startswith("["):  # a JSON list sent as a form field
            try:
                expression = json.loads(text)
            except json.JSONDecodeError:
                pass
    items = [expression] if isinstance(expression, str) else list(expression)
    if not items:
        raise RequestError("expression list is empty")
    if len(items) > settings.max_expressions:
        raise RequestError(f"{len(items)} expressions, over the limit of {settings.max_expressions} per request")
    out = []
    for e in items:
        if not isinstance(e, str):
            raise RequestError(f"expression must be a string, got {type(e).__name__}")
        out.append(_checked_text(e, "expression is", settings))
    return out


def _checked_text(text: str, what: str, settings: Settings) -> str:
    """Length limit, then ``validate_expression``; ``RequestError`` naming what is wrong."""
    if len(text) > settings.max_expression_chars:
        raise RequestError(f"{what} {len(text)} characters, over the limit of {settings.max_expression_chars}")
    try:
        return validate_expression(text)
    except ValueError as err:
        raise RequestError(str(err)) from None


def parse_question(question, answer, settings: Settings) -> str:
    """A visual question (+ optional answer) → the text to ground; ``RequestError`` if bad."""
    if question is None or (isinstance(question, str) and not question.strip()):
        raise RequestError("missing field: question")
    for name, value in (("question", question), ("answer", answer)):
        if value is not None and not isinstance(value, str):
            raise RequestError(f"{name} must be a string, got {type(value).__name__}")
    return _checked_text(answer_prompt(question, answer), "question and answer are", settings)


_IMAGE_MAGIC = (b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"BM", b"II*\x00", b"MM\x00*", b"RIFF", b"\x00\x00\x00\x0cjP")


def decode_image(data: bytes | None, settings: Settings, content_type: str | None = None) -> Image.Image:
    """Upload bytes → upright RGB image; 400 empty/corrupt, 413 too many pixels, 415 not an image."""
    if data is None:
        raise RequestError("missing field: image (a multipart file, or image_base64 in JSON)")
    if len(data) == 0:
        raise RequestError("image is empty (0 bytes)")
    if content_type and not (content_type.startswith("image/") or content_type == "application/octet-stream"):
        raise RequestError(f"content type {content_type} is not an image", 415)
    try:
        return open_image(data, settings.max_image_pixels)
    except ImageTooLarge as e:
        raise RequestError(str(e), 413) from None
    except ValueError as e:
        if not data.startswith(_IMAGE_MAGIC):
            raise RequestError("not an image file (unknown format)", 415) from None
        raise RequestError(str(e)) from None


def decode_base64(text: str) -> bytes:
    try:
        if "," in text[:100] and text.startswith("data:"):
            text = text.split(",", 1)[1]
        return base64.b64decode(text, validate=True)
    except (ValueError, TypeError) as e:
        raise RequestError(f"image_base64 is not valid base64: {e}") from None


# --- engine ------------------------------------------------------------------------------------
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
        from .grounder import Grounder

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


# --- responses ---------------------------------------------------------------------------------
def png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def png_base64(arr: np.ndarray) -> str:
    return base64.b64encode(png_bytes(arr)).decode("ascii")


def heatmap_u8(r: GroundingResult) -> np.ndarray:
    return np.round(r.heatmap * 255).astype(np.uint8)


def mask_polygons(mask: np.ndarray) -> list[list[float]]:
    """Outer contours of a bool mask as COCO polygons ``[x0, y0, x1, y1, ...]`` through boundary pixel centres."""
    import cv2

    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polys = []
    for c in contours:
        pts = c.reshape(-1, 2).astype(float)
        if len(pts) >= 3:
            polys.append([round(v, 1) for v in pts.reshape(-1).tolist()])
        else:  # a 1-2 pixel sliver: its pixel square
            x, y = pts.min(axis=0)
            x1, y1 = pts.max(axis=0) + 1
            polys.append([x, y, x1, y, x1, y1, x, y1])
    return polys


def result_doc(r: GroundingResult, opts: Options, binary: bool = False) -> dict:
    """One result as JSON-ready dict; PNGs base64 text (or raw bytes with ``binary``, for gRPC)."""
    png = png_bytes if binary else png_base64
    h, w = r.mask.shape
    if opts.mask_format == "rle":
        seg = mask_to_rle(r.mask)
    elif opts.mask_format == "polygon":
        seg = {"size": [h, w], "polygons": mask_polygons(r.mask)}
    else:
        seg = {"size": [h, w], "png": png(r.mask.astype(np.uint8) * 255)}
    doc = {
        "expression": r.expression,
        "box": [round(float(v), 2) for v in r.box],
        "box_format": "xyxy",
        "score": round(float(r.score), 6),
        "segmentation": seg,
        "points": [[round(float(x), 2), round(float(y), 2)] for x, y in r.points],
        "point_labels": [int(v) for v in r.point_labels],
        "present": bool(r.present),
        "presence_score": round(float(r.presence_score), 6),
        "warnings": list(r.warnings),
    }
    if opts.return_mask_png:
        doc["mask_png"] = png(r.mask.astype(np.uint8) * 255)
    if opts.return_heatmap:
        doc["heatmap_png"] = png(heatmap_u8(r))
    return doc


def heatmap_doc(r: GroundingResult, opts: Options) -> dict:
    h, w = r.heatmap.shape
    if opts.heatmap_format == "png":
        heat = {"format": "png", "size": [h, w], "data": png_base64(heatmap_u8(r))}
    else:
        heat = {"format": "array", "size": [h, w], "data": np.round(r.heatmap.astype(np.float64), 4).tolist()}
    peak = r.points[0].tolist() if len(r.points) else None
    return {"expression": r.expression, "heatmap": heat, "peak": peak, "warnings": list(r.warnings)}


def merged_timings(results: list[GroundingResult], t_start: float) -> dict[str, float]:
    """Per-stage timings of a request (max over its results) plus the request's total."""
    timings: dict[str, float] = {}
    for r in results:
        for k, v in r.timings_ms.items():
            timings[k] = max(timings.get(k, 0.0), v)
    timings["total"] = (time.perf_counter() - t_start) * 1000
    return {k: round(v, 2) for k, v in timings.items()}


def response(image: Image.Image, docs: list[dict], results: list[GroundingResult], t_start: float) -> dict:
    return {"image": {"width": image.width, "height": image.height}, "results": docs,
            "timings_ms": merged_timings(results, t_start)}


def prepare(settings: Settings, data: bytes | None, expression, option_values: dict,
            content_type: str | None = None) -> tuple[Image.Image, Options, list[str]]:
    """Validate a request (options, expressions, then image) → (RGB image, options, expressions)."""
    opts = parse_options(option_values)
    exprs = parse_expressions(expression, settings)
    return decode_image(data, settings, content_type), opts, exprs


def prepare_question(settings: Settings, data: bytes | None, question, answer,
                     option_values: dict) -> tuple[Image.Image, Options, list[str]]:
    """``prepare`` for a visual question (+ answer): options, the one text to ground, then image."""
    opts = parse_options(option_values)
    texts = [parse_question(question, answer, settings)]
    return decode_image(data, settings), opts, texts


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


# --- video jobs ----------------------------------------------------------------------------------
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
        from .jsonl import JsonlWriter, read_jsonl
        from .result import rle_to_mask
        from .video import VideoConfig, frame_doc, iter_video, overlay_video_from_docs, video_fps

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
        video = VideoConfig(window=int(opts.get("window", 2)))
        overrides = Options(**{k: v for k, v in opts.items() if k in {f.name for f in fields(Options)}}).overrides()
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
        if opts.get("return_overlay"):
            path = overlay_video_from_docs(job["video_path"], records, d / "overlay.mp4", result["fps"])
            result["overlay_mp4_base64"] = base64.b64encode(path.read_bytes()).decode("ascii")
        save_progress("done", len(records))
        return result


def _count_frames(path: str) -> int | None:
    """Frames in a video file (container metadata) or zip; None when unknown."""
    import zipfile

    from .video import IMAGE_SUFFIXES

    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            return sum(Path(n).suffix.lower() in IMAGE_SUFFIXES for n in z.namelist())
    try:
        import av

        with av.open(path) as c:
            return int(c.streams.video[0].frames) or None
    except Exception:
        return None
