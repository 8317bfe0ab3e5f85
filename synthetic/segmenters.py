"""Tiny randomly initialised segmenters of the transformers SAM 2 family, saved as model folders
(``config.json`` + weights + the processor), for tests. Each is saved from its *video* model, as
the released checkpoints are: ``Sam2VideoModel`` (SAM 2 / 2.1, a Hiera backbone) and
``Sam3TrackerVideoModel`` (SAM 3's tracker, a windowed ViT), at 128 / 112 px input with 32 × 32
low-res masks, and ``EdgeTamVideoModel`` (EdgeTAM: a timm RepViT backbone and a perceiver
memory; needs ``timm``); the image classes (``Sam2Model``, ``Sam3TrackerModel``, ``EdgeTamModel``)
load the same folders. Their masks are meaningless; the contract (shapes, prompts, batching,
tracking mechanics) is what they test.
"""

from __future__ import annotations

from pathlib import Path

import torch

FAMILIES = ("sam2", "sam3_tracker", "edgetam")  # the SAM 2 family; "sam3" (full SAM 3) is built on request
# What both families share at this size: the mask decoder (one two-way layer) and the prompt
# encoder, 128 wide — the video models' memory is 64 channels and must be narrower than the decoder
# (transformers splits each object pointer into hidden / 64 memory tokens); masks come out at
# 32 × 32 (4 × the 8 × 8 embedding).
WIDTH = 128
DECODER = dict(hidden_size=WIDTH, mlp_dim=128, num_hidden_layers=1, num_attention_heads=2, iou_head_hidden_dim=32)
PROMPT = dict(hidden_size=WIDTH, mask_input_channels=4)
# The memory (attention, encoder, fuser) at the same width, one memory-attention layer.
MEMORY = dict(
    memory_attention_hidden_size=WIDTH,
    memory_attention_num_layers=1,
    memory_attention_feed_forward_hidden_size=128,
    memory_attention_rope_feat_sizes=[8, 8],
    memory_encoder_hidden_size=WIDTH,
    memory_encoder_output_channels=64,
    mask_downsampler_embed_dim=WIDTH,
    memory_fuser_embed_dim=WIDTH,
    memory_fuser_intermediate_dim=128,
)
FEATURES = [[32, 32], [16, 16], [8, 8]]


def _processors(side: int):
    """The image processor and the video processor at ``side`` px, 32 × 32 masks."""
    from transformers import Sam2ImageProcessor, Sam2VideoVideoProcessor

    return (
        Sam2ImageProcessor(size={"height": side, "width": side}, mask_size={"height": 32, "width": 32}),
        Sam2VideoVideoProcessor(size={"height": side, "width": side}),
    )


def _present_by_default(model) -> None:
    """Bias the random object-score head towards "present" (logit ≈ +4), so tracked frames carry a
    mask: with a zero-mean head every tracked frame would be declared empty."""
    head = model.mask_decoder.pred_obj_score_head
    with torch.no_grad():
        head.proj_out.bias.fill_(4.0)


def build_tiny_sam2(seed: int = 0):
    """A ``Sam2VideoModel`` (Hiera 12 → 96 wide, FPN 128, a one-layer memory) and its
    ``Sam2VideoProcessor`` at 128 px — saved, it is a folder like the released ones
    (``model_type`` ``sam2_video``), which ``Sam2Model`` loads for images."""
    from transformers import (
        Sam2HieraDetConfig,
        Sam2VideoConfig,
        Sam2VideoMaskDecoderConfig,
        Sam2VideoModel,
        Sam2VideoProcessor,
        Sam2VideoPromptEncoderConfig,
        Sam2VisionConfig,
    )

    torch.manual_seed(seed)
    hiera = Sam2HieraDetConfig(
        hidden_size=12,
        embed_dim_per_stage=[12, 24, 48, 96],
        num_attention_heads_per_stage=[1, 2, 4, 8],
        image_size=[128, 128],
        patch_kernel_size=7,
        patch_stride=4,
        patch_padding=3,
    )
    vision = Sam2VisionConfig(
        backbone_config=hiera,
        backbone_channel_list=[96, 48, 24, 12],
        backbone_feature_sizes=FEATURES,
        fpn_hidden_size=WIDTH,
    )
    config = Sam2VideoConfig(
        vision_config=vision,
        prompt_encoder_config=Sam2VideoPromptEncoderConfig(image_size=128, patch_size=16, **PROMPT),
        mask_decoder_config=Sam2VideoMaskDecoderConfig(**DECODER),
        image_size=128,
        **MEMORY,
    )
    model = Sam2VideoModel(config).eval()
    _present_by_default(model)
    image, video = _processors(128)
    return model, Sam2VideoProcessor(image_processor=image, video_processor=video)


def _sam3_configs():
    """SAM 3's vision config (ViT 32 wide, 2 layers, 14 px patches, FPN 128) and its tracker's
    (a one-layer memory) at 112 px: the tracker alone and full SAM 3 share them."""
    from transformers import (
        Sam3TrackerVideoConfig,
        Sam3TrackerVideoMaskDecoderConfig,
        Sam3TrackerVideoPromptEncoderConfig,
        Sam3VisionConfig,
        Sam3ViTConfig,
    )

    vit = Sam3ViTConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=112,
        patch_size=14,
        window_size=4,
        global_attn_indexes=[1],
        pretrain_image_size=112,
    )
    vision = Sam3VisionConfig(backbone_config=vit, fpn_hidden_size=WIDTH, backbone_feature_sizes=FEATURES)
    tracker = Sam3TrackerVideoConfig(
        vision_config=vision,
        prompt_encoder_config=Sam3TrackerVideoPromptEncoderConfig(image_size=112, patch_size=14, **PROMPT),
        mask_decoder_config=Sam3TrackerVideoMaskDecoderConfig(**DECODER),
        image_size=112,
        **MEMORY,
    )
    return vision, tracker


def build_tiny_sam3_tracker(seed: int = 0):
    """A ``Sam3TrackerVideoModel`` (``_sam3_configs``) and its processor at 112 px (``model_type``
    ``sam3_tracker_video``)."""
    from transformers import Sam3TrackerVideoModel, Sam3TrackerVideoProcessor

    torch.manual_seed(seed)
    model = Sam3TrackerVideoModel(_sam3_configs()[1]).eval()
    _present_by_default(model)
    image, video = _processors(112)
    return model, Sam3TrackerVideoProcessor(image_processor=image, video_processor=video)


def build_tiny_edgetam(seed: int = 0):
    """An ``EdgeTamVideoModel`` (timm's RepViT at 8 → 64 wide, one block per stage, FPN 128, a
    16-latent perceiver and a one-layer memory) and its ``Sam2VideoProcessor`` at 128 px
    (``model_type`` ``edgetam_video``). Needs ``timm`` (EdgeTAM's backbone is a timm model)."""
    from transformers import (
        EdgeTamVideoConfig,
        EdgeTamVideoMaskDecoderConfig,
        EdgeTamVideoModel,
        EdgeTamVideoPromptEncoderConfig,
        EdgeTamVisionConfig,
        Sam2VideoProcessor,
        TimmWrapperConfig,
    )

    torch.manual_seed(seed)
    repvit = TimmWrapperConfig(
        architecture="repvit_m1",
        model_args={
            "in_chans": 3,
            "features_only": True,
            "out_indices": [0, 1, 2, 3],
            "embed_dim": (8, 16, 32, 64),
            "depth": (1, 1, 1, 1),
        },
        do_pooling=False,
    )
    vision = EdgeTamVisionConfig(
        backbone_config=repvit,
        backbone_channel_list=[64, 32, 16, 8],
        backbone_feature_sizes=FEATURES,
        fpn_hidden_size=WIDTH,
    )
    memory = {k: v for k, v in MEMORY.items() if k != "memory_attention_feed_forward_hidden_size"}
    config = EdgeTamVideoConfig(
        vision_config=vision,
        prompt_encoder_config=EdgeTamVideoPromptEncoderConfig(image_size=128, patch_size=16, **PROMPT),
        mask_decoder_config=EdgeTamVideoMaskDecoderConfig(**DECODER),
        image_size=128,
        memory_attention_mlp_hidden_size=128,
        memory_attention_rope_k_sizes=[4, 4],  # the perceiver's 16 latents as a 4 × 4 grid
        perceiver_resampler_num_latents=16,
        perceiver_resampler_num_latents_2d=16,
        perceiver_resampler_num_layers=1,
        perceiver_resampler_mlp_intermediate_size=64,
        **memory,
    )
    model = EdgeTamVideoModel(config).eval()
    _present_by_default(model)
    image, video = _processors(128)
    return model, Sam2VideoProcessor(image_processor=image, video_processor=video)


def build_tiny_sam3(seed: int = 0):
    """Full SAM 3 as released (``facebook/sam3``: a ``Sam3VideoModel``, ``model_type``
    ``sam3_video``): the detector (``Sam3Model``: the tracker's ViT, a one-layer CLIP text encoder
    with OpenAI CLIP's real 49,408-token vocabulary, one-layer DETR encoder / decoder with 16
    queries, 128 wide — the width of the FPN the detector reads) and the tracker of
    ``build_tiny_sam3_tracker``, with a ``Sam3Processor`` (112 px, 32 × 32 masks, the real CLIP
    tokenizer: ``make vocab``). ``Sam3Model`` loads the folder for concept proposals,
    ``Sam3TrackerModel`` for map prompts."""
    from transformers import Sam3Config, Sam3ImageProcessor, Sam3Processor, Sam3VideoConfig, Sam3VideoModel

    from .vocabularies import clip_tokenizer

    torch.manual_seed(seed)
    vision, tracker = _sam3_configs()
    small = dict(hidden_size=WIDTH, num_attention_heads=2, intermediate_size=128)
    detector = Sam3Config(
        vision_config=vision,
        text_config=dict(
            vocab_size=49408,
            hidden_size=32,
            intermediate_size=64,
            projection_dim=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=32,
        ),
        geometry_encoder_config=dict(num_layers=1, **small),
        detr_encoder_config=dict(num_layers=1, **small),
        detr_decoder_config=dict(num_layers=1, num_queries=16, **small),
        mask_decoder_config=dict(hidden_size=WIDTH, num_attention_heads=2),
    )
    model = Sam3VideoModel(Sam3VideoConfig(detector_config=detector, tracker_config=tracker)).eval()
    _present_by_default(model.tracker_model)
    images = Sam3ImageProcessor(size={"height": 112, "width": 112}, mask_size={"height": 32, "width": 32})
    return model, Sam3Processor(image_processor=images, tokenizer=clip_tokenizer())


def save_tiny_segmenter(folder: str | Path, family: str = "sam2", seed: int = 0) -> Path:
    """Write a tiny ``family`` (one of ``FAMILIES``) model folder that ``make_segmenter`` loads for
    images and ``Tracker`` for video (``sam3``: the full SAM 3, whose detector also proposes
    instances)."""
    builders = {
        "sam2": build_tiny_sam2,
        "sam3_tracker": build_tiny_sam3_tracker,
        "edgetam": build_tiny_edgetam,
        "sam3": build_tiny_sam3,
    }
    if family not in builders:
        raise ValueError(f"unknown segmenter family {family!r}; choose one of {', '.join(FAMILIES)}")
    model, processor = builders[family](seed)
    folder = Path(folder)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
