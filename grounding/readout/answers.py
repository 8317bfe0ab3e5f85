"""Answer grounding for visual questions, training-free: pure helpers.

The evidence region for a question is grounded like a referring expression from the text
"question answer" (or the question alone), then sharpened against a generic prompt's map of the
same image (``contrast``); the grounder caches the generic map per image.
"""

from __future__ import annotations

import numpy as np
import torch

from .maps import normalise


def answer_prompt(question: str, answer: str | None = None) -> str:
    """The text grounded for a (question, answer): "what is on the plate? pizza"."""
    if not isinstance(question, str) or not question.strip():
        raise ValueError("question is empty")
    q = " ".join(question.split())
    if answer is None or not str(answer).strip():
        return q
    return f"{q} {' '.join(str(answer).split())}"


def contrast(G: torch.Tensor, generic: torch.Tensor, percentile: float) -> torch.Tensor:
    """``G / (generic + λ)`` on maps ``[N]`` that sum to 1, with ``λ`` the ``percentile`` of the
    generic map (a level the generic map itself reaches, not a tiny constant that would let
    its near-zero tokens explode); the result sums to 1."""
    if not 0.0 <= percentile <= 100.0:
        raise ValueError(f"answer.percentile must be in [0, 100], got {percentile}")
    g = normalise(generic.float())
    lam = float(np.percentile(g.numpy(), percentile))
    return normalise(normalise(G.float()) / (g + max(lam, 1e-12)))
