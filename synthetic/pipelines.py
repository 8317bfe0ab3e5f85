"""Tiny randomly initialised pipelines of the real diffusers / transformers classes, one per
architecture the grounding backends serve, for tests and CPU benchmarks.

Their attention maps are meaningless (random weights); they exercise the real classes, the real
tokenizer types and the real loading path, offline. ``save_tiny_model`` writes one as a pipeline
folder with a ``grounding.json`` sized for it; the zoo's ``tiny-*`` names and ``python -m
grounding tiny-model`` reach it through the ``dit_grounding.synthetic`` entry point
(``synthetic.PLUGIN``), so the inference package never imports this one.

One builder per architecture, side by side in one module (~560 lines) so they stay alike.
"""

from __future__ import annotations

from pathlib import Path

import torch

from grounding.config import GroundingConfig

from .tokenizers import clip_tokenizer, llama3_tokenizer, pixtral_processor, qwen_tokenizer, t5_tokenizer


def clip_encoder(vocab_size: int, with_projection: bool, hidden: int = 32):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        projection_dim=32,
        max_position_embeddings=77,
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
    )
    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    return cls(cfg).eval()


def t5_encoder(vocab_size: int, d_model: int):
    from transformers import T5Config, T5EncoderModel

    cfg = T5Config(
        vocab_size=vocab_size,
        d_model=d_model,
        d_ff=37,
        d_kv=8,
        num_layers=2,
        num_heads=4,
        dropout_rate=0.0,
        relative_attention_num_buckets=8,
    )
    return T5EncoderModel(cfg).eval()


def autoencoder_kl(latent_channels: int) -> "torch.nn.Module":
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=4,
        sample_size=32,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.0609,
        scaling_factor=1.5035,
    ).eval()


# Transformer shapes: "tiny" for tests, "medium" (4 dual + 4 single, width 512) for CPU benchmarks.
FLUX_SIZES = {
    "tiny": dict(
        num_layers=2, num_single_layers=2, attention_head_dim=16, num_attention_heads=2, axes_dims_rope=(4, 6, 6)
    ),
    "medium": dict(
        num_layers=4, num_single_layers=4, attention_head_dim=128, num_attention_heads=4, axes_dims_rope=(16, 56, 56)
    ),
}


def build_tiny_flux(seed: int = 0, size: str = "tiny"):
    """A FluxPipeline with 2 dual + 2 single blocks, 2 heads × 16 ("tiny") or 4 + 4 blocks of width
    512 ("medium"); VAE ×2, so 64 px → 16 × 16 image tokens."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    torch.manual_seed(seed)
    t5_tok, clip_tok = t5_tokenizer(), clip_tokenizer()
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        guidance_embeds=False,
        **FLUX_SIZES[size],
    ).eval()
    return FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=autoencoder_kl(4),
        text_encoder=clip_encoder(len(clip_tok), with_projection=False),
        tokenizer=clip_tok,
        text_encoder_2=t5_encoder(len(t5_tok), 32),
        tokenizer_2=t5_tok,
        transformer=transformer,
    )


def build_tiny_sd3(seed: int = 0):
    """A StableDiffusion3Pipeline with 2 joint blocks, 4 heads × 8, VAE ×2, patch 2."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    torch.manual_seed(seed)
    t5_tok, clip_tok = t5_tokenizer(), clip_tokenizer()
    transformer = SD3Transformer2DModel(
        sample_size=32,
        patch_size=2,
        in_channels=4,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=4,
        caption_projection_dim=32,
        joint_attention_dim=64,
        pooled_projection_dim=64,
        out_channels=4,
        pos_embed_max_size=64,
    ).eval()
    return StableDiffusion3Pipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=autoencoder_kl(4),
        text_encoder=clip_encoder(len(clip_tok), with_projection=True),
        tokenizer=clip_tok,
        text_encoder_2=clip_encoder(len(clip_tok), with_projection=True),
        tokenizer_2=clip_tokenizer(),
        text_encoder_3=t5_encoder(len(t5_tok), 64),
        tokenizer_3=t5_tok,
        transformer=transformer,
    )


def save_tiny_model(folder: str | Path, arch: str = "flux", seed: int = 0, size: str = "tiny") -> Path:
    """Write a tiny pipeline folder of ``arch`` (one of ``ARCHS``) + a ``grounding.json`` sized
    for it; its maps are meaningless."""
    if arch not in BUILDERS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(BUILDERS)}")
    if size not in ("tiny", "medium") or (arch == "sd3" and size != "tiny"):
        raise ValueError(f"size {size!r} not available for {arch}")
    folder = Path(folder)
    pipe = BUILDERS[arch](seed, size)
    pipe.save_pretrained(folder, safe_serialization=True)
    GroundingConfig(
        resolution=64, max_sequence_length=32 if arch in ("flux", "sd3") else 96, guidance_scale=1.0
    ).save_pretrained(folder)
    return folder


# --- FLUX.2 (dev: Mistral-3 + system message; klein: Qwen3), Qwen-Image, Z-Image -----------------
def mistral3_encoder(tok, hidden: int = 16, layers: int = 31):
    """FLUX.2 [dev]'s text encoder type; ``layers`` ≥ 31 so hidden states (10, 20, 30) exist."""
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration

    ids = {t: tok.convert_tokens_to_ids(t) for t in ("<s>", "</s>", "<pad>", "[IMG]")}
    cfg = Mistral3Config(
        text_config={
            "model_type": "mistral",
            "vocab_size": len(tok),
            "hidden_size": hidden,
            "intermediate_size": 37,
            "max_position_embeddings": 2048,
            "num_attention_heads": 4,
            "num_hidden_layers": layers,
            "num_key_value_heads": 2,
            "head_dim": hidden // 4,
            "rms_norm_eps": 1e-5,
            "rope_theta": 1e9,
            "sliding_window": None,
            "bos_token_id": ids["<s>"],
            "eos_token_id": ids["</s>"],
            "pad_token_id": ids["<pad>"],
        },
        vision_config={
            "model_type": "pixtral",
            "hidden_size": 16,
            "num_hidden_layers": 1,
            "num_attention_heads": 4,
            "intermediate_size": 37,
            "image_size": 32,
            "patch_size": 4,
            "num_channels": 3,
        },
        image_token_index=ids["[IMG]"],
        vision_feature_layer=-1,
        spatial_merge_size=1,
        bos_token_id=ids["<s>"],
        eos_token_id=ids["</s>"],
        pad_token_id=ids["<pad>"],
    )
    return Mistral3ForConditionalGeneration(cfg).eval()


def qwen3_encoder(tok, cls_name: str, hidden: int = 16, layers: int = 2):
    import transformers
    from transformers import Qwen3Config

    cfg = Qwen3Config(
        hidden_size=hidden,
        intermediate_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=hidden // 2,
        vocab_size=len(tok),
        max_position_embeddings=2048,
        pad_token_id=tok.pad_token_id,
        bos_token_id=None,
        eos_token_id=tok.eos_token_id,
    )
    return getattr(transformers, cls_name)(cfg).eval()


def qwen25vl_encoder(tok, hidden: int = 16):
    """Qwen-Image's text encoder type (its vision tower is built, never used for text)."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    cfg = Qwen2_5_VLConfig(
        text_config={
            "hidden_size": hidden,
            "intermediate_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
            "vocab_size": len(tok),
            "max_position_embeddings": 2048,
            "rope_scaling": {"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"},
            "rope_theta": 1e6,
            "bos_token_id": None,
            "eos_token_id": tok.eos_token_id,
            "pad_token_id": tok.pad_token_id,
        },
        vision_config={
            "depth": 1,
            "hidden_size": 16,
            "intermediate_size": 16,
            "num_heads": 2,
            "out_hidden_size": hidden,
        },
        vocab_size=len(tok),
        pad_token_id=tok.pad_token_id,
        bos_token_id=None,
        eos_token_id=tok.eos_token_id,
        **{
            f"{k}_token_id": tok.convert_tokens_to_ids(f"<|{v}|>")
            for k, v in (
                ("image", "image_pad"),
                ("video", "video_pad"),
                ("vision_start", "vision_start"),
                ("vision_end", "vision_end"),
            )
        },
    )
    return Qwen2_5_VLForConditionalGeneration(cfg).eval()


def flux2_vae():
    from diffusers import AutoencoderKLFlux2

    vae = AutoencoderKLFlux2(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=32,
        use_quant_conv=False,
        use_post_quant_conv=False,
    ).eval()
    with torch.no_grad():  # non-trivial batch-norm statistics, so the normalisation is exercised
        vae.bn.running_mean.copy_(torch.linspace(-0.2, 0.2, vae.bn.num_features))
        vae.bn.running_var.copy_(torch.linspace(0.5, 2.0, vae.bn.num_features))
    return vae


# Transformer shapes per arch: "tiny" for tests, "medium" (width 512 = 4 heads × 128) for CPU benchmarks.
NEW_SIZES = {
    "flux2": {
        "tiny": dict(
            num_layers=2, num_single_layers=2, attention_head_dim=16, num_attention_heads=2, axes_dims_rope=(4, 4, 4, 4)
        ),
        "medium": dict(
            num_layers=4,
            num_single_layers=4,
            attention_head_dim=128,
            num_attention_heads=4,
            axes_dims_rope=(32, 32, 32, 32),
        ),
    },
    "qwenimage": {
        "tiny": dict(num_layers=3, attention_head_dim=16, num_attention_heads=2, axes_dims_rope=(8, 4, 4)),
        "medium": dict(num_layers=8, attention_head_dim=128, num_attention_heads=4, axes_dims_rope=(16, 56, 56)),
    },
    "zimage": {
        "tiny": dict(dim=32, n_layers=3, n_refiner_layers=1, n_heads=2, n_kv_heads=2, axes_dims=[8, 4, 4]),
        "medium": dict(dim=512, n_layers=8, n_refiner_layers=1, n_heads=4, n_kv_heads=4, axes_dims=[32, 48, 48]),
    },
}


def build_tiny_flux2(seed: int = 0, size: str = "tiny", klein: bool = False):
    """A ``Flux2Pipeline`` (Mistral-3 text encoder behind a ``PixtralProcessor``, FLUX.2's system
    message) or ``Flux2KleinPipeline`` (Qwen3, chat template with the thinking block off);
    FLUX.2 VAE ×2 with batch-norm latents, 2×2 patches → 64 px = 16 × 16 image tokens."""
    from diffusers import FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline, Flux2Pipeline, Flux2Transformer2DModel

    torch.manual_seed(seed)
    hidden = 16
    if klein:
        tok = qwen_tokenizer()
        encoder = qwen3_encoder(tok, "Qwen3ForCausalLM", hidden, layers=28)  # hidden states (9, 18, 27)
    else:
        tok = pixtral_processor()
        encoder = mistral3_encoder(tok.tokenizer, hidden)
    transformer = Flux2Transformer2DModel(
        patch_size=1,
        in_channels=16,
        joint_attention_dim=3 * hidden,
        timestep_guidance_channels=256,
        guidance_embeds=not klein,
        **NEW_SIZES["flux2"][size],
    ).eval()
    cls = Flux2KleinPipeline if klein else Flux2Pipeline
    return cls(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=flux2_vae(),
        text_encoder=encoder,
        tokenizer=tok,
        transformer=transformer,
    )


def build_tiny_qwenimage(seed: int = 0, size: str = "tiny"):
    """A ``QwenImagePipeline``: Qwen2.5-VL text encoder behind its system template (the first 34
    tokens dropped), the Qwen-Image 3-D VAE ×2, 2×2 patches."""
    from diffusers import (
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        QwenImagePipeline,
        QwenImageTransformer2DModel,
    )

    torch.manual_seed(seed)
    tok = qwen_tokenizer(chat_template=None)  # the pipeline formats its own template string
    vae = AutoencoderKLQwenImage(
        base_dim=8,
        z_dim=4,
        dim_mult=[1, 2],
        num_res_blocks=1,
        temperal_downsample=[False],
        latents_mean=[0.1, -0.1, 0.2, 0.0],
        latents_std=[1.5, 0.8, 1.2, 1.0],
    ).eval()
    transformer = QwenImageTransformer2DModel(
        patch_size=2,
        in_channels=16,
        out_channels=4,
        joint_attention_dim=16,
        guidance_embeds=False,
        **NEW_SIZES["qwenimage"][size],
    ).eval()
    return QwenImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=qwen25vl_encoder(tok),
        tokenizer=tok,
        transformer=transformer,
    )


def build_tiny_zimage(seed: int = 0, size: str = "tiny"):
    """A ``ZImagePipeline``: Qwen3 text encoder (chat template), single-stream DiT over
    [image, caption] with each padded to a multiple of 32, FLUX-style VAE ×2, 2×2 patches."""
    from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel

    torch.manual_seed(seed)
    tok = qwen_tokenizer()
    transformer = ZImageTransformer2DModel(
        all_patch_size=(2,),
        all_f_patch_size=(1,),
        in_channels=4,
        norm_eps=1e-5,
        qk_norm=True,
        cap_feat_dim=16,
        rope_theta=256.0,
        t_scale=1000.0,
        axes_lens=[1024, 64, 64],
        **NEW_SIZES["zimage"][size],
    ).eval()
    with torch.no_grad():  # created with torch.empty: give them defined values
        transformer.x_pad_token.normal_(0, 0.5)
        transformer.cap_pad_token.normal_(0, 0.5)
    return ZImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=autoencoder_kl(4),
        text_encoder=qwen3_encoder(tok, "Qwen3Model"),
        tokenizer=tok,
        transformer=transformer,
    )


def build_tiny_wan(seed: int = 0, size: str = "tiny", experts: int = 1):
    """A ``WanPipeline``: UMT5 text encoder, the causal Wan video VAE (×8 space, ×4 time, first
    frame alone; 16 latent channels with non-trivial latents_mean / latents_std), a
    ``WanTransformer3DModel`` with 2 blocks, 2 heads × 16, patches (1, 2, 2) → 64 px frames =
    4 × 4 tokens per latent frame. ``experts=2``: Wan 2.2 A14B's layout — a second (low-noise)
    transformer and ``boundary_ratio`` 0.875."""
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    tok = t5_tokenizer()
    encoder = UMT5EncoderModel(
        UMT5Config(
            vocab_size=len(tok),
            d_model=32,
            d_ff=37,
            d_kv=8,
            num_layers=2,
            num_heads=4,
            dropout_rate=0.0,
            relative_attention_num_buckets=8,
        )
    ).eval()
    g = torch.Generator().manual_seed(seed)
    vae = AutoencoderKLWan(
        base_dim=8,
        z_dim=16,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
        latents_mean=(torch.randn(16, generator=g) * 0.1).tolist(),
        latents_std=(1.0 + torch.rand(16, generator=g)).tolist(),
    ).eval()
    width = {"tiny": (2, 16, 2), "medium": (4, 32, 4)}[size]

    def transformer():
        return WanTransformer3DModel(
            patch_size=(1, 2, 2),
            num_attention_heads=width[0],
            attention_head_dim=width[1],
            in_channels=16,
            out_channels=16,
            text_dim=32,
            freq_dim=32,
            ffn_dim=32,
            num_layers=width[2],
            cross_attn_norm=True,
            qk_norm="rms_norm_across_heads",
            rope_max_seq_len=32,
        ).eval()

    two = experts == 2
    return WanPipeline(
        tokenizer=tok,
        text_encoder=encoder,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(),
        transformer=transformer(),
        transformer_2=transformer() if two else None,
        boundary_ratio=0.875 if two else None,
    )


def build_tiny_hunyuanvideo(seed: int = 0, size: str = "tiny"):
    """A ``HunyuanVideoPipeline``: a Llama text encoder behind the pipeline's system/user template
    (cropped at 95), CLIP for the pooled embedding, the causal HunyuanVideo VAE (×8 space, ×4
    time), a ``HunyuanVideoTransformer3DModel`` with 1 dual + 1 single block (2 of each at
    "medium"), 2 heads × 10, guidance-distilled → 64 px frames = 8 × 8 tokens per latent frame."""
    from diffusers import (
        AutoencoderKLHunyuanVideo,
        FlowMatchEulerDiscreteScheduler,
        HunyuanVideoPipeline,
        HunyuanVideoTransformer3DModel,
    )
    from transformers import LlamaConfig, LlamaModel

    torch.manual_seed(seed)
    tok = llama3_tokenizer()
    clip_tok = clip_tokenizer()
    llama = LlamaModel(
        LlamaConfig(
            vocab_size=len(tok),
            hidden_size=16,
            intermediate_size=37,
            num_hidden_layers=3,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=1024,
            pad_token_id=tok.pad_token_id,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
        )
    ).eval()
    vae = AutoencoderKLHunyuanVideo(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        down_block_types=("HunyuanVideoDownBlock3D",) * 4,
        up_block_types=("HunyuanVideoUpBlock3D",) * 4,
        block_out_channels=(8, 8, 8, 8),
        layers_per_block=1,
        norm_num_groups=4,
        spatial_compression_ratio=8,
        temporal_compression_ratio=4,
        mid_block_add_attention=True,
    ).eval()
    layers = {"tiny": 1, "medium": 2}[size]
    transformer = HunyuanVideoTransformer3DModel(
        in_channels=4,
        out_channels=4,
        num_attention_heads=2,
        attention_head_dim=10,
        num_layers=layers,
        num_single_layers=layers,
        num_refiner_layers=1,
        patch_size=1,
        patch_size_t=1,
        guidance_embeds=True,
        text_embed_dim=16,
        pooled_projection_dim=32,
        rope_axes_dim=(2, 4, 4),
    ).eval()
    return HunyuanVideoPipeline(
        text_encoder=llama,
        tokenizer=tok,
        transformer=transformer,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(),
        text_encoder_2=clip_encoder(len(clip_tok), with_projection=False),
        tokenizer_2=clip_tok,
    )


BUILDERS = {
    "flux": lambda seed, size: build_tiny_flux(seed, size),
    "sd3": lambda seed, size: build_tiny_sd3(seed),
    "flux2": lambda seed, size: build_tiny_flux2(seed, size),
    "flux2-klein": lambda seed, size: build_tiny_flux2(seed, size, klein=True),
    "qwenimage": build_tiny_qwenimage,
    "zimage": build_tiny_zimage,
    "wan": build_tiny_wan,
    "wan2.2": lambda seed, size: build_tiny_wan(seed, size, experts=2),
    "hunyuanvideo": build_tiny_hunyuanvideo,
}
ARCHS = tuple(BUILDERS)
