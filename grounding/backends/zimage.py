"""Z-Image (``ZImagePipeline``): a single-stream DiT with a Qwen3 text encoder.

The prompt goes through Qwen3's chat template (generation prompt on), is tokenized padded to
``max_sequence_length`` and only its unmasked tokens' second-to-last hidden states are kept. The
transformer pads the caption to a multiple of 32 with a learned pad token (attended to, never
masked) and the image tokens likewise, refines each stream alone (``noise_refiner``,
``context_refiner``: no image↔text attention, so not captured), then runs its main ``layers``
over [image (+ pad), caption (+ pad)], a batch padded to its longest and masked.
The transformer's time input is ``1 − σ``.
"""

from __future__ import annotations

import numpy as np
import torch

from .base import DiTBackend
from .capture import SequenceLayout
from .sequences import TokenSequence, template_tokens

SEQ_MULTIPLE = 32  # diffusers.models.transformers.transformer_z_image.SEQ_MULTI_OF


def _round_up(n: int) -> int:
    return n + (-n) % SEQ_MULTIPLE


class ZImageBackend(DiTBackend):
    arch = "zimage"
    block_lists = ("layers",)
    attention_attr = "attention"
    capture_via = "dispatcher"
    variable_text_length = True

    @property
    def patch(self) -> int:
        return self.vae_scale * self.transformer.all_patch_size[0]

    def default_max_sequence_length(self) -> int:
        return 512

    def pad_id(self) -> int:
        return int(self.pipe.tokenizer.pad_token_id or 0)

    def layout(self, block: str, q_len: int, k_len: int, text_len: int, image_len: int) -> SequenceLayout:
        image_end = _round_up(image_len)
        if q_len != image_end + text_len:
            raise ValueError(f"{block}: {q_len} positions, expected {image_end} image + {text_len} caption")
        return SequenceLayout(image=slice(0, image_len), text=slice(image_end, image_end + text_len))

    def render(self, prompt: str) -> str:
        return self.pipe.tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True, enable_thinking=True
        )

    def tokenize(self, prompts: list[str], max_sequence_length: int) -> list[TokenSequence]:
        """The unmasked tokens of ``_encode_prompt``'s call, then the transformer's caption padding
        (``PADDING``: learned pad embeddings the image attends to)."""
        out = []
        for p in prompts:
            t = template_tokens(
                self.pipe.tokenizer,
                self.render,
                p,
                padding="max_length",
                max_length=max_sequence_length,
                truncation=True,
            )
            valid = np.flatnonzero(t.mask)
            out.append(
                t.sequence(
                    p,
                    ("qwen3",),
                    select=valid,
                    tail_padding=_round_up(len(valid)) - len(valid),
                    pad_id=self.pad_id(),
                    overflow=t.full_length > max_sequence_length,
                    encoder=True,
                )
            )
        return out

    @torch.no_grad()
    def encode_prompts(self, sequences: list[TokenSequence]) -> dict:
        """``_encode_prompt``: hidden_states[-2] of the padded call, its unmasked rows, one tensor per prompt."""
        ids = torch.from_numpy(np.stack([s.encoder_input.ids for s in sequences])).to(self.text_device)
        mask = torch.from_numpy(np.stack([s.encoder_input.mask for s in sequences])).to(self.text_device)
        h = self.pipe.text_encoder(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-2]
        # the unmasked rows, indexed from the host-side mask (no device sync; works on meta too)
        rows = [torch.from_numpy(np.flatnonzero(s.encoder_input.mask)).to(h.device) for s in sequences]
        return {"embeds": [h[i, r].to(self.dtype) for i, r in enumerate(rows)]}

    def timesteps(self, sigma: float, batch: int) -> torch.Tensor:
        return torch.full((batch,), 1.0 - sigma, device=self.device, dtype=self.dtype)

    def forward(self, latents: torch.Tensor, sigma: float, cond: dict, guidance_scale: float) -> torch.Tensor:
        x = list(latents.unsqueeze(2).unbind(dim=0))  # per sample [C, 1, h, w]
        out = self.transformer(x, self.timesteps(sigma, latents.shape[0]), cond["embeds"], return_dict=False)[0]
        return torch.stack(out)[:, :, 0]
