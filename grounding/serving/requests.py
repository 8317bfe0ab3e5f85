"""Request validation shared by REST and gRPC: texts, images, base64; then ``prepare`` turns a
request's raw fields into (image, options, texts) or raises ``RequestError``."""

from __future__ import annotations

import base64
import json

from PIL import Image

from ..images import ImageTooLarge, open_image
from ..readout.answers import answer_prompt
from ..readout.tokens import validate_expression
from .schema import Options, RequestError, parse_options
from .settings import Settings

def parse_expressions(expression, settings: Settings) -> list[str]:
    """One expression or a list → cleaned list; ``RequestError`` naming what is wrong."""
    if expression is None:
        raise RequestError("missing field: expression", field="expression")
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


def prepare(settings: Settings, data: bytes | None, expression, option_values: dict,
            content_type: str | None = None, endpoint: str = "segment") -> tuple[Image.Image, Options, list[str]]:
    """Validate a request (options, expressions, then image) → (RGB image, options, expressions)."""
    opts = parse_options(option_values, endpoint)
    exprs = parse_expressions(expression, settings)
    return decode_image(data, settings, content_type), opts, exprs


def prepare_question(settings: Settings, data: bytes | None, question, answer,
                     option_values: dict) -> tuple[Image.Image, Options, list[str]]:
    """``prepare`` for a visual question (+ answer): options, the one text to ground, then image."""
    opts = parse_options(option_values, "answer_ground")
    texts = [parse_question(question, answer, settings)]
    return decode_image(data, settings), opts, texts
