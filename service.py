"""BentoML service: thin IO over ``grounding.serving`` (the only package it imports).

Two services, the BentoYolo pattern: ``Grounding`` (public REST API: parses and validates
requests, answers 4xx without touching the model) calls ``GroundingEngine`` (owns the model; its
batchable API merges jobs from concurrent requests into one transformer forward). The gRPC server
runs inside the engine's worker over the same loaded model. Settings: ``grounding/serving/settings.py``.
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

from grounding.serving import documents, jobs, requests, schema
from grounding.serving.engine import Engine, jobs_for, raise_first_error
from grounding.serving.settings import load_settings

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
        self.engine = Engine.from_settings(SETTINGS)
        self.grpc_server = None
        grpc_port = 0
        if SETTINGS.grpc_port:
            from grounding.serving.grpc_server import start_grpc_server

            self.grpc_server, grpc_port = start_grpc_server(self.engine, SETTINGS.grpc_port)
        logger.info("grounding engine ready: %s; gRPC %s", self.engine.info(),
                    f"on port {grpc_port}" if grpc_port else "off")

    @bentoml.api(**_BATCHING)
    def run(self, jobs: list[t.Any]) -> list[t.Any]:
        """Job dicts (``grounding.serving.engine.Job`` fields) → result dicts (``GroundingResult`` fields or an error)."""
        return self.engine.run_payload(jobs)

    @bentoml.api
    def info(self) -> dict:
        return self.engine.info()

    @bentoml.api
    def video(self, job: dict) -> dict:
        """Run (or resume) a video job prepared by ``Grounding.segment_video``."""
        try:
            return jobs.VideoJobs(SETTINGS.jobs_dir).run(self.engine, job)
        except (ValueError, FileNotFoundError) as e:
            return {"error": str(e), "status": getattr(e, "status", 400)}

    @bentoml.on_shutdown
    def stop_grpc(self) -> None:
        if self.grpc_server is not None:
            self.grpc_server.stop(grace=2)


def _http_error(e: schema.RequestError) -> BentoMLException:
    return BentoMLException(str(e), error_code=HTTPStatus(e.status))


UI = StaticFiles(directory=Path(schema.__file__).parent / "ui", html=True)


@bentoml.asgi_app(UI, path="/ui")
@bentoml.service(name="grounding", traffic={"timeout": 600, "max_concurrency": 256})
class Grounding:
    """Public REST API: POST /segment, /ground, /render, /info; BentoML's /healthz, /readyz;
    the browser page at GET /ui/."""

    engine = bentoml.depends(GroundingEngine)

    async def _ground(self, endpoint: str, fields: dict):
        """An endpoint's request fields (``schema.request_model(endpoint)``) → (image, options, results, t0).
        ``/ground`` skips the segmenter; ``/answer_ground`` grounds a question (+ answer)."""
        inputs, options = schema.split_request(endpoint, fields)
        use_segmenter, answer = endpoint != "ground", endpoint == "answer_ground"
        t0 = time.perf_counter()
        try:
            image, image_base64 = inputs.get("image"), inputs.get("image_base64")
            data = image.read_bytes() if image is not None else (
                requests.decode_base64(image_base64) if image_base64 else None)
            if answer:
                img, opts, exprs = requests.prepare_question(SETTINGS, data, inputs.get("question"),
                                                             inputs.get("answer"), options)
            else:
                img, opts, exprs = requests.prepare(SETTINGS, data, inputs.get("expression"), options, endpoint=endpoint)
            job_dicts = [asdict(j) for j in jobs_for(img, exprs, opts, use_segmenter, answer)]
            results = raise_first_error(await self._run(job_dicts))
        except schema.RequestError as e:
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

    @bentoml.api(route="/segment", input_spec=schema.request_model("segment"))
    async def segment(self, **fields: t.Any) -> dict:
        """Mask (COCO RLE / polygons / PNG), box, score, points and ``present`` per expression."""
        img, opts, results, t0 = await self._ground("segment", fields)
        return documents.response(img, [documents.result_doc(r, opts) for r in results], results, t0)

    @bentoml.api(route="/ground", input_spec=schema.request_model("ground"))
    async def ground(self, **fields: t.Any) -> dict:
        """Heatmap only: a base64 8-bit PNG or a float array at the image's size, and its peak."""
        img, opts, results, t0 = await self._ground("ground", fields)
        return documents.response(img, [documents.heatmap_doc(r, opts) for r in results], results, t0)

    @bentoml.api(route="/answer_ground", input_spec=schema.request_model("answer_ground"))
    async def answer_ground(self, **fields: t.Any) -> dict:
        """Evidence region for a visual question (and its answer): the /segment response for the
        text "question answer", its map sharpened against a generic prompt's map of the image."""
        img, opts, results, t0 = await self._ground("answer_ground", fields)
        return documents.response(img, [documents.result_doc(r, opts) for r in results], results, t0)

    @bentoml.api(route="/render", input_spec=schema.request_model("render"))
    async def render(self, **fields: t.Any) -> PILImage.Image:
        """The overlay PNG: image with mask, box, points and heatmap drawn (first expression)."""
        img, _, results, _ = await self._ground("render", fields)
        return documents.overlay(img, results[0])

    @bentoml.task(route="/segment_video", input_spec=schema.request_model("segment_video"))
    async def segment_video(self, ctx: bentoml.Context, **fields: t.Any) -> dict:
        """A long-running task: an mp4/webm (or a zip of frames) and one expression → per-frame
        COCO RLE, boxes, scores and ``present``. Submit with ``/segment_video/submit``, poll
        ``/segment_video/status`` (and ``/video_progress`` for frames done), fetch with
        ``/segment_video/get``, stop with ``/video_cancel``. Resubmitting the same job resumes it."""
        inputs, options = schema.split_request("segment_video", fields)
        try:
            video = inputs.get("video")
            if video is None:
                raise schema.RequestError("missing field: video (an mp4/webm file or a zip of frames)", field="video")
            size = video.stat().st_size
            if size == 0:
                raise schema.RequestError("video is empty (0 bytes)", field="video")
            if size > SETTINGS.max_video_bytes:
                raise schema.RequestError(f"video is {size} bytes, over the limit of {SETTINGS.max_video_bytes}", 413,
                                          field="video")
            (expr,) = requests.parse_expressions(inputs.get("expression"), SETTINGS)[:1]
            opts = schema.parse_options(options, "segment_video")
            task_id = getattr(ctx.request.state, "task_id", None) or "direct"
            job = jobs.VideoJobs(SETTINGS.jobs_dir).create(task_id, video.read_bytes(), video.suffix or ".mp4", expr,
                                                          opts.model_dump(include=set(options), exclude_none=True))
            doc = await self.engine.to_async.video(job)
            if "error" in doc:
                raise schema.RequestError(doc["error"], doc.get("status", 400))
        except schema.RequestError as e:
            raise _http_error(e) from None
        return doc

    @bentoml.api(route="/video_progress")
    async def video_progress(self, task_id: str) -> dict:
        """Frames done / total and the state (queued, running, cancelled, done) of a video task."""
        try:
            return {"task_id": task_id, **jobs.VideoJobs(SETTINGS.jobs_dir).progress(task_id)}
        except schema.RequestError as e:
            raise _http_error(e) from None

    @bentoml.api(route="/video_cancel")
    async def video_cancel(self, task_id: str) -> dict:
        """Stop a running video task after its current frame batch; finished frames are kept."""
        try:
            return jobs.VideoJobs(SETTINGS.jobs_dir).cancel(task_id)
        except schema.RequestError as e:
            raise _http_error(e) from None

    @bentoml.api(route="/info")
    async def info(self) -> dict:
        """Which model, segmenter, device and dtype the engine loaded (answers once it is ready)."""
        return await self.engine.to_async.info()
