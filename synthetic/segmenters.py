"""Tiny randomly initialised segmenters of the transformers SAM 2 family, saved as model folders
(``config.json`` + weights + the processor), for tests: ``Sam2Model`` (SAM 2 / 2.1, a Hiera backbone)
and ``Sam3TrackerModel`` (SAM 3's tracker, a windowed ViT), at 128 / 112 px input with 32 × 32
low-res masks. EdgeTAM's ``EdgeTamModel`` needs ``timm`` for its RepViT backbone and is not built
here. Their masks are meaningless; the contract (shapes, prompts, batching) is what they test.
"""

from __future__ import annotations

from pathlib import Path

import torch

FAMILIES = ("sam2", "sam3_tracker")
# What both families share at this size: the mask decoder (32 wide, one two-way layer) and the
# prompt encoder's width; masks come out at 32 × 32 (4 × the 8 × 8 embedding).
DECODER = dict(hidden_size=32, mlp_dim=64, num_hidden_layers=1, num_attention_heads=2, iou_head_hidden_dim=32)
PROMPT = dict(hidden_size=32, mask_input_channels=4)


def _image_processor(side: int):
    from transformers import Sam2ImageProcessor

    return Sam2ImageProcessor(size={"height": side, "width": side}, mask_size={"height": 32, "width": 32})


def build_tiny_sam2(seed: int = 0):
    """A ``Sam2Model`` (Hiera 12 → 96 wide, 12 blocks, FPN 32) and its ``Sam2Processor`` at 128 px."""
    from transformers import (
        Sam2Config,
        Sam2HieraDetConfig,
        Sam2ImageProcessor,
        Sam2MaskDecoderConfig,
        Sam2Model,
        Sam2Processor,
        Sam2PromptEncoderConfig,
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
        backbone_feature_sizes=[[32, 32], [16, 16], [8, 8]],
        fpn_hidden_size=32,
    )
    config = Sam2Config(
        vision_config=vision,
        prompt_encoder_config=Sam2PromptEncoderConfig(
            hidden_size=32, image_size=128, patch_size=16, mask_input_channels=4
        ),
        mask_decoder_config=Sam2MaskDecoderConfig(
            hidden_size=32, mlp_dim=64, num_hidden_layers=1, num_attention_heads=2, iou_head_hidden_dim=32
        ),
    )
    processor = Sam2Processor(
        image_processor=Sam2ImageProcessor(size={"height": 128, "width": 128}, mask_size={"height": 32, "width": 32})
    )
    return Sam2Model(config).eval(), processor


def build_tiny_sam3_tracker(seed: int = 0):
    """A ``Sam3TrackerModel`` (ViT 32 wide, 2 layers, 14 px patches) and its processor at 112 px."""
    from transformers import (
        Sam3TrackerConfig,
        Sam3TrackerMaskDecoderConfig,
        Sam3TrackerModel,
        Sam3TrackerProcessor,
        Sam3TrackerPromptEncoderConfig,
        Sam3VisionConfig,
        Sam3ViTConfig,
    )

    torch.manual_seed(seed)
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
    vision = Sam3VisionConfig(
        backbone_config=vit, fpn_hidden_size=32, backbone_feature_sizes=[[32, 32], [16, 16], [8, 8]]
    )
    config = Sam3TrackerConfig(
        vision_config=vision,
        prompt_encoder_config=Sam3TrackerPromptEncoderConfig(image_size=112, patch_size=14, **PROMPT),
        mask_decoder_config=Sam3TrackerMaskDecoderConfig(**DECODER),
    )
    return Sam3TrackerModel(config).eval(), Sam3TrackerProcessor(image_processor=_image_processor(112))


def save_tiny_segmenter(folder: str | Path, family: str = "sam2", seed: int = 0) -> Path:
    """Write a tiny ``family`` (one of ``FAMILIES``) model folder that ``make_segmenter`` loads."""
    builders = {"sam2": build_tiny_sam2, "sam3_tracker": build_tiny_sam3_tracker}
    if family not in builders:
        raise ValueError(f"unknown segmenter family {family!r}; choose one of {', '.join(FAMILIES)}")
    model, processor = builders[family](seed)
    folder = Path(folder)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
