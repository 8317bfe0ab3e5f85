"""Request validation shared by REST and gRPC: texts, images, base64; then ``prepare`` turns a
request's raw fields into (image, options, texts) or raises ``RequestError``."""

from __future__ import annotations

import base64
import json

from PIL import Image

from ..images import ImageTooLarge, open_image
from ..readout.answers import answer_prompt
from ..readout.tokens import validate_expression
from .schema import ENDPOINT_OPTIONS, FILE_FIELDS, ONE_EXPRESSION, Options, RequestError, input_fields, parse_options
from .settings import Settings


def parse_expressions(expression, settings: Settings) -> list[str]:
    """One expression or a list → cleaned list; ``RequestError`` naming what is wrong."""
    if expression is None:
        raise RequestError("missing field: expression", field="expression")
    if isinstance(expression, str):
        text = expression.strip()
        # A JSON list, or one JSON string, sent as a form field (BentoML's clients JSON-encode every
        # multipart field, so a plain string arrives in quotes): decoded, so the text is as typed.
        if text.startswith("[") or (len(text) >= 2 and text[0] == text[-1] == '"'):
            try:
                expression = json.loads(text)
            except json.JSONDecodeError:
                pass
    if not isinstance(expression, (str, list, tuple)):
        raise RequestError(
            f"expression must be a string or a list of strings, got {type(expression).__name__}", field="expression"
        )
    items = [expression] if isinstance(expression, str) else list(expression)
    if not items:
        raise RequestError("expression list is empty", field="expression")
    if len(items) > settings.max_expressions:
        raise RequestError(
            f"{len(items)} expressions, over the limit of {settings.max_expressions} per request", field="expression"
        )
    out = []
    for e in items:
        if not isinstance(e, str):
            raise RequestError(f"expression must be a string, got {type(e).__name__}", field="expression")
        out.append(_checked_text(e, "expression is", settings, "expression"))
    return out


def _checked_text(text: str, what: str, settings: Settings, field: str) -> str:
    """Length limit, then ``validate_expression``; ``RequestError`` naming what is wrong."""
    if len(text) > settings.max_expression_chars:
        raise RequestError(
            f"{what} {len(text)} characters, over the limit of {settings.max_expression_chars}", field=field
        )
    try:
        return validate_expression(text)
    except ValueError as err:
        raise RequestError(str(err), field=field) from None


def parse_question(question, answer, settings: Settings) -> str:
    """A visual question (+ optional answer) → the text to ground; ``RequestError`` if bad."""
    if question is None or (isinstance(question, str) and not question.strip()):
        raise RequestError("missing field: question", field="question")
    for name, value in (("question", question), ("answer", answer)):
        if value is not None and not isinstance(value, str):
            raise RequestError(f"{name} must be a string, got {type(value).__name__}", field=name)
    return _checked_text(answer_prompt(question, answer), "question and answer are", settings, "question")


_IMAGE_MAGIC = (b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"BM", b"II*\x00", b"MM\x00*", b"RIFF", b"\x00\x00\x00\x0cjP")


def decode_image(data: bytes | None, settings: Settings, content_type: str | None = None) -> Image.Image:
    """Upload bytes → upright RGB image; 400 empty/corrupt, 413 too many pixels, 415 not an image."""
    if data is None:
        raise RequestError("missing field: image (a multipart file, or image_base64 in JSON)", field="image")
    if len(data) == 0:
        raise RequestError("image is empty (0 bytes)", field="image")
    if content_type and not (content_type.startswith("image/") or content_type == "application/octet-stream"):
        raise RequestError(f"content type {content_type} is not an image", 415, field="image")
    try:
        return open_image(data, settings.max_image_pixels)
    except ImageTooLarge as e:
        raise RequestError(str(e), 413, field="image") from None
    except ValueError as e:
        if not data.startswith(_IMAGE_MAGIC):
            raise RequestError("not an image file (unknown format)", 415, field="image") from None
        raise RequestError(str(e), field="image") from None


def decode_base64(text: str) -> bytes:
    """Base64 text (a ``data:`` URL's payload too) → bytes; ``RequestError`` when it is not base64."""
    try:
        if "," in text[:100] and text.startswith("data:"):
            text = text.split(",", 1)[1]
        return base64.b64decode(text, validate=True)
    except (ValueError, TypeError) as e:
        raise RequestError(f"image_base64 is not valid base64: {e}", field="image_base64") from None


def prepare(
    settings: Settings,
    data: bytes | None,
    expression,
    option_values: dict,
    content_type: str | None = None,
    endpoint: str = "segment",
) -> tuple[Image.Image, Options, list[str]]:
    """Validate a request (options, expressions, then image) → (RGB image, options, expressions)."""
    opts = parse_options(option_values, endpoint)
    exprs = parse_expressions(expression, settings)
    return decode_image(data, settings, content_type), opts, exprs


def prepare_question(
    settings: Settings, data: bytes | None, question, answer, option_values: dict
) -> tuple[Image.Image, Options, list[str]]:
    """``prepare`` for a visual question (+ answer): options, the one text to ground, then image."""
    opts = parse_options(option_values, "answer_ground")
    texts = [parse_question(question, answer, settings)]
    return decode_image(data, settings), opts, texts


def _is_file(value) -> bool:
    return hasattr(value, "filename") and hasattr(value, "file")


def _option_value(value):
    """A multipart text value as the JSON value it spells (``"true"`` → True, ``"0.3"`` → 0.3)."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def check_fields(endpoint: str, fields: dict[str, list], settings: Settings) -> dict:
    """A REST request's fields (name → every value sent under it; files as upload objects with
    ``filename``/``file``/``size``) → the canonical fields the endpoint gets, or ``RequestError``.

    Rules: unknown fields are a 400; ``image``/``video`` must be files (text there — a URL, a path —
    is a 400: nothing is ever fetched or opened); repeated ``expression`` fields are a list of
    expressions, any other repeated field a 400; options, texts and the video of a job are checked
    here, before the endpoint runs; the image is decoded by the endpoint.
    """
    names = input_fields(endpoint)
    options = ENDPOINT_OPTIONS.get(endpoint, ())
    unknown = sorted(set(fields) - set(names) - set(options))
    if unknown:
        raise RequestError(
            f"unknown field {unknown[0]!r}; this endpoint takes {', '.join((*names, *options))}", field=unknown[0]
        )
    for name, values in fields.items():
        if len(values) > 1 and not (name == "expression" and endpoint not in ONE_EXPRESSION):
            what = "two files" if name in FILE_FIELDS else f"{len(values)} values"
            raise RequestError(f"{name} was sent {len(values)} times ({what}); send it once", field=name)
        for v in values:
            if name in FILE_FIELDS and not _is_file(v):
                raise RequestError(
                    f"{name} must be uploaded as a multipart file part; as text (a URL or a path) "
                    "it is refused — the service never fetches or opens what a request names",
                    field=name,
                )
            if name not in FILE_FIELDS and _is_file(v):
                raise RequestError(f"{name} must be a text field, not a file", field=name)
    one = {k: v[0] for k, v in fields.items()}
    out: dict = {}
    if endpoint == "task":
        if not isinstance(one.get("task_id"), str) or not one["task_id"]:
            raise RequestError("task_id must be a non-empty string", field="task_id")
        return {"task_id": one["task_id"]}
    given = {k: _option_value(v) for k, v in one.items() if k in options}
    opts = parse_options(given, endpoint)
    out.update(opts.model_dump(mode="json", include=set(given)))
    if endpoint == "answer_ground":
        parse_question(one.get("question"), one.get("answer"), settings)
        out.update({k: one[k] for k in ("question", "answer") if k in one})
    else:
        values = fields.get("expression", [])
        expression = values if len(values) > 1 else one.get("expression")
        exprs = parse_expressions(expression, settings)
        if endpoint in ONE_EXPRESSION and len(exprs) > 1:
            raise RequestError(f"/{endpoint} takes one expression, got {len(exprs)}", field="expression")
        out["expression"] = (
            expression if not isinstance(expression, list) or endpoint not in ONE_EXPRESSION else expression[0]
        )
    if endpoint == "segment_video":
        out["video"] = _checked_video(one.get("video"), settings)
        return out
    image, b64 = one.get("image"), one.get("image_base64")
    if image is not None and b64 is not None:
        raise RequestError("send one of image (a file part) or image_base64, not both", field="image_base64")
    if image is None and b64 is None:
        raise RequestError("missing field: image (a multipart file, or image_base64 in JSON)", field="image")
    if b64 is not None:
        if not isinstance(b64, str):
            raise RequestError("image_base64 must be a string", field="image_base64")
        out["image_base64"] = b64
    else:
        out["image"] = image
    return out


def _checked_video(video, settings: Settings):
    if video is None:
        raise RequestError("missing field: video (an mp4/webm file or a zip of frames)", field="video")
    video.file.seek(0, 2)
    size = video.file.tell()
    if size == 0:
        raise RequestError("video is empty (0 bytes)", field="video")
    if size > settings.max_video_bytes:
        raise RequestError(f"video is {size} bytes, over the limit of {settings.max_video_bytes}", 413, field="video")
    from ..pipeline.frames import check_video

    try:
        check_video(video.file)
    except ValueError as e:
        raise RequestError(str(e), field="video") from None
    video.file.seek(0)
    return video
