"""A Label Studio ML backend on the service's engine: pre-labels from referring expressions.

Label Studio calls an ML backend at a URL its user registers — here ``http://HOST:PORT/labelstudio``
— with ``GET /health``, ``POST /setup`` (``{project, schema, hostname, access_token}`` →
``{model_version}``), ``POST /predict`` (``{tasks, project, label_config, params}`` →
``{"results": [{"result": [...], "score", "model_version"}]}``, one per task, in order) and
``POST /webhook`` (annotation events; acknowledged, nothing kept). The routes run in the REST
service's workers and call the same engine (no second model in memory).

What is grounded, per task (nothing is remembered between requests, so no task inherits another's
prompt — label-studio-ml-backend #777): the text an annotator typed into the config's
``TextArea`` when Label Studio sends it (interactive pre-annotation, ``params.context``), labelled
with the config's first label; otherwise each label's own name ("red circle", "dog on the left")
is an expression and its instances get that label. Every instance becomes a ``BrushLabels``
region (Label Studio's brush RLE, ``brush.encode``) and/or a ``RectangleLabels`` region, as the
config has them; ``present: false`` gives no region, and the task's score is the best presence
score of its expressions either way.

Images: a task's image is a path or URL on the Label Studio server. The backend fetches only from
the server the operator configured (``GROUNDING_LABEL_STUDIO_URL``), with its API token
(``GROUNDING_LABEL_STUDIO_TOKEN``, else the ``access_token`` Label Studio sent to ``/setup``): a
URL on any other host is refused for that task, so no request can make the service fetch a URL of
its choosing. ``data:`` URIs are decoded in place.
"""

from __future__ import annotations

import base64
import json
import logging
import typing as t
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from urllib.parse import urljoin, urlsplit

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from . import brush
from .engine import jobs_for, raise_first_error
from .requests import decode_image
from .schema import RequestError, error_body, parse_options
from .settings import Settings

logger = logging.getLogger("bentoml.grounding.labelstudio")
MAX_BODY = 8 * 2**20  # a predict request is JSON about tasks, not images


@dataclass(frozen=True)
class LabelConfig:
    """What a Label Studio labelling config asks of a backend: the image tag and its data key, the
    brush and rectangle tags (name and labels) that take our regions, and the text area, if any."""

    image: str  # the Image tag's name (regions' ``to_name``)
    data_key: str  # task["data"][data_key] holds the image
    brush: tuple[str, list[str]] | None = None
    rectangle: tuple[str, list[str]] | None = None
    text: str | None = None  # a TextArea's name: the expression typed in, when sent
    labels: list[str] = field(default_factory=list)  # brush labels first, then rectangle labels


def parse_config(xml: str) -> LabelConfig:
    """A labelling config (XML) → ``LabelConfig``; ``RequestError`` when it has no Image tag or
    neither a BrushLabels nor a RectangleLabels tag on it."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as e:
        raise RequestError(f"label_config is not XML: {e}", field="label_config") from None
    image = next((el for el in root.iter() if el.tag == "Image"), None)
    if image is None or not image.get("name") or not (image.get("value") or "").startswith("$"):
        raise RequestError('label_config has no <Image name=... value="$key"/> tag', field="label_config")

    def tag(kind: str) -> tuple[str, list[str]] | None:
        el = next((e for e in root.iter() if e.tag == kind and e.get("toName") == image.get("name")), None)
        if el is None:
            return None
        return el.get("name", ""), [lab.get("value", "") for lab in el.iter("Label") if lab.get("value")]

    b, r = tag("BrushLabels"), tag("RectangleLabels")
    if b is None and r is None:
        raise RequestError(
            "label_config has no BrushLabels or RectangleLabels tag on the image: nothing to pre-label",
            field="label_config",
        )
    text = next((e.get("name") for e in root.iter() if e.tag == "TextArea"), None)
    labels = list(dict.fromkeys((b[1] if b else []) + (r[1] if r else [])))
    return LabelConfig(image.get("name", ""), (image.get("value") or "")[1:], b, r, text, labels)


def expressions(cfg: LabelConfig, context: dict | None) -> list[tuple[str, str]]:
    """(expression, label) pairs for a task: the TextArea's text when the context holds it (each
    line an expression, labelled with the first label), else every label's name."""
    for res in (context or {}).get("result", []) or []:
        if res.get("from_name") == cfg.text and res.get("type", "").lower() == "textarea":
            lines = [ln.strip() for txt in res.get("value", {}).get("text", []) for ln in str(txt).splitlines()]
            lines = [ln for ln in lines if ln]
            if lines and cfg.labels:
                return [(ln, cfg.labels[0]) for ln in lines]
    return [(lab, lab) for lab in cfg.labels]


def regions(cfg: LabelConfig, result, label: str, width: int, height: int) -> list[dict]:
    """A ``GroundingResult``'s instances as Label Studio regions (brush and/or rectangle)."""
    out = []
    for i, inst in enumerate(result.instances if result.present else []):
        score = round(float(result.presence_score), 6)
        if cfg.brush is not None:
            out.append(
                {
                    "id": f"{label}-{i}-brush",
                    "from_name": cfg.brush[0],
                    "to_name": cfg.image,
                    "type": "brushlabels",
                    "original_width": width,
                    "original_height": height,
                    "image_rotation": 0,
                    "value": {"format": "rle", "rle": brush.encode(inst.mask), "brushlabels": [label]},
                    "score": score,
                }
            )
        if cfg.rectangle is not None:
            x0, y0, x1, y1 = inst.box
            out.append(
                {
                    "id": f"{label}-{i}-box",
                    "from_name": cfg.rectangle[0],
                    "to_name": cfg.image,
                    "type": "rectanglelabels",
                    "original_width": width,
                    "original_height": height,
                    "image_rotation": 0,
                    "value": {
                        "x": 100.0 * x0 / width,
                        "y": 100.0 * y0 / height,
                        "width": 100.0 * (x1 - x0) / width,
                        "height": 100.0 * (y1 - y0) / height,
                        "rotation": 0,
                        "rectanglelabels": [label],
                    },
                    "score": score,
                }
            )
    return out


class LabelStudioBackend:
    """The ML-backend routes as a Starlette app; ``bind`` gives it the REST worker's engine calls."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.calls: t.Any = None
        self.setup_token = ""  # the access_token of the last /setup, used only with the configured server
        self.app = Starlette(
            routes=[
                Route("/health", self.health, methods=["GET"]),
                Route("/", self.health, methods=["GET"]),
                Route("/setup", self.setup, methods=["POST"]),
                Route("/predict", self.predict, methods=["POST"]),
                Route("/webhook", self.webhook, methods=["POST"]),
            ]
        )

    def bind(self, calls: t.Any) -> None:
        self.calls = calls

    async def __call__(self, scope, receive, send) -> None:
        await self.app(scope, receive, send)

    async def _json(self, request: Request) -> dict:
        body = await request.body()
        if len(body) > MAX_BODY:
            raise RequestError(f"request body is over the limit of {MAX_BODY} bytes", 413)
        try:
            data = json.loads(body or b"{}")
        except ValueError:
            raise RequestError("body is not JSON", 400) from None
        if not isinstance(data, dict):
            raise RequestError("body must be a JSON object", 400)
        return data

    async def model_version(self) -> str:
        info = await self.calls.info()
        return f"dit-grounding:{info.get('model', '?')}"

    async def health(self, request: Request) -> JSONResponse:
        return JSONResponse({"status": "UP", "model_class": "DiTGrounding"})

    async def setup(self, request: Request) -> JSONResponse:
        try:
            data = await self._json(request)
            self.setup_token = str(data.get("access_token") or "")
            return JSONResponse({"model_version": await self.model_version()})
        except RequestError as e:
            return JSONResponse(error_body(str(e), e.field), status_code=e.status)

    async def webhook(self, request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def predict(self, request: Request) -> JSONResponse:
        try:
            data = await self._json(request)
            tasks = data.get("tasks")
            if not isinstance(tasks, list):
                raise RequestError("tasks must be a list", field="tasks")
            cfg = parse_config(str(data.get("label_config") or ""))
            params = data.get("params")
            params = params if isinstance(params, dict) else {}
            version = await self.model_version()
        except RequestError as e:
            return JSONResponse(error_body(str(e), e.field), status_code=e.status)
        results = []
        for task in tasks:
            try:
                found, score = await self.task_regions(task, cfg, params.get("context"))
            except RequestError as e:  # one bad task: no regions, the reason in the log, the others go on
                logger.warning("Label Studio task %s: %s", task.get("id") if isinstance(task, dict) else "?", e)
                found, score = [], 0.0
            results.append({"result": found, "score": score, "model_version": version})
        return JSONResponse({"results": results})

    async def task_regions(self, task: t.Any, cfg: LabelConfig, context: dict | None) -> tuple[list[dict], float]:
        if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
            raise RequestError("a task must be an object with data", field="tasks")
        image = decode_image(await self.fetch(task["data"].get(cfg.data_key)), self.settings)
        pairs = expressions(cfg, context)
        if not pairs:
            return [], 0.0
        opts = parse_options({"instances": "all"}, "segment")
        jobs = [asdict(j) for j in jobs_for(image, [e for e, _ in pairs], opts, True)]
        found: list[dict] = []
        best = 0.0
        for (_, label), r in zip(pairs, raise_first_error(await self.calls.run(jobs))):
            found += regions(cfg, r, label, image.width, image.height)
            best = max(best, float(r.presence_score))
        return found, round(best, 6)

    async def fetch(self, ref: t.Any) -> bytes:
        """A task's image: a ``data:`` URI, or a path / URL on the configured Label Studio server."""
        if not isinstance(ref, str) or not ref:
            raise RequestError("the task has no image reference", field="tasks")
        if ref.startswith("data:"):
            head, _, payload = ref.partition(",")
            if ";base64" not in head:
                raise RequestError("a data: URI image must be base64", field="tasks")
            return base64.b64decode(payload, validate=False)
        base = self.settings.label_studio_url.rstrip("/")
        if not base:
            raise RequestError(
                "the task's image is on a Label Studio server, and GROUNDING_LABEL_STUDIO_URL is not set", field="tasks"
            )
        url = urljoin(base + "/", ref)
        if urlsplit(url)[:2] != urlsplit(base)[:2]:
            raise RequestError(f"the task's image is not on {base}: refused (only that server is read)", field="tasks")
        import httpx

        token = self.settings.label_studio_token or self.setup_token
        headers = {"Authorization": f"Token {token}"} if token else {}
        async with httpx.AsyncClient(timeout=30, follow_redirects=False) as client:
            resp = await client.get(url, headers=headers)
        if resp.status_code != 200:
            raise RequestError(f"Label Studio answered {resp.status_code} for the task's image", field="tasks")
        return resp.content
