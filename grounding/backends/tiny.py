"""Tiny randomly initialised FLUX / SD3 pipelines for tests and benchmarks.

Their attention maps are meaningless (random weights); they exercise the real diffusers classes,
the real tokenizer types and the real loading path, offline.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..config import GroundingConfig

# A small English vocabulary; words outside it are split into several pieces.
VOCAB_WORDS = """the a an of on in at to and with left right top bottom middle center next near
behind front above below under over between big small large little tall short long round
red green blue yellow purple orange black white gray grey pink brown
circle square triangle star cross ring shape object thing one
dog cat man woman person child car bus tree chair table cup bird horse sheep cow bike boat
shirt hat window door road sky grass water ball box plate
is are that which who holding wearing sitting standing""".split()

_ALPHABET = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
_PUNCT = list(".,;:!?'\"-()/&")


def _t5_tokenizer():
    from transformers import T5Tokenizer

    pieces: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -4.0)]
    pieces += [("▁" + w, -2.0) for w in VOCAB_WORDS]
    pieces += [("▁" + c, -8.0) for c in _ALPHABET] + [(c, -9.0) for c in _ALPHABET + _PUNCT]
    pieces += [("s", -3.0), ("ch", -6.0), ("er", -6.0)]
    tok = T5Tokenizer(vocab=pieces, extra_ids=0)
    tok.model_max_length = 512
    return tok


def _clip_tokenizer():
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    vocab_list = chars + [c + "</w>" for c in chars]
    merges: list[tuple[str, str]] = []
    seen = set(vocab_list)
    for word in VOCAB_WORDS:
        symbols = list(word[:-1]) + [word[-1] + "</w>"]
        cur = symbols[0]
        for nxt in symbols[1:]:
            merged = cur + nxt
            if merged not in seen:
                merges.append((cur, nxt))
                vocab_list.append(merged)
                seen.add(merged)
            cur = merged
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(vocab_list)}
    tok = CLIPTokenizer(vocab=vocab, merges=merges)
    tok.model_max_length = 77
    return tok


def _clip_encoder(vocab_size: int, with_projection: bool):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, projection_dim=32, max_position_embeddings=77,
        bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1,
    )
    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    return cls(cfg).eval()


def _t5_encoder(vocab_size: int, d_model: int):
    from transformers import T5Config, T5EncoderModel

    cfg = T5Config(vocab_size=vocab_size, d_model=d_model, d_ff=37, d_kv=8, num_layers=2, num_heads=4,
                   dropout_rate=0.0, relative_attention_num_buckets=8)
    return T5EncoderModel(cfg).eval()


def _vae(latent_channels: int):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16), layers_per_block=1, latent_channels=latent_channels,
        norm_num_groups=4, sample_size=32, use_quant_conv=False, use_post_quant_conv=False,
        shift_factor=0.0609, scaling_factor=1.5035,
    ).eval()


# Transformer shapes: "tiny" for tests, "medium" (4 dual + 4 single, width 512) for CPU benchmarks.
FLUX_SIZES = {
    "tiny": dict(num_layers=2, num_single_layers=2, attention_head_dim=16, num_attention_heads=2,
                 axes_dims_rope=(4, 6, 6)),
    "medium": dict(num_layers=4, num_single_layers=4, attention_head_dim=128, num_attention_heads=4,
                   axes_dims_rope=(16, 56, 56)),
}


def build_tiny_flux(seed: int = 0, size: str = "tiny"):
    """A FluxPipeline with 2 dual + 2 single blocks, 2 heads × 16 ("tiny") or 4 + 4 blocks of width
    512 ("medium"); VAE ×2, so 64 px → 16 × 16 image tokens."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    torch.manual_seed(seed)
    t5_tok, clip_tok = _t5_tokenizer(), _clip_tokenizer()
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=False,
        **FLUX_SIZES[size],
    ).eval()
    return FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=_vae(4),
        text_encoder=_clip_encoder(len(clip_tok), with_projection=False),
        tokenizer=clip_tok,
        text_encoder_2=_t5_encoder(len(t5_tok), 32),
        tokenizer_2=t5_tok,
        transformer=transformer,
    )


def build_tiny_sd3(seed: int = 0):
    """A StableDiffusion3Pipeline with 2 joint blocks, 4 heads × 8, VAE ×2, patch 2."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    torch.manual_seed(seed)
    t5_tok, clip_tok = _t5_tokenizer(), _clip_tokenizer()
    transformer = SD3Transformer2DModel(
        sample_size=32, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=8,
        num_attention_heads=4, caption_projection_dim=32, joint_attention_dim=64,
        pooled_projection_dim=64, out_channels=4, pos_embed_max_size=64,
    ).eval()
    return StableDiffusion3Pipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=_vae(4),
        text_encoder=_clip_encoder(len(clip_tok), with_projection=True),
        tokenizer=clip_tok,
        text_encoder_2=_clip_encoder(len(clip_tok), with_projection=True),
        tokenizer_2=_clip_tokenizer(),
        text_encoder_3=_t5_encoder(len(t5_tok), 64),
        tokenizer_3=t5_tok,
        transformer=transformer,
    )


def save_tiny_model(folder: str | Path, arch: str = "flux", seed: int = 0, size: str = "tiny") -> Path:
    """Write a tiny pipeline folder (+ a ``grounding.json`` sized for it); its maps are meaningless."""
    if arch not in ("flux", "sd3"):
        raise ValueError(f"unknown arch {arch!r}; choose flux or sd3")
    if size not in FLUX_SIZES or (arch == "sd3" and size != "tiny"):
        raise ValueError(f"size {size!r} not available for {arch}")
    folder = Path(folder)
    pipe = build_tiny_flux(seed, size) if arch == "flux" else build_tiny_sd3(seed)
    pipe.save_pretrained(folder, safe_serialization=True)
    GroundingConfig(resolution=64, max_sequence_length=32, guidance_scale=1.0).save_pretrained(folder)
    return folder
