"""The second shapes world (``eval.shapes_b``): every expression denotes exactly its targets, the
presence pairs keep the object count and both distractors, the discrimination sets need the word
they are named for, scenes are reproducible and written in gRefCOCO's layout, and the runner's
summary reports the presence decision and pointing per sentence type."""

import json
import re

import numpy as np
import pytest

from eval.shapes import SHAPES
from eval.shapes_b import COLOUR_NAMES, KINDS, example, write

COUNTS = {"two": 2, "three": 3, "both": 2}


def denoted(expr: str, objects) -> list[int]:
    """Which objects the expression names: its colour word (if any) and shape word (if any; the
    category nouns shapes / objects / things name every shape)."""
    words = re.findall(r"[a-z]+", expr)
    colours = [w for w in words if w in COLOUR_NAMES]
    shapes = [w.rstrip("s") for w in words if w.rstrip("s") in SHAPES]
    return [
        i
        for i, o in enumerate(objects)
        if (not colours or o.colour == colours[0]) and (not shapes or o.shape == shapes[0])
    ]


@pytest.mark.parametrize("kind", sorted({k for ks in KINDS.values() for k in ks}))
def test_expressions_denote_exactly_their_targets(kind):
    rng = np.random.RandomState(5)
    for size in (64, 96):
        for _ in range(40):
            scene, targets, expr = example(rng, kind, size)
            assert denoted(expr, scene.objects) == targets, (kind, expr, scene.objects)
            assert 3 <= len(scene.objects) <= 6 or kind in ("colour-word", "shape-word", "multi")
            assert len(scene.masks) == len(scene.objects) and all(m.any() for m in scene.masks)
            assert not (np.sum(scene.masks, axis=0) > 1).any()  # no two objects overlap
            count = next((COUNTS[w] for w in expr.split() if w in COUNTS), None)
            assert count in (None, len(targets))
            if kind in ("present", "absent", "none", "single"):
                words = re.findall(r"[a-z]+", expr)
                colour = next(w for w in words if w in COLOUR_NAMES)
                shape = next(w for w in words if w in SHAPES)
                assert any(o.colour == colour and o.shape != shape for o in scene.objects)  # colour-sharer
                assert any(o.shape == shape and o.colour != colour for o in scene.objects)  # shape-sharer
            if kind in ("colour-word", "shape-word"):
                t = scene.objects[targets[0]]
                same = "shape" if kind == "colour-word" else "colour"
                assert sum(getattr(o, same) == getattr(t, same) for o in scene.objects) >= 2


def test_presence_pairs_keep_the_object_count():
    rng = np.random.RandomState(0)
    present = [len(example(rng, "present", 64)[0].objects) for _ in range(300)]
    absent = [len(example(rng, "absent", 64)[0].objects) for _ in range(300)]
    assert set(present) == set(absent) == {3, 4, 5, 6}
    assert abs(np.mean(present) - np.mean(absent)) < 0.25


def test_multi_uses_plural_category_words():
    rng = np.random.RandomState(1)
    exprs = [example(rng, "multi", 64)[2] for _ in range(200)]
    for noun in ("shapes", "objects", "things", "both", "all"):
        assert any(noun in e.split() for e in exprs), noun


def test_reproducible_and_written_in_the_grefcoco_layout(tmp_path):
    a = write(tmp_path / "a", "presence", 12, seed=3, size=96)
    b = write(tmp_path / "b", "presence", 12, seed=3, size=96)
    assert a.name == "shapes-b-presence-96"
    refs = json.loads((a / "grefs(unc).json").read_text())
    assert refs == json.loads((b / "grefs(unc).json").read_text())
    assert {s["type"] for r in refs for s in r["sentences"]} == {"present", "absent"}
    assert all(r["no_target"] == (r["sentences"][0]["type"] == "absent") for r in refs)
    for r in refs:
        assert (a / "images" / r["file_name"]).read_bytes() == (b / "images" / r["file_name"]).read_bytes()
    from eval.grefcoco import GRefDataset

    ds = GRefDataset(tmp_path / "a", "val", dataset="shapes-b-presence-96")
    assert len(ds) == 12 and ds[0].mask.shape == (96, 96)
    with pytest.raises(ValueError, match="unknown set"):
        write(tmp_path / "c", "nonsense", 1, seed=0)


def test_summary_reports_the_presence_decision_and_pointing_per_type():
    from eval.runner import gref_breakdown

    def rec(no_target, present, score, kind, pointing=None):
        r = {"no_target": no_target, "present": present, "presence_score": score, "type": kind, "iou": 0.5}
        r.update({"targets": 0 if no_target else 1, "instances": int(present)})
        if pointing is not None:
            r["pointing"] = pointing
        return r

    rows = [
        rec(False, True, 0.9, "present", True),
        rec(False, True, 0.6, "present", False),
        rec(True, True, 0.7, "absent"),
        rec(True, False, 0.2, "absent"),
    ]
    out = gref_breakdown(rows)
    assert out["presence_acc"] == 0.75 and out["presence_auc"] == 0.75  # 0.6 < 0.7: one pair of four wrong
    assert out["pointing/present"] == 0.5 and "pointing/absent" not in out
