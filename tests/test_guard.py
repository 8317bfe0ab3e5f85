"""The request guard's pure parts, without a server: field checks, settings, retention, worker devices."""

from __future__ import annotations

import io
import itertools
import json
import os
import time

import pytest
from starlette.datastructures import Headers, UploadFile

from grounding.serving.engine import worker_device
from grounding.serving.guard import _message_and_field
from grounding.serving.jobs import VideoJobs
from grounding.serving.requests import check_fields
from grounding.serving.schema import ENDPOINT_OPTIONS, ROUTES, RequestError, input_fields
from grounding.serving.settings import Settings, load_settings

ODD_VALUES = [
    None,
    0,
    -1,
    2**64,
    1.5,
    float("inf"),
    True,
    "",
    " ",
    "x" * 5000,
    "[",
    "[1, 2]",
    "{}",
    [],
    [None],
    [1],
    ["a", 2],
    {"a": 1},
    [[["deep"]]],
    "\x00",
    "null",
    "true",
    "1e999",
    "NaN",
    "../../etc/passwd",
    "http://127.0.0.1:1/x.png",
]


def _upload(data: bytes = b"\x89PNG\r\n\x1a\n", name: str = "a.png") -> UploadFile:
    return UploadFile(io.BytesIO(data), size=len(data), filename=name, headers=Headers({"content-type": "image/png"}))


@pytest.mark.parametrize("endpoint", sorted(set(ROUTES.values())))
def test_check_fields_raises_only_request_errors(endpoint):
    """Every field of every endpoint, given every odd JSON value (alone and beside good fields):
    a canonical dict or a RequestError, never another exception."""
    settings = Settings()
    good = {
        "task": {"task_id": ["t"]},
        "answer_ground": {"image": [_upload()], "question": ["what is red?"]},
        "segment_video": {"expression": ["red circle"]},
    }.get(endpoint, {"image": [_upload()], "expression": ["red circle"]})
    names = [*input_fields(endpoint), *ENDPOINT_OPTIONS.get(endpoint, ()), "unknown_field"]
    for name, value in itertools.product(names, ODD_VALUES):
        for base in ({}, good):
            fields = {**base, name: [value]}
            try:
                out = check_fields(endpoint, fields, settings)
            except RequestError as e:
                assert e.status in (400, 413, 415) and str(e)
                continue
            json.dumps({k: v for k, v in out.items() if not isinstance(v, UploadFile)})  # canonical = JSON-able


def test_check_fields_rules():
    s = Settings()
    out = check_fields(
        "segment",
        {
            "image": [_upload()],
            "expression": ["a red circle", "the blue square"],
            "threshold": ["0.3"],
            "return_heatmap": ["true"],
        },
        s,
    )
    assert out["expression"] == ["a red circle", "the blue square"]
    assert out["threshold"] == 0.3 and out["return_heatmap"] is True
    with pytest.raises(RequestError, match="never fetches") as e:
        check_fields("segment", {"image": ["http://x/y.png"], "expression": ["red"]}, s)
    assert e.value.field == "image"
    with pytest.raises(RequestError, match="send it once"):
        check_fields("segment", {"image": [_upload(), _upload()], "expression": ["red"]}, s)
    with pytest.raises(RequestError, match="not both"):
        check_fields("segment", {"image": [_upload()], "image_base64": ["aGk="], "expression": ["red"]}, s)
    with pytest.raises(RequestError, match="one expression"):
        check_fields("render", {"image": [_upload()], "expression": ['["red", "blue"]']}, s)
    with pytest.raises(RequestError) as e:
        check_fields("segment_video", {"video": [_upload(b"", "v.mp4")], "expression": ["red"]}, s)
    assert e.value.field == "video" and "empty" in str(e.value)
    with pytest.raises(RequestError) as e:
        check_fields(
            "segment_video",
            {"video": [_upload(b"x" * 100, "v.mp4")], "expression": ["red"]},
            Settings(max_video_bytes=10),
        )
    assert e.value.status == 413


def test_error_bodies_of_every_origin_become_one_shape():
    assert _message_and_field(b'{"error": "bad", "field": "seed"}', 400) == ("bad", "seed")
    assert _message_and_field(b'[{"error": "listed"}]', 400) == ("listed", None)
    assert _message_and_field(
        b'{"error": "1 validation error", "detail": [{"loc": ["body", "seed"], "msg": "too big"}]}', 400
    ) == ("seed: too big", "seed")
    assert _message_and_field(b"Not Found", 404) == ("Not Found", None)
    assert _message_and_field(b"", 405) == ("Method Not Allowed", None)
    assert _message_and_field(b'{"detail": "Runners are not ready."}', 503) == ("Runners are not ready.", None)


def test_settings(tmp_path):
    s = load_settings({"HOST": "0.0.0.0"})
    assert s.grpc_host == "0.0.0.0" and s.key() == "" and s.shutdown_grace_s == 10
    assert load_settings({"HOST": "0.0.0.0", "GROUNDING_GRPC_HOST": "127.0.0.1"}).grpc_host == "127.0.0.1"
    assert load_settings({}).grpc_host == "127.0.0.1"
    (tmp_path / "k").write_text("abc\n")
    assert load_settings({"GROUNDING_API_KEY_FILE": str(tmp_path / "k")}).key() == "abc"
    assert load_settings({"GROUNDING_API_KEY": "x", "GROUNDING_API_KEY_FILE": str(tmp_path / "k")}).key() == "x"
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ValueError, match="empty"):
        load_settings({"GROUNDING_API_KEY_FILE": str(tmp_path / "empty")}).key()
    with pytest.raises(ValueError, match="GROUNDING_JOBS_TTL_H"):
        load_settings({"GROUNDING_JOBS_TTL_H": "soon"})
    assert load_settings({"GROUNDING_JOBS_MAX_GB": "0.5"}).jobs_max_gb == 0.5
    d = Settings()
    assert d.body_limit(video=True) == d.max_video_bytes + 2**20
    assert d.body_limit(video=False) >= d.max_image_pixels * 4 * 4 // 3  # a 40 MP RGBA image as base64 fits
    assert Settings(max_body_mb=3).body_limit(video=True) == 3 * 2**20
    assert Settings(max_latency_ms=2000, engine_margin_s=5).engine_timeout() == 7.0


def test_worker_device():
    assert [worker_device(i, 2) for i in (1, 2, 3, 4)] == ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]
    with pytest.raises(RuntimeError, match="no CUDA device"):
        worker_device(1, 0)


def _job(root, key: str, state: str, age_s: float, size: int = 1000) -> None:
    d = root / key
    d.mkdir()
    (d / "input.mp4").write_bytes(b"x" * size)
    (d / "progress.json").write_text(json.dumps({"state": state, "done": 1, "total": 1}))
    stamp = time.time() - age_s
    for f in d.iterdir():
        os.utime(f, (stamp, stamp))


def test_retention_policy(tmp_path):
    jobs = VideoJobs(tmp_path, Settings(jobs_ttl_h=1.0, jobs_max_gb=2500 / 2**30))
    _job(tmp_path, "old-done", "done", 7200)
    _job(tmp_path, "old-failed", "failed", 3700)
    _job(tmp_path, "running-fresh", "running", 10)
    _job(tmp_path, "running-stale", "running", 7200)  # its worker died: nothing written for > TTL
    _job(tmp_path, "done-1", "done", 300)
    _job(tmp_path, "done-2", "cancelled", 200)
    _job(tmp_path, "done-3", "done", 100)
    (tmp_path / "tasks" / "t-old").write_text("old-done")
    (tmp_path / "tasks" / "t-new").write_text("done-3")
    deleted = jobs.prune()
    # TTL first (old-done, old-failed, running-stale); then the cap (2500 B) removes the oldest
    # finished (done-1, then done-2) while running-fresh (1000 B) + done-3 (1000 B) fit.
    assert sorted(deleted) == sorted(["old-done", "old-failed", "running-stale", "done-1", "done-2"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["done-3", "running-fresh", "tasks"]
    assert sorted(p.name for p in (tmp_path / "tasks").iterdir()) == ["t-new"]
    with pytest.raises(RequestError) as e:
        jobs.progress("t-old")
    assert e.value.status == 404
    # a running job is never deleted for the cap, however small
    tiny = VideoJobs(tmp_path, Settings(jobs_ttl_h=1.0, jobs_max_gb=1e-12))
    assert tiny.prune() == ["done-3"] and (tmp_path / "running-fresh").is_dir()


class _Engine:
    """A stand-in for BentoML's client of the engine service: answers after ``delays`` seconds
    (one per call; ``None`` = never), readiness as given."""

    def __init__(self, delays, ready=True):
        self.delays, self.ready, self.calls = list(delays), ready, 0
        self.to_async = self

    async def is_ready(self, timeout):
        return self.ready

    async def run(self, jobs):
        import asyncio

        self.calls += 1
        delay = self.delays.pop(0)
        if delay == "reset":  # the engine killed under the call: its connection closes
            raise ConnectionResetError("engine gone")
        await asyncio.sleep(3600 if delay is None else delay)
        return [{"ok": True}]


def test_engine_calls_are_bounded():
    """An answer that never comes is given up after max_latency + margin and retried once (if the
    engine is ready); an engine that is not ready is a 503 at once; a call cut by a crash is
    retried within its budget."""
    import asyncio

    from grounding.serving.engine import EngineCalls

    s = Settings(max_latency_ms=300, engine_margin_s=0)
    engine = _Engine([None, 0.01])
    t0 = time.monotonic()
    assert asyncio.run(EngineCalls(engine, s).run([{}])) == [{"ok": True}]
    assert engine.calls == 2 and 0.3 <= time.monotonic() - t0 < 1.5
    engine = _Engine([None, None])
    t0 = time.monotonic()
    with pytest.raises(RequestError) as e:
        asyncio.run(EngineCalls(engine, s).run([{}]))
    assert e.value.status == 503 and 0.6 <= time.monotonic() - t0 < 2.0
    engine = _Engine([0.01], ready=False)
    t0 = time.monotonic()
    with pytest.raises(RequestError) as e:
        asyncio.run(EngineCalls(engine, s).run([{}]))
    assert e.value.status == 503 and engine.calls == 0 and time.monotonic() - t0 < 0.5
    # a call cut by a crash is retried within what is left of its budget: answered (or 503) within it
    engine = _Engine(["reset", 0.1])
    t0 = time.monotonic()
    assert asyncio.run(EngineCalls(engine, s).run([{}])) == [{"ok": True}]
    assert engine.calls == 2 and time.monotonic() - t0 < 0.3
    engine = _Engine(["reset", 0.5])  # the retry would end past the budget: 503 at the budget
    t0 = time.monotonic()
    with pytest.raises(RequestError) as e:
        asyncio.run(EngineCalls(engine, s).run([{}]))
    assert e.value.status == 503 and engine.calls == 2 and 0.25 <= time.monotonic() - t0 < 0.45
    # an answer that never came is not retried on an engine that is down: 503 after one budget
    engine = _Engine([None, 0.01])
    calls = EngineCalls(engine, s)

    async def timeout_then_down():
        engine.ready = True
        task = asyncio.ensure_future(calls.run([{}]))
        await asyncio.sleep(0.1)
        engine.ready, calls._good = False, 0.0  # the engine goes down during the call
        return await task

    t0 = time.monotonic()
    with pytest.raises(RequestError) as e:
        asyncio.run(timeout_then_down())
    assert e.value.status == 503 and engine.calls == 1 and 0.3 <= time.monotonic() - t0 < 0.6
