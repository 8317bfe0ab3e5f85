"""gRefCOCO: the loader on its released layout, the metrics on hand-computed cases, a run."""

import json

import numpy as np
import pytest

from eval.grefcoco import GRefDataset
from eval.metrics import GeneralizedScores, gref_sample
from eval.runner import read_results
from fixtures import write_grefcoco_fixture


def test_loader_reads_multi_single_and_no_target_refs(tmp_path):
    root = write_grefcoco_fixture(tmp_path / "g")
    ds = GRefDataset(root, "val")
    assert len(ds) == 2 * 4  # per image: 1 + 2 + 1 sentences
    kinds = [(ds[i].sentence, ds[i].targets, ds[i].no_target) for i in range(4)]
    assert kinds == [
        ("red circle", 1, False),
        ("both shapes", 2, False),
        ("all objects", 2, False),
        ("the green star", 0, True),
    ]
    single, both, none = ds[0], ds[1], ds[3]
    assert single.image_path.is_file() and single.image_path.parent.name == "train2014"
    assert both.mask.sum() == single.mask.sum() + 15 * 15  # the union of the disc and the square
    assert not none.mask.any() and none.mask.shape == (48, 64)
    assert ds.sample_id(3) == "2:2000"
    with pytest.raises(ValueError, match="split"):
        GRefDataset(root, "testB")
    with pytest.raises(FileNotFoundError, match="grefs"):
        GRefDataset(tmp_path / "nowhere", "val")


def _m(h, w, *boxes):
    m = np.zeros((h, w), dtype=bool)
    for y0, y1, x0, x1 in boxes:
        m[y0:y1, x0:x1] = True
    return m


def test_sample_scores_follow_the_authors_evaluator():
    gt = _m(10, 10, (0, 4, 0, 4))  # 16 px
    assert gref_sample(_m(10, 10, (0, 4, 0, 2)), gt, False) == (8, 16, 0.5)
    assert gref_sample(_m(10, 10), gt, False) == (0, 16, 0.0)  # target predicted empty
    empty = _m(10, 10)
    assert gref_sample(empty, empty, True) == (0, 0, 1.0)  # no target, nothing predicted
    assert gref_sample(_m(10, 10, (5, 7, 5, 10)), empty, True) == (0, 10, 0.0)  # no target, 10 px predicted


def test_generalized_scores_on_a_hand_computed_set():
    s = GeneralizedScores()
    s.add(8, 16, 0.5, no_target=False, pred_empty=False)  # target, IoU 0.5
    s.add(9, 10, 0.9, no_target=False, pred_empty=False)  # target, IoU 0.9
    s.add(0, 16, 0.0, no_target=False, pred_empty=True)  # target missed (predicted empty)
    s.add(0, 0, 1.0, no_target=True, pred_empty=True)  # no target, right
    s.add(0, 10, 0.0, no_target=True, pred_empty=False)  # no target, a false mask of 10 px
    out = s.summary()
    assert out["n"] == 5 and out["n_target"] == 3 and out["n_no_target"] == 2
    assert out["giou"] == pytest.approx((0.5 + 0.9 + 0 + 1 + 0) / 5)
    assert out["ciou"] == pytest.approx((8 + 9) / (16 + 10 + 16 + 10))
    assert out["n_acc"] == pytest.approx(1 / 2) and out["t_acc"] == pytest.approx(2 / 3)
    assert out["prec@0.7"] == pytest.approx(1 / 3) and out["prec@0.9"] == pytest.approx(1 / 3)
    assert GeneralizedScores().summary()["giou"] == 0.0


def test_grefcoco_run_through_the_resumable_runner(tmp_path, tiny_flux_dir):
    from eval.cli import main

    root = write_grefcoco_fixture(tmp_path / "g")
    out = tmp_path / "run"
    assert main(["grefcoco", "--data-root", str(root), "--model", str(tiny_flux_dir), "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert {"giou", "ciou", "n_acc", "t_acc", "n_target", "n_no_target"} <= set(summary)
    assert summary["n"] == 8 and summary["n_no_target"] == 2
    recs = read_results(out / "results.jsonl")
    for r in recs:
        if r["no_target"]:
            assert r["iou"] == (1.0 if r["pred_empty"] else 0.0) and r["inter"] == 0
        else:
            assert r["targets"] in (1, 2) and "pointing" in r
    s = GeneralizedScores()
    for r in recs:
        s.add(r["inter"], r["union"], r["iou"], r["no_target"], r["pred_empty"])
    assert s.summary()["giou"] == pytest.approx(summary["giou"])
    # resumed: nothing recorded twice
    assert main(["grefcoco", "--data-root", str(root), "--model", str(tiny_flux_dir), "--out", str(out)]) == 0
    assert len(read_results(out / "results.jsonl")) == 8


def test_generalized_shapes_set_in_the_grefcoco_layout(tmp_path):
    """``make-shapes --generalized``: single-, multi- and no-target expressions, readable by the
    gRefCOCO loader; a multi-target mask is the union of its objects, a no-target one empty."""
    from eval.cli import main

    assert main(["make-shapes", "--out", str(tmp_path / "g"), "--n", "40", "--seed", "3", "--generalized"]) == 0
    ds = GRefDataset(tmp_path / "g", "val")
    samples = [ds[i] for i in range(len(ds))]
    kinds = {ds.items[i][1]["type"] for i in range(len(ds))}
    assert len(samples) == 40 and kinds == {"single", "multi", "none"}
    for s, (_, sent) in zip(samples, ds.items):
        if sent["type"] == "none":
            assert s.no_target and not s.mask.any() and s.targets == 0
        elif sent["type"] == "multi":
            assert s.targets in (2, 3) and s.mask.any()
            assert any(w in s.sentence.split() for w in ("two", "three", "both", "all"))
        else:
            assert s.targets == 1 and s.mask.any()
    again = GRefDataset(tmp_path / "g", "val")  # deterministic for a seed
    assert [again[i].sentence for i in range(5)] == [s.sentence for s in samples[:5]]


def test_generalized_shapes_set_in_the_refer_layout(tmp_path):
    """``--layout refer``: the same refs in the refer API's pickle; the gRefCOCO loader reads it
    alike, the plain refer loader says it is a generalized set."""
    from eval.cli import main
    from eval.refcoco import RefDataset

    args = ["make-shapes", "--n", "12", "--seed", "3", "--generalized"]
    assert main(args + ["--out", str(tmp_path / "g")]) == 0
    assert main(args + ["--out", str(tmp_path / "r"), "--layout", "refer"]) == 0
    assert (tmp_path / "r" / "grefcoco" / "refs(unc).p").is_file()
    assert not (tmp_path / "r" / "grefcoco" / "grefs(unc).json").exists()
    a, b = GRefDataset(tmp_path / "g", "val"), GRefDataset(tmp_path / "r", "val")
    for i in range(len(a)):
        sa, sb = a[i], b[i]
        assert (sa.sentence, sa.ann_ids, sa.no_target, sa.kind) == (sb.sentence, sb.ann_ids, sb.no_target, sb.kind)
        assert np.array_equal(sa.mask, sb.mask)
    multi = next(i for i in range(len(b)) if len(b.items[i][0]["ann_id"]) != 1 or b[i].no_target)
    with pytest.raises(ValueError, match="eval grefcoco"):
        RefDataset(tmp_path / "r", "grefcoco", split="val")[multi]


def test_summary_breaks_down_by_target_count_and_counts_instances():
    from eval.runner import summarise

    recs = [
        {
            "id": "0:0",
            "inter": 5,
            "union": 10,
            "iou": 0.5,
            "no_target": False,
            "pred_empty": False,
            "targets": 1,
            "instances": 1,
            "type": "single",
        },
        {
            "id": "1:1",
            "inter": 8,
            "union": 10,
            "iou": 0.8,
            "no_target": False,
            "pred_empty": False,
            "targets": 3,
            "instances": 2,
            "type": "multi",
        },
        {
            "id": "2:2",
            "inter": 0,
            "union": 0,
            "iou": 1.0,
            "no_target": True,
            "pred_empty": True,
            "targets": 0,
            "instances": 0,
            "type": "none",
        },
        {
            "id": "3:3",
            "inter": 0,
            "union": 4,
            "iou": 0.0,
            "no_target": True,
            "pred_empty": False,
            "targets": 0,
            "instances": 2,
            "type": "none",
        },
    ]
    out = summarise("grefcoco", recs)
    assert out["miou_single"] == 0.5 and out["miou_multi"] == 0.8
    assert out["count_error"] == pytest.approx((0 + 1 + 0 + 2) / 4)
    assert out["giou/none"] == 0.5 and out["giou"] == pytest.approx(2.3 / 4)
