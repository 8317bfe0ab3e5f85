"""Lifecycle of the real ``bentoml serve``: the engine killed (-9) under load, and SIGTERM with
requests in flight — bounded answers, a bounded exit, no process left behind."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time

import httpx
import psutil
import pytest

from conftest import Server
from fixtures import encode, scene, video_bytes

LATENCY_MS, MARGIN_S = 4000, 4
BUDGET_S = LATENCY_MS / 1000 + MARGIN_S  # Settings.engine_timeout()


def _load(srv: Server, stop: threading.Event, out: list, pause: float = 0.05) -> None:
    """Post /segment until ``stop``; record (status, seconds, Retry-After) or the exception."""
    body = encode(scene())
    with httpx.Client(timeout=BUDGET_S * 3) as client:
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                r = client.post(
                    srv.url + "/segment",
                    files={"image": ("a.png", body, "image/png")},
                    data={"expression": "red circle"},
                )
                out.append((r.status_code, time.monotonic() - t0, r.headers.get("retry-after"), r.text[:200]))
            except Exception as e:  # a hang (timeout) or a dropped connection: a lost request
                out.append(("lost", time.monotonic() - t0, None, repr(e)))
            time.sleep(pause)


@pytest.mark.slow  # ≈ 34 s (a second engine start under load): `make test-slow` and .ci/run run it
def test_engine_killed_under_load(tiny_flux_dir, tmp_path):
    srv = Server(
        tiny_flux_dir,
        tmp_path / "srv",
        GROUNDING_MAX_LATENCY_MS=str(LATENCY_MS),
        GROUNDING_ENGINE_MARGIN_S=str(MARGIN_S),
    )
    try:
        stop, results = threading.Event(), []
        threads = [threading.Thread(target=_load, args=(srv, stop, results)) for _ in range(3)]
        for th in threads:
            th.start()
        time.sleep(1.5)
        before = len(results)
        engine = srv.worker("grounding-engine")
        killed_at = time.monotonic()
        engine.send_signal(signal.SIGKILL)
        first_503, during = None, []  # during: fresh requests sent while readyz says 503
        while time.monotonic() - killed_at < 90:
            t0 = time.monotonic()
            try:
                code = httpx.get(srv.url + "/readyz", timeout=5).status_code
            except httpx.HTTPError:
                code = "timeout"
            assert time.monotonic() - t0 < 3.0, "readyz took over 3 s (it must answer, not hang)"
            if code == 503 and first_503 is None:
                first_503 = time.monotonic() - killed_at
            if code == 503 and len(during) < 3:
                t1 = time.monotonic()
                r = httpx.post(
                    srv.url + "/segment",
                    files={"image": ("a.png", encode(scene()), "image/png")},
                    data={"expression": "red circle"},
                    timeout=BUDGET_S * 3,
                )
                during.append((r.status_code, time.monotonic() - t1, r.headers.get("retry-after")))
            if code == 200 and first_503 is not None:
                break
            time.sleep(0.1)
        else:
            raise AssertionError(f"the engine did not come back:\n{srv.tail()}")
        assert first_503 is not None and first_503 < 2.0, first_503
        time.sleep(2.0)
        stop.set()
        for th in threads:
            th.join(timeout=BUDGET_S * 4)
        assert before > 0 and len(results) > before
        lost = [r for r in results if r[0] == "lost"]
        assert not lost, lost
        assert {r[0] for r in results} <= {200, 503}, {r[0] for r in results}
        assert all(r[2] for r in results if r[0] == 503), "503 without Retry-After"
        slowest = max(r[1] for r in results)
        assert slowest < BUDGET_S + 5, (slowest, sorted(r[1] for r in results)[-5:])
        print(
            f"kill -9: readyz 503 after {first_503:.2f} s; {len(results)} requests under load, "
            f"{sum(r[0] == 200 for r in results)} x 200, {sum(r[0] == 503 for r in results)} x 503, "
            f"slowest {slowest:.2f} s (budget {BUDGET_S:.0f} s); sent during the outage: {during}"
        )
        # a request arriving while the engine is down is answered 503 + Retry-After at once, not held
        assert during and during[0][0] == 503 and during[0][1] < 2.5 and during[0][2], during
        assert results[-1][0] == 200  # and the service answers again
        r = httpx.post(
            srv.url + "/segment",
            files={"image": ("a.png", encode(scene()), "image/png")},
            data={"expression": "red circle"},
            timeout=30,
        )
        assert r.status_code == 200, r.text
    finally:
        srv.stop()


def test_sigterm_with_requests_in_flight(tiny_flux_dir, tmp_path):
    grace = 3
    srv = Server(tiny_flux_dir, tmp_path / "srv", GROUNDING_SHUTDOWN_GRACE_S=str(grace))
    procs = srv.tree()
    assert len(procs) >= 3  # the manager, the API worker, the engine worker
    try:
        video = video_bytes(tmp_path, 400, "long.mp4")
        task = httpx.post(
            srv.url + "/segment_video/submit",
            files={"video": ("v.mp4", video, "video/mp4")},
            data={"expression": "the red circle"},
            timeout=60,
        ).json()["task_id"]
        deadline = time.time() + 60
        while time.time() < deadline:
            p = httpx.post(srv.url + "/video_progress", json={"task_id": task}, timeout=10).json()
            if p.get("done", 0) >= 2:
                break
            time.sleep(0.05)
        # a client that sends half a body and waits: uvicorn alone would wait for it forever
        slow = socket.create_connection(("127.0.0.1", srv.port), timeout=30)
        slow.sendall(
            b"POST /segment HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 1000\r\n\r\n{"expression": '
        )
        stop, results = threading.Event(), []
        threads = [threading.Thread(target=_load, args=(srv, stop, results, 0.0)) for _ in range(2)]
        for th in threads:
            th.start()
        time.sleep(0.5)
        t0 = time.monotonic()
        os.kill(srv.proc.pid, signal.SIGTERM)
        gone, alive = psutil.wait_procs(procs, timeout=grace + 5)
        elapsed = time.monotonic() - t0
        stop.set()
        assert not alive, f"still running {elapsed:.1f} s after SIGTERM: {[p.pid for p in alive]}\n{srv.tail()}"
        assert elapsed <= grace + 5
        print(f"SIGTERM: all {len(procs)} processes gone {elapsed:.2f} s after the signal (grace {grace} s)")
        head = slow.recv(4096).decode(errors="replace")
        slow.close()
        assert head.startswith("HTTP/1.1 503") and "shutting down" in head, head
        for th in threads:
            th.join(timeout=10)
        assert {r[0] for r in results} <= {200, 503, "lost"}  # after the port closes a client gets refused
        assert any(r[0] == 200 for r in results)
        job = [d for d in srv.jobs_dir.iterdir() if d.name != "tasks"]
        (progress,) = [json.loads((d / "progress.json").read_text()) for d in job]
        assert progress["state"] == "interrupted" and 2 <= progress["done"] < 400, progress
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", srv.port), timeout=2).close()
        assert not [p for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    finally:
        srv.stop()
