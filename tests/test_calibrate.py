"""Calibration search on constructed maps where the right blocks/levels are known."""

import numpy as np
import torch

from grounding.config import GroundingConfig
from training.calibrate import Collected, fit, pointing, token_centres_inside


def test_fit_finds_the_block_and_level_that_point():
    S, L, V, H, N = 12, 3, 2, 2, 16
    g = torch.Generator().manual_seed(0)
    per = torch.rand(S, L, V, H, N, generator=g) * 0.01
    inside = torch.zeros(S, N, dtype=torch.bool)
    for s in range(S):
        target = (3 * s) % N
        inside[s, target] = True
        per[s, 1, 0, :, target] += 1.0  # only block 1 at level 0 points right
        per[s, 2, :, :, (target + 5) % N] += 2.0  # block 2 points at background, loudly
    c = Collected(per, inside, ["b0", "b1", "b2"], (0.2, 0.6))
    cfg = GroundingConfig(timesteps=(0.6,))
    assert pointing(c, [1], torch.ones(L), torch.ones(L, H)) == 0.0
    fitted, report = fit(c, cfg)
    assert report["before"] == 0.0 and report["after"] == 1.0
    assert fitted.timesteps == (0.2,) and fitted.blocks == ("b1",)


def test_token_centres_inside():
    mask = np.zeros((8, 8), dtype=bool)
    mask[:4, 4:] = True
    assert token_centres_inside(mask, (2, 2)).tolist() == [False, True, False, False]


def test_fit_picks_the_one_head_that_grounds():
    S, L, V, H, N = 10, 2, 1, 4, 16
    g = torch.Generator().manual_seed(1)
    per = torch.rand(S, L, V, H, N, generator=g) * 0.01
    inside = torch.zeros(S, N, dtype=torch.bool)
    for s in range(S):
        target = (5 * s + 1) % N
        inside[s, target] = True
        per[s, 0, 0, 2, target] += 0.5  # block 0 head 2 grounds
        per[s, 0, 0, [0, 1, 3], (target + 7) % N] += 0.3  # its neighbours point at the background
        per[s, 1, 0, :, (target + 3) % N] += 0.3  # block 1 too
    c = Collected(per, inside, ["b0", "b1"], (0.3,))
    assert pointing(c, [0], torch.ones(L), torch.ones(L, H)) == 0.0  # averaging everything fails
    fitted, report = fit(c, GroundingConfig(timesteps=(0.3,)))
    assert report["after"] == 1.0 and report["heads"] == 1
    assert fitted.blocks == ("b0",) and fitted.head_weights == {"b0/0": 0.0, "b0/1": 0.0, "b0/3": 0.0}
    bw, hw = __import__("grounding.readout.maps", fromlist=["weights_for"]).weights_for(["b0"], H, fitted)
    assert hw.tolist() == [[0.0, 0.0, 1.0, 0.0]]
