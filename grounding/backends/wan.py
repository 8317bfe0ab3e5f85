"""Wan 2.x (``WanPipeline``, ``WanVideoToVideoPipeline``): a video diffusion transformer whose
text comes in by cross-attention. Each block self-attends over the video tokens (``attn1``) and
then cross-attends from them to the UMT5 text (``attn2``, through diffusers' dispatcher); the
capture reads ``attn2``, whose queries are all video tokens and whose keys are all text tokens.

The pipeline feeds the text encoder's states of the real tokens and zeros after them, with no
attention mask: the model attends to those zero positions too, so their keys are in every row's
softmax (the read-out's log-sum-exp runs over them) while only the real tokens are kept.

Clips: the causal video VAE keeps the first frame alone and then folds
``vae_scale_factor_temporal`` (4) frames into each latent frame, so a clip has ``4k + 1``
frames and ``k + 1`` latent frames (``latent_frames``). A single image is a one-frame clip.
Video tokens are ordered (latent frame, row, column); a capture of one clip comes back with one
"sample" per latent frame (``capture_clip``).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image

from .base import PADDING, Capture, DiTBackend, TokenSequence, join_streams, tokenize_stream
from .capture import SequenceLayout


def latent_frames(num_frames: int, temporal: int) -> list[list[int]]:
    """Source frames of each latent frame of a ``num_frames`` clip (``num_frames = temporal·k + 1``):
    ``[[0], [1 … temporal], [temporal+1 … 2·temporal], …]``."""
    if num_frames < 1 or (num_frames - 1) % temporal:
        raise ValueError(f"a clip for this VAE has {temporal}·k + 1 frames, got {num_frames}")
    return [[0]] + [list(range(1 + temporal * k, 1 + temporal * (k + 1))) for k in range((num_frames - 1) // temporal)]


def clip_length(n: int, temporal: int) -> int:
    """The shortest valid clip length (``temporal·k + 1``) holding ``n`` frames."""
    return 1 + temporal * max(0, -(-(n - 1) // temporal))


class WanBackend(DiTBackend):
    arch = "wan"
    block_lists = ("blocks",)
    attention_attr = "attn2"  # the cross-attention: video queries, text keys
    capture_via = "dispatcher"
    timestep_scale = 1000.0  # the scheduler's timesteps are σ · 1000
    video = True

    @property
    def temporal(self) -> int:
        """Source frames per latent frame after the first (the VAE's temporal compression)."""
        return 2 ** sum(self.vae.temperal_downsample)

    def vae_scale_factor(self) -> int:
        return 2 ** len(self.vae.temperal_downsample)

    @property
    def patch(self) -> int:
        return self.vae_scale * self.transformer.config.patch_size[1]

    def default_max_sequence_length(self) -> int:
        return 512

    def layout(self, block: str, q_len: int, k_len: int, text_len: int, image_len: int) -> SequenceLayout:
        # Wan 2.1 image-to-video puts CLIP image context before the text: the text is the last text_len keys.
        return SequenceLayout(image=slice(0, q_len), text=slice(k_len - text_len, k_len), joint=False)

    def tokenize(self, prompts: list[str], max_sequence_length: int) -> list[TokenSequence]:
        return [join_streams(p, ("umt5",), [tokenize_stream(self.pipe.tokenizer, p, max_sequence_length, 0)])
                for p in prompts]

    @torch.no_grad()
    def encode_prompts(self, sequences: list[TokenSequence]) -> dict:
        """``WanPipeline._get_t5_prompt_embeds`` on the sequences' ids: UMT5 states of the real
        tokens, zeros after them (the pipeline's own padding)."""
        enc = self.pipe.text_encoder
        ids = torch.from_numpy(np.stack([s.ids for s in sequences])).to(self.text_device)
        mask = torch.from_numpy(np.stack([(s.roles != PADDING).astype(np.int64) for s in sequences])).to(self.text_device)
        states = enc(ids, mask).last_hidden_state.to(enc.dtype)
        keep = mask.bool()[..., None]
        return {"embeds": torch.where(keep, states, torch.zeros_like(states)).to(self.device, self.dtype)}

    # --- pixels ---------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_pixels(self, images: Sequence, size: tuple[int, int]) -> torch.Tensor:
        """Images (one-frame clips) or clips (lists of frames, ``4k + 1`` each, one length per
        batch) → normalised latents ``[B, C, F, h, w]`` (the video-to-video pipeline's
        ``(z − latents_mean) / latents_std`` on the VAE's mode)."""
        clips = [list(x) if isinstance(x, (list, tuple)) else [x] for x in images]
        if len({len(c) for c in clips}) != 1:
            raise ValueError("clips of one batch must have one length")
        latent_frames(len(clips[0]), self.temporal)  # checks the length
        x = torch.stack([self.pixels(c, size).permute(1, 0, 2, 3) for c in clips])  # [B, 3, F, H, W]
        z = self.vae.encode(x).latent_dist.mode()
        cfg = self.vae.config
        mean = torch.tensor(cfg.latents_mean, device=z.device, dtype=z.dtype).view(1, cfg.z_dim, 1, 1, 1)
        std = torch.tensor(cfg.latents_std, device=z.device, dtype=z.dtype).view(1, cfg.z_dim, 1, 1, 1)
        return ((z - mean) / std).to(self.dtype)

    def grid(self, latents: torch.Tensor) -> tuple[int, int]:
        """Token rows × columns of the whole clip: latent frames stacked along the rows."""
        _, ph, pw = self.transformer.config.patch_size
        return latents.shape[2] * (latents.shape[3] // ph), latents.shape[4] // pw

    def forward(self, latents: torch.Tensor, sigma: float, cond: dict, guidance_scale: float) -> torch.Tensor:
        return self.transformer(hidden_states=latents, timestep=self.timesteps(sigma, latents.shape[0]),
                                encoder_hidden_states=cond["embeds"], return_dict=False)[0]

    # --- clips ----------------------------------------------------------------------------------
    def capture_clip(self, frames: list[Image.Image], sequence: TokenSequence, size: tuple[int, int],
                     timesteps: tuple[float, ...], seed: int, guidance_scale: float = 1.0,
                     blocks: list[str] | None = None) -> tuple[Capture, list[list[int]]]:
        """One forward per noise level over a whole clip (``4k + 1`` frames): a ``Capture`` with one
        sample per latent frame (``probs`` ``[L, V, T_latent, H, h·w, C]``, grid ``(h, w)``) and
        the source frames of each latent frame."""
        groups = latent_frames(len(frames), self.temporal)
        cap = self.capture([list(frames)], [sequence], size, timesteps, seed, guidance_scale, blocks)
        t = len(groups)
        rows, cols = cap.grid[0] // t, cap.grid[1]
        L, V, _, H, N, C = cap.probs.shape
        probs = cap.probs.reshape(L, V, H, t, rows * cols, C).permute(0, 1, 3, 2, 4, 5).contiguous()
        return Capture(probs, cap.block_names, cap.timesteps, cap.columns, (rows, cols), cap.text_len), groups
