"""HunyuanVideo (``HunyuanVideoPipeline``): a joint-attention video diffusion transformer —
dual-stream blocks, then single-stream blocks, like FLUX, over [video, text] (video first).

Text: the prompt is put into the pipeline's system/user template (``DEFAULT_PROMPT_TEMPLATE``),
tokenized padded to ``max_sequence_length + crop_start``, run through the Llama encoder
(hidden state ``-(num_hidden_layers_to_skip + 1)``), and the first ``crop_start`` (95) positions —
the system message and the user header — are cropped; the transformer gets the rest with its
attention mask, and masks every padding key (of video and text queries alike). CLIP's pooled
embedding of the bare prompt conditions the modulation. The causal VAE folds 4 frames into each
latent frame after the first; latents are scaled by ``scaling_factor``; guidance-distilled
(guidance × 1000).
"""

from __future__ import annotations

import numpy as np
import torch

from .capture import SequenceLayout
from .sequences import PADDING, TokenSequence, template_tokens
from .video_dit import VideoDiTBackend

LAYER_SKIP = 2  # encode_prompt's num_hidden_layers_to_skip


def prompt_template(pipe) -> dict:
    """The template ``encode_prompt`` uses by default (the pipeline module's ``DEFAULT_PROMPT_TEMPLATE``)."""
    import inspect

    return inspect.signature(type(pipe).encode_prompt).parameters["prompt_template"].default


class HunyuanVideoBackend(VideoDiTBackend):
    arch = "hunyuanvideo"
    block_lists = ("transformer_blocks", "single_transformer_blocks")
    attention_attr = "attn"
    capture_via = "dispatcher"
    timestep_scale = 1000.0  # the scheduler's timesteps are σ · 1000

    @property
    def temporal(self) -> int:
        return int(self.vae.config.temporal_compression_ratio)

    def vae_scale_factor(self) -> int:
        return int(self.vae.config.spatial_compression_ratio)

    def spatial_patch(self) -> int:
        return int(self.transformer.config.patch_size)

    def default_max_sequence_length(self) -> int:
        return 256

    def layout(self, block: str, q_len: int, k_len: int, text_len: int, image_len: int) -> SequenceLayout:
        # Both block kinds attend over [video, text] (single-stream blocks concatenate them themselves).
        return SequenceLayout(image=slice(0, image_len), text=slice(image_len, image_len + text_len))

    def tokenize(self, prompts: list[str], max_sequence_length: int) -> list[TokenSequence]:
        """``_get_llama_prompt_embeds``' token path: template, padded / truncated to
        ``max_sequence_length + crop_start``, the first ``crop_start`` positions cropped."""
        tpl = prompt_template(self.pipe)
        crop = int(tpl["crop_start"])
        out = []
        for p in prompts:
            t = template_tokens(
                self.pipe.tokenizer,
                tpl["template"].format,
                p,
                add_special_tokens=True,
                padding="max_length",
                truncation=True,
                max_length=max_sequence_length + crop,
            )
            keep = np.arange(crop, len(t.ids))
            overflow = t.full_length > max_sequence_length + crop
            out.append(t.sequence(p, ("llama",), select=keep, overflow=overflow, encoder=True))
        return out

    @torch.no_grad()
    def encode_prompts(self, sequences: list[TokenSequence]) -> dict:
        pipe = self.pipe
        enc = pipe.text_encoder
        ids = torch.from_numpy(np.stack([s.encoder_input.ids for s in sequences])).to(self.text_device)
        mask = torch.from_numpy(np.stack([s.encoder_input.mask for s in sequences]).astype(np.int64)).to(
            self.text_device
        )
        states = enc(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-(LAYER_SKIP + 1)]
        keep = torch.from_numpy(sequences[0].encoder_input.positions).to(states.device)
        embeds = states.to(enc.dtype)[:, keep]
        text_mask = torch.from_numpy(np.stack([s.roles != PADDING for s in sequences]).astype(np.int64))
        pooled = pipe._get_clip_prompt_embeds(
            [s.prompt for s in sequences],
            device=self.text_device,
            dtype=pipe.text_encoder_2.dtype,
            max_sequence_length=77,
        )
        return {
            "embeds": embeds.to(self.device, self.dtype),
            "mask": text_mask.to(self.device),
            "pooled": pooled.to(self.device, self.dtype),
        }

    def encode_clips(self, x: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(x).latent_dist.mode() * self.vae.config.scaling_factor

    def guidance(self, batch: int, scale: float) -> torch.Tensor | None:
        if not getattr(self.transformer.config, "guidance_embeds", False):
            return None
        return torch.full((batch,), scale * 1000.0, device=self.device, dtype=self.dtype)  # as the pipeline scales it

    def forward(self, latents: torch.Tensor, sigma: float, cond: dict, guidance_scale: float) -> torch.Tensor:
        b = latents.shape[0]
        return self.transformer(
            hidden_states=latents,
            timestep=self.timesteps(sigma, b),
            encoder_hidden_states=cond["embeds"],
            encoder_attention_mask=cond["mask"],
            pooled_projections=cond["pooled"],
            guidance=self.guidance(b, guidance_scale),
            return_dict=False,
        )[0]
