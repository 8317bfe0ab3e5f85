"""The CLI end to end, in a subprocess, on tiny models and a refer-format fixture."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fixtures import run_module, scene, write_refer_fixture
from grounding.pipeline.result import rle_to_mask

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, check=True, package="grounding"):
    return run_module(package, *args, check=check)


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


@pytest.mark.parametrize(
    "arch, how",
    [
        pytest.param("sd3", "subprocess", marks=pytest.mark.integration),
        ("zimage", "in-process"),  # one subprocess start is enough to check `python -m grounding` itself
        ("flux2", "in-process"),
        ("flux2-klein", "in-process"),
        ("qwenimage", "in-process"),
    ],
)
def test_tiny_model_then_segment(arch, how, tmp_path):
    """``python -m grounding tiny-model`` then ``segment`` for each backbone; all but one through
    ``grounding.cli.main`` in this process (what ``python -m grounding`` runs), to save start-ups."""
    call = _run_in_process if how == "in-process" else run_cli
    model = tmp_path / "m"
    p = call("tiny-model", "--arch", arch, model)
    assert "meaningless" in p.stdout and (model / "model_index.json").is_file() and (model / "grounding.json").is_file()
    scene(80, 60).save(tmp_path / "img.jpg")
    out = tmp_path / "out"
    call(
        "segment",
        "--model",
        model,
        tmp_path / "img.jpg",
        "the red circle",
        "--out",
        out,
        "--set",
        "sinks.mode=suppress",
    )
    doc = json.loads((out / "result.json").read_text())
    mask = np.asarray(Image.open(out / "mask.png")) > 0
    assert mask.shape == (60, 80)
    assert np.array_equal(rle_to_mask(doc["segmentation"]), mask)
    assert doc["segmentation"]["size"] == [60, 80] and doc["box_format"] == "xyxy"
    assert 0 <= doc["score"] <= 1 and len(doc["points"]) == 1 and "transformer" in doc["timings_ms"]
    assert Image.open(out / "overlay.png").size == (80, 60)
    assert Image.open(out / "heatmap.png").mode == "RGB"


def test_a_model_that_cannot_load_is_one_line(tmp_path):
    """No traceback: one ``error: cannot load model ...`` line naming the cause, exit 1."""
    scene().save(tmp_path / "img.png")
    (tmp_path / "not-a-pipeline").mkdir()
    for model, cause in [
        (tmp_path / "not-a-pipeline", "not a diffusers pipeline folder"),
        ("some-org/some-model", "HF_HUB_OFFLINE=1 forbids downloads"),  # run_cli() sets it
        ("./no/such/folder", "neither a local folder nor a valid Hugging Face repository id"),
    ]:
        p = run_cli(
            "segment", "--model", model, tmp_path / "img.png", "the red circle", "--out", tmp_path / "o", check=False
        )
        assert p.returncode == 1, p.stderr[-2000:]
        lines = [ln for ln in p.stderr.splitlines() if ln.strip() and "Warning" not in ln and "warnings.warn" not in ln]
        assert lines == [f"error: cannot load model {str(model)!r}: " + lines[0].split(": ", 2)[2]], p.stderr
        assert cause in lines[0] and "Traceback" not in p.stderr


def test_segment_prints_presence_and_the_card(tmp_path):
    """On the shipped model the summary line says present / presence / best guess, the card is
    printed once, and a photograph (outside the model's domain) is "not present", no instance."""
    out = tmp_path / "out"
    p = run_cli(
        "segment", "--model", "shapes-demo", ROOT / "examples" / "hopper.jpg", "the woman in uniform", "--out", out
    )
    summary = json.loads(p.stdout.strip().splitlines()[-1])
    assert summary["present"] is False and summary["best_guess"] is True and summary["instances"] == 0
    assert 0.0 <= summary["presence_score"] < 0.5
    assert p.stderr.count("model shapes-demo: the project's synthetic shapes world only") == 1
    doc = json.loads((out / "result.json").read_text())
    assert doc["instances"] == [] and doc["best_guess"] is True


def test_segment_bad_expression_exits_with_message(tmp_path, tiny_flux_dir):
    scene().save(tmp_path / "img.png")
    p = run_cli(
        "segment", "--model", tiny_flux_dir, tmp_path / "img.png", "the of", "--out", tmp_path / "o", check=False
    )
    assert p.returncode == 2 and "no content words" in p.stderr


def test_calibrate_writes_grounding_json(tmp_path, tiny_flux_dir):
    data = write_refer_fixture(tmp_path / "data")
    out = tmp_path / "cal"
    p = run_cli(
        "calibrate",
        "--model",
        tiny_flux_dir,
        "--data",
        data,
        "--dataset",
        "refcoco",
        "--timesteps",
        "0.2,0.5",
        "--out",
        out,
        package="training",
    )
    report = json.loads(p.stdout.strip().splitlines()[-1])
    assert 0.0 <= report["before"] <= report["after"] <= 1.0
    cfg = json.loads((out / "grounding.json").read_text())
    assert set(cfg["timesteps"]) <= {0.2, 0.3, 0.5}
    assert cfg["resolution"] == 64  # the model's own settings are kept
    masks = report["masks"]  # the mask stage is fitted too, and what it chose is what was written
    assert 0.0 <= masks["miou_before"] <= masks["miou_after"] <= 1.0
    assert cfg["threshold"] == masks["threshold"] and cfg["refine"] == masks["refine"]
    # the model card now says it was calibrated, on what, and the CLI printed the card once
    assert cfg["card"]["calibrated"] is True
    assert cfg["card"]["calibration"] == [f"python -m training calibrate on 9 refcoco samples of {data} (val)"]
    assert p.stderr.count(f"model {tiny_flux_dir}: uncalibrated defaults") == 1


def test_calibrate_presence_writes_the_model(tmp_path, tiny_flux_dir):
    out = tmp_path / "presence"
    p = run_cli("calibrate-presence", "--model", tiny_flux_dir, "--n", 12, "--out", out, package="training")
    report = json.loads(p.stdout.strip().splitlines()[-1])
    assert report["samples"] == 12 and report["present"] == 6 and 0.0 <= report["roc_auc"] <= 1.0
    assert report["features"] == ["content_share", "concentration"]
    cfg = json.loads((out / "grounding.json").read_text())
    assert set(cfg["presence"]["weights"]) == {"content_share", "concentration"}
    assert cfg["presence"]["threshold"] == report["threshold"]
    assert cfg["card"]["calibrated"] and cfg["card"]["calibration"][-1].startswith(
        "python -m training calibrate-presence on 12"
    )


def test_training_commands_are_not_in_the_inference_cli(tmp_path, tiny_flux_dir):
    p = run_cli("calibrate", "--model", tiny_flux_dir, "--data", tmp_path, check=False)
    assert p.returncode == 2 and "python -m training calibrate" in p.stderr
