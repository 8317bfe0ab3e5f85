"""Stable Diffusion 3 / 3.5: image tokens first, then CLIP-L/G (77) and T5 text tokens; no RoPE.
``JointAttnProcessor2_0`` calls SDPA itself, so capture goes through a processor."""

from __future__ import annotations

import numpy as np
import torch

from .base import DiTBackend
from .capture import AttentionRecorder, SD3CaptureProcessor, SequenceLayout
from .sequences import PADDING, TokenSequence, join_streams, tokenize_stream


class SD3Backend(DiTBackend):
    arch = "sd3"
    block_lists = ("transformer_blocks",)
    attention_attr = "attn"
    capture_via = "processor"
    timestep_scale = 1000.0

    @property
    def patch(self) -> int:
        return self.vae_scale * self.transformer.config.patch_size

    def default_max_sequence_length(self) -> int:
        return 256

    def max_resolution(self) -> int | None:
        m = self.transformer.config.pos_embed_max_size
        return m * self.patch if m else None

    def layout(self, block: str, q_len: int, k_len: int, text_len: int, image_len: int) -> SequenceLayout:
        return SequenceLayout(image=slice(0, q_len - text_len), text=slice(q_len - text_len, q_len))

    def capture_processor(self, recorder: AttentionRecorder, block: str):
        return SD3CaptureProcessor(recorder, block)

    def tokenize(self, prompts: list[str], max_sequence_length: int) -> list[TokenSequence]:
        """CLIP positions (``tokenizer``, 77; CLIP-G's hidden states share them) then T5's; without
        T5 the pipeline appends ``max_sequence_length`` zero embeddings, kept here as padding."""
        pipe, clip_len = self.pipe, self.pipe.tokenizer_max_length
        out = []
        for p in prompts:
            parts = [tokenize_stream(pipe.tokenizer, p, clip_len, 0)]
            if pipe.text_encoder_3 is not None:
                parts.append(tokenize_stream(pipe.tokenizer_3, p, max_sequence_length, 1))
            else:
                n = max_sequence_length
                parts.append(
                    (
                        np.zeros(n, np.int64),
                        np.full(n, PADDING, np.int8),
                        np.full((n, 2), -1, np.int32),
                        np.full(n, 1, np.int8),
                        False,
                    )
                )
            out.append(join_streams(p, ("clip", "t5"), parts))
        return out

    @torch.no_grad()
    def encode_prompts(self, sequences: list[TokenSequence]) -> dict:
        """``StableDiffusion3Pipeline.encode_prompt``'s steps on the sequences' ids: CLIP-L/G
        penultimate hidden states (zero-padded to T5's width) followed by T5's; pooled CLIP-L ‖ CLIP-G."""
        pipe, clip_len = self.pipe, self.pipe.tokenizer_max_length
        ids = torch.from_numpy(np.stack([s.ids for s in sequences])).to(self.text_device)
        hidden, pooled = [], []
        for i, (tok, enc) in enumerate(((pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2))):
            clip_ids = (
                ids[:, :clip_len]
                if i == 0
                else tok(
                    [s.prompt for s in sequences],
                    padding="max_length",
                    max_length=clip_len,
                    truncation=True,
                    return_tensors="pt",
                ).input_ids.to(self.text_device)
            )
            out = enc(clip_ids, output_hidden_states=True)
            pooled.append(out[0])
            hidden.append(out.hidden_states[-2].to(dtype=pipe.text_encoder.dtype))
        clip = torch.cat(hidden, dim=-1)
        n_t5 = ids.shape[1] - clip_len
        if pipe.text_encoder_3 is not None:
            t5 = pipe.text_encoder_3(ids[:, clip_len:])[0].to(pipe.text_encoder_3.dtype)
        else:
            t5 = torch.zeros(
                len(sequences),
                n_t5,
                self.transformer.config.joint_attention_dim,
                device=self.text_device,
                dtype=pipe.text_encoder.dtype,
            )
        clip = torch.nn.functional.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
        embeds = torch.cat([clip, t5], dim=-2)
        return {"embeds": embeds.to(self.dtype), "pooled": torch.cat(pooled, dim=-1).to(self.dtype)}

    def forward(self, latents: torch.Tensor, sigma: float, cond: dict, guidance_scale: float) -> torch.Tensor:
        return self.transformer(
            hidden_states=latents,
            timestep=self.timesteps(sigma, latents.shape[0]),
            encoder_hidden_states=cond["embeds"],
            pooled_projections=cond["pooled"],
            return_dict=False,
        )[0]
