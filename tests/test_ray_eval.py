"""The evaluation runner on a real local Ray instance: same records and metrics as one process,
an actor killed mid-run, the driver killed and resumed, a video set."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from eval.runner import RunConfig, read_results, run_local
from fixtures import write_davis_fixture

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "models" / "shapes-demo"
N_SCENES = 100
SCORES = ("inter", "union", "iou", "pointing", "pred_pixels", "box")

# slow: real local Ray clusters (~110 s in all); CI runs them after `make test` (`make test-slow`)
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (DEMO / "model_index.json").is_file(), reason="the shipped demo model is absent"),
]


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    from eval.shapes import write_refer

    return write_refer(tmp_path_factory.mktemp("shapes") / "data", N_SCENES, seed=7)


def _cfg(root, **kw) -> RunConfig:
    return RunConfig(
        task="refcoco", data_root=str(Path(root).parent), dataset="shapes", split="val", model=str(DEMO), **kw
    )


@pytest.fixture(scope="module")
def single(shapes_root, tmp_path_factory):
    """The single-process run, with one torch thread as each Ray actor has."""
    from grounding import Grounder

    out = tmp_path_factory.mktemp("single") / "run"
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        summary = run_local(_cfg(shapes_root), Grounder.from_pretrained(DEMO, device="cpu"), out)
    finally:
        torch.set_num_threads(prev)
    return {r["id"]: r for r in read_results(out / "results.jsonl")}, summary


def _metrics(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k not in ("config", "mean_ms")}


def _same_records(records: list[dict], reference: dict) -> None:
    ids = [r["id"] for r in records]
    assert len(ids) == len(set(ids)) == len(reference), "a sample is missing or recorded twice"
    for r in records:
        assert {k: r[k] for k in SCORES} == {k: reference[r["id"]][k] for k in SCORES}, r["id"]


def test_ray_run_equals_the_single_process_run(shapes_root, single, tmp_path):
    from eval.ray_runner import ModelSpec, RayOptions, run_ray

    reference, ref_summary = single
    out = tmp_path / "ray"
    summary = run_ray(
        _cfg(shapes_root),
        ModelSpec(model=str(DEMO), device="cpu"),
        out,
        RayOptions(address="local", actors=2, batch_size=4),
    )
    _same_records(read_results(out / "results.jsonl"), reference)
    assert _metrics(summary) == _metrics(ref_summary)
    assert json.loads((out / "ray.json").read_text())["actors"] == 2
    # a rerun records nothing new (and starts no Ray at all)
    again = run_ray(_cfg(shapes_root), ModelSpec(model=str(DEMO), device="cpu"), out, RayOptions(actors=2))
    assert len(read_results(out / "results.jsonl")) == N_SCENES and _metrics(again) == _metrics(ref_summary)


def test_an_actor_killed_mid_run_loses_nothing(shapes_root, single, tmp_path):
    import ray

    from eval.ray_runner import ModelSpec, RayOptions, run_ray

    reference, ref_summary = single
    out = tmp_path / "ray"
    killed = {}

    def kill_one_midway(actors):
        pid = ray.get(actors[0].pid.remote())

        def watch():
            results = out / "results.jsonl"
            while True:
                n = len(results.read_text().splitlines()) if results.is_file() else 0
                if n >= 16:
                    os.kill(pid, signal.SIGKILL)
                    killed.update(pid=pid, at=n)
                    return
                time.sleep(0.02)

        threading.Thread(target=watch, daemon=True).start()

    summary = run_ray(
        _cfg(shapes_root),
        ModelSpec(model=str(DEMO), device="cpu"),
        out,
        RayOptions(address="local", actors=2, batch_size=2),
        on_actors=kill_one_midway,
    )
    assert killed and killed["at"] < N_SCENES, "the actor was not killed mid-run"
    _same_records(read_results(out / "results.jsonl"), reference)
    assert _metrics(summary) == _metrics(ref_summary)


def test_the_driver_killed_is_resumed_by_rerunning(shapes_root, single, tmp_path):
    reference, ref_summary = single
    out = tmp_path / "ray"
    cmd = [
        sys.executable,
        "-m",
        "eval",
        "refcoco",
        "--data-root",
        str(Path(shapes_root).parent),
        "--dataset",
        "shapes",
        "--model",
        str(DEMO),
        "--device",
        "cpu",
        "--out",
        str(out),
        "--ray",
        "local",
        "--actors",
        "2",
        "--batch-size",
        "2",
    ]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    p = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    results = out / "results.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and p.poll() is None:
        if results.is_file() and len(results.read_text().splitlines()) >= 12:
            break
        time.sleep(0.05)
    assert p.poll() is None, p.stderr.read().decode()[-2000:]
    os.kill(p.pid, signal.SIGKILL)  # the driver only: Ray's own processes must follow it down
    p.wait(timeout=30)
    p.stderr.close()
    partial = read_results(results)
    assert 0 < len(partial) < N_SCENES
    left = _wait_for_no_ray(timeout=30)
    assert not left, f"Ray processes outlived their killed driver: {left}"
    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    _same_records(read_results(results), reference)
    assert _metrics(json.loads((out / "summary.json").read_text())) == _metrics(ref_summary)


def _ray_processes() -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if ("raylet" in cmd or "gcs_server" in cmd or "ray::" in cmd or "ray/_private" in cmd) and str(
                os.getpid()
            ) != d.name:
                out.append(int(d.name))
    return out


def _wait_for_no_ray(timeout: float) -> list[str]:
    """[] once no Ray process of the killed driver is left; else their command lines (then killed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _ray_processes():
            return []
        time.sleep(0.2)
    left = []
    for pid in _ray_processes():  # leave nothing behind for the next test, then report
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            env = [
                e.decode()
                for e in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                if e.startswith(b"DIT_GROUNDING_RAY_SESSION")
            ]
            left.append(f"{pid} {cmd} {env}")
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    return left


def test_a_video_set_runs_per_video_and_expression(tmp_path):
    from eval.ray_runner import ModelSpec, RayOptions, run_ray
    from grounding import Grounder

    root = write_davis_fixture(tmp_path / "davis")
    cfg = RunConfig(task="davis", data_root=str(root), dataset="davis", split="val", model=str(DEMO))
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        local = run_local(cfg, Grounder.from_pretrained(DEMO, device="cpu"), tmp_path / "local")
    finally:
        torch.set_num_threads(prev)
    ray_summary = run_ray(
        cfg,
        ModelSpec(model=str(DEMO), device="cpu"),
        tmp_path / "ray",
        RayOptions(address="local", actors=2, batch_size=1),
    )
    recs = {r["id"]: r for r in read_results(tmp_path / "ray" / "results.jsonl")}
    ref = {r["id"]: r for r in read_results(tmp_path / "local" / "results.jsonl")}
    assert set(recs) == set(ref) and len(recs) == 5
    for k in recs:
        assert {m: recs[k][m] for m in ("J", "F", "J&F")} == {m: ref[k][m] for m in ("J", "F", "J&F")}
    assert _metrics(ray_summary) == _metrics(local)
    masks = sorted(p.relative_to(tmp_path / "ray") for p in (tmp_path / "ray" / "Annotations").rglob("*.png"))
    assert masks == sorted(
        p.relative_to(tmp_path / "local") for p in (tmp_path / "local" / "Annotations").rglob("*.png")
    )


def test_a_failing_sample_is_recorded_as_an_error(tmp_path, shapes_root):
    """A sample whose image is unreadable is tried, then recorded as an error (IoU 0), not lost."""
    import shutil

    from eval.ray_runner import ModelSpec, RayOptions, run_ray

    data = tmp_path / "data"
    shutil.copytree(Path(shapes_root).parent, data)
    images = sorted((data / "images").rglob("*.png")) if (data / "images").is_dir() else sorted(data.rglob("*.png"))
    images[0].write_bytes(b"not a png")
    cfg = RunConfig(task="refcoco", data_root=str(data), dataset="shapes", split="val", model=str(DEMO), limit=12)
    summary = run_ray(
        cfg,
        ModelSpec(model=str(DEMO), device="cpu"),
        tmp_path / "run",
        RayOptions(address="local", actors=2, batch_size=3),
    )
    recs = read_results(tmp_path / "run" / "results.jsonl")
    errors = [r for r in recs if r.get("error")]
    assert len(recs) == 12 and len({r["id"] for r in recs}) == 12
    assert errors and all(r["iou"] == 0.0 and r["attempts"] == 2 for r in errors)
    assert summary["errors"] == len(errors)
