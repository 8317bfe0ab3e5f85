"""``Grounder``: the public API, a thin facade over the stage objects in ``stages``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..backends import Backend, MemoryOptions, load_backend, zoo
from ..config import GroundingConfig
from ..readout import answers, maps
from ..readout.tokens import KIND_NAMES, PromptTokens
from ..segment import refine
from ..segment.segmenters import Segmentation, make_segmenter
from .result import GroundingResult
from .stages import AnswerStage, MapStage, MaskStage, ReferentMap

__all__ = ["Grounder", "AttentionMaps", "ReferentMap"]


@dataclass(frozen=True)
class AttentionMaps:
    """Maps of one (image, expression). Token-grid maps are ``[h, w]``; ``heatmap`` is ``[H, W]``."""

    expression: str
    prompt: str  # expression + appended magnets, as the model saw it
    words: list[str]
    word_kinds: list[str]  # "content" | "stop" | "punct" | "magnet"
    head_word: int | None
    word_maps: np.ndarray  # float32 [n_words, h, w], each summing to 1 (zeros for words with no token); global pass
    referent: np.ndarray  # float32 [h, w] referent map (after assembled views when configured), sums to 1
    heatmap: np.ndarray  # float32 [H, W] in [0, 1] at the image's size
    grid: tuple[int, int]
    block_names: list[str]
    timesteps: tuple[float, ...]
    warnings: list[str]
    # Detail (``detail=True``): cleaned attention [L, V, H, N, C] of the global pass, its columns'
    # kinds and positions, and the sink mask [L, V, H, N].
    attention: torch.Tensor | None = None
    column_kinds: list[str] | None = None
    columns: np.ndarray | None = None
    sinks: torch.Tensor | None = None


class Grounder:
    """Referring segmentation read out of a diffusion transformer's attention.

    >>> g = Grounder.from_pretrained("black-forest-labs/FLUX.1-schnell", segmenter="sam_vit_h.pth")
    >>> r = g.segment(image, "the dog on the left of the bench")
    """

    def __init__(
        self,
        backend: Backend,
        config: GroundingConfig | None = None,
        segmenter=None,
        model_id: str = "",
        answer_head=None,
    ):
        self.backend = backend
        self.config = config or GroundingConfig()
        self.model_id = model_id
        self.map_stage = MapStage(backend)
        self.mask_stage = MaskStage(make_segmenter(segmenter, str(backend.device), backend.dtype))
        self.answer_stage = AnswerStage(self.map_stage, answer_head)

    @property
    def segmenter(self):
        return self.mask_stage.segmenter

    @property
    def answer_head(self):
        return self.answer_stage.head

    @classmethod
    def from_pretrained(
        cls,
        model: str | Path,
        segmenter=None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        config: GroundingConfig | None = None,
        memory: MemoryOptions | None = None,
        **overrides,
    ) -> "Grounder":
        """Load a registered diffusers pipeline (hub id, folder or zoo name) and its
        ``grounding.json`` if it has one.

        ``segmenter``: a SAM checkpoint path (type from the file name: vit_h / vit_l / vit_b), an
        ONNX SAM folder, a segmenter object, or None for map-threshold masks. ``memory``: offload,
        quantization and text-encoder placement (``MemoryOptions``). ``overrides`` change config
        fields (``sinks__mode="suppress"``).
        """
        device = str(device) if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
        model = zoo.resolve(model)
        backend = load_backend(model, device, dtype, memory)
        if config is None:
            config = GroundingConfig.for_model(model)
        if overrides:
            config = config.replace(**overrides)
        head = None
        if Path(model).is_dir():
            from ..readout.answer_head import AnswerHead

            head = AnswerHead.from_pretrained(model)
        return cls(backend, config, segmenter, model_id=str(model), answer_head=head)

    # --- stages ------------------------------------------------------------------------------------
    def config_for(self, overrides: dict) -> GroundingConfig:
        """The config with per-call ``overrides`` (checked) applied."""
        return self.config.replace(**overrides) if overrides else self.config

    def tokens(self, expression: str, cfg: GroundingConfig | None = None) -> PromptTokens:
        """Expression (+ magnets) → token layout; raises ``ValueError`` for nothing to ground."""
        return self.map_stage.tokens(expression, cfg or self.config)

    def referent_maps(
        self, pairs: list[tuple[object, str]], cfg: GroundingConfig, components: bool = False
    ) -> list[ReferentMap]:
        """Stages up to the map (batched). ``components`` also keeps every (block, level, head) map."""
        return self.map_stage(pairs, cfg, components=components)

    def component_maps(self, image, text: str, cfg: GroundingConfig) -> tuple[torch.Tensor, tuple[int, int], list[str]]:
        """Normalised referent map of every captured (block, noise level, head): ``[L, V, H, N]``,
        the token grid and the block names (for calibration and the answer head)."""
        item = self.map_stage([(image, text)], cfg.replace(**{"views.mode": "global"}), components=True)[0]
        assert item.components is not None and item.block_names is not None  # asked for with components=True
        return item.components, item.grid, item.block_names

    def generic_maps(self, images: list[Image.Image], cfg: GroundingConfig) -> list[torch.Tensor]:
        """Maps of the generic prompt (answer grounding's contrast), cached per image and config."""
        return self.answer_stage.generic_maps(images, cfg)

    def segment_map(
        self,
        item: ReferentMap,
        cfg: GroundingConfig,
        use_segmenter: bool = True,
        token_map: torch.Tensor | None = None,
        prev_mask: np.ndarray | None = None,
        mask_prompt: np.ndarray | None = None,
        identity_weight: float = 0.5,
    ) -> tuple[GroundingResult, Segmentation]:
        """Map → heatmap → prompts → mask (``MaskStage``)."""
        return self.mask_stage(item, cfg, use_segmenter, token_map, prev_mask, mask_prompt, identity_weight)

    # --- public API --------------------------------------------------------------------------------
    def attention_maps(self, image, expression: str, detail: bool = False, **overrides) -> AttentionMaps:
        """Per-word maps, the referent map and the heatmap of one (image, expression)."""
        cfg = self.config_for(overrides)
        item = self.map_stage([(image, expression)], cfg, detail=True)[0]
        tok, cleaned, grid, block_names = item.tokens, item.cleaned, item.grid, item.block_names
        assert cleaned is not None and block_names is not None  # asked for with detail=True
        bw, hw = maps.weights_for(block_names, cleaned.A.shape[2], cfg)
        word_maps = np.zeros((len(tok.words), *grid), dtype=np.float32)
        for w in range(len(tok.words)):
            sel = torch.from_numpy((tok.word_index[cleaned.columns] == w).astype(np.float32))
            if sel.sum() > 0:
                m = maps.aggregate(maps.normalise(maps.token_map(cleaned.A, sel)), bw, hw)
                word_maps[w] = maps.normalise(m).reshape(grid).numpy()
        return AttentionMaps(
            expression=tok.expression,
            prompt=tok.prompt,
            words=[w.text for w in tok.words],
            word_kinds=[KIND_NAMES[w.kind] for w in tok.words],
            head_word=tok.head_word,
            word_maps=word_maps,
            referent=maps.normalise(item.map).reshape(grid).numpy(),
            heatmap=refine.heatmap(item.map, grid, item.image, cfg.refine),
            grid=grid,
            block_names=block_names,
            timesteps=item.timesteps,
            warnings=tok.warnings,
            attention=cleaned.A if detail else None,
            column_kinds=[KIND_NAMES[k] for k in cleaned.kinds] if detail else None,
            columns=cleaned.columns if detail else None,
            sinks=cleaned.sinks if detail else None,
        )

    def segment(self, image, expression: str, **overrides) -> GroundingResult:
        """Mask, box, score and heatmap of the referent of ``expression`` in ``image``."""
        return self.segment_batch([(image, expression)], **overrides)[0]

    def segment_batch(
        self, pairs: list[tuple[object, str]], use_segmenter: bool = True, **overrides
    ) -> list[GroundingResult]:
        """Several (image, expression) pairs; same-size inputs share one transformer forward.
        ``use_segmenter=False`` skips SAM: the mask is the thresholded map region."""
        cfg = self.config_for(overrides)
        return [self.mask_stage(item, cfg, use_segmenter)[0] for item in self.map_stage(pairs, cfg)]

    def ground_answer(
        self, image, question: str, answer: str | None = None, use_segmenter: bool = True, **overrides
    ) -> GroundingResult:
        """The evidence region for a visual question (and its answer, when given)."""
        return self.answer_batch([(image, answers.answer_prompt(question, answer))], use_segmenter, **overrides)[0]

    def answer_batch(
        self, pairs: list[tuple[object, str]], use_segmenter: bool = True, **overrides
    ) -> list[GroundingResult]:
        """(image, "question answer" text) pairs; with ``answer.contrast`` each map is divided by
        the image's generic-prompt map (cached per image and config)."""
        cfg = self.config_for(overrides)
        items = self.answer_stage(self.map_stage(pairs, cfg, components=self.answer_stage.uses_head(cfg)), cfg)
        return [self.mask_stage(it, cfg, use_segmenter)[0] for it in items]

    def segment_video(
        self,
        frames,
        expression: str,
        video=None,
        maps: str | None = None,
        propagate: bool | None = None,
        **overrides,
    ):
        """Referring segmentation over a video (path, frame folder, zip of frames, or a sequence /
        iterator of images): a ``VideoResult`` with a ``FrameResult`` per frame. ``maps``:
        "frame" (the model over each frame) or "clip" (a video DiT over windows of frames; sets
        ``video.maps``). ``propagate=True``: maps at keyframes only, the SAM 2-family segmenter's
        video memory carrying the mask between them (``pipeline.propagate``; sets
        ``video.propagate``). For long videos use ``grounding.pipeline.video.iter_video`` to stream
        results instead of keeping them."""
        import dataclasses

        from .video import VideoConfig, segment_video

        if maps is not None:
            video = dataclasses.replace(video or VideoConfig(), maps=maps)
        if propagate is not None:
            video = dataclasses.replace(video or VideoConfig(), propagate=propagate)

        return segment_video(self, frames, expression, video, **overrides)
