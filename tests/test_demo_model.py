"""The shipped demo model (``models/shapes-demo``) as the quality oracle: pointing and mIoU on a
small fixed shapes set with the project's own runner, presence ROC AUC on scenes with and without
the referent, and a moving object followed through a video. Floors sit a little under the values
measured when the model was shipped (README, "The shapes world and the demo model")."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from eval.runner import RunConfig, run_refcoco
from eval.shapes import COLOURS, Obj, presence_scenes, render, write_refer
from grounding import Grounder
from grounding.backends.zoo import default_model, resolve
from grounding.readout import presence

DEMO = Path(__file__).resolve().parents[1] / "models" / "shapes-demo"


@pytest.fixture(scope="module")
def demo():
    assert (DEMO / "model_index.json").is_file(), "the shipped demo model is missing"
    return Grounder.from_pretrained(DEMO, device="cpu")


def test_demo_is_the_default_model(monkeypatch):
    monkeypatch.delenv("GROUNDING_MODEL", raising=False)
    assert default_model() == "shapes-demo" and Path(resolve("shapes-demo")) == DEMO


def test_pointing_and_miou_floors(demo, tmp_path):
    write_refer(tmp_path, n=80, seed=11, size=64)
    cfg = RunConfig(task="refcoco", data_root=str(tmp_path), dataset="shapes", split="val", model=str(DEMO))
    summary = run_refcoco(cfg, demo, tmp_path / "run")
    assert summary["n"] == 80
    assert summary["pointing"] >= POINTING_FLOOR, summary
    assert summary["miou"] >= MIOU_FLOOR, summary


def test_a_transposed_map_loses_accuracy(demo, tmp_path):
    """The oracle catches map bugs: the same maps read with rows and columns swapped point badly."""
    write_refer(tmp_path, n=40, seed=12, size=64)
    from eval.refcoco import RefDataset
    from training.calibrate import token_centres_inside

    ds = RefDataset(tmp_path, "shapes", split="val")
    right = wrong = 0
    for i in range(len(ds)):
        s = ds[i]
        item = demo.referent_maps([(s.image_path, s.sentence)], demo.config)[0]
        inside = token_centres_inside(s.mask, item.grid)
        m = item.map.reshape(item.grid)
        right += bool(inside[int(m.argmax())])
        wrong += bool(inside[int(m.T.reshape(-1).argmax())])
    assert right / len(ds) >= POINTING_FLOOR - 0.1 and wrong / len(ds) <= right / len(ds) - 0.3


def test_mask_calibration_picks_what_scores_best(demo, tmp_path):
    """``fit_masks`` on real maps: it never hands back a worse config, and the chosen threshold /
    refinement score what the report says when rerun through ``segment``."""
    from eval.refcoco import RefDataset
    from grounding.segment.prompts import mask_iou
    from training.calibrate import fit_masks

    write_refer(tmp_path, n=16, seed=13, size=64)
    ds = RefDataset(tmp_path, "shapes", split="val")
    samples = [(s.image_path, s.sentence, s.mask) for s in (ds[i] for i in range(len(ds)))]
    plain = demo.config.replace(**{"refine.enabled": False, "threshold": 0.5})
    fitted, report = fit_masks(demo, samples, plain, thresholds=(0.3, 0.5), radii=(4.0,))
    assert report["miou_after"] >= report["miou_before"]
    again = np.mean([mask_iou(demo.segment(im, text, **fitted.to_dict()).mask, m) for im, text, m in samples])
    assert again == pytest.approx(report["miou_after"])
    assert fitted.threshold == report["threshold"] and fitted.refine.enabled == report["refine"]["enabled"]


def test_presence_separates_scenes_without_the_referent(demo):
    samples = presence_scenes(60, seed=21, size=64)
    scores = [demo.segment(im, expr).presence_score for im, expr, _ in samples]
    assert presence.roc_auc(scores, [label for _, _, label in samples]) >= PRESENCE_AUC_FLOOR


def test_generalized_referring_on_held_out_scenes(demo, tmp_path):
    """Several targets or none (instances="all") on generalized scenes of a seed the shipped
    calibration never saw (it used seed 11): the runner's gRefCOCO metrics, and single-target
    mIoU no worse than in "one" mode."""
    from eval.runner import RunConfig, run_local
    from eval.shapes import write_grefcoco

    write_grefcoco(tmp_path / "g", GEN_N, seed=23)
    out = {}
    for mode in ("one", "all"):
        cfg = RunConfig(
            task="grefcoco",
            data_root=str(tmp_path / "g"),
            dataset="grefcoco",
            split="val",
            model=str(DEMO),
            overrides={"instances": mode},
        )
        out[mode] = run_local(cfg, demo, tmp_path / mode)
    a = out["all"]
    assert a["giou"] >= GEN_GIOU_FLOOR and a["n_acc"] >= GEN_NACC_FLOOR and a["t_acc"] >= GEN_TACC_FLOOR, a
    assert a["miou_single"] >= out["one"]["miou_single"] - 1e-9
    assert a["count_error"] < out["one"]["count_error"] and a["miou_multi"] > out["one"]["miou_multi"] + 0.2


def test_instance_calibration_reports_what_the_runtime_does(demo, tmp_path):
    """``fit_instances``: the presence model gains per-head features, and the gIoU / T-acc it
    reports for its choice are what the fitted config gives at run time on the same samples."""
    from eval import metrics
    from eval.grefcoco import GRefDataset
    from eval.shapes import write_grefcoco
    from training.calibrate import RELATIVE_PEAKS, fit_instances

    write_grefcoco(tmp_path / "c", 48, seed=31)
    ds = GRefDataset(tmp_path / "c", "val")
    samples = [(s.image_path, s.sentence, s.mask, s.no_target) for s in (ds[i] for i in range(len(ds)))]
    fitted, report = fit_instances(demo, samples, min_t_acc=0.9)
    assert any("@" in k for k in fitted.presence.weights) and report["roc_auc"] > 0.8
    assert fitted.instances.min_relative_peak in RELATIVE_PEAKS and report["t_acc"] >= 0.9
    scores = metrics.GeneralizedScores()
    run = {
        "presence": dataclasses.asdict(fitted.presence),
        "instances": {**dataclasses.asdict(fitted.instances), "mode": "all"},
    }
    for image, sentence, mask, no_target in samples:
        r = demo.segment(image, sentence, **run)
        pred = r.mask if r.present else np.zeros_like(r.mask)
        i, u, iou = metrics.gref_sample(pred, mask, no_target)
        scores.add(i, u, iou, no_target, not pred.any())
    got = scores.summary()
    assert got["giou"] == pytest.approx(report["giou"]) and got["t_acc"] == pytest.approx(report["t_acc"])


def test_masks_follow_a_moving_object(demo):
    """A red circle moves left to right past a red square and a blue circle (distractors that
    share its colour and its shape); every frame's mask must sit on the moving circle."""
    rng = np.random.RandomState(0)
    frames, truth = [], []
    for t in range(8):
        objs = [
            Obj("circle", "red", "big", 12 + 5.5 * t, 20, 9),
            Obj("square", "red", "big", 20, 48, 9),
            Obj("circle", "blue", "big", 48, 48, 9),
        ]
        scene = render(objs, 64, rng)
        frames.append(scene.image)
        truth.append(scene.masks[0])
    assert set(COLOURS) >= {"red", "blue"}
    video = demo.segment_video(frames, "the red circle")
    ious, xs = [], []
    for f, m in zip(video.frames, truth):
        ious.append((f.mask & m).sum() / max((f.mask | m).sum(), 1))
        xs.append(np.nonzero(f.mask)[1].mean() if f.mask.any() else -1)
    assert min(ious) >= 0.8 and np.mean(ious) >= VIDEO_MIOU_FLOOR, ious
    assert all(b > a for a, b in zip(xs, xs[1:])), xs  # the mask moves right with the object


# Measured when the model was shipped (80 scenes seed 11: pointing 0.850, mIoU 0.858; presence ROC
# AUC 0.771 on 60 scenes seed 21, 0.889 after calibrate-instances; video IoU 1.0 in every frame); floors a little under.
POINTING_FLOOR = 0.80
MIOU_FLOOR = 0.78
PRESENCE_AUC_FLOOR = 0.72
# Generalized referring, instances="all", 300 held-out scenes seed 23 at shipping: gIoU 0.718,
# N-acc 0.797, T-acc 0.922 (README); the test's first 120 of them: floors a little under.
GEN_N = 120
GEN_GIOU_FLOOR = 0.6
GEN_NACC_FLOOR = 0.7
GEN_TACC_FLOOR = 0.88
VIDEO_MIOU_FLOOR = 0.9
