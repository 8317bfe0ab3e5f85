"""``Grounder``: the public API. Owns a backend, a config and a segmenter; runs the stages."""

from __future__ import annotations

import hashlib
import json
import time
from collections import OrderedDict, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from . import answers, maps, presence, refine, views, zoo
from .backends import Backend, Capture, load_backend
from .config import GroundingConfig
from .images import open_image
from .prompts import box_of, prompts_from_map
from .result import GroundingResult
from .segmenter import MapSegmenter, Segmentation, combined_score, make_segmenter
from .tokens import KIND_NAMES, PromptTokens, align

_MAP_SEGMENTER = MapSegmenter()
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}


def resolve_dtype(dtype, device: str) -> torch.dtype:
    if dtype is None:
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {sorted(_DTYPES)}")
    return _DTYPES[dtype]


@dataclass
class ReferentMap:
    """One (image, expression) after the map stage: token-grid referent map ``[N]`` on ``grid``."""

    image: Image.Image
    tokens: PromptTokens
    map: torch.Tensor
    grid: tuple[int, int]
    timings_ms: dict[str, float]
    # Assembled views only: the global and local maps ``[N]`` and their agreement (cosine).
    global_map: torch.Tensor | None = None
    local_map: torch.Tensor | None = None
    agreement: float | None = None
    # Presence features (``presence.FEATURES``) known after the map stage.
    features: dict[str, float | None] = field(default_factory=dict)
    # ``components=True`` only: every (block, level, head) map ``[L, V, H, N]`` and the block names.
    components: torch.Tensor | None = None
    block_names: list[str] | None = None


@dataclass
class AttentionMaps:
    """Maps of one (image, expression). Token-grid maps are ``[h, w]``; ``heatmap`` is ``[H, W]``."""

    expression: str
    prompt: str  # expression + appended magnets, as the model saw it
    words: list[str]
    word_kinds: list[str]  # "content" | "stop" | "punct" | "magnet"
    head_word: int | None
    word_maps: np.ndarray  # float32 [n_words, h, w], each summing to 1 (zeros for words with no token)
    referent: np.ndarray  # float32 [h, w] referent map, sums to 1
    heatmap: np.ndarray  # float32 [H, W] in [0, 1] at the image's size
    grid: tuple[int, int]
    block_names: list[str]
    timesteps: tuple[float, ...]
    warnings: list[str]
    # Detail (``detail=True``): cleaned attention [L, V, H, N, C], its columns' kinds and positions,
    # and the sink mask [L, V, H, N].
    attention: torch.Tensor | None = None
    column_kinds: list[str] | None = None
    columns: np.ndarray | None = None
    sinks: torch.Tensor | None = None


class Grounder:
    """Referring segmentation read out of a diffusion transformer's attention.

    >>> g = Grounder.from_pretrained("black-forest-labs/FLUX.1-schnell", segmenter="sam_vit_h.pth")
    >>> r = g.segment(image, "the dog on the left of the bench")
    """

    def __init__(self, backend: Backend, config: GroundingConfig | None = None, segmenter=None, model_id: str = ""):
        self.backend = backend
        self.config = config or GroundingConfig()
        self.segmenter = make_segmenter(segmenter, str(backend.device))
        self.model_id = model_id
        self._generic_cache: OrderedDict[str, torch.Tensor] = OrderedDict()  # answer grounding
        self.answer_head = None  # grounding.answer_head.AnswerHead, loaded with the model when it has one
        self._sentence_encoder = None

    @classmethod
    def from_pretrained(
        cls,
        model: str | Path,
        segmenter=None,
        device: str | None = None,
        dtype: str | torch.dtype | None = None,
        config: GroundingConfig | None = None,
        **overrides,
    ) -> "Grounder":
        """Load a FLUX / SD3 pipeline (hub id or folder) and its ``grounding.json`` if it has one.

        ``segmenter``: a SAM checkpoint path (type from the file name: vit_h / vit_l / vit_b), a
        segmenter object, or None for map-threshold masks. ``overrides`` change config fields
        (``sinks__mode="suppress"``).
        """
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        model = zoo.resolve(model)
        backend = load_backend(model, device, resolve_dtype(dtype, device))
        if config is None:
            config = _config_for(model)
        if overrides:
            config = config.replace(**overrides)
        g = cls(backend, config, segmenter, model_id=str(model))
        if Path(model).is_dir():
            from .answer_head import AnswerHead

            g.answer_head = AnswerHead.from_pretrained(model)
        return g

    # --- stages ----------------------------------------------------------------------------------
    def _cfg(self, overrides: dict) -> GroundingConfig:
        return self.config.replace(**overrides) if overrides else self.config

    def _max_len(self, cfg: GroundingConfig) -> int:
        return cfg.max_sequence_length or self.backend.default_max_sequence_length()

    def tokens(self, expression: str, cfg: GroundingConfig | None = None) -> PromptTokens:
        """Expression (+ magnets) → token layout; raises ``ValueError`` for nothing to ground."""
        cfg = cfg or self.config
        return align(expression, self.backend.streams(self._max_len(cfg)), cfg.magnets)

    def capture(self, images: list[Image.Image], tokens: list[PromptTokens], cfg: GroundingConfig,
                image_keep: list[torch.Tensor] | None = None) -> list[tuple[Capture, int]]:
        """Run the transformer over (image, prompt) pairs, batched by input size.

        ``image_keep`` (per pair, bool ``[N]``) hides the other image tokens from text queries.
        Returns, per pair, its ``Capture`` and its index inside it.
        """
        groups: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i, im in enumerate(images):
            groups[self.backend.input_size(*im.size, cfg.resolution)].append(i)
        out: list[tuple[Capture, int] | None] = [None] * len(images)
        for size, idx in groups.items():
            cap = self.backend.capture(
                [images[i] for i in idx], [tokens[i] for i in idx], size, cfg.timesteps, cfg.seed,
                self._max_len(cfg), cfg.guidance_scale, list(cfg.blocks) if cfg.blocks else None,
                image_keep=None if image_keep is None else torch.stack([image_keep[i] for i in idx]),
            )
            for j, i in enumerate(idx):
                out[i] = (cap, j)
        return out  # type: ignore[return-value]

    # --- public API ------------------------------------------------------------------------------
    def attention_maps(self, image, expression: str, detail: bool = False, **overrides) -> AttentionMaps:
        """Per-word maps, the referent map and the heatmap of one (image, expression)."""
        cfg = self._cfg(overrides)
        im = open_image(image, cfg.max_image_pixels)
        tok = self.tokens(expression, cfg)
        cap, b = self.capture([im], [tok], cfg)[0]
        A, _ = cap.sample(b)
        ref, cleaned = maps.referent_map(A, tok, cap.columns, cap.block_names, cfg)
        bw, hw = maps.weights_for(cap.block_names, A.shape[2], cfg)
        word_maps = np.zeros((len(tok.words), *cap.grid), dtype=np.float32)
        for w in range(len(tok.words)):
            sel = torch.from_numpy((tok.word_index[cap.columns] == w).astype(np.float32))
            if sel.sum() > 0:
                m = maps.aggregate(maps.normalise(maps.token_map(cleaned.A, sel)), bw, hw)
                word_maps[w] = maps.normalise(m).reshape(cap.grid).numpy()
        return AttentionMaps(
            expression=tok.expression, prompt=tok.prompt, words=[w.text for w in tok.words],
            word_kinds=[KIND_NAMES[w.kind] for w in tok.words], head_word=tok.head_word, word_maps=word_maps,
            referent=maps.normalise(ref).reshape(cap.grid).numpy(), heatmap=refine.heatmap(ref, cap.grid, im, cfg.refine),
            grid=cap.grid, block_names=cap.block_names, timesteps=cap.timesteps, warnings=tok.warnings,
            attention=cleaned.A if detail else None,
            column_kinds=[KIND_NAMES[k] for k in cleaned.kinds] if detail else None,
            columns=cap.columns if detail else None, sinks=cleaned.sinks if detail else None,
        )

    def segment(self, image, expression: str, **overrides) -> GroundingResult:
        """Mask, box, score and heatmap of the referent of ``expression`` in ``image``."""
        return self.segment_batch([(image, expression)], **overrides)[0]

    def referent_maps(self, pairs: list[tuple[object, str]], cfg: GroundingConfig,
                      components: bool = False) -> list[ReferentMap]:
        """Stages up to the map: images and prompts in, token-grid referent maps out (batched).
        ``components`` also keeps every (block, level, head) map (calibration, the answer head)."""
        t0 = time.perf_counter()
        images = [open_image(im, cfg.max_image_pixels) for im, _ in pairs]
        tokens = [self.tokens(expr, cfg) for _, expr in pairs]
        t1 = time.perf_counter()
        caps = self.capture(images, tokens, cfg)
        t2 = time.perf_counter()
        out = []
        for im, tok, (cap, b) in zip(images, tokens, caps):
            s0 = time.perf_counter()
            A, kinds = cap.sample(b)
            ref, cleaned = maps.referent_map(A, tok, cap.columns, cap.block_names, cfg)
            per = maps.referent_maps_per_component(cleaned, maps.column_weights(tok, cap.columns, cfg)) \
                if components else None
            out.append(ReferentMap(im, tok, ref, cap.grid, {
                "prepare": (t1 - t0) * 1000 / len(pairs), "transformer": (t2 - t1) * 1000 / len(pairs),
                "maps": (time.perf_counter() - s0) * 1000}, features={"content_share": presence.content_share(A, kinds)},
                components=per, block_names=cap.block_names))
        if cfg.views.mode == "assembled":
            self._assemble_views(out, cfg)
        elif cfg.views.mode != "global":
            raise ValueError(f"views.mode must be 'global' or 'assembled', got {cfg.views.mode!r}")
        for it in out:
            it.features["concentration"] = views.match_score(it.map)
            it.features["agreement"] = it.agreement
        return out

    def _assemble_views(self, items: list[ReferentMap], cfg: GroundingConfig) -> None:
        """Local pass on prompt-masked views (same seeded noise), then G and L assembled in place."""
        v = cfg.views
        if v.fill not in views.FILLS:
            raise ValueError(f"views.fill must be one of {views.FILLS}, got {v.fill!r}")
        t0 = time.perf_counter()
        keeps = [views.keep_tokens(it.map, it.grid, v) for it in items]
        tokens = [it.tokens for it in items]
        if v.fill == "attention":
            caps = self.capture([it.image for it in items], tokens, cfg, image_keep=keeps)
        else:
            caps = self.capture([views.masked_view(it.image, k, it.grid, v.fill) for it, k in zip(items, keeps)],
                                tokens, cfg)
        for it, (cap, b) in zip(items, caps):
            local, _ = maps.referent_map(cap.sample(b)[0], it.tokens, cap.columns, cap.block_names, cfg)
            g, l_ = maps.normalise(it.map), maps.normalise(local)
            it.global_map, it.local_map, it.agreement = g, l_, views.agreement(g, l_)
            it.map = views.assemble(g, l_, v)
            it.timings_ms["views"] = (time.perf_counter() - t0) * 1000 / len(items)

    def component_maps(self, image, text: str, cfg: GroundingConfig) -> tuple[torch.Tensor, tuple[int, int], list[str]]:
        """Normalised referent map of every captured (block, noise level, head): ``[L, V, H, N]``,
        the token grid and the block names (for calibration and the answer head)."""
        it = self.referent_maps([(image, text)], cfg.replace(**{"views.mode": "global"}), components=True)[0]
        return it.components, it.grid, it.block_names

    def segment_map(self, item: ReferentMap, cfg: GroundingConfig, use_segmenter: bool = True,
                    token_map: torch.Tensor | None = None, prev_mask: np.ndarray | None = None,
                    mask_prompt: np.ndarray | None = None, identity_weight: float = 0.5
                    ) -> tuple[GroundingResult, Segmentation]:
        """Map → heatmap → prompts → mask. ``token_map`` replaces the item's own map (video:
        temporally aggregated); ``prev_mask`` / ``mask_prompt`` carry the previous frame's mask."""
        s0 = time.perf_counter()
        ref = item.map if token_map is None else token_map
        heatmap = refine.heatmap(ref, item.grid, item.image, cfg.refine)
        prompts = prompts_from_map(heatmap, cfg.threshold, cfg.positive_points, cfg.negative_points,
                                   prev_mask, identity_weight)
        s1 = time.perf_counter()
        segmenter = self.segmenter if use_segmenter else _MAP_SEGMENTER
        if prev_mask is None and mask_prompt is None:
            seg = segmenter(np.asarray(item.image), heatmap, prompts)
        else:
            seg = segmenter(np.asarray(item.image), heatmap, prompts, prev_mask=prev_mask, mask_prompt=mask_prompt,
                            identity_weight=identity_weight)
        s2 = time.perf_counter()
        timings = dict(item.timings_ms)
        timings["maps"] += (s1 - s0) * 1000
        timings["segmenter"] = (s2 - s1) * 1000
        provider = getattr(segmenter, "provider", None)
        if provider:  # which onnxruntime provider ran SAM, e.g. "segmenter_CPUExecutionProvider"
            timings[f"segmenter_{provider}"] = (s2 - s1) * 1000
        feats = dict(item.features, sam_iou=None if seg.predicted_iou is None else float(seg.predicted_iou))
        present, presence_score = presence.is_present(feats, cfg.presence, bool(seg.mask.any()))
        result = GroundingResult(
            expression=item.tokens.expression, mask=seg.mask, box=box_of(seg.mask),
            score=combined_score(heatmap, seg), heatmap=heatmap, points=prompts.points, point_labels=prompts.labels,
            segmenter=segmenter.name, warnings=list(item.tokens.warnings), timings_ms=timings,
            present=present, presence_score=presence_score, features=feats,
        )
        return result, seg

    def segment_batch(self, pairs: list[tuple[object, str]], use_segmenter: bool = True,
                      **overrides) -> list[GroundingResult]:
        """Several (image, expression) pairs; same-size inputs share one transformer forward.

        ``use_segmenter=False`` skips SAM: the mask is the thresholded map region.
        """
        cfg = self._cfg(overrides)
        return [self.segment_map(item, cfg, use_segmenter)[0] for item in self.referent_maps(pairs, cfg)]

    def ground_answer(self, image, question: str, answer: str | None = None, use_segmenter: bool = True,
                      **overrides) -> GroundingResult:
        """The evidence region for a visual question (and its answer, when given)."""
        return self.answer_batch([(image, answers.answer_prompt(question, answer))], use_segmenter, **overrides)[0]

    def answer_batch(self, pairs: list[tuple[object, str]], use_segmenter: bool = True,
                     **overrides) -> list[GroundingResult]:
        """(image, "question answer" text) pairs; with ``answer.contrast`` each map is divided by
        the image's generic-prompt map (cached per image and config)."""
        cfg = self._cfg(overrides)
        use_head = self.answer_head is not None and cfg.answer.head
        items = self.referent_maps(pairs, cfg, components=use_head)
        if use_head:
            self._apply_answer_head(items, cfg)
        if cfg.answer.contrast:
            for it, generic in zip(items, self._generic_maps([it.image for it in items], cfg)):
                it.map = answers.contrast(it.map, generic, cfg.answer.percentile)
        return [self.segment_map(it, cfg, use_segmenter)[0] for it in items]

    @torch.no_grad()
    def _apply_answer_head(self, items: list[ReferentMap], cfg: GroundingConfig) -> None:
        """Replace each item's map by the answer head's (sentence-weighted channels + decoder)."""
        from .answer_head import SentenceEncoder

        if self._sentence_encoder is None:
            self._sentence_encoder = SentenceEncoder()
        emb = self._sentence_encoder([it.tokens.expression for it in items])
        for it, e in zip(items, emb):
            ch, names = it.components.reshape(-1, *it.grid), it.block_names
            meta = getattr(self.answer_head, "meta", {})
            if ch.shape[0] != self.answer_head.channels or meta.get("block_names", names) != names:
                raise ValueError("the answer head was trained with other blocks / heads / noise levels than "
                                 "this config captures")
            m, _ = self.answer_head(ch[None], e[None])
            it.map = m[0].reshape(-1)

    def _generic_maps(self, images: list[Image.Image], cfg: GroundingConfig, cache_size: int = 32) -> list[torch.Tensor]:
        setting = json.dumps(cfg.to_dict(), sort_keys=True)
        keys = [hashlib.sha1(im.tobytes() + repr(im.size).encode() + setting.encode()).hexdigest() for im in images]
        missing = [i for i, k in enumerate(keys) if k not in self._generic_cache]
        if missing:
            prompt = cfg.answer.generic_prompt
            for i, it in zip(missing, self.referent_maps([(images[i], prompt) for i in missing], cfg)):
                self._generic_cache[keys[i]] = it.map
        out = []
        for k in keys:
            self._generic_cache.move_to_end(k)
            out.append(self._generic_cache[k])
        while len(self._generic_cache) > cache_size:
            self._generic_cache.popitem(last=False)
        return out

    def segment_video(self, frames, expression: str, video: "VideoConfig | None" = None, **overrides):
        """Referring segmentation over a video (path, frame folder, zip of frames, or a sequence /
        iterator of images): a ``VideoResult`` with a ``FrameResult`` per frame. For long videos
        use ``grounding.video.iter_video`` to stream results instead of keeping them."""
        from .video import segment_video

        return segment_video(self, frames, expression, video, **overrides)


def _config_for(model: str | Path) -> GroundingConfig:
    """``grounding.json`` from a model folder or hub repo; defaults when it has none."""
    path = Path(model)
    if path.is_dir():
        return GroundingConfig.from_pretrained(path)
    try:
        from huggingface_hub import hf_hub_download

        return GroundingConfig.from_pretrained(Path(hf_hub_download(str(model), "grounding.json")).parent)
    except Exception:
        return GroundingConfig()
