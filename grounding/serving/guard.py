"""``RequestGuard``: the ASGI middleware in front of every route of the REST service.

Why a middleware rather than a custom BentoML input type: the hazards live in BentoML's own
request parsing, before any input type sees a value — its multipart serde downloads a URL sent as
a text part (``ensure_file``), its JSON serde downloads a body that is a URL, a ``Path`` field given
a string is read from the server's disk, it writes uploads to temporary files named after the
client's filename, it keeps only one of repeated fields, and it reads bodies of any size whole. So
the guard reads the body itself (bounded), validates it against the one request schema, and hands
BentoML a canonical body it cannot misread:

- **auth**: with an API key set, every route but the probes (``/readyz``, ``/healthz``, ``/livez``)
  and the page's static files (``/ui/``, ``/examples/``) needs ``Authorization: Bearer <key>`` (401 otherwise);
  ``/metrics``, ``/docs.json`` and BentoML's index page are behind the key too;
- **size**: ``Content-Length`` over the route's limit → 413 before a byte is read; a chunked body
  is counted while read and cut at the limit (``Settings.body_limit``); a body that stops coming
  for ``Settings.body_timeout_s`` → 408;
- **no fetch, no path**: ``image`` / ``video`` must be file parts of a multipart body; as text (a
  URL, a path, anything) or as a JSON key they are a 400, so nothing a client names is fetched or
  opened;
- **shape**: malformed multipart (no boundary, wrong boundary, broken parts) → 400; repeated
  ``expression`` fields become a list of expressions (the natural ``curl -F expression=a -F
  expression=b``); any other repeated field, two images, or an unknown field → 400; every option
  and text is checked by ``requests.check_fields`` (the schema's own ranges, so ``seed=2**64`` is a
  400); filenames are replaced (``upload.<suffix>``); the video of a job is checked at submit;
- **GET /info**: answered as ``POST /info`` (BentoML's APIs take POST only; a model card is read
  with a GET);
- **errors**: every 4xx/5xx response, ours or BentoML's, leaves as ``{"error": message, "field":
  name-or-null}``, logged as one line; a 503 carries ``Retry-After``;
- **probes and shutdown**: ``/readyz`` answers within ``READY_TIMEOUT_S`` (503 when the engine does
  not answer: a dead engine's socket is held by BentoML's process manager, so a probe would hang;
  503 with the engine's one-line reason when its start failed for good, ``lifecycle.START``);
  while the process drains after SIGTERM (``lifecycle.SHUTDOWN``) new requests get 503, and
  in-flight ones still running at the deadline get 503.

The engine's internal service uses the guard with ``public=False``: only the drain/deadline part.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import logging
import re
import secrets
import tempfile
import typing as t
from http import HTTPStatus

from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.responses import JSONResponse

from .lifecycle import SHUTDOWN, START
from .requests import check_fields
from .schema import FILE_FIELDS, ROUTES, RequestError, error_body
from .settings import Settings

logger = logging.getLogger("bentoml.grounding")

OPEN_PATHS = ("/readyz", "/healthz", "/livez")
OPEN_PREFIXES = ("/ui/", "/ui", "/examples/")
BASIC_AUTH_PREFIX = "/labelstudio/"  # the Label Studio ML backend: the API key as a basic-auth password too
READY_TIMEOUT_S = 1.0
RETRY_AFTER_S = 5
_SPOOL = 8 * 2**20  # bodies past this go to a temporary file, not memory
_CHUNK = 2**20
_SAFE_SUFFIX = re.compile(r"^\.[A-Za-z0-9]{1,8}$")
_SAFE_CTYPE = re.compile(r"^[\w.+-]+/[\w.+-]+$")


def error_response(e: RequestError, headers: dict | None = None) -> JSONResponse:
    """A ``RequestError`` as the one error body, with ``Retry-After`` on 503."""
    h = dict(headers or {})
    if e.status == 503:
        h.setdefault("Retry-After", str(RETRY_AFTER_S))
    return JSONResponse(error_body(str(e), e.field), status_code=e.status, headers=h)


def _message_and_field(body: bytes, status: int) -> tuple[str, str | None]:
    """Any error body (ours, BentoML's list or validation object, Starlette's text) → (message, field)."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        text = body.decode("utf-8", "replace").strip()
        return (text or HTTPStatus(status).phrase)[:1000], None
    if isinstance(doc, list) and doc and isinstance(doc[0], dict):
        doc = doc[0]
    if isinstance(doc, dict):
        field = doc.get("field")
        detail = doc.get("detail")
        if field is None and isinstance(detail, list) and detail and isinstance(detail[0], dict):
            loc = detail[0].get("loc") or []
            field = str(loc[-1]) if loc else None
            msg = detail[0].get("msg")
            if msg:
                return f"{field}: {msg}" if field else str(msg), field
        message = doc.get("error") or (detail if isinstance(detail, str) else None) or HTTPStatus(status).phrase
        return str(message), (str(field) if field is not None else None)
    return HTTPStatus(status).phrase, None


class _Body:
    """A request body read up to a limit, spooled to disk past ``_SPOOL`` bytes."""

    def __init__(self) -> None:
        self.file = tempfile.SpooledTemporaryFile(max_size=_SPOOL)
        self.size = 0

    async def chunks(self) -> t.AsyncGenerator[bytes, None]:
        """The spooled body again, in chunks, from its start."""
        self.file.seek(0)
        while chunk := self.file.read(_CHUNK):
            yield chunk

    def read(self) -> bytes:
        """The whole spooled body, from its start."""
        self.file.seek(0)
        return self.file.read()


class RequestGuard:
    """ASGI middleware; ``public=False`` keeps only the drain part (the engine's internal service)."""

    def __init__(self, app, settings: Settings, public: bool = True):
        self.app = app
        self.settings = settings
        self.public = public
        self.key = settings.key().encode() if public else b""

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        sender = _ErrorRewriter(send, scope.get("method", "GET"), path)
        # The whole request (body read included) runs as one task, so the shutdown deadline can
        # cancel it wherever it is and answer 503; /readyz gets READY_TIMEOUT_S.
        inner = asyncio.ensure_future(self._handle(scope, receive, sender))
        SHUTDOWN.track(inner)
        try:
            await asyncio.wait_for(asyncio.shield(inner), READY_TIMEOUT_S if path == "/readyz" else None)
            return
        except asyncio.TimeoutError:
            inner.cancel()
            error = RequestError("not ready: the engine does not answer", 503)
        except asyncio.CancelledError:
            if not inner.done():  # our own task was cancelled (the client went away): stop the work
                inner.cancel()
                raise
            error = RequestError("server shutting down", 503)  # cancelled at the shutdown deadline
        except Exception:  # a bug: answered 500 (logged with its traceback), never a hang
            logger.exception("unhandled error on %s %s", scope.get("method"), path)
            error = RequestError("internal error (logged on the server)", 500)
        if not sender.started:
            await error_response(error)(scope, receive, sender)

    async def _handle(self, scope, receive, sender: "_ErrorRewriter") -> None:
        path, method = scope.get("path", ""), scope.get("method", "GET")
        try:
            if self.public and self.key and not (path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)):
                self._authorize(scope)
            if SHUTDOWN.draining:
                raise RequestError("server shutting down", 503)
            if path == "/readyz" and START.failure is not None:  # final (startup.py): answered here
                raise RequestError(START.failure, 503)
            if self.public and method == "POST" and path in ROUTES:
                scope, receive = await self._checked(scope, receive, ROUTES[path])
            elif self.public and method in ("GET", "HEAD") and path == "/info":  # BentoML APIs are POST only
                scope, receive = _replay({**scope, "method": "POST"}, receive, b"{}", "application/json")
        except RequestError as e:
            headers = {"WWW-Authenticate": "Bearer"} if e.status == 401 else None
            return await error_response(e, headers)(scope, receive, sender)
        await self.app(scope, receive, sender)

    def _authorize(self, scope) -> None:
        auth = Headers(scope=scope).get("authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() == "basic" and scope.get("path", "").startswith(BASIC_AUTH_PREFIX):
            # Label Studio authenticates to an ML backend with basic auth only: the key is the password
            try:
                token = base64.b64decode(token.strip(), validate=True).decode().partition(":")[2]
            except ValueError:
                token = ""
            scheme = "bearer"
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.key):
            raise RequestError(
                "missing or wrong API key: send 'Authorization: Bearer <key>'", 401, field="authorization"
            )

    async def _read(self, scope, receive, limit: int) -> _Body:
        length = Headers(scope=scope).get("content-length")
        if length is not None:
            if not length.isdigit():
                raise RequestError("bad Content-Length header", 400)
            if int(length) > limit:
                raise RequestError(f"request body is {int(length)} bytes, over the limit of {limit}", 413)
        body = _Body()
        while True:
            try:
                message = await asyncio.wait_for(receive(), self.settings.body_timeout_s)
            except asyncio.TimeoutError:
                raise RequestError(f"no request body data for {self.settings.body_timeout_s} s", 408) from None
            if message["type"] == "http.disconnect":
                raise RequestError("client disconnected", 400)
            chunk = message.get("body", b"")
            body.size += len(chunk)
            if body.size > limit:
                raise RequestError(f"request body is over the limit of {limit} bytes", 413)
            body.file.write(chunk)
            if not message.get("more_body", False):
                return body

    async def _checked(self, scope, receive, endpoint: str):
        """Read, parse and check a request → (scope, receive) replaying a canonical body."""
        headers = Headers(scope=scope)
        ctype = headers.get("content-type", "application/json")
        media = ctype.split(";")[0].strip().lower()
        video = endpoint == "segment_video"
        body = await self._read(scope, receive, self.settings.body_limit(video))
        if media == "multipart/form-data":
            fields = await self._multipart(headers, body)
        elif media == "application/x-www-form-urlencoded":
            raise RequestError("send multipart/form-data (with the image as a file part) or application/json", 415)
        elif media in ("application/json", "") or media.endswith("+json"):
            fields = self._json(body.read())
        else:
            raise RequestError(
                f"content type {media} is not accepted: send multipart/form-data or application/json", 415
            )
        canonical = check_fields(endpoint, fields, self.settings)
        return _replay(scope, receive, *_encode(canonical, multipart=media == "multipart/form-data"))

    async def _multipart(self, headers: Headers, body: _Body) -> dict[str, list]:
        try:
            form = await MultiPartParser(
                headers, body.chunks(), max_files=4, max_fields=64, max_part_size=2**20
            ).parse()
        except MultiPartException as e:
            raise RequestError(f"malformed multipart body: {e}") from None
        except Exception as e:  # the parser's own errors on garbage
            raise RequestError(f"malformed multipart body: {type(e).__name__}") from None
        fields: dict[str, list] = {}
        for name, value in form.multi_items():
            fields.setdefault(name, []).append(value)
        return fields

    @staticmethod
    def _json(raw: bytes) -> dict[str, list]:
        def pairs(items: list[tuple[str, t.Any]]) -> dict[str, t.Any]:
            """A JSON object's pairs as a dict, refusing a key that appears twice."""
            seen: dict[str, t.Any] = {}
            for k, v in items:
                if k in seen:
                    raise RequestError(f"field {k!r} appears twice in the JSON object", field=k)
                seen[k] = v
            return seen

        if not raw.strip():
            return {}
        try:
            doc = json.loads(raw, object_pairs_hook=pairs)
        except RequestError:
            raise
        except (ValueError, UnicodeDecodeError, RecursionError) as e:
            raise RequestError(f"body is not valid JSON: {e}") from None
        if not isinstance(doc, dict):
            raise RequestError(f"JSON body must be an object, got {type(doc).__name__}")
        for name in FILE_FIELDS:
            if name in doc:
                raise RequestError(
                    f"{name} cannot be sent in JSON: upload it as a multipart file part"
                    + (" (or send image_base64)" if name == "image" else "")
                    + "; a URL or path is never fetched",
                    field=name,
                )
        return {k: [v] for k, v in doc.items()}


def _encode(fields: dict[str, t.Any], multipart: bool) -> tuple[bytes | _Body, str]:
    """Canonical fields (files as ``UploadFile``, the rest JSON values) → (body, content type)."""
    if not multipart:
        return json.dumps(fields).encode(), "application/json"
    boundary = secrets.token_hex(16)
    out = _Body()
    for name, value in fields.items():
        out.file.write(f"--{boundary}\r\n".encode())
        if isinstance(value, UploadFile):
            suffix = _suffix(value.filename)
            ctype = (
                value.content_type
                if value.content_type and _SAFE_CTYPE.match(value.content_type)
                else "application/octet-stream"
            )
            out.file.write(
                f'Content-Disposition: form-data; name="{name}"; filename="upload{suffix}"\r\n'
                f"Content-Type: {ctype}\r\n\r\n".encode()
            )
            value.file.seek(0)
            while chunk := value.file.read(_CHUNK):
                out.file.write(chunk)
        else:
            out.file.write(f'Content-Disposition: form-data; name="{name}"\r\n\r\n'.encode())
            out.file.write(json.dumps(value).encode())
        out.file.write(b"\r\n")
    out.file.write(f"--{boundary}--\r\n".encode())
    out.size = out.file.tell()
    return out, f"multipart/form-data; boundary={boundary}"


def _suffix(filename: str | None) -> str:
    import posixpath

    suffix = posixpath.splitext((filename or "").replace("\\", "/"))[1]
    return suffix.lower() if _SAFE_SUFFIX.match(suffix) else ""


def _replay(scope, receive, body: bytes | _Body, ctype: str):
    size = len(body) if isinstance(body, bytes) else body.size
    headers = [
        (k, v) for k, v in scope["headers"] if k not in (b"content-length", b"content-type", b"transfer-encoding")
    ]
    headers += [(b"content-length", str(size).encode()), (b"content-type", ctype.encode())]
    new_scope = {**scope, "headers": headers}
    if isinstance(body, _Body):
        body.file.seek(0)
    done = False

    async def replay():
        """The ASGI ``receive`` the application sees: the checked body once, then the client's own messages."""
        nonlocal done
        if done:  # the body is consumed: what comes next is the client's (a disconnect)
            return await receive()
        if isinstance(body, bytes):
            chunk, more = body, False
        else:
            chunk = body.file.read(_CHUNK)
            more = body.file.tell() < size
        done = not more
        return {"type": "http.request", "body": chunk, "more_body": more}

    return new_scope, replay


class _ErrorRewriter:
    """``send`` wrapper: error responses leave in the one shape (+ Retry-After on 503), logged once."""

    def __init__(self, send, method: str, path: str):
        self.send, self.method, self.path = send, method, path
        self.started = False
        self._start: dict | None = None
        self._body = bytearray()

    async def __call__(self, message):
        if message["type"] == "http.response.start":
            self.started = True
            if message["status"] >= 400:
                self._start = message
                return
        elif message["type"] == "http.response.body" and self._start is not None:
            self._body += message.get("body", b"")
            if message.get("more_body", False):
                return
            return await self._flush()
        await self.send(message)

    async def _flush(self):
        status = self._start["status"]
        text, field = _message_and_field(bytes(self._body), status)
        if self.path == "/readyz" and START.failure is not None:  # learnt during this probe
            text = START.failure
        body = json.dumps(error_body(text, field)).encode()
        headers = [
            (k, v) for k, v in self._start.get("headers", []) if k.lower() not in (b"content-length", b"content-type")
        ]
        headers += [(b"content-length", str(len(body)).encode()), (b"content-type", b"application/json")]
        if status == 503 and not any(k.lower() == b"retry-after" for k, _ in headers):
            headers.append((b"retry-after", str(RETRY_AFTER_S).encode()))
        log = logger.error if status >= 500 and status != 503 else (logger.warning if status == 503 else logger.info)
        if status == 503 and self.path in OPEN_PATHS:  # probes are polled: their 503s would flood the log
            log = logger.debug
        log("%d %s %s%s: %s", status, self.method, self.path, f" [{field}]" if field else "", text[:300])
        await self.send({**self._start, "headers": headers})
        await self.send({"type": "http.response.body", "body": body})
