"""The stage objects a ``Grounder`` runs, each with immutable outputs.

``MapStage``   images + texts → ``ReferentMap`` (backend capture, read-out, assembled views)
``AnswerStage`` ``ReferentMap`` → ``ReferentMap`` for visual questions (trained head, generic contrast)
``MaskStage``  ``ReferentMap`` → ``GroundingResult`` (heatmap, prompts, segmenter, presence)

The three share one module (~400 lines): each is small, and their order and data flow read best
side by side.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections import OrderedDict, defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from ..backends import Backend, Capture
from ..config import GroundingConfig, UnsupportedOption
from ..images import open_image
from ..readout import agreement, answers, maps, presence, views
from ..readout.phrases import head_phrase, requested_count
from ..readout.tokens import PromptTokens, align
from ..segment import refine
from ..segment.instances import Instance, map_regions, region_prompts, suppress
from ..segment.prompts import box_of, prompts_from_map
from ..segment.proposals import Proposer, RegionProposer, choose, point_in
from ..segment.segmenters import MapSegmenter, Segmentation, combined_score, segment_many
from .result import GroundingResult

if TYPE_CHECKING:
    from ..readout.answer_head import SentenceEncoder

_MAP_SEGMENTER = MapSegmenter()
_REGIONS = RegionProposer()


@dataclass(frozen=True)
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
    # ``presence.rule="agreement"`` with two attribute words or more: where they agree, ``[N]`` in
    # [0, 1] (``agreement.agreement_map``); instances are the map's regions the words agree on.
    word_agreement: torch.Tensor | None = None
    # ``components=True`` only: every (block, level, head) map ``[L, V, H, N]`` and the block names.
    components: torch.Tensor | None = None
    block_names: list[str] | None = None
    # ``detail=True`` only: the global pass's cleaned attention (``maps.CleanedAttention``).
    cleaned: maps.CleanedAttention | None = None
    timesteps: tuple[float, ...] = ()

    def replace(self, **changes) -> "ReferentMap":
        return dataclasses.replace(self, **changes)

    def agreement_image(self) -> np.ndarray | None:
        """``word_agreement`` at the image's size ``[H, W]`` (None when there is none)."""
        if self.word_agreement is None:
            return None
        return maps.upsample(self.word_agreement, self.grid, self.image.size).numpy()


def instance_limit(expression: str, cfg: GroundingConfig) -> int:
    """How many instances ``instances="all"`` keeps: the count the expression asks for, at most
    ``instances.max_instances``."""
    ic = cfg.instances
    return min(requested_count(expression) or ic.max_instances, ic.max_instances)


def captured_blocks(cfg: GroundingConfig) -> list[str] | None:
    """Blocks a forward captures: the map's ``blocks`` and, for the agreement presence rule, the
    word maps' ``presence.word_blocks`` (None = every block)."""
    if cfg.blocks is None:
        return None
    extra = cfg.presence.word_blocks if cfg.presence.rule == "agreement" and cfg.presence.word_blocks else ()
    return list(cfg.blocks) + [b for b in extra if b not in cfg.blocks]


class MapStage:
    """Images and texts in, referent maps out: the backend's forward with capture, then the
    RefAM read-out (``readout.maps``) and, when configured, AGLA's assembled views."""

    def __init__(self, backend: Backend):
        self.backend = backend

    def max_len(self, cfg: GroundingConfig) -> int:
        return cfg.max_sequence_length or self.backend.default_max_sequence_length()

    def tokens(self, expression: str, cfg: GroundingConfig) -> PromptTokens:
        """Expression (+ magnets) → the token layout the transformer receives; ``ValueError`` for
        nothing to ground."""
        n = self.max_len(cfg)
        return align(expression, lambda p: self.backend.tokenize([p], n)[0], cfg.magnets)

    def capture(
        self,
        images: list[Image.Image],
        tokens: list[PromptTokens],
        cfg: GroundingConfig,
        image_keep: list[torch.Tensor] | None = None,
    ) -> list[tuple[Capture, int]]:
        """The transformer over (image, prompt) pairs, batched by input size; per pair its
        ``Capture`` and its index inside it. ``image_keep`` (per pair, bool ``[N]``) hides the
        other image tokens from text queries."""
        groups: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i, im in enumerate(images):
            groups[self.backend.input_size(*im.size, cfg.resolution)].append(i)
        out: list[tuple[Capture, int] | None] = [None] * len(images)
        for size, idx in groups.items():
            capture = self.backend.capture(
                [images[i] for i in idx],
                [tokens[i].sequence for i in idx],
                size,
                cfg.timesteps,
                cfg.seed,
                cfg.guidance_scale,
                captured_blocks(cfg),
                image_keep=None if image_keep is None else torch.stack([image_keep[i] for i in idx]),
            )
            for j, i in enumerate(idx):
                out[i] = (capture, j)
        return out  # type: ignore[return-value]

    def __call__(
        self,
        pairs: list[tuple[object, str]],
        cfg: GroundingConfig,
        components: bool = False,
        detail: bool = False,
        head_stats: bool = False,
    ) -> list[ReferentMap]:
        """``components`` also keeps every (block, level, head) map; ``detail`` the cleaned attention;
        ``head_stats`` every per-head presence feature (else only those the presence model uses)."""
        t0 = time.perf_counter()
        images = [open_image(im, cfg.max_image_pixels) for im, _ in pairs]
        tokens = [self.tokens(expr, cfg) for _, expr in pairs]
        t1 = time.perf_counter()
        captures = self.capture(images, tokens, cfg)
        t2 = time.perf_counter()
        timing = {"prepare": (t1 - t0) * 1000 / len(pairs), "transformer": (t2 - t1) * 1000 / len(pairs)}
        out = [
            self.read(im, tok, capture, b, cfg, timing, components, detail, head_stats)
            for im, tok, (capture, b) in zip(images, tokens, captures)
        ]
        if cfg.views.mode == "assembled":
            out = self.assemble_views(out, cfg)
        return [self.finish(item) for item in out]

    def read(
        self,
        image: Image.Image,
        tok: PromptTokens,
        capture: Capture,
        b: int,
        cfg: GroundingConfig,
        timing: dict[str, float],
        components: bool = False,
        detail: bool = False,
        head_stats: bool = False,
    ) -> ReferentMap:
        """Sample ``b`` of a capture → its ``ReferentMap`` (RefAM read-out, presence features)."""
        s0 = time.perf_counter()
        tok = tok.padded(capture.text_len)
        words_capture, capture = capture, capture.only(cfg.blocks)
        attention = capture.sample(b)
        ref, cleaned = maps.referent_map(attention, tok, capture.columns, capture.block_names, cfg)
        per_component = (
            maps.referent_maps_per_component(cleaned, maps.column_weights(tok, capture.columns, cfg))
            if components
            else None
        )
        kinds = tok.kinds[capture.columns]
        feats: dict[str, float | None] = {
            "content_share": presence.content_share(attention, kinds),
            **presence.head_features(
                attention, kinds, capture.block_names, None if head_stats else set(cfg.presence.weights)
            ),
        }
        agree_map = None
        if cfg.presence.rule == "agreement":
            words_capture = words_capture.only(cfg.presence.word_blocks or cfg.blocks)
            word_of_column = tok.word_index[words_capture.columns]
            M = agreement.word_maps(
                words_capture.sample(b), word_of_column, agreement.attribute_words(tok, word_of_column)
            )
            agree_map = agreement.agreement_map(M, capture.grid).float() if len(M) >= 2 else None
            feats["word_agreement"] = None if agree_map is None else float(agree_map.max())
        return ReferentMap(
            image,
            tok,
            ref,
            capture.grid,
            {**timing, "maps": (time.perf_counter() - s0) * 1000},
            features=feats,
            word_agreement=agree_map,
            components=per_component,
            block_names=capture.block_names,
            cleaned=cleaned if detail else None,
            timesteps=capture.timesteps,
        )

    @staticmethod
    def finish(item: ReferentMap) -> ReferentMap:
        return item.replace(
            features={**item.features, "concentration": views.match_score(item.map), "agreement": item.agreement}
        )

    def require_video(self) -> None:
        """``ValueError`` unless the backbone is a video DiT (what clip maps need)."""
        if not getattr(self.backend, "video", False):
            raise ValueError(
                f"maps='clip' needs a video diffusion transformer (Wan, HunyuanVideo); this model is "
                f"{self.backend.arch!r}: use maps='frame'"
            )

    def clip(self, frames: list[Image.Image], expression: str, cfg: GroundingConfig) -> list[ReferentMap]:
        """A video DiT over one clip (``backend.capture_clip``, one forward per noise level): a
        ``ReferentMap`` per source frame — the map of the latent frame it was folded into, read
        out like an image's (the global map; prompt-masked views are per image)."""
        self.require_video()
        t0 = time.perf_counter()
        images = [open_image(im, cfg.max_image_pixels) for im in frames]
        tok = self.tokens(expression, cfg)
        size = self.backend.input_size(*images[0].size, cfg.resolution)
        t1 = time.perf_counter()
        video: Any = self.backend  # a VideoDiTBackend (require_video checked it)
        capture, groups = video.capture_clip(
            images,
            tok.sequence,
            size,
            cfg.timesteps,
            cfg.seed,
            cfg.guidance_scale,
            captured_blocks(cfg),
        )
        timing = {
            "prepare": (t1 - t0) * 1000 / len(images),
            "transformer": (time.perf_counter() - t1) * 1000 / len(images),
        }
        out: list[ReferentMap | None] = [None] * len(images)
        for t, group in enumerate(groups):
            item = self.finish(self.read(images[group[0]], tok, capture, t, cfg, timing))
            for f in group:
                out[f] = item.replace(image=images[f])
        return out  # type: ignore[return-value]

    def assemble_views(self, items: list[ReferentMap], cfg: GroundingConfig) -> list[ReferentMap]:
        """Local pass on prompt-masked views (same seeded noise), then G and L assembled."""
        v = cfg.views
        t0 = time.perf_counter()
        keeps = [views.keep_tokens(item.map, item.grid, v) for item in items]
        tokens = [item.tokens for item in items]
        if v.fill == "attention":
            captures = self.capture([item.image for item in items], tokens, cfg, image_keep=keeps)
        else:
            captures = self.capture(
                [views.masked_view(item.image, k, item.grid, v.fill) for item, k in zip(items, keeps)], tokens, cfg
            )
        out = []
        per_item = (time.perf_counter() - t0) * 1000 / len(items)
        for item, (capture, b) in zip(items, captures):
            capture = capture.only(cfg.blocks)
            local, _ = maps.referent_map(
                capture.sample(b), item.tokens.padded(capture.text_len), capture.columns, capture.block_names, cfg
            )
            g, l_ = maps.normalise(item.map), maps.normalise(local)
            out.append(
                item.replace(
                    global_map=g,
                    local_map=l_,
                    agreement=views.agreement(g, l_),
                    map=views.assemble(g, l_, v),
                    timings_ms={**item.timings_ms, "views": per_item},
                )
            )
        return out


class AnswerStage:
    """Visual-question maps: the trained answer head (when the model has one) and the
    generic-prompt contrast, with the generic map cached per image and config."""

    def __init__(self, map_stage: MapStage, head=None, cache_size: int = 32):
        self.map_stage = map_stage
        self.head = head  # grounding.readout.answer_head.AnswerHead or None
        self.cache_size = cache_size
        self.generic_cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._sentence_encoder: SentenceEncoder | None = None

    def uses_head(self, cfg: GroundingConfig) -> bool:
        return self.head is not None and cfg.answer.head

    def __call__(self, items: list[ReferentMap], cfg: GroundingConfig) -> list[ReferentMap]:
        if self.uses_head(cfg):
            items = self.apply_head(items)
        if cfg.answer.contrast:
            items = [
                item.replace(map=answers.contrast(item.map, generic, cfg.answer.percentile))
                for item, generic in zip(items, self.generic_maps([item.image for item in items], cfg))
            ]
        return items

    @torch.no_grad()
    def apply_head(self, items: list[ReferentMap]) -> list[ReferentMap]:
        """Each item's map replaced by the answer head's (sentence-weighted channels + decoder)."""
        from ..readout.answer_head import SentenceEncoder

        if self._sentence_encoder is None:
            self._sentence_encoder = SentenceEncoder()
        emb = self._sentence_encoder([item.tokens.expression for item in items])
        out = []
        for item, e in zip(items, emb):
            assert item.components is not None  # the answer head asks for components
            ch, names = item.components.reshape(-1, *item.grid), item.block_names
            meta = getattr(self.head, "meta", {})
            if ch.shape[0] != self.head.channels or meta.get("block_names", names) != names:
                raise ValueError(
                    "the answer head was trained with other blocks / heads / noise levels than this config captures"
                )
            m, _ = self.head(ch[None], e[None])
            out.append(item.replace(map=m[0].reshape(-1)))
        return out

    def generic_maps(self, images: list[Image.Image], cfg: GroundingConfig) -> list[torch.Tensor]:
        """The map of ``cfg.answer.generic_prompt`` for each image (cached)."""
        setting = json.dumps(cfg.to_dict(), sort_keys=True)
        keys = [hashlib.sha1(im.tobytes() + repr(im.size).encode() + setting.encode()).hexdigest() for im in images]
        missing = [i for i, k in enumerate(keys) if k not in self.generic_cache]
        if missing:
            prompt = cfg.answer.generic_prompt
            for i, item in zip(missing, self.map_stage([(images[i], prompt) for i in missing], cfg)):
                self.generic_cache[keys[i]] = item.map
        out = []
        for k in keys:
            self.generic_cache.move_to_end(k)
            out.append(self.generic_cache[k])
        while len(self.generic_cache) > self.cache_size:
            self.generic_cache.popitem(last=False)
        return out


class MaskStage:
    """Map → heatmap → prompts → mask, then score and presence."""

    def __init__(self, segmenter):
        self.segmenter = segmenter

    def __call__(
        self,
        item: ReferentMap,
        cfg: GroundingConfig,
        use_segmenter: bool = True,
        token_map: torch.Tensor | None = None,
        prev_mask: np.ndarray | None = None,
        mask_prompt: np.ndarray | None = None,
        identity_weight: float = 0.5,
    ) -> tuple[GroundingResult, Segmentation]:
        """``token_map`` replaces the item's own map (video: temporally aggregated);
        ``prev_mask`` / ``mask_prompt`` carry the previous frame's mask."""
        s0 = time.perf_counter()
        ref = item.map if token_map is None else token_map
        heatmap = refine.heatmap(ref, item.grid, item.image, cfg.refine)
        notes: list[str] = []
        if cfg.proposals.mode != "none" and use_segmenter and prev_mask is None and mask_prompt is None:
            timings = dict(item.timings_ms, maps=item.timings_ms["maps"] + (time.perf_counter() - s0) * 1000)
            chosen = self.from_proposals(item, heatmap, cfg, notes, timings)
            if chosen is not None:
                return chosen, Segmentation(chosen.mask, None)
        prompts = prompts_from_map(  # map prompts (also when no proposal was found)
            heatmap, cfg.threshold, cfg.positive_points, cfg.negative_points, prev_mask, identity_weight
        )
        s1 = time.perf_counter()
        segmenter = self.segmenter if use_segmenter else _MAP_SEGMENTER
        if prev_mask is None and mask_prompt is None:
            seg = segmenter(np.asarray(item.image), heatmap, prompts)
        else:
            seg = segmenter(
                np.asarray(item.image),
                heatmap,
                prompts,
                prev_mask=prev_mask,
                mask_prompt=mask_prompt,
                identity_weight=identity_weight,
            )
        s2 = time.perf_counter()
        timings = dict(item.timings_ms)
        timings["maps"] += (s1 - s0) * 1000
        timings["segmenter"] = (s2 - s1) * 1000
        provider = getattr(segmenter, "provider", None)
        if provider:  # which onnxruntime provider ran SAM, e.g. "segmenter_CPUExecutionProvider"
            timings[f"segmenter_{provider}"] = (s2 - s1) * 1000
        feats = dict(item.features, sam_iou=None if seg.predicted_iou is None else float(seg.predicted_iou))
        present, presence_score = presence.is_present(feats, cfg.presence, bool(seg.mask.any()))
        score = combined_score(heatmap, seg)
        mask, box = seg.mask, box_of(seg.mask)
        if cfg.instances.mode == "all" and prev_mask is None and mask_prompt is None:
            found = self.all_instances(
                np.asarray(item.image),
                heatmap,
                item.tokens.expression,
                segmenter,
                cfg,
                Instance(seg.mask, box, float(heatmap.max())),
                item.agreement_image(),
            )
            timings["segmenter"] = (time.perf_counter() - s1) * 1000
            if not present:  # "nothing matches" is an answer: no instance, an empty mask
                found = []
            mask = np.logical_or.reduce([i.mask for i in found]) if found else np.zeros_like(seg.mask)
            box = found[0].box if found else (0.0, 0.0, 0.0, 0.0)
        else:  # the mask stays as the best guess (RefCOCO scores one), but "not present" finds nothing
            found = [Instance(seg.mask, box, score)] if seg.mask.any() and present else []
        result = GroundingResult(
            expression=item.tokens.expression,
            mask=mask,
            box=box,
            score=score,
            heatmap=heatmap,
            points=prompts.points,
            point_labels=prompts.labels,
            segmenter=segmenter.name,
            warnings=list(item.tokens.warnings) + notes,
            timings_ms=timings,
            present=present,
            presence_score=presence_score,
            features=feats,
            instances=found,
        )
        return result, seg

    def proposal_modes(self) -> list[str]:
        """The ``proposals.mode`` values this segmenter serves ("concept" needs SAM 3)."""
        family = getattr(getattr(self.segmenter, "family", None), "name", None)
        concept = hasattr(self.segmenter, "concept_proposer") and family == "sam3-tracker"
        return ["none", "regions"] + (["concept"] if concept else [])

    def proposer(self, mode: str) -> Proposer:
        """The proposer of ``proposals.mode``: graph regions, or SAM 3's detector from the
        segmenter's checkpoint (``UnsupportedOption`` when the segmenter is not SAM 3)."""
        if mode == "regions":
            return _REGIONS
        if "concept" not in self.proposal_modes():
            raise UnsupportedOption(
                f"proposals='concept' needs a SAM 3 segmenter (e.g. facebook/sam3); this model's segmenter is "
                f"{self.segmenter.name!r}: use proposals='regions' or 'none'",
                "proposals.mode",
            )
        proposer: Proposer = self.segmenter.concept_proposer()
        return proposer

    def from_proposals(
        self,
        item: ReferentMap,
        heatmap: np.ndarray,
        cfg: GroundingConfig,
        notes: list[str],
        timings: dict[str, float],
    ) -> GroundingResult | None:
        """The result from instance proposals chosen by the map (``segment.proposals``): the best
        proposal (``instances="one"``), or every proposal the map and the expression's count ask
        for (``"all"``). None — with a note for the result's warnings — when the proposer finds
        nothing the map touches: the caller falls back to map prompts."""
        t0 = time.perf_counter()
        proposer = self.proposer(cfg.proposals.mode)
        phrase = head_phrase(item.tokens.expression)
        image = np.asarray(item.image)
        found = proposer(image, phrase, cfg.proposals)
        ic = cfg.instances
        limit = 1 if ic.mode == "one" else instance_limit(item.tokens.expression, cfg)
        agree = None if ic.mode == "one" else item.agreement_image()
        picks = choose(heatmap, found, limit, ic.min_relative_peak, ic.nms_iou, agree, cfg.presence.agreement_threshold)
        timings = dict(timings, proposals=(time.perf_counter() - t0) * 1000)
        if not picks:
            notes.append(
                f"proposals={cfg.proposals.mode!r} found no instance"
                + (f" of {phrase!r}" if cfg.proposals.mode == "concept" else "")
                + " under the map: the mask comes from map prompts"
            )
            return None
        best = found[picks[0][0]]
        feats = dict(item.features, sam_iou=None)
        present, presence_score = presence.is_present(feats, cfg.presence, True)
        instances = [Instance(found[i].mask, box_of(found[i].mask), s, proposal_score=found[i].score) for i, s in picks]
        if ic.mode == "all":
            mask = np.logical_or.reduce([i.mask for i in instances]) if present else np.zeros_like(best.mask)
        else:  # as with map prompts: the best proposal stays as the best guess when not present
            mask = best.mask
        points = np.array([point_in(heatmap, i.mask) for i in instances])  # one per instance, best first
        return GroundingResult(
            expression=item.tokens.expression,
            mask=mask,
            box=instances[0].box if mask.any() else (0.0, 0.0, 0.0, 0.0),
            score=combined_score(heatmap, Segmentation(best.mask, best.score)),
            heatmap=heatmap,
            points=points.astype(np.float32).reshape(-1, 2),
            point_labels=np.ones(len(points), dtype=np.int32),
            segmenter=proposer.name,
            warnings=list(item.tokens.warnings) + notes,
            timings_ms=timings,
            present=present,
            presence_score=presence_score,
            features=feats,
            instances=instances if present else [],
        )

    @staticmethod
    def all_instances(
        image: np.ndarray,
        heatmap: np.ndarray,
        expression: str,
        segmenter,
        cfg: GroundingConfig,
        best: Instance,
        agree: np.ndarray | None = None,
    ) -> list[Instance]:
        """The referent's instances: ``best`` (the single-referent result, segmented from the
        peak's region) first, then each other kept high region of the map segmented on its own
        (its peak and box as prompts, one batched segmenter call), overlapping masks suppressed,
        as many as the expression asks for (a singular referent: ``best`` alone). With ``agree``
        (``[H, W]``, the word agreement), a region counts only where the words agree on it
        (peak ≥ ``presence.agreement_threshold``): "the red shapes" are the red ones of the
        shapes the map lights."""
        ic = cfg.instances
        limit = instance_limit(expression, cfg)
        if not best.mask.any():
            return []
        if limit == 1:
            return [best]
        regions = map_regions(heatmap, cfg.threshold, ic.min_relative_peak, ic.min_area)[1:]
        if agree is not None:
            regions = [r for r in regions if float(agree[r].max()) >= cfg.presence.agreement_threshold]
        regions = regions[: 2 * limit - 1]
        prompts = [region_prompts(heatmap, r, cfg.threshold, max(1, cfg.positive_points)) for r in regions]
        segs = segment_many(segmenter, image, heatmap, prompts) if prompts else []
        masks = [best.mask] + [sg.mask for sg in segs]
        scores = [best.score] + [float(heatmap[r].max()) for r in regions]
        kept = suppress(masks, [np.inf] + scores[1:], ic.nms_iou)[:limit]
        return [best if i == 0 else Instance(masks[i], box_of(masks[i]), scores[i]) for i in kept]
