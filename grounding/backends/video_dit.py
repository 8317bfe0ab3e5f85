"""What every video diffusion transformer shares: clips through a causal video VAE (the first
frame alone, then ``temporal`` frames per latent frame, so a clip has ``temporal·k + 1`` frames),
video tokens ordered (latent frame, row, column), and ``capture_clip``, which reads one clip's
capture as one sample per latent frame. An image is a one-frame clip, so the image API works too.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from PIL import Image

from .base import Capture, DiTBackend
from .sequences import TokenSequence


def latent_frames(num_frames: int, temporal: int) -> list[list[int]]:
    """Source frames of each latent frame of a ``num_frames`` clip (``num_frames = temporal·k + 1``):
    ``[[0], [1 … temporal], [temporal+1 … 2·temporal], …]``."""
    if num_frames < 1 or (num_frames - 1) % temporal:
        raise ValueError(f"a clip for this VAE has {temporal}·k + 1 frames, got {num_frames}")
    return [[0]] + [list(range(1 + temporal * k, 1 + temporal * (k + 1))) for k in range((num_frames - 1) // temporal)]


def clip_length(n: int, temporal: int) -> int:
    """The shortest valid clip length (``temporal·k + 1``) holding ``n`` frames."""
    return 1 + temporal * max(0, -(-(n - 1) // temporal))


class VideoDiTBackend(DiTBackend):
    """A ``DiTBackend`` whose transformer takes ``[B, C, F, h, w]`` latents. Subclasses give
    ``temporal`` and ``encode_clips``."""

    video = True

    @property
    def temporal(self) -> int:
        """Source frames per latent frame after the first (the VAE's temporal compression)."""
        raise NotImplementedError

    def encode_clips(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels ``[B, 3, F, H, W]`` in [-1, 1] → clean latents ``[B, C, F', h, w]`` as the pipeline makes them."""
        raise NotImplementedError

    def spatial_patch(self) -> int:
        """Latent cells per token side."""
        raise NotImplementedError

    @property
    def patch(self) -> int:
        return self.vae_scale * self.spatial_patch()

    @torch.no_grad()
    def encode_pixels(self, images: Sequence, size: tuple[int, int]) -> torch.Tensor:
        """Images (one-frame clips) or clips (lists of frames, ``temporal·k + 1`` each, one length
        per batch) → latents ``[B, C, F', h, w]``."""
        clips = [list(x) if isinstance(x, (list, tuple)) else [x] for x in images]
        if len({len(c) for c in clips}) != 1:
            raise ValueError("clips of one batch must have one length")
        latent_frames(len(clips[0]), self.temporal)  # checks the length
        return self.encode_clips(torch.stack([self.pixels(c, size).permute(1, 0, 2, 3) for c in clips])).to(self.dtype)

    def grid(self, latents: torch.Tensor) -> tuple[int, int]:
        """Token rows × columns of the whole clip: latent frames stacked along the rows."""
        p = self.spatial_patch()
        return latents.shape[2] * (latents.shape[3] // p), latents.shape[4] // p

    def capture_clip(
        self,
        frames: list[Image.Image],
        sequence: TokenSequence,
        size: tuple[int, int],
        timesteps: tuple[float, ...],
        seed: int,
        guidance_scale: float = 3.5,
        blocks: list[str] | None = None,
    ) -> tuple[Capture, list[list[int]]]:
        """One forward per noise level over a whole clip (``temporal·k + 1`` frames): a ``Capture``
        with one sample per latent frame (``probs`` ``[L, V, T_latent, H, h·w, C]``, grid
        ``(h, w)``) and the source frames of each latent frame."""
        groups = latent_frames(len(frames), self.temporal)
        clip: Any = [list(frames)]  # one sample: a clip (encode_pixels takes clips), not an image
        cap = self.capture(clip, [sequence], size, timesteps, seed, guidance_scale, blocks)
        t = len(groups)
        rows, cols = cap.grid[0] // t, cap.grid[1]
        L, V, _, H, _, C = cap.probs.shape
        probs = cap.probs.reshape(L, V, H, t, rows * cols, C).permute(0, 1, 3, 2, 4, 5).contiguous()
        return Capture(probs, cap.block_names, cap.timesteps, cap.columns, (rows, cols), cap.text_len), groups
