"""FLUX.1 (dev / schnell) and FLUX-architecture pipelines: T5 text first, then image tokens, in
19 dual-stream and 38 single-stream blocks (FLUX.1); attention through diffusers' dispatcher."""

from __future__ import annotations

import numpy as np
import torch

from .base import DiTBackend
from .capture import SequenceLayout
from .sequences import TokenSequence, join_streams, tokenize_stream


class FluxBackend(DiTBackend):
    arch = "flux"
    block_lists = ("transformer_blocks", "single_transformer_blocks")
    attention_attr = "attn"
    capture_via = "dispatcher"
    timestep_scale = 1.0  # the transformer multiplies by 1000 itself
    cond_shared = ("text_ids",)

    @property
    def patch(self) -> int:
        return self.vae_scale * 2  # 2×2 latent patches are packed into one token

    def default_max_sequence_length(self) -> int:
        return 512

    def layout(self, block: str, q_len: int, k_len: int, text_len: int, image_len: int) -> SequenceLayout:
        # Dual-stream blocks concatenate [text, image]; single-stream blocks receive that sequence.
        # (FLUX.2 edits append reference-image tokens after the image: neither image nor text here.)
        return SequenceLayout(image=slice(text_len, text_len + image_len), text=slice(0, text_len))

    def tokenize(self, prompts: list[str], max_sequence_length: int) -> list[TokenSequence]:
        return [
            join_streams(p, ("t5",), [tokenize_stream(self.pipe.tokenizer_2, p, max_sequence_length, 0)])
            for p in prompts
        ]

    @torch.no_grad()
    def encode_prompts(self, sequences: list[TokenSequence]) -> dict:
        """T5 hidden states of the sequences' ids (``FluxPipeline._get_t5_prompt_embeds``) and the
        CLIP pooled embedding of the prompt (``_get_clip_prompt_embeds``): the pipeline's own steps."""
        pipe = self.pipe
        ids = torch.from_numpy(np.stack([s.ids for s in sequences])).to(self.text_device)
        embeds = pipe.text_encoder_2(ids, output_hidden_states=False)[0].to(pipe.text_encoder_2.dtype)
        clip = pipe.tokenizer(
            [s.prompt for s in sequences],
            padding="max_length",
            max_length=pipe.tokenizer_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        pooled = pipe.text_encoder(clip.to(self.text_device), output_hidden_states=False).pooler_output
        pooled = pooled.to(pipe.text_encoder.dtype)
        text_dtype = pipe.text_encoder.dtype if pipe.text_encoder is not None else self.dtype
        text_ids = torch.zeros(ids.shape[1], 3, device=self.device, dtype=text_dtype)
        return {"embeds": embeds.to(self.dtype), "pooled": pooled.to(self.dtype), "text_ids": text_ids}

    @staticmethod
    def pack(latents: torch.Tensor) -> torch.Tensor:
        """``[B, C, h, w]`` latents → ``[B, h/2 · w/2, 4C]`` tokens (2×2 patches, row-major)."""
        b, c, h, w = latents.shape
        x = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(b, (h // 2) * (w // 2), c * 4)

    def image_ids(self, rows: int, cols: int) -> torch.Tensor:
        """RoPE positions ``[rows · cols, 3]``: (0, row, col) per token."""
        ids = torch.zeros(rows, cols, 3)
        ids[..., 1] = ids[..., 1] + torch.arange(rows)[:, None]
        ids[..., 2] = ids[..., 2] + torch.arange(cols)[None, :]
        return ids.reshape(rows * cols, 3).to(device=self.device, dtype=self.dtype)

    def forward(self, latents: torch.Tensor, sigma: float, cond: dict, guidance_scale: float) -> torch.Tensor:
        b = latents.shape[0]
        rows, cols = self.grid(latents)
        return self.transformer(
            hidden_states=self.pack(latents),
            timestep=self.timesteps(sigma, b),
            guidance=self.guidance(b, guidance_scale),
            pooled_projections=cond["pooled"],
            encoder_hidden_states=cond["embeds"],
            txt_ids=cond["text_ids"],
            img_ids=self.image_ids(rows, cols),
            return_dict=False,
        )[0]
