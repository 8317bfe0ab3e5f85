"""Qwen-Image (``QwenImagePipeline``): a dual-stream MM-DiT with a Qwen2.5-VL text encoder.

The prompt is formatted into Qwen-Image's system/user template, encoded whole, and the first
``prompt_template_encode_start_idx`` (34) outputs — the system message — are dropped: the
transformer receives the user turn and the assistant prefix, each prompt at its own length (a
batch is padded to its longest and the padding masked out of attention). Joint attention over
[text, image]; the 3-D VAE encodes an image as one frame, latents are normalised by the VAE's
per-channel mean/std and packed 2×2 into tokens.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from .base import DiTBackend
from .capture import SequenceLayout
from .flux import FluxBackend
from .sequences import PADDING, TokenSequence, template_tokens


class QwenImageBackend(DiTBackend):
    arch = "qwenimage"
    block_lists = ("transformer_blocks",)
    attention_attr = "attn"
    capture_via = "dispatcher"
    timestep_scale = 1.0  # the pipeline passes t / 1000 = σ
    variable_text_length = True

    def vae_scale_factor(self) -> int:
        return 2 ** len(self.vae.temperal_downsample)

    @property
    def patch(self) -> int:
        return self.vae_scale * self.transformer.config.patch_size

    def default_max_sequence_length(self) -> int:
        return 1024

    def pad_id(self) -> int:
        return int(self.pipe.tokenizer.pad_token_id or 0)

    def layout(self, block: str, q_len: int, k_len: int, text_len: int, image_len: int) -> SequenceLayout:
        return SequenceLayout(image=slice(text_len, text_len + image_len), text=slice(0, text_len))

    def tokenize(self, prompts: list[str], max_sequence_length: int) -> list[TokenSequence]:
        """``_get_qwen_prompt_embeds``' token path: the template, truncated at
        ``tokenizer_max_length + 34``, its first 34 positions dropped, then cut at
        ``max_sequence_length`` (``encode_prompt``)."""
        pipe = self.pipe
        drop = pipe.prompt_template_encode_start_idx
        cap = pipe.tokenizer_max_length + drop
        out = []
        for p in prompts:
            t = template_tokens(pipe.tokenizer, pipe.prompt_template_encode.format, p, truncation=True, max_length=cap)
            valid = np.flatnonzero(t.mask)
            keep = valid[drop : drop + max_sequence_length]
            overflow = t.full_length > cap or len(valid) - drop > max_sequence_length
            out.append(t.sequence(p, ("qwen2.5-vl",), select=keep, overflow=overflow, encoder=True))
        return out

    @torch.no_grad()
    def encode_prompts(self, sequences: list[TokenSequence]) -> dict:
        """Each prompt's whole template through the encoder (last hidden state), the kept positions
        gathered, zero-padded to the batch length, and the mask of real positions."""
        enc = self.pipe.text_encoder
        rows = []
        for s in sequences:
            ids = torch.from_numpy(s.encoder_input.ids[s.encoder_input.mask][None]).to(self.text_device)
            h = enc(input_ids=ids, attention_mask=torch.ones_like(ids), output_hidden_states=True).hidden_states[-1][0]
            valid = np.flatnonzero(s.encoder_input.mask)
            where = {int(e): i for i, e in enumerate(valid)}
            take = [where[int(p)] if p >= 0 else -1 for p in s.encoder_input.positions]
            row = torch.zeros(len(take), h.shape[-1], dtype=h.dtype, device=h.device)
            sel = [i for i, t in enumerate(take) if t >= 0]
            row[sel] = h[[take[i] for i in sel]]
            rows.append(row)
        embeds = torch.stack(rows).to(self.dtype)
        mask = np.stack([s.roles != PADDING for s in sequences])  # host-side: forward reads it without a sync
        return {"embeds": embeds, "mask": mask}

    @torch.no_grad()
    def encode_pixels(self, images: list[Image.Image], size: tuple[int, int]) -> torch.Tensor:
        """Images → ``[B, z, h, w]``: the 3-D VAE on one frame (mode), ``(z − mean) / std``."""
        z = self.vae.encode(self.pixels(images, size)[:, :, None]).latent_dist.mode()
        cfg = self.vae.config
        mean = torch.tensor(cfg.latents_mean).view(1, cfg.z_dim, 1, 1, 1).to(z)
        std = torch.tensor(cfg.latents_std).view(1, cfg.z_dim, 1, 1, 1).to(z)
        return ((z - mean) / std)[:, :, 0].to(self.dtype)

    def forward(self, latents: torch.Tensor, sigma: float, cond: dict, guidance_scale: float) -> torch.Tensor:
        b = latents.shape[0]
        rows, cols = self.grid(latents)
        mask = cond["mask"]  # bool [B, T] on the host
        return self.transformer(
            hidden_states=FluxBackend.pack(latents),
            timestep=self.timesteps(sigma, b),
            guidance=self.guidance(b, guidance_scale),
            encoder_hidden_states=cond["embeds"],
            # None when every position is real, as encode_prompt does
            encoder_hidden_states_mask=None if mask.all() else torch.from_numpy(mask).to(self.device),
            img_shapes=[[(1, rows, cols)]] * b,
            return_dict=False,
        )[0]
