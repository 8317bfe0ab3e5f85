"""Dataset loaders in official formats and the resumable, shardable runner."""

import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from eval.cli import main as eval_main
from eval.refcoco import RefDataset
from eval.runner import read_results
from eval.rvos import MeViS, RefDavis, RefYouTubeVOS
from fixtures import write_davis_fixture, write_mevis_fixture, write_refer_fixture, write_ytvos_fixture

ROOT = Path(__file__).resolve().parents[1]


def run_eval(*args) -> dict:
    assert eval_main([str(a) for a in args]) == 0
    out = Path(args[list(args).index("--out") + 1])
    return json.loads((out / "summary.json").read_text())


def test_refcoco_loader(tmp_path):
    root = write_refer_fixture(tmp_path)
    ds = RefDataset(root, "refcoco", split="val")
    assert len(ds) == 9  # 3 images × (2 + 1) sentences
    s = ds[0]
    assert s.image_path.is_file() and s.sentence == "red circle" and s.mask.dtype == bool
    assert s.mask.shape == (48, 64) and abs(int(s.mask.sum()) - 228) <= 6  # a 16-gon of r = 8.64: area 228
    rle_sample = ds[2]
    assert rle_sample.sentence == "blue square" and rle_sample.mask.sum() == 15 * 15
    assert len(RefDataset(root, "refcoco", split="testA")) == 1
    with pytest.raises(ValueError, match="split"):
        RefDataset(root, "refcoco", split="testB")


def test_refcoco_run_summary_and_overlays(tmp_path, tiny_flux_dir):
    root = write_refer_fixture(tmp_path / "data")
    out = tmp_path / "run"
    summ = run_eval(
        "refcoco",
        "--data-root",
        root,
        "--dataset",
        "refcoco",
        "--model",
        tiny_flux_dir,
        "--out",
        out,
        "--save-overlays",
        "1",
    )
    assert summ["n"] == 9
    for key in ("miou", "oiou", "pointing", "prec@0.5", "prec@0.9"):
        assert 0.0 <= summ[key] <= 1.0
    records = read_results(out / "results.jsonl")
    assert len(records) == 9 and len({r["id"] for r in records}) == 9
    assert summ["miou"] == pytest.approx(np.mean([r["iou"] for r in records]))
    assert summ["oiou"] == pytest.approx(sum(r["inter"] for r in records) / sum(r["union"] for r in records))
    assert "| miou |" in (out / "summary.md").read_text()
    assert len(list((out / "overlays").glob("*.png"))) == 3
    # running again is a no-op resume with the same summary
    again = run_eval("refcoco", "--data-root", root, "--dataset", "refcoco", "--model", tiny_flux_dir, "--out", out)
    assert again["miou"] == summ["miou"] and len(read_results(out / "results.jsonl")) == 9
    # a different run may not reuse the directory
    assert (
        eval_main(
            ["refcoco", "--data-root", str(root), "--model", str(tiny_flux_dir), "--out", str(out), "--limit", "2"]
        )
        == 2
    )


def test_shards_merge_to_the_single_run(tmp_path, tiny_flux_dir):
    root = write_refer_fixture(tmp_path / "data")
    full = run_eval("refcoco", "--data-root", root, "--model", tiny_flux_dir, "--out", tmp_path / "full")
    for i in range(2):
        run_eval(
            "refcoco", "--data-root", root, "--model", tiny_flux_dir, "--shard", f"{i}/2", "--out", tmp_path / f"s{i}"
        )
    assert eval_main(["merge", str(tmp_path / "s0"), str(tmp_path / "s1"), "--out", str(tmp_path / "m")]) == 0
    merged = json.loads((tmp_path / "m" / "summary.json").read_text())
    for key in ("n", "miou", "oiou", "pointing", "prec@0.5"):
        assert merged[key] == pytest.approx(full[key]), key
    a = {r["id"]: r["iou"] for r in read_results(tmp_path / "full" / "results.jsonl")}
    b = {r["id"]: r["iou"] for r in read_results(tmp_path / "m" / "results.jsonl")}
    assert a == b
    with pytest.raises(ValueError, match="more than one run"):
        from eval.runner import merge

        merge([tmp_path / "s0", tmp_path / "s0"], tmp_path / "dup")


def test_resume_after_kill(tmp_path, tiny_flux_dir):
    root = write_refer_fixture(tmp_path / "data", n_images=12)
    args = ["refcoco", "--data-root", str(root), "--model", str(tiny_flux_dir)]
    reference = run_eval(*args, "--out", tmp_path / "ref")
    out = tmp_path / "killed"
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "eval", *args, "--out", str(out)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    results = out / "results.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if results.is_file() and results.read_bytes().count(b"\n") >= 3:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    partial = read_results(results)
    assert 3 <= len(partial) < 36
    with open(results, "ab") as f:
        f.write(b'{"id": "torn-li')  # what a kill in the middle of a write leaves
    resumed = run_eval(*args, "--out", out)
    records = read_results(results)
    assert len(records) == 36 and len({r["id"] for r in records}) == 36
    assert resumed["miou"] == pytest.approx(reference["miou"]) and resumed["oiou"] == pytest.approx(reference["oiou"])
    ref = {r["id"]: r["iou"] for r in read_results(tmp_path / "ref" / "results.jsonl")}
    assert {r["id"]: r["iou"] for r in records} == ref


def test_davis_loader_and_run(tmp_path, tiny_flux_dir):
    root = write_davis_fixture(tmp_path / "davis")
    ds = RefDavis(root, "val")
    assert [s.group for s in ds.samples] == ["annot1", "annot1", "annot1_full_video", "annot2", "annot2_full_video"]
    assert ds.samples[3].expression == "the red disc, caf\u00e9 colour"  # latin-1 decoded
    gt, void = ds.samples[0].gt(1)
    assert gt.sum() > 0 and void[-1].all() and not gt[-1].any()
    summ = run_eval("davis", "--data-root", root, "--model", tiny_flux_dir, "--out", tmp_path / "run")
    assert summ["n"] == 5 and summ["scored"] == 5
    assert 0.0 <= summ["J&F"] <= 1.0 and summ["J&F"] == pytest.approx((summ["J"] + summ["F"]) / 2)
    assert {"J&F/annot1", "J&F/annot2_full_video"} <= set(summ)
    rec = read_results(tmp_path / "run" / "results.jsonl")[0]
    assert rec["frames"] == 3
    assert len(list((tmp_path / "run" / "Annotations" / "red-disc").rglob("*.png"))) == 15


def test_ytvos_submission_layout(tmp_path, tiny_flux_dir):
    root = write_ytvos_fixture(tmp_path / "yt")
    assert [s.expression for s in RefYouTubeVOS(root, "valid").samples] == ["a red disc", "the blue square"]
    summ = run_eval("ytvos", "--data-root", root, "--model", tiny_flux_dir, "--out", tmp_path / "run")
    assert summ["n"] == 2 and summ["scored"] == 0
    with zipfile.ZipFile(tmp_path / "run" / "submission.zip") as z:
        names = set(z.namelist())
    assert {f"Annotations/vid0001/{e}/{f}.png" for e in "01" for f in ("00000", "00005", "00010")} == names


def test_mevis_valid_u_scored_locally(tmp_path, tiny_flux_dir):
    root = write_mevis_fixture(tmp_path / "mevis")
    ds = MeViS(root, "valid_u")
    both = ds.samples[1]
    first, _ = both.gt(0)
    second, _ = both.gt(1)
    disc_only, _ = ds.samples[0].gt(1)
    assert first.sum() < second.sum() and (second & disc_only).sum() == disc_only.sum()
    summ = run_eval("mevis", "--data-root", root, "--model", tiny_flux_dir, "--out", tmp_path / "run")
    assert summ["n"] == 2 and summ["scored"] == 2 and 0.0 <= summ["J&F"] <= 1.0


def test_shapes_world_in_refer_format(tmp_path, tiny_flux_dir):
    from eval.shapes import TYPE_WEIGHTS

    assert eval_main(["make-shapes", "--out", str(tmp_path / "data"), "--n", "24", "--seed", "3"]) == 0
    ds = RefDataset(tmp_path / "data", "shapes", split="val")
    assert len(ds) == 24
    kinds = {ds[i].kind for i in range(len(ds))}
    assert kinds <= set(TYPE_WEIGHTS) and "attribute" in kinds
    for i in range(len(ds)):
        s = ds[i]
        assert s.image_path.is_file() and s.mask.any() and s.sentence.startswith("the ")
    summ = run_eval(
        "refcoco",
        "--data-root",
        tmp_path / "data",
        "--dataset",
        "shapes",
        "--model",
        tiny_flux_dir,
        "--out",
        tmp_path / "run",
    )
    assert summ["n"] == 24 and summ["n/attribute"] >= 1 and "pointing/attribute" in summ
