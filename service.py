"""BentoML service: thin IO over ``grounding.serving``.

Two services, the BentoYolo pattern: ``Grounding`` (public REST API: parses and validates
requests, answers 4xx without touching the model) calls ``GroundingEngine`` (owns the model; its
batchable API merges jobs from concurrent requests into one transformer forward). The gRPC server
runs inside the engine's worker over the same loaded model. Settings: ``grounding/settings.py``.
"""

from __future__ import annotations

import logging
import time
import typing as t
from dataclasses import asdict
from http import HTTPStatus
from pathlib import Path

import bentoml
from bentoml.exceptions import BentoMLException
from PIL import Image as PILImage

from starlette.staticfiles import StaticFiles

from grounding import serving
from grounding.result import overlay
from grounding.settings import load_settings

SETTINGS = load_settings()
logger = logging.getLogger("bentoml.grounding")
_BATCHING = (
    {"batchable": True, "max_batch_size": SETTINGS.max_batch_size, "max_latency_ms": SETTINGS.max_latency_ms}
    if SETTINGS.max_batch_size > 1 else {}
)


@bentoml.service(name="grounding-engine", workers=1, traffic={"timeout": 600})
class GroundingEngine:
    """The loaded model. ``run`` is batchable: a list of jobs in, a list of results out."""

    def __init__(self) -> None:
        self.engine = serving.Engine.from_settings(SETTINGS)
        self.grpc_server = None
        grpc_port = 0
        if SETTINGS.grpc_port:
            from grounding.grpc_server import start_grpc_server

            self.grpc_server, grpc_port = start_grpc_server(self.engine, SETTINGS.grpc_port)
        logger.info("grounding engine ready: %s; gRPC %s", self.engine.info(),
                    f"on port {grpc_port}" if grpc_port else "off")

    @bentoml.api(**_BATCHING)
    def run(self, jobs: list[t.Any]) -> list[t.Any]:
        """Job dicts (``serving.Job`` fields) → result dicts (``GroundingResult`` fields or an error)."""
        return self.engine.run_payload(jobs)

    @bentoml.api
    def info(self) -> dict:
        return self.engine.info()

    @bentoml.api
    def video(self, job: dict) -> dict:
        """Run (or resume) a video job prepared by ``Grounding.segment_video``."""
        try:
            return serving.VideoJobs(SETTINGS.jobs_dir).run(self.engine, job)
        except (ValueError, FileNotFoundError) as e:
            return {"error": str(e), "status": getattr(e, "status", 400)}

    @bentoml.on_shutdown
    def stop_grpc(self) -> None:
        if self.grpc_server is not None:
            self.grpc_server.stop(grace=2)


def _http_error(e: serving.RequestError) -> BentoMLException:
    return BentoMLException(str(e), error_code=HTTPStatus(e.status))


UI = StaticFiles(directory=Path(serving.__file__).parent / "ui", html=True)


@bentoml.asgi_app(UI, path="/ui")
@bentoml.service(name="grounding", traffic={"timeout": 600, "max_concurrency": 256})
class Grounding:
    """Public REST API: POST /segment, /ground, /render, /info; BentoML's /healthz, /readyz;
    the browser page at GET /ui/."""

    engine = bentoml.depends(GroundingEngine)

    async def _ground(self, args: dict, use_segmenter: bool, answer: bool = False):
        """An endpoint's arguments (its ``locals()``): image fields, ``expression`` (or
        ``question`` and ``answer``), and options."""
        text_fields = ("question", "answer") if answer else ("expression",)
        options = {k: v for k, v in args.items() if k not in ("self", "image", "image_base64", *text_fields)}
        t0 = time.perf_counter()
        try:
            image, image_base64 = args.get("image"), args.get("image_base64")
            data = image.read_bytes() if image is not None else (
                serving.decode_base64(image_base64) if image_base64 else None)
            if answer:
                img, opts, exprs = serving.prepare_question(SETTINGS, data, args.get("question"), args.get("answer"),
                                                            options)
            else:
                img, opts, exprs = serving.prepare(SETTINGS, data, args.get("expression"), options)
            jobs = [asdict(j) for j in serving.jobs_for(img, exprs, opts, use_segmenter, answer)]
            results = serving.raise_first_error(await self._run(jobs))
        except serving.RequestError as e:
            raise _http_error(e) from None
        return img, opts, results, t0

    async def _run(self, jobs: list[dict], attempts: int = 3) -> list[dict]:
        """Engine call, retried (jobs are pure, so a repeat is safe) when a pooled keep-alive
        connection was closed under it, or when no answer came within ``engine_timeout_s``: BentoML
        runs dependency workers with uvicorn's 5 s keep-alive while its client keeps connections
        for 15 s, and under load an answer can be lost on such a connection."""
        import asyncio

        import aiohttp

        for attempt in range(attempts):
            try:
                return await asyncio.wait_for(self.engine.to_async.run(jobs), SETTINGS.engine_timeout())
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError, asyncio.TimeoutError) as e:
                if attempt == attempts - 1:
                    raise BentoMLException("grounding engine unavailable", error_code=HTTPStatus.SERVICE_UNAVAILABLE)
                logger.warning("engine call failed (%s); retrying (%d/%d)", type(e).__name__, attempt + 1, attempts - 1)
        raise AssertionError("unreachable")

    @bentoml.api(route="/segment")
    async def segment(
        self,
        image: Path = None,  # type: ignore[assignment]  (BentoML cannot build Optional[Path])
        image_base64: t.Optional[str] = None,
        expression: t.Union[str, t.List[str], None] = None,
        return_heatmap: bool = False,
        return_mask_png: bool = False,
        mask_format: str = "rle",
        threshold: t.Optional[float] = None,
        magnets: t.Optional[bool] = None,
        sinks: t.Optional[bool] = None,
        sinks_mode: t.Optional[str] = None,
        redistribution: t.Optional[bool] = None,
        seed: t.Optional[int] = None,
        views: t.Optional[str] = None,
    ) -> dict:
        """Mask (COCO RLE / polygons / PNG), box, score, points and ``present`` per expression."""
        img, opts, results, t0 = await self._ground(locals(), True)
        return serving.response(img, [serving.result_doc(r, opts) for r in results], results, t0)

    @bentoml.api(route="/ground")
    async def ground(
        self,
        image: Path = None,  # type: ignore[assignment]  (BentoML cannot build Optional[Path])
        image_base64: t.Optional[str] = None,
        expression: t.Union[str, t.List[str], None] = None,
        heatmap_format: str = "png",
        magnets: t.Optional[bool] = None,
        sinks: t.Optional[bool] = None,
        sinks_mode: t.Optional[str] = None,
        redistribution: t.Optional[bool] = None,
        seed: t.Optional[int] = None,
        views: t.Optional[str] = None,
    ) -> dict:
        """Heatmap only: a base64 8-bit PNG or a float array at the image's size, and its peak."""
        img, opts, results, t0 = await self._ground(locals(), False)
        return serving.response(img, [serving.heatmap_doc(r, opts) for r in results], results, t0)

    @bentoml.api(route="/answer_ground")
    async def answer_ground(
        self,
        image: Path = None,  # type: ignore[assignment]  (BentoML cannot build Optional[Path])
        image_base64: t.Optional[str] = None,
        question: t.Optional[str] = None,
        answer: t.Optional[str] = None,
        return_heatmap: bool = False,
        return_mask_png: bool = False,
        mask_format: str = "rle",
        threshold: t.Optional[float] = None,
        seed: t.Optional[int] = None,
        views: t.Optional[str] = None,
    ) -> dict:
        """Evidence region for a visual question (and its answer): the /segment response for the
        text "question answer", its map sharpened against a generic prompt's map of the image."""
        img, opts, results, t0 = await self._ground(locals(), True, answer=True)
        return serving.response(img, [serving.result_doc(r, opts) for r in results], results, t0)

    @bentoml.api(route="/render")
    async def render(
        self,
        image: Path = None,  # type: ignore[assignment]  (BentoML cannot build Optional[Path])
        image_base64: t.Optional[str] = None,
        expression: t.Optional[str] = None,
        threshold: t.Optional[float] = None,
        seed: t.Optional[int] = None,
        views: t.Optional[str] = None,
    ) -> PILImage.Image:
        """The overlay PNG: image with mask, box, points and heatmap drawn (first expression)."""
        img, _, results, _ = await self._ground(locals(), True)
        return overlay(img, results[0])

    @bentoml.task(route="/segment_video")
    async def segment_video(
        self,
        ctx: bentoml.Context,
        video: Path = None,  # type: ignore[assignment]
        expression: t.Optional[str] = None,
        window: int = 2,
        return_overlay: bool = False,
        threshold: t.Optional[float] = None,
        seed: t.Optional[int] = None,
    ) -> dict:
        """A long-running task: an mp4/webm (or a zip of frames) and one expression → per-frame
        COCO RLE, boxes, scores and ``present``. Submit with ``/segment_video/submit``, poll
        ``/segment_video/status`` (and ``/video_progress`` for frames done), fetch with
        ``/segment_video/get``, stop with ``/video_cancel``. Resubmitting the same job resumes it."""
        try:
            if video is None:
                raise serving.RequestError("missing field: video (an mp4/webm file or a zip of frames)")
            size = video.stat().st_size
            if size == 0:
                raise serving.RequestError("video is empty (0 bytes)")
            if size > SETTINGS.max_video_bytes:
                raise serving.RequestError(f"video is {size} bytes, over the limit of {SETTINGS.max_video_bytes}", 413)
            (expr,) = serving.parse_expressions(expression, SETTINGS)[:1]
            opts = serving.parse_options({"threshold": threshold, "seed": seed})
            if not 0 <= window <= 16:
                raise serving.RequestError(f"window must be in [0, 16], got {window}")
            options = {**{k: v for k, v in asdict(opts).items() if k in ("threshold", "seed") and v is not None},
                       "window": window, "return_overlay": bool(return_overlay)}
            task_id = getattr(ctx.request.state, "task_id", None) or "direct"
            job = serving.VideoJobs(SETTINGS.jobs_dir).create(task_id, video.read_bytes(), video.suffix or ".mp4",
                                                               expr, options)
            doc = await self.engine.to_async.video(job)
            if "error" in doc:
                raise serving.RequestError(doc["error"], doc.get("status", 400))
        except serving.RequestError as e:
            raise _http_error(e) from None
        return doc

    @bentoml.api(route="/video_progress")
    async def video_progress(self, task_id: str) -> dict:
        """Frames done / total and the state (queued, running, cancelled, done) of a video task."""
        try:
            return {"task_id": task_id, **serving.VideoJobs(SETTINGS.jobs_dir).progress(task_id)}
        except serving.RequestError as e:
            raise _http_error(e) from None

    @bentoml.api(route="/video_cancel")
    async def video_cancel(self, task_id: str) -> dict:
        """Stop a running video task after its current frame batch; finished frames are kept."""
        try:
            return serving.VideoJobs(SETTINGS.jobs_dir).cancel(task_id)
        except serving.RequestError as e:
            raise _http_error(e) from None

    @bentoml.api(route="/info")
    async def info(self) -> dict:
        """Which model, segmenter, device and dtype the engine loaded (answers once it is ready)."""
        return await self.engine.to_async.info()
