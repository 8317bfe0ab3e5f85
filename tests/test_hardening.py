"""The hardened service, over the real ``bentoml serve``: nothing a client names is fetched or
opened, bad input of every kind is a 4xx in one error shape, the API key on REST and gRPC (over
TLS), the gRPC bind address, and video-job retention. Shutdown and engine crashes: test_lifecycle.py."""

from __future__ import annotations

import http.server
import json
import socket
import threading
import time

import grpc
import httpx
import pytest

from conftest import API_KEY as KEY
from fixtures import encode, scene, video_bytes

AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def canary():
    """A local HTTP server that records every request it gets: nothing may reach it."""
    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            body = encode(scene())
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield {"url": f"http://127.0.0.1:{httpd.server_address[1]}", "hits": hits}
    httpd.shutdown()


def _post(srv, route, headers=AUTH, **kw):
    return httpx.post(srv.url + route, headers=headers, timeout=60, **kw)


def _error(r, status: int, field=..., contains: str = ""):
    """The one error shape: exactly {"error": str, "field": str | None}."""
    assert r.status_code == status, (r.status_code, r.text)
    doc = r.json()
    assert set(doc) == {"error", "field"} and isinstance(doc["error"], str), doc
    if field is not ...:
        assert doc["field"] == field, doc
    assert contains in doc["error"], doc
    return doc


# --- no outbound fetch, ever ----------------------------------------------------------------------
def test_text_in_file_fields_is_never_fetched_or_opened(guarded, canary, tmp_path):
    url = canary["url"] + "/x.png"
    secret = tmp_path / "secret.png"
    secret.write_bytes(encode(scene()))
    for route, name, extra in [
        ("/segment", "image", {"expression": "red circle"}),
        ("/render", "image", {"expression": "red circle"}),
        ("/segment_video/submit", "video", {"expression": "red circle"}),
    ]:
        for value in (url, f'"{url}"', str(secret), "file://" + str(secret)):
            r = _post(guarded, route, data={name: value, **extra})  # a urlencoded form
            _error(r, 415)
            r = _post(guarded, route, files={name: (None, value), **{k: (None, v) for k, v in extra.items()}})
            _error(r, 400, name, "never fetches")
            r = _post(guarded, route, json={name: value, **extra})
            _error(r, 400, name, "never fetched")
    r = _post(guarded, "/segment", content=url.encode(), headers={**AUTH, "Content-Type": "application/json"})
    _error(r, 400, None, "JSON")
    r = _post(
        guarded, "/segment", content=json.dumps(url).encode(), headers={**AUTH, "Content-Type": "application/json"}
    )
    _error(r, 400, None, "must be an object")
    time.sleep(0.5)
    assert canary["hits"] == [], canary["hits"]


# --- no 5xx on bad input; one error shape ---------------------------------------------------------
def test_malformed_multipart_is_400(guarded):
    png = encode(scene())
    cases = [
        ("multipart/form-data", b'--x\r\nContent-Disposition: form-data; name="image"\r\n\r\nabc\r\n--x--\r\n'),
        (
            "multipart/form-data; boundary=right",
            b'--wrong\r\nContent-Disposition: form-data; name="expression"\r\n\r\nred\r\n--wrong--\r\n',
        ),
        (
            "multipart/form-data; boundary=b",
            b'--b\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n' + png[:100],
        ),  # truncated
        ("multipart/form-data; boundary=b", b"--b\r\nno headers at all\r\n--b--\r\n"),
        ("multipart/form-data; boundary=b", b"\x00\xff" * 500),
        ("multipart/form-data; boundary=" + "b" * 300, b"--" + b"b" * 300 + b"--\r\n"),
    ]
    for ctype, body in cases:
        r = _post(guarded, "/segment", content=body, headers={**AUTH, "Content-Type": ctype})
        _error(r, 400)
    _error(_post(guarded, "/segment", content=b"<xml/>", headers={**AUTH, "Content-Type": "text/xml"}), 415)
    _error(
        _post(guarded, "/segment", content=b"{not json", headers={**AUTH, "Content-Type": "application/json"}),
        400,
        None,
        "not valid JSON",
    )
    _error(
        _post(
            guarded,
            "/segment",
            content=b'{"expression": "a", "expression": "b"}',
            headers={**AUTH, "Content-Type": "application/json"},
        ),
        400,
        "expression",
        "twice",
    )
    _error(_post(guarded, "/segment", content=b"[" * 100000, headers={**AUTH, "Content-Type": "application/json"}), 400)


def test_long_filename_and_odd_names_are_served(guarded):
    for name in (
        "x" * 300 + ".png",
        "../../etc/passwd",
        "a/b\\c.png",
        "\u00e9\u6f22\u5b57" * 80 + ".png",
        "..",
        'a"b.png',
        "nul\x00.png",
    ):
        r = _post(
            guarded,
            "/segment",
            files={"image": (name, encode(scene()), "image/png")},
            data={"expression": "red circle"},
        )
        assert r.status_code == 200, (name, r.text)
    r = _post(
        guarded,
        "/segment_video/submit",
        files={"video": ("v" * 300 + ".mp4", _video_bytes_cached(), "video/mp4")},
        data={"expression": "red circle"},
    )
    assert r.status_code == 200, r.text


_VIDEO: list[bytes] = []


def _video_bytes_cached() -> bytes:
    if not _VIDEO:
        import tempfile
        from pathlib import Path

        with tempfile.TemporaryDirectory() as d:
            _VIDEO.append(video_bytes(Path(d), 3))
    return _VIDEO[0]


def test_repeated_fields(guarded):
    img = ("a.png", encode(scene()), "image/png")
    files = [
        ("image", img),
        ("expression", (None, "red circle")),
        ("expression", (None, "blue square")),
        ("expression", (None, "the left one")),
    ]
    r = _post(guarded, "/segment", files=files)
    assert r.status_code == 200, r.text
    assert [x["expression"] for x in r.json()["results"]] == ["red circle", "blue square", "the left one"]
    _error(
        _post(guarded, "/segment", files=[("image", img), ("image", img), ("expression", (None, "red"))]),
        400,
        "image",
        "send it once",
    )
    _error(
        _post(
            guarded,
            "/segment",
            files=[
                ("image", img),
                ("expression", (None, "red")),
                ("threshold", (None, "0.3")),
                ("threshold", (None, "0.4")),
            ],
        ),
        400,
        "threshold",
        "2 times",
    )
    _error(
        _post(guarded, "/render", files=[("image", img), ("expression", (None, "red")), ("expression", (None, "b"))]),
        400,
        "expression",
    )
    _error(
        _post(guarded, "/segment", files=[("image", img)] + [("expression", (None, f"red {i}")) for i in range(17)]),
        400,
        "expression",
        "over the limit of 16",
    )
    _error(
        _post(guarded, "/segment", files={"image": img, "expression": ("e.txt", b"red circle", "text/plain")}),
        400,
        "expression",
        "text field",
    )


def test_oversized_bodies_are_413_before_being_read(guarded):
    big = b"\x00" * (3 * 2**20)
    r = _post(guarded, "/segment", files={"image": ("a.png", big, "image/png")}, data={"expression": "red"})
    _error(r, 413, None, "over the limit")

    def chunks():
        for _ in range(40):
            yield b"x" * 2**17

    r = _post(guarded, "/segment", content=chunks(), headers={**AUTH, "Content-Type": "application/json"})
    _error(r, 413)
    # A declared length far past the limit is refused from the headers alone: the client sends no body.
    with socket.create_connection(("127.0.0.1", guarded.port), timeout=10) as s:
        s.sendall(
            f"POST /segment HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
            "Content-Type: application/json\r\nContent-Length: 200000000000\r\n\r\n".encode()
        )
        head = s.recv(65536).decode()
    assert head.startswith("HTTP/1.1 413"), head
    assert (
        _post(
            guarded,
            "/segment",
            files={"image": ("a.png", encode(scene()), "image/png")},
            data={"expression": "red circle"},
        ).status_code
        == 200
    )


def test_a_body_that_stops_coming_is_408(guarded):
    with socket.create_connection(("127.0.0.1", guarded.port), timeout=20) as s:
        s.sendall(
            f"POST /segment HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
            'Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"expr'.encode()
        )
        t0 = time.monotonic()
        head = s.recv(65536).decode()
    assert head.startswith("HTTP/1.1 408") and 1.5 < time.monotonic() - t0 < 10, head


@pytest.mark.parametrize(
    "fields,field,contains",
    [
        ({"seed": str(2**64)}, "seed", "less than or equal"),
        ({"seed": "-1"}, "seed", "greater than or equal"),
        ({"seed": "1e999"}, "seed", ""),
        ({"threshold": "nan"}, "threshold", ""),
        ({"threshold": "1e400"}, "threshold", ""),
        ({"return_heatmap": "maybe"}, "return_heatmap", ""),
        ({"mask_format": "[1, 2]"}, "mask_format", ""),
        ({"magnets": "{}"}, "magnets", ""),
        ({"thresh": "0.3"}, "thresh", "unknown field"),
    ],
)
def test_out_of_range_and_mistyped_options_are_400(guarded, fields, field, contains):
    r = _post(
        guarded,
        "/segment",
        files={"image": ("a.png", encode(scene()), "image/png")},
        data={"expression": "red circle", **fields},
    )
    _error(r, 400, field, contains)


@pytest.mark.parametrize(
    "raw,field",
    [
        (b'"seed": 18446744073709551616', "seed"),
        (b'"seed": 1.5', "seed"),
        (b'"threshold": 1e400', "threshold"),
        (b'"threshold": "0.3; DROP"', "threshold"),
        (b'"expression": 123', "expression"),
        (b'"expression": ["red", 7]', "expression"),
        (b'"expression": {"a": 1}', "expression"),
        (b'"image_base64": 5', "image_base64"),
    ],
)
def test_out_of_range_and_mistyped_json_is_400(guarded, raw, field):
    body = (
        b'{"image_base64": "aGk=", "expression": "red circle", ' + raw + b"}"
        if b'"expression"' not in raw and b'"image_base64"' not in raw
        else b'{"image_base64": "aGk=", ' + raw + b"}"
        if b'"expression"' in raw
        else b'{"expression": "red circle", ' + raw + b"}"
    )
    r = _post(guarded, "/segment", content=body, headers={**AUTH, "Content-Type": "application/json"})
    _error(r, 400, field)


def test_error_shape_everywhere(guarded):
    _error(httpx.get(guarded.url + "/no-such-route", headers=AUTH), 404)
    _error(httpx.get(guarded.url + "/segment", headers=AUTH), 405)
    _error(_post(guarded, "/video_progress", json={"task_id": 3}), 400, "task_id")
    _error(_post(guarded, "/video_progress", json={"task_id": "nope"}), 404, "task_id")
    _error(httpx.get(guarded.url + "/segment_video/status", params={"task_id": "nope"}, headers=AUTH), 404)
    _error(httpx.get(guarded.url + "/segment_video/get", headers=AUTH), 400)
    _error(_post(guarded, "/segment", json={"expression": "red circle", "image_base64": "%%%"}), 400, "image_base64")
    _error(
        _post(guarded, "/segment", files={"image": ("a.txt", b"hello", "text/plain")}, data={"expression": "red"}),
        415,
        "image",
    )
    log = guarded.tail(10**7)
    assert "Traceback" not in log, log[-3000:]
    lines = [ln for ln in log.splitlines() if "400 POST /segment" in ln]
    assert lines and all("[ERROR]" not in ln for ln in lines)


# --- API key --------------------------------------------------------------------------------------
def test_api_key_on_rest(guarded):
    img = {"image": ("a.png", encode(scene()), "image/png")}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}, {"Authorization": f"Basic {KEY}"}):
        r = _post(guarded, "/segment", headers=headers, files=img, data={"expression": "red circle"})
        _error(r, 401, "authorization", "API key")
        assert r.headers["www-authenticate"] == "Bearer"
        _error(httpx.get(guarded.url + "/metrics", headers=headers), 401)
        _error(_post(guarded, "/info", headers=headers, json={}), 401)
        _error(httpx.get(guarded.url + "/segment_video/status", params={"task_id": "x"}, headers=headers), 401)
    assert _post(guarded, "/segment", files=img, data={"expression": "red circle"}).status_code == 200
    assert httpx.get(guarded.url + "/metrics", headers=AUTH).status_code == 200
    for probe in ("/readyz", "/healthz", "/livez"):
        assert httpx.get(guarded.url + probe).status_code == 200, probe
    page = httpx.get(guarded.url + "/ui/")
    assert page.status_code == 200 and 'id="api-key"' in page.text
    assert httpx.get(guarded.url + "/ui/app.js").status_code == 200


def test_label_studio_backend_takes_the_key_as_basic_auth(guarded):
    """Label Studio authenticates to an ML backend with basic auth only: under /labelstudio/ the key
    is accepted as the password (any user); anywhere else basic auth stays a 401."""
    import base64

    def basic(password: str) -> dict:
        return {"Authorization": "Basic " + base64.b64encode(f"labelstudio:{password}".encode()).decode()}

    assert httpx.get(guarded.url + "/labelstudio/health", headers=basic(KEY)).json()["status"] == "UP"
    assert httpx.get(guarded.url + "/labelstudio/health", headers=AUTH).status_code == 200
    for headers in ({}, basic("wrong"), {"Authorization": "Basic %%%"}):
        _error(httpx.get(guarded.url + "/labelstudio/health", headers=headers), 401)
    _error(_post(guarded, "/info", headers=basic(KEY), json={}), 401)


def test_api_key_off_by_default(server):
    assert httpx.get(server["url"] + "/metrics").status_code == 200
    r = httpx.post(server["url"] + "/info", json={}, timeout=30)
    assert r.status_code == 200, r.text


def test_api_key_and_tls_on_grpc(guarded, tls):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from grounding.serving.proto import grounding_pb2 as pb
    from grounding.serving.proto import grounding_pb2_grpc as pb_grpc

    creds = grpc.ssl_channel_credentials(root_certificates=tls["cert"].read_bytes())
    request = pb.SegmentRequest(image=encode(scene()), expressions=["red circle"])
    with grpc.secure_channel(guarded.grpc, creds) as ch:
        stub = pb_grpc.GroundingStub(ch)
        for metadata in ((), (("authorization", "Bearer wrong"),), (("authorization", KEY),)):
            with pytest.raises(grpc.RpcError) as err:
                stub.Segment(request, metadata=metadata, timeout=30)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, err.value
        r = stub.Segment(request, metadata=(("authorization", f"Bearer {KEY}"),), timeout=60)
        assert len(r.results) == 1
        health = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING  # the health service stays open
    with grpc.insecure_channel(guarded.grpc) as ch:  # plaintext to a TLS port fails
        with pytest.raises(grpc.RpcError) as err:
            pb_grpc.GroundingStub(ch).Segment(request, metadata=(("authorization", f"Bearer {KEY}"),), timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_grpc_binds_the_rest_host(server):
    """HOST=127.0.0.1 (the fixture's, as under ``make serve``): gRPC listens on loopback only."""
    import psutil

    engine = server["handle"].worker("grounding-engine")
    port = int(server["grpc"].rsplit(":", 1)[1])
    listening = [
        c.laddr
        for c in psutil.Process(engine.pid).net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN and c.laddr.port == port
    ]
    assert listening and all(a.ip in ("127.0.0.1", "::ffff:127.0.0.1") for a in listening), listening
    others = {
        a.address
        for addrs in psutil.net_if_addrs().values()
        for a in addrs
        if a.family == socket.AF_INET and not a.address.startswith("127.")
    }
    for ip in others:
        with pytest.raises(OSError):
            socket.create_connection((ip, port), timeout=2).close()


# --- video jobs: retention ------------------------------------------------------------------------
def test_video_jobs_retention(guarded, tmp_path):
    """The cap is ~1 byte: every submit deletes the finished jobs, never a running one."""

    def submit(data, expression):
        r = _post(
            guarded,
            "/segment_video/submit",
            files={"video": ("v.mp4", data, "video/mp4")},
            data={"expression": expression},
        )
        assert r.status_code == 200, r.text
        return r.json()["task_id"]

    def progress(task):
        return _post(guarded, "/video_progress", json={"task_id": task})

    first = submit(video_bytes(tmp_path, 3), "the red circle")
    assert _wait_auth(guarded, first) == "completed"
    assert progress(first).json()["state"] == "done"
    long_task = submit(video_bytes(tmp_path, 150, "long.mp4"), "the blue square")  # deletes `first`
    _error(progress(first), 404, "task_id", "retention")
    deadline = time.time() + 60
    while progress(long_task).json().get("done", 0) < 2 and time.time() < deadline:
        time.sleep(0.05)
    short = submit(video_bytes(tmp_path, 2, "short.mp4"), "the red circle")  # `long_task` is running: kept
    assert progress(long_task).status_code == 200 and progress(long_task).json()["state"] in ("running", "done")
    assert _wait_auth(guarded, long_task, 180) == "completed"
    assert _wait_auth(guarded, short) == "completed"
    doc = httpx.get(guarded.url + "/segment_video/get", params={"task_id": long_task}, headers=AUTH).json()
    assert len(doc["frames"]) == 150
    kept = [d for d in guarded.jobs_dir.iterdir() if d.name != "tasks"]
    done = [d for d in kept if json.loads((d / "progress.json").read_text())["state"] == "done"]
    assert done and all(not list(d.glob("input.*")) for d in done)  # a finished job drops its input video


def _wait_auth(srv, task_id: str, timeout: float = 120) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = httpx.get(srv.url + "/segment_video/status", params={"task_id": task_id}, headers=AUTH).json()[
            "status"
        ]
        if status != "in_progress":
            return status
        time.sleep(0.2)
    raise AssertionError("task did not finish")
