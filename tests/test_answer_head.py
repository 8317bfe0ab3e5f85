"""The sentence-attention answer head: shapes, the untrained head equals the training-free path,
a short training run on generated data lowers the loss, the VizWiz-layout loader, CLI end to end."""

from pathlib import Path

import numpy as np
import pytest
import torch

from eval.answers import VizWizGrounding, write_shapes_vizwiz
from fixtures import last_json, run_module
from grounding.config import GroundingConfig
from grounding.readout import maps
from grounding.readout.answer_head import AnswerHead, SentenceAttentionBlock, loss_fn, prior_weights, target_cells

ROOT = Path(__file__).resolve().parents[1]


def test_sab_and_head_forward_backward_shapes():
    sab = SentenceAttentionBlock(8, 5)
    w = sab(torch.randn(3, 8))
    assert w.shape == (3, 5) and torch.allclose(w.sum(-1), torch.ones(3))
    assert torch.allclose(w, torch.full((3, 5), 0.2))  # zero-initialised last layer: uniform
    head = AnswerHead(channels=5, dim=8, width=4)
    ch = torch.rand(2, 5, 6, 7)
    ch = ch / ch.flatten(2).sum(-1)[..., None, None]
    m, logits = head(ch, torch.randn(2, 8))
    assert m.shape == (2, 6, 7) and logits.shape == (2, 6, 7)
    assert torch.allclose(m.flatten(1).sum(-1), torch.ones(2), atol=1e-5)
    loss = loss_fn(logits, (torch.rand(2, 6, 7) > 0.7).float())
    loss.backward()
    assert all(p.grad is not None for p in head.parameters())


def test_untrained_head_is_the_training_free_map():
    cfg = GroundingConfig(block_weights={"b0": 1.0, "b1": 2.0}, head_weights={"b0/1": 0.0})
    names, L, V, H, grid = ["b0", "b1"], 2, 2, 3, (4, 5)
    per = torch.rand(L, V, H, 20)
    per = per / per.sum(-1, keepdim=True)
    bw, hw = maps.weights_for(names, H, cfg)
    want = maps.aggregate(per, bw, hw)
    head = AnswerHead(L * V * H, dim=16, prior=prior_weights(cfg, names, V, H))
    m, _ = head(per.reshape(1, L * V * H, *grid), torch.randn(1, 16))
    assert torch.allclose(m.reshape(-1), want / want.sum(), atol=1e-6)


def test_vizwiz_layout_loader(tmp_path):
    root = write_shapes_vizwiz(tmp_path, n=4, seed=0, split="val")
    ds = VizWizGrounding(root, "val")
    assert len(ds) == 4
    s = ds[0]
    assert s.question.startswith("what shape is") and s.answer in ("circle", "square", "triangle")
    assert s.mask.shape == (64, 64) and s.mask.sum() > 20 and s.image_path.is_file()
    # binary mask PNGs, when shipped, take precedence over the polygon
    from PIL import Image

    (root / "binary_masks_png" / "val").mkdir(parents=True)
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(root / "binary_masks_png" / "val" / (s.image_path.stem + ".png"))
    assert VizWizGrounding(root, "val")[0].mask.sum() == 0
    assert target_cells(s.mask, (16, 16)).shape == (16, 16)
    with pytest.raises(FileNotFoundError):
        VizWizGrounding(root, "test")


def test_training_lowers_the_loss_and_the_cli_saves_a_head_the_grounder_uses(tmp_path, tiny_flux_dir):
    data = write_shapes_vizwiz(tmp_path / "vw", n=12, seed=1, split="train")
    model = tmp_path / "model"
    import shutil

    shutil.copytree(tiny_flux_dir, model)
    report = last_json(run_module("training", "train-answer-head", "--model", model, "--data", data, "--epochs", 40))
    assert report["samples"] == 12 and report["loss_after"] < report["loss_before"] * 0.9, report
    assert (model / "answer_head.safetensors").is_file()

    from grounding import Grounder

    g = Grounder.from_pretrained(model, device="cpu")
    assert g.answer_head is not None
    s = VizWizGrounding(data, "train")[0]
    with_head = g.ground_answer(s.image_path, s.question, s.answer)
    without = g.ground_answer(s.image_path, s.question, s.answer, **{"answer.head": False})
    assert with_head.mask.shape == s.mask.shape
    assert not np.array_equal(with_head.heatmap, without.heatmap)
    run = tmp_path / "run"
    results = []
    for _ in range(2):  # the second run finds every sample done (resumable results.jsonl)
        e = run_module(
            "eval", "vizwiz", "--data-root", data, "--split", "train", "--model", model, "--limit", 4, "--out", run
        )
        results.append(last_json(e))
        assert len((run / "results.jsonl").read_text().splitlines()) == 4
    assert results[0] == results[1]
    assert results[0]["n"] == 4 and 0.0 <= results[0]["miou"] <= 1.0 and "pointing" in results[0]
