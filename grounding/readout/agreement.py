"""Word agreement: decisions read from whether the expression's attribute words light one region.

A text-to-image DiT's token columns light what each word denotes (DAAM, ConceptAttention): in
"the red circle", the column of *red* lights every red thing, the column of *circle* every circle,
and the referent is where they meet. When no red circle is there, the two columns peak on
different objects (a red square, a blue circle). That test needs no training data of the model:
only the words' maps, read as the model computes them.

Read-out (not RefAM's referent map — no redistribution, no per-head normalisation): a word's map
is the raw image→text probability on its positions, pooled over heads, blocks and noise levels,
then normalised over image tokens. Pooling before normalising is what a model trained with a
token-grounding loss on head-mean attention exposes (per-head normalisation lets near-empty heads
weigh as much as the heads that carry the word); redistribution over the prompt's few real
columns makes every column share each image token's mass, so an object that draws one word draws
the others too.

Shapes: ``A`` ``[L, V, H, N, C]`` (blocks × noise levels × heads × image tokens × kept text
positions) for one sample; ``M`` ``[W, N]`` one map per attribute word; ``grid`` (rows, cols).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .tokens import CONTENT, PromptTokens, complement_words

_EPS = 1e-12


def attribute_words(tokens: PromptTokens, word_of_column: np.ndarray) -> list[int]:
    """Indices (into ``tokens.words``) of the words that describe the referent itself: content
    words of the expression outside a relation's complement ("yellow", "circle" of "left of the
    yellow circle" denote the anchor), that have a captured position."""
    comp = set(complement_words(tokens.words))
    present = set(np.asarray(word_of_column).tolist())
    return [i for i, w in enumerate(tokens.words) if w.kind == CONTENT and i not in comp and i in present]


def word_maps(
    A: torch.Tensor, word_of_column: np.ndarray, words: list[int], blocks: list[int] | None = None
) -> torch.Tensor:
    """``[W, N]``: for each word, the attention on its positions summed, pooled (mean) over the
    ``blocks`` (indices into ``L``; None = all), noise levels and heads, normalised to sum 1."""
    A = A if blocks is None else A[blocks]
    cols = torch.from_numpy(np.asarray(word_of_column))
    out = [A[..., cols == w].sum(-1).mean(dim=(0, 1, 2)) for w in words]
    if not out:
        return torch.zeros(0, A.shape[-2])
    M = torch.stack(out).double()
    return M / M.sum(-1, keepdim=True).clamp_min(_EPS)


def agreement_map(M: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """``[N]``: per image token, the least of the words' relative strengths there — each word's map
    smoothed over 3 × 3 cells (zero beyond the border, so edge cells are not favoured; a word and
    its neighbour may light adjacent cells of one object) and
    divided by its own peak. High only where every word is near its peak."""
    if len(M) == 0:
        raise ValueError("agreement needs at least one word map")
    g = M.reshape(len(M), 1, *grid)
    smooth = F.avg_pool2d(g, 3, 1, 1, count_include_pad=True).reshape(len(M), -1)
    rel = smooth / smooth.amax(-1, keepdim=True).clamp_min(_EPS)
    return rel.min(0).values


def agreement(M: torch.Tensor, grid: tuple[int, int]) -> float | None:
    """The peak of ``agreement_map`` in [0, 1]: 1 when the words peak together, low when they
    peak on different things. None for fewer than two words (one word always agrees with itself)."""
    if len(M) < 2:
        return None
    return float(agreement_map(M, grid).max())
