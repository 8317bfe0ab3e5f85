"""The CLI end to end, in a subprocess, on tiny models and a refer-format fixture."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import scene
from fixtures import write_refer_fixture
from grounding.pipeline.result import rle_to_mask

ROOT = Path(__file__).resolve().parents[1]


def run(*args, check=True, package="grounding"):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    p = subprocess.run([sys.executable, "-m", package, *map(str, args)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    if check:
        assert p.returncode == 0, p.stderr[-3000:]
    return p


class _Done:
    def __init__(self, stdout: str):
        self.stdout, self.returncode = stdout, 0


def _run_in_process(*args):
    import contextlib
    import io

    from grounding.cli import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main([str(a) for a in args]) == 0
    return _Done(buf.getvalue())


@pytest.mark.parametrize("arch, how", [("sd3", "subprocess"), ("zimage", "subprocess"), ("flux2", "in-process"),
                                       ("flux2-klein", "in-process"), ("qwenimage", "in-process")])
def test_tiny_model_then_segment(arch, how, tmp_path):
    """``python -m grounding tiny-model`` then ``segment`` for each backbone; three of them through
    ``grounding.cli.main`` in this process (what ``python -m grounding`` runs), to save start-ups."""
    call = _run_in_process if how == "in-process" else run
    model = tmp_path / "m"
    p = call("tiny-model", "--arch", arch, model)
    assert "meaningless" in p.stdout and (model / "model_index.json").is_file() and (model / "grounding.json").is_file()
    scene(80, 60).save(tmp_path / "img.jpg")
    out = tmp_path / "out"
    call("segment", "--model", model, tmp_path / "img.jpg", "the red circle", "--out", out, "--set", "sinks.mode=suppress")
    doc = json.loads((out / "result.json").read_text())
    mask = np.asarray(Image.open(out / "mask.png")) > 0
    assert mask.shape == (60, 80)
    assert np.array_equal(rle_to_mask(doc["segmentation"]), mask)
    assert doc["segmentation"]["size"] == [60, 80] and doc["box_format"] == "xyxy"
    assert 0 <= doc["score"] <= 1 and len(doc["points"]) == 1 and "transformer" in doc["timings_ms"]
    assert Image.open(out / "overlay.png").size == (80, 60)
    assert Image.open(out / "heatmap.png").mode == "RGB"


def test_segment_bad_expression_exits_with_message(tmp_path, tiny_flux_dir):
    scene().save(tmp_path / "img.png")
    p = run("segment", "--model", tiny_flux_dir, tmp_path / "img.png", "the of", "--out", tmp_path / "o", check=False)
    assert p.returncode == 2 and "no content words" in p.stderr


def test_calibrate_writes_grounding_json(tmp_path, tiny_flux_dir):
    data = write_refer_fixture(tmp_path / "data")
    out = tmp_path / "cal"
    p = run("calibrate", "--model", tiny_flux_dir, "--data", data, "--dataset", "refcoco",
            "--timesteps", "0.2,0.5", "--out", out, package="training")
    report = json.loads(p.stdout.strip().splitlines()[-1])
    assert 0.0 <= report["before"] <= report["after"] <= 1.0
    cfg = json.loads((out / "grounding.json").read_text())
    assert set(cfg["timesteps"]) <= {0.2, 0.3, 0.5}
    assert cfg["resolution"] == 64  # the model's own settings are kept
    masks = report["masks"]  # the mask stage is fitted too, and what it chose is what was written
    assert 0.0 <= masks["miou_before"] <= masks["miou_after"] <= 1.0
    assert cfg["threshold"] == masks["threshold"] and cfg["refine"] == masks["refine"]


def test_calibrate_presence_writes_the_model(tmp_path, tiny_flux_dir):
    out = tmp_path / "presence"
    p = run("calibrate-presence", "--model", tiny_flux_dir, "--n", 12, "--out", out, package="training")
    report = json.loads(p.stdout.strip().splitlines()[-1])
    assert report["samples"] == 12 and report["present"] == 6 and 0.0 <= report["roc_auc"] <= 1.0
    assert report["features"] == ["content_share", "concentration"]
    cfg = json.loads((out / "grounding.json").read_text())
    assert set(cfg["presence"]["weights"]) == {"content_share", "concentration"}
    assert cfg["presence"]["threshold"] == report["threshold"]


def test_training_commands_are_not_in_the_inference_cli(tmp_path, tiny_flux_dir):
    p = run("calibrate", "--model", tiny_flux_dir, "--data", tmp_path, check=False)
    assert p.returncode == 2 and "python -m training calibrate" in p.stderr
