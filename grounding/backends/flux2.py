"""FLUX.2 [dev] (``Flux2Pipeline``: Mistral-3 text encoder, FLUX.2's system message) and FLUX.2
[klein] (``Flux2KleinPipeline``: Qwen3, chat template with the thinking block off).

Layout as FLUX.1: text first, then image, in dual-stream (``transformer_blocks``) and
single-stream (``single_transformer_blocks``) blocks; attention through diffusers' dispatcher.
The text sequence is the whole chat template padded to ``max_sequence_length`` (no mask: the
transformer attends to the system message, the role markers and the padding), its embedding the
stacked hidden states of three encoder layers. Latents: the VAE's 2×2-patchified output,
normalised by its batch-norm statistics, one token per patch.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from .flux import FluxBackend
from .sequences import PADDING, TokenSequence, template_tokens


class Flux2Backend(FluxBackend):
    arch = "flux2"
    # ``_get_mistral_3_small_prompt_embeds``' defaults.
    text_layers: tuple[int, ...] = (10, 20, 30)
    stream_name = "mistral3"

    def default_max_sequence_length(self) -> int:
        return 512

    @property
    def text_tokenizer(self):
        """The tokenizer inside the pipeline's processor (FLUX.2 [dev]) or the tokenizer itself."""
        return getattr(self.pipe.tokenizer, "tokenizer", self.pipe.tokenizer)

    def render(self, prompt: str) -> str:
        """The chat text the pipeline builds for ``prompt`` (``format_input`` + the template)."""
        from diffusers.pipelines.flux2.pipeline_flux2 import format_input

        return self.pipe.tokenizer.apply_chat_template(
            format_input([prompt], self.pipe.system_message)[0], tokenize=False, add_generation_prompt=False
        )

    def tokenize(self, prompts: list[str], max_sequence_length: int) -> list[TokenSequence]:
        out = []
        for p in prompts:
            t = template_tokens(
                self.text_tokenizer,
                self.render,
                p,
                padding="max_length",
                truncation=True,
                max_length=max_sequence_length,
            )
            out.append(t.sequence(p, (self.stream_name,), overflow=t.full_length > max_sequence_length))
        return out

    @torch.no_grad()
    def encode_prompts(self, sequences: list[TokenSequence]) -> dict:
        """``_get_mistral_3_small_prompt_embeds`` / ``_get_qwen3_prompt_embeds`` on the sequences' ids:
        hidden states of ``text_layers`` stacked per token, and the 4-D text RoPE ids."""
        enc = self.pipe.text_encoder
        ids = torch.from_numpy(np.stack([s.ids for s in sequences])).to(self.text_device)
        mask = torch.from_numpy(np.stack([s.roles != PADDING for s in sequences]).astype(np.int64)).to(self.text_device)
        out = enc(input_ids=ids, attention_mask=mask, output_hidden_states=True, use_cache=False)
        h = torch.stack([out.hidden_states[k] for k in self.text_layers], dim=1).to(self.dtype)
        b, c, t, d = h.shape
        embeds = h.permute(0, 2, 1, 3).reshape(b, t, c * d)
        return {"embeds": embeds, "text_ids": self.pipe._prepare_text_ids(embeds)}

    @torch.no_grad()
    def encode_pixels(self, images: list[Image.Image], size: tuple[int, int]) -> torch.Tensor:
        """Images → ``[B, 4C, h/2, w/2]``: VAE latents (mode), 2×2-patchified, batch-norm normalised
        (``Flux2Pipeline._encode_vae_image``)."""
        x = self.pixels(images, size)
        z = self.pipe._patchify_latents(self.vae.encode(x).latent_dist.mode())
        bn = self.vae.bn
        mean = bn.running_mean.view(1, -1, 1, 1).to(z)
        std = torch.sqrt(bn.running_var.view(1, -1, 1, 1) + self.vae.config.batch_norm_eps).to(z)
        return ((z - mean) / std).to(self.dtype)

    def grid(self, latents: torch.Tensor) -> tuple[int, int]:
        return latents.shape[-2], latents.shape[-1]

    def forward(self, latents: torch.Tensor, sigma: float, cond: dict, guidance_scale: float) -> torch.Tensor:
        b = latents.shape[0]
        return self.transformer(
            hidden_states=self.pipe._pack_latents(latents),
            timestep=self.timesteps(sigma, b),
            guidance=self.guidance(b, guidance_scale),
            encoder_hidden_states=cond["embeds"],
            txt_ids=cond["text_ids"].to(self.device),
            img_ids=self.pipe._prepare_latent_ids(latents).to(self.device),
            return_dict=False,
        )[0]


class Flux2KleinBackend(Flux2Backend):
    arch = "flux2-klein"
    text_layers = (9, 18, 27)  # ``_get_qwen3_prompt_embeds``' defaults
    stream_name = "qwen3"

    def render(self, prompt: str) -> str:
        return self.pipe.tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True, enable_thinking=False
        )
