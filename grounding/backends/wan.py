"""Wan 2.x (``WanPipeline``, ``WanVideoToVideoPipeline``): a video diffusion transformer whose
text comes in by cross-attention. Each block self-attends over the video tokens (``attn1``) and
then cross-attends from them to the UMT5 text (``attn2``, through diffusers' dispatcher); the
capture reads ``attn2``, whose queries are all video tokens and whose keys are all text tokens.

The pipeline feeds the text encoder's states of the real tokens and zeros after them, with no
attention mask: the model attends to those zero positions too, so their keys are in every row's
softmax (the read-out's log-sum-exp runs over them) while only the real tokens are kept.

Wan 2.2 A14B has two experts: ``transformer`` for timesteps ≥ ``boundary_ratio ·
num_train_timesteps`` and ``transformer_2`` (low noise) below; each noise level is read from the
expert the pipeline would run at it (``expert``).

Clips (``video.VideoDiTBackend``): the causal Wan VAE keeps the first frame alone and then folds
``vae_scale_factor_temporal`` (4) frames into each latent frame; latents are normalised by the
VAE's per-channel ``latents_mean`` / ``latents_std``; patches (1, 2, 2).
"""

from __future__ import annotations

import numpy as np
import torch

from .base import Capture
from .capture import SequenceLayout
from .sequences import PADDING, TokenSequence, join_streams, tokenize_stream
from .video_dit import VideoDiTBackend


class WanBackend(VideoDiTBackend):
    arch = "wan"
    block_lists = ("blocks",)
    attention_attr = "attn2"  # the cross-attention: video queries, text keys
    capture_via = "dispatcher"
    timestep_scale = 1000.0  # the scheduler's timesteps are σ · 1000

    @property
    def temporal(self) -> int:
        """Source frames per latent frame after the first (the VAE's temporal compression)."""
        return 2 ** sum(self.vae.temperal_downsample)

    def vae_scale_factor(self) -> int:
        return 2 ** len(self.vae.temperal_downsample)

    def spatial_patch(self) -> int:
        return self.transformer.config.patch_size[1]

    def default_max_sequence_length(self) -> int:
        return 512

    def layout(self, block: str, q_len: int, k_len: int, text_len: int, image_len: int) -> SequenceLayout:
        # Wan 2.1 image-to-video puts CLIP image context before the text: the text is the last text_len keys.
        return SequenceLayout(image=slice(0, q_len), text=slice(k_len - text_len, k_len), joint=False)

    def tokenize(self, prompts: list[str], max_sequence_length: int) -> list[TokenSequence]:
        return [
            join_streams(p, ("umt5",), [tokenize_stream(self.pipe.tokenizer, p, max_sequence_length, 0)])
            for p in prompts
        ]

    @torch.no_grad()
    def encode_prompts(self, sequences: list[TokenSequence]) -> dict:
        """``WanPipeline._get_t5_prompt_embeds`` on the sequences' ids: UMT5 states of the real
        tokens, zeros after them (the pipeline's own padding)."""
        enc = self.pipe.text_encoder
        ids = torch.from_numpy(np.stack([s.ids for s in sequences])).to(self.text_device)
        mask = torch.from_numpy(np.stack([(s.roles != PADDING).astype(np.int64) for s in sequences])).to(
            self.text_device
        )
        states = enc(ids, mask).last_hidden_state.to(enc.dtype)
        keep = mask.bool()[..., None]
        return {"embeds": torch.where(keep, states, torch.zeros_like(states)).to(self.device, self.dtype)}

    def expert(self, sigma: float) -> torch.nn.Module:
        """The transformer ``WanPipeline`` runs at noise level ``sigma`` (Wan 2.2's two experts)."""
        pipe = self.pipe
        second = getattr(pipe, "transformer_2", None)
        ratio = getattr(pipe.config, "boundary_ratio", None)
        if second is None or ratio is None:
            return pipe.transformer
        boundary = ratio * pipe.scheduler.config.num_train_timesteps
        return pipe.transformer if sigma * self.timestep_scale >= boundary else second

    @torch.no_grad()
    def capture(
        self,
        images,
        sequences,
        size,
        timesteps,
        seed,
        guidance_scale=3.5,
        blocks=None,
        lse_source="fused",
        image_keep=None,
        early_exit=True,
    ) -> Capture:
        """``DiTBackend.capture`` with each noise level on its expert (levels of one expert in one
        capture, the probabilities put back in the order of ``timesteps``)."""
        experts = [self.expert(t) for t in timesteps]
        if all(e is self.transformer for e in experts):
            return super().capture(
                images, sequences, size, timesteps, seed, guidance_scale, blocks, lse_source, image_keep, early_exit
            )
        parts, order = [], []
        for e in dict.fromkeys(experts):
            idx = [i for i, x in enumerate(experts) if x is e]
            levels = tuple(timesteps[i] for i in idx)
            own, self.transformer = self.transformer, e
            try:
                parts.append(
                    super().capture(
                        images,
                        sequences,
                        size,
                        levels,
                        seed,
                        guidance_scale,
                        blocks,
                        lse_source,
                        image_keep,
                        early_exit,
                    )
                )
            finally:
                self.transformer = own
            order += idx
        probs = torch.cat([c.probs for c in parts], dim=1)[:, torch.argsort(torch.tensor(order))]
        first = parts[0]
        return Capture(probs, first.block_names, tuple(timesteps), first.columns, first.grid, first.text_len)

    def encode_clips(self, x: torch.Tensor) -> torch.Tensor:
        """The video-to-video pipeline's ``(z − latents_mean) / latents_std`` on the VAE's mode."""
        z = self.vae.encode(x).latent_dist.mode()
        cfg = self.vae.config
        mean = torch.tensor(cfg.latents_mean, device=z.device, dtype=z.dtype).view(1, cfg.z_dim, 1, 1, 1)
        std = torch.tensor(cfg.latents_std, device=z.device, dtype=z.dtype).view(1, cfg.z_dim, 1, 1, 1)
        return (z - mean) / std

    def forward(self, latents: torch.Tensor, sigma: float, cond: dict, guidance_scale: float) -> torch.Tensor:
        return self.transformer(
            hidden_states=latents,
            timestep=self.timesteps(sigma, latents.shape[0]),
            encoder_hidden_states=cond["embeds"],
            return_dict=False,
        )[0]
