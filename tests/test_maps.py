"""Map operations on constructed tensors where the right answer is known."""

import numpy as np
import torch

from grounding.config import GroundingConfig, RedistributionConfig, SinkConfig
from grounding.readout import maps
from grounding.readout.tokens import CONTENT, MAGNET, PAD, SPECIAL, STOP

# columns: content, content, stop, magnet, magnet, EOS, pad
KINDS = np.array([CONTENT, CONTENT, STOP, MAGNET, MAGNET, SPECIAL, PAD], dtype=np.int8)
L, V, H, N, C = 4, 1, 2, 36, len(KINDS)


def background(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(L, V, H, N, C, generator=g) * 0.01 + 0.002


def test_planted_sink_is_found_only_where_planted():
    A = background()
    A[3, :, :, 7, :] += 1.0  # token 7 takes a big share from every column in the deepest block
    sinks = maps.find_sinks(A, maps.valid_columns(KINDS), threshold=8.0, quantile=0.1)
    assert sinks[3, :, :, 7].all()
    assert sinks.sum() == V * H  # nothing else flagged
    assert not sinks[:3].any()


def test_suppress_zeroes_sink_and_keeps_column_mass():
    A = background()
    A[3, :, :, 7, :] += 1.0
    out, sinks = maps.handle_sinks(A, KINDS, SinkConfig(mode="suppress"))
    assert (out[3, :, :, 7, :] == 0).all()
    torch.testing.assert_close(out.sum(dim=-2), A.sum(dim=-2))
    torch.testing.assert_close(out[:3], A[:3])


def test_redirect_moves_sink_mass_onto_magnets():
    A = background()
    A[3, :, :, 7, :] += 1.0
    out, _ = maps.handle_sinks(A, KINDS, SinkConfig(mode="redirect"))
    movable = torch.tensor([k not in (PAD, MAGNET) for k in KINDS])
    assert (out[3, :, :, 7][..., movable] == 0).all()
    # the row's total over valid columns is conserved, now all on the two magnets
    valid = torch.from_numpy(KINDS != PAD)
    torch.testing.assert_close(out[3, :, :, 7][..., valid].sum(-1), A[3, :, :, 7][..., valid].sum(-1))
    magnets = torch.from_numpy(KINDS == MAGNET)
    assert (out[3, :, :, 7][..., magnets] > 0.5).all()


def test_sink_no_longer_wins_the_referent_map():
    A = background()
    A[:, :, :, 20, :2] += 0.05  # the referent: content columns only
    A[3, :, :, 7, :] += 1.0  # a global sink
    w = torch.tensor([1.0, 1.0, 0, 0, 0, 0, 0])
    no_redis = RedistributionConfig(enabled=False)  # isolate sink handling
    cfg_off = GroundingConfig(sinks=SinkConfig(enabled=False), redistribution=no_redis)
    raw = maps.aggregate(
        maps.normalise(maps.token_map(maps.clean(A, KINDS, np.arange(C), cfg_off).A, w)),
        torch.ones(L),
        torch.ones(L, H),
    )
    assert int(raw.argmax()) == 7
    for mode in ("suppress", "redirect"):
        cfg = GroundingConfig(sinks=SinkConfig(mode=mode), redistribution=no_redis)
        cleaned = maps.clean(A, KINDS, np.arange(C), cfg)
        m = maps.aggregate(maps.normalise(maps.token_map(cleaned.A, w)), torch.ones(L), torch.ones(L, H))
        assert int(m.argmax()) == 20, mode


def test_magnet_columns_are_excluded_from_the_referent():
    A = background()
    A[..., 5, 3:5] += 1.0  # magnets love token 5
    A[..., 30, 0] += 0.05  # the referent word points at token 30
    w = torch.from_numpy(np.where(KINDS == CONTENT, 1.0, 0.0).astype(np.float32))
    m = maps.token_map(A, w)
    assert (m.argmax(dim=-1) == 30).all()
    # had the magnets been counted, they would have won
    m_all = maps.token_map(A, torch.from_numpy((KINDS != PAD).astype(np.float32)))
    assert (m_all.argmax(dim=-1) == 5).all()


def test_redistribution_sharpens_a_planted_referent():
    A = torch.zeros(1, 1, 1, N, C)
    valid = KINDS != PAD
    A[..., :, valid] = 0.5 / valid.sum()  # background: much text attention, spread evenly
    A[..., 12, :] = 0.0
    A[..., 12, 0] = 0.1  # the referent patch: little text attention, all on the content word
    before = A[0, 0, 0, :, 0]
    after = maps.redistribute(A, KINDS)[0, 0, 0, :, 0]

    def peak_ratio(m):
        return float(m.max() / m.mean())

    assert int(before.argmax()) == 12 and int(after.argmax()) == 12
    assert peak_ratio(after) > 2 * peak_ratio(before)
    rows = maps.redistribute(A, KINDS)[0, 0, 0]
    assert (rows[:, ~torch.from_numpy(valid)] == 0).all()
    torch.testing.assert_close(rows.sum(-1), torch.ones(N))


def test_block_and_head_weights():
    M = torch.zeros(2, 1, 2, N)
    M[0, :, :, 3] = 1.0  # block 0 says 3
    M[1, :, 0, 9] = 1.0  # block 1 head 0 says 9
    M[1, :, 1, 15] = 1.0  # block 1 head 1 says 15
    assert int(maps.aggregate(M, torch.tensor([1.0, 0.0]), torch.ones(2, 2)).argmax()) == 3
    assert int(maps.aggregate(M, torch.tensor([0.0, 1.0]), torch.tensor([[1.0, 1.0], [0.0, 1.0]])).argmax()) == 15
    cfg = GroundingConfig(block_weights={"b1": 0.0}, head_weights={"b0/1": 0.5})
    bw, hw = maps.weights_for(["b0", "b1"], 2, cfg)
    assert bw.tolist() == [1.0, 0.0] and hw.tolist() == [[1.0, 0.5], [1.0, 1.0]]


def test_to_image_orientation_and_range():
    m = torch.zeros(6 * 8)
    m[1 * 8 + 6] = 1.0  # row 1, col 6 of a 6×8 grid
    img = maps.to_image(m, (6, 8), (80, 60))
    assert img.shape == (60, 80) and img.min() == 0.0 and img.max() == 1.0
    y, x = np.unravel_index(img.argmax(), img.shape)
    assert 10 <= y < 20 and 60 <= x < 70


def test_presence_score_never_overflows():
    from grounding.config import PresenceConfig
    from grounding.readout import presence

    cfg = PresenceConfig(weights={"content_share": 1e6}, bias=0.0)
    assert presence.score({"content_share": -1.0}, cfg) == 0.0
    assert presence.score({"content_share": 1.0}, cfg) == 1.0
    assert presence.score({"content_share": 0.0}, cfg) == 0.5
