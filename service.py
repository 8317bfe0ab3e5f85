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
from pathlib import Path

import bentoml
from PIL import Image as PILImage
from starlette.staticfiles import StaticFiles

from grounding.serving import documents, jobs, labelstudio, requests, schema
from grounding.serving.engine import EngineCalls, jobs_for, raise_first_error
from grounding.serving.guard import RequestGuard, error_response
from grounding.serving.lifecycle import SHUTDOWN
from grounding.serving.settings import load_settings
from grounding.serving.startup import EngineStartError, not_started, start_engine

SETTINGS = load_settings()
logger = logging.getLogger("bentoml.grounding")
_BATCHING = (
    {"batchable": True, "max_batch_size": SETTINGS.max_batch_size, "max_latency_ms": SETTINGS.max_latency_ms}
    if SETTINGS.max_batch_size > 1
    else {}
)
# A GPU per engine worker when the device is CUDA: BentoML sets CUDA_VISIBLE_DEVICES for the
# service, and worker i takes GPU (i-1) mod count of those (``Settings.worker_device``).
_GPU = {"resources": {"gpu": SETTINGS.workers}} if SETTINGS.device.startswith("cuda") else {}


@bentoml.service(name="grounding-engine", workers=SETTINGS.workers, traffic={"timeout": 600}, **_GPU)
class GroundingEngine:
    """The loaded model. ``run`` is batchable: a list of jobs in, a list of results out. A start
    that fails (model, gRPC port) is final: the worker stays up unready and says why (``startup.py``)."""

    def __init__(self) -> None:
        SHUTDOWN.install(SETTINGS.shutdown_grace_s)
        index = bentoml.server_context.worker_index or 1
        self.engine, self.grpc_server, self.failure = None, None, None
        try:
            self.engine, self.grpc_server, grpc_port = start_engine(SETTINGS, index)
        except EngineStartError as e:
            self.failure = str(e)
            logger.error("grounding engine not started (worker %d): %s", index, self.failure)
            return
        logger.info(
            "grounding engine ready (worker %d): %s; gRPC %s",
            index,
            self.engine.info(),
            f"on {SETTINGS.grpc_host}:{grpc_port}" if grpc_port else "off",
        )

    def __is_ready__(self) -> bool:
        return self.engine is not None

    def _failed(self) -> dict:
        return {"error": not_started(self.failure), "status": 503}

    @bentoml.api(**_BATCHING)
    def run(self, jobs: list[t.Any]) -> list[t.Any]:
        """Job dicts (``grounding.serving.engine.Job`` fields) → result dicts (``GroundingResult``
        fields, or an error)."""
        return self.engine.run_payload(jobs) if self.engine else [self._failed() for _ in jobs]

    @bentoml.api
    def info(self) -> dict:
        return self.engine.info() if self.engine else self._failed()

    @bentoml.api
    def status(self) -> dict:
        """Whether the model is loaded, and the one-line reason when its start failed."""
        return {"ready": self.engine is not None, "failure": self.failure}

    @bentoml.api
    def video(self, job: dict) -> dict:
        """Run (or resume) a video job prepared by ``Grounding.segment_video``."""
        if self.engine is None:
            return self._failed()
        try:
            return jobs.VideoJobs(SETTINGS.jobs_dir, SETTINGS).run(self.engine, job)
        except (ValueError, FileNotFoundError) as e:
            return {"error": str(e), "status": getattr(e, "status", 400), "field": getattr(e, "field", None)}

    @bentoml.on_shutdown
    def stop_grpc(self) -> None:
        if self.grpc_server is not None:
            self.grpc_server.stop(grace=2)


GroundingEngine.add_asgi_middleware(RequestGuard, settings=SETTINGS, public=False)
UI = StaticFiles(directory=Path(schema.__file__).parent / "ui", html=True)
# The quick-start images and their expressions (``examples/examples.json``), one click away on the page.
EXAMPLES = StaticFiles(directory=Path(__file__).parent / "examples", check_dir=False)
# Label Studio's ML-backend protocol on the same engine (register http://HOST:PORT/labelstudio there).
LABEL_STUDIO = labelstudio.LabelStudioBackend(SETTINGS)


@bentoml.asgi_app(LABEL_STUDIO, path="/labelstudio")
@bentoml.asgi_app(EXAMPLES, path="/examples")
@bentoml.asgi_app(UI, path="/ui")
@bentoml.service(name="grounding", traffic={"timeout": 600, "max_concurrency": 256})
class Grounding:
    """Public REST API: POST /segment, /ground, /answer_ground, /render, /info, the video task;
    probes /readyz, /healthz, /livez; the browser page at GET /ui/. Every request passes
    ``RequestGuard`` first (auth, body limits, no fetch, canonical bodies, one error shape)."""

    engine = bentoml.depends(GroundingEngine)

    def __init__(self) -> None:
        SHUTDOWN.install(SETTINGS.shutdown_grace_s)
        self.calls = EngineCalls(self.engine, SETTINGS)
        LABEL_STUDIO.bind(self.calls)

    async def __is_ready__(self) -> bool:
        """Ready when the engine is; a failed engine start is learnt here (``/readyz`` says it)."""
        return await self.calls.ready()

    async def _respond(self, endpoint: str, fields: dict, build: t.Callable[..., t.Any]):
        """An endpoint's request fields (``schema.request_model(endpoint)``) → ``build(image, options,
        results, t0)``, or the error response. ``/ground`` skips the segmenter; ``/answer_ground``
        grounds a question (+ answer)."""
        inputs, options = schema.split_request(endpoint, fields)
        use_segmenter, answer = endpoint != "ground", endpoint == "answer_ground"
        t0 = time.perf_counter()
        try:
            image, image_base64 = inputs.get("image"), inputs.get("image_base64")
            data = (
                image.read_bytes()
                if image is not None
                else (requests.decode_base64(image_base64) if image_base64 else None)
            )
            if answer:
                img, opts, exprs = requests.prepare_question(
                    SETTINGS, data, inputs.get("question"), inputs.get("answer"), options
                )
            else:
                img, opts, exprs = requests.prepare(
                    SETTINGS, data, inputs.get("expression"), options, endpoint=endpoint
                )
            job_dicts = [asdict(j) for j in jobs_for(img, exprs, opts, use_segmenter, answer)]
            results = raise_first_error(await self.calls.run(job_dicts))
        except schema.RequestError as e:
            return error_response(e)
        return build(img, opts, results, t0)

    @bentoml.api(route="/segment", input_spec=schema.request_model("segment"))
    async def segment(self, **fields: t.Any) -> dict:
        """Mask (COCO RLE / polygons / PNG), box, score, points and ``present`` per expression."""
        return await self._respond(
            "segment",
            fields,
            lambda img, opts, results, t0: documents.response(
                img, [documents.result_doc(r, opts) for r in results], results, t0
            ),
        )

    @bentoml.api(route="/ground", input_spec=schema.request_model("ground"))
    async def ground(self, **fields: t.Any) -> dict:
        """Heatmap only: a base64 8-bit PNG or a float array at the image's size, and its peak."""
        return await self._respond(
            "ground",
            fields,
            lambda img, opts, results, t0: documents.response(
                img, [documents.heatmap_doc(r, opts) for r in results], results, t0
            ),
        )

    @bentoml.api(route="/answer_ground", input_spec=schema.request_model("answer_ground"))
    async def answer_ground(self, **fields: t.Any) -> dict:
        """Evidence region for a visual question (and its answer): the /segment response for the
        text "question answer", its map sharpened against a generic prompt's map of the image."""
        return await self._respond(
            "answer_ground",
            fields,
            lambda img, opts, results, t0: documents.response(
                img, [documents.result_doc(r, opts) for r in results], results, t0
            ),
        )

    @bentoml.api(route="/render", input_spec=schema.request_model("render"))
    async def render(self, **fields: t.Any) -> PILImage.Image:
        """The overlay PNG: image with mask, box, points and heatmap drawn (first expression)."""
        return await self._respond("render", fields, lambda img, _o, results, _t: documents.overlay(img, results[0]))

    @bentoml.task(route="/segment_video", input_spec=schema.request_model("segment_video"))
    async def segment_video(self, ctx: bentoml.Context, **fields: t.Any) -> dict:
        """A long-running task: an mp4/webm (or a zip of frames) and one expression → per-frame
        COCO RLE, boxes, scores and ``present``. Submit with ``/segment_video/submit``, poll
        ``/segment_video/status`` (and ``/video_progress`` for frames done), fetch with
        ``/segment_video/get``, stop with ``/video_cancel``. Resubmitting the same job resumes it."""
        inputs, options = schema.split_request("segment_video", fields)
        try:  # the guard has checked the upload (a file, not empty, under the limit, readable) and the fields
            video = inputs.get("video")
            if video is None:
                raise schema.RequestError("missing field: video (an mp4/webm file or a zip of frames)", field="video")
            (expr,) = requests.parse_expressions(inputs.get("expression"), SETTINGS)[:1]
            opts = schema.parse_options(options, "segment_video")
            task_id = getattr(ctx.request.state, "task_id", None) or "direct"
            store = jobs.VideoJobs(SETTINGS.jobs_dir, SETTINGS)
            job = store.create(
                task_id, video, video.suffix or ".mp4", expr, opts.model_dump(include=set(options), exclude_none=True)
            )
            doc = await self.calls.video(job)
            if "error" in doc:
                raise schema.RequestError(doc["error"], doc.get("status", 400), doc.get("field"))
        except schema.RequestError as e:
            ctx.response.status_code = e.status
            return error_response(e)
        return doc

    @bentoml.api(route="/video_progress")
    async def video_progress(self, task_id: str) -> dict:
        """Frames done / total and the state (queued, running, done, cancelled, interrupted, or failed
        with ``error``) of a video task; 404 once retention has deleted its job."""
        try:
            return {"task_id": task_id, **jobs.VideoJobs(SETTINGS.jobs_dir, SETTINGS).progress(task_id)}
        except schema.RequestError as e:
            return error_response(e)

    @bentoml.api(route="/video_cancel")
    async def video_cancel(self, task_id: str) -> dict:
        """Stop a running video task after its current frame batch; finished frames are kept."""
        try:
            return jobs.VideoJobs(SETTINGS.jobs_dir, SETTINGS).cancel(task_id)
        except schema.RequestError as e:
            return error_response(e)

    @bentoml.api(route="/info")
    async def info(self) -> dict:
        """Which model, segmenter, device and dtype the engine loaded (answers once it is ready)."""
        try:
            return await self.calls.info()
        except schema.RequestError as e:
            return error_response(e)


Grounding.add_asgi_middleware(RequestGuard, settings=SETTINGS)
