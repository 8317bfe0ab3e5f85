"""Segmenters: prompts + map → mask. SAM (segment-anything), its ONNX export, or the map-threshold
fallback, behind one ``Segmentation`` interface with the candidate choice they share
(``choose``); kept together (~400 lines) so the three answer alike."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

from .prompts import Prompts, mask_iou

SAM_TYPES = ("vit_h", "vit_l", "vit_b", "tiny")


@dataclass
class Segmentation:
    mask: np.ndarray  # bool [H, W]
    predicted_iou: float | None  # SAM's own IoU estimate for the chosen mask
    low_res: np.ndarray | None = None  # SAM's low-res logits [256, 256] of the chosen mask (video: next mask prompt)


def choose(
    candidates: list[np.ndarray],
    region: np.ndarray,
    tiebreak: list[float],
    prev_mask: np.ndarray | None = None,
    identity_weight: float = 0.5,
) -> int:
    """Index of the candidate mask agreeing best with the map region (IoU), plus
    ``identity_weight`` × its IoU with the previous frame's mask when there is one."""

    def key(i: int) -> tuple[float, float]:
        """Candidate ``i``'s agreement with the map region (plus identity with the previous mask), then the
        tie-break."""
        agree = mask_iou(candidates[i], region)
        if prev_mask is not None and prev_mask.any():
            agree += identity_weight * mask_iou(candidates[i], prev_mask)
        return round(agree, 6), tiebreak[i]

    return max(range(len(candidates)), key=key)


def map_confidence(heatmap: np.ndarray, mask: np.ndarray) -> float:
    """Mean map value inside the mask minus mean outside, clipped to [0, 1] (0 for empty masks)."""
    if not mask.any():
        return 0.0
    inside = float(heatmap[mask].mean())
    outside = float(heatmap[~mask].mean()) if (~mask).any() else 0.0
    return float(np.clip(inside - outside, 0.0, 1.0))


def combined_score(heatmap: np.ndarray, seg: Segmentation) -> float:
    """Result score: map confidence, or its geometric mean with SAM's predicted IoU when present."""
    conf = map_confidence(heatmap, seg.mask)
    if seg.predicted_iou is None:
        return conf
    return float(np.sqrt(conf * float(np.clip(seg.predicted_iou, 0.0, 1.0))))


class MapSegmenter:
    """No SAM: the mask is the thresholded map region chosen by the prompts stage."""

    name = "map-threshold"

    def __call__(
        self,
        image: np.ndarray,
        heatmap: np.ndarray,
        prompts: Prompts,
        prev_mask: np.ndarray | None = None,
        mask_prompt: np.ndarray | None = None,
        identity_weight: float = 0.5,
    ) -> Segmentation:
        return Segmentation(prompts.region.copy(), None)


def segment_many(segmenter, image: np.ndarray, heatmap: np.ndarray, prompts: list[Prompts]) -> list[Segmentation]:
    """One segmentation per prompt set on one image: the segmenter's batched ``segment_many`` (SAM)
    where it has one, else one call per set (the map segmenter, a plain callable)."""
    many = getattr(segmenter, "segment_many", None)
    if many is not None:
        return many(image, heatmap, prompts)
    return [segmenter(image, heatmap, p) for p in prompts]


def build_sam_tiny(checkpoint: str | None = None):
    """A small randomly initialised SAM of segment-anything's own classes (tests, benchmarks)."""
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    dim = 32
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=1,
            embed_dim=32,
            img_size=1024,
            mlp_ratio=2,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=2,
            patch_size=16,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=(0,),
            window_size=14,
            out_chans=dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=dim, image_embedding_size=(64, 64), input_image_size=(1024, 1024), mask_in_chans=4
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=1, embedding_dim=dim, mlp_dim=64, num_heads=2),
            transformer_dim=dim,
            iou_head_depth=2,
            iou_head_hidden_dim=32,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    if checkpoint is not None:
        sam.load_state_dict(_read_state_dict(checkpoint))
    return sam.eval()


def _read_state_dict(path: str | Path) -> dict:
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(str(path), map_location="cpu", weights_only=True)


def sam_type_from_name(path: str | Path) -> str:
    """The SAM model type (``SAM_TYPES``) named in a checkpoint's file name."""
    name = Path(path).name.lower()
    for t in SAM_TYPES:
        if t in name:
            return t
    raise ValueError(f"cannot tell the SAM model type from {Path(path).name!r}; name it ({', '.join(SAM_TYPES)})")


def load_sam(checkpoint: str | Path, model_type: str | None = None):
    """A segment-anything ``Sam`` from a checkpoint path (``.pth`` or ``.safetensors``)."""
    from segment_anything import sam_model_registry

    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"SAM checkpoint not found: {path}")
    model_type = model_type or sam_type_from_name(path)
    if model_type == "tiny":
        return build_sam_tiny(str(path))
    if model_type not in sam_model_registry:
        raise ValueError(f"unknown SAM model type {model_type!r}; choose one of {SAM_TYPES}")
    sam = sam_model_registry[model_type](checkpoint=None)
    sam.load_state_dict(_read_state_dict(path))
    return sam.eval()


def upscale_masks(
    low_res: torch.Tensor, input_size: tuple[int, int], original_size: tuple[int, int], img_size: int = 1024
) -> torch.Tensor:
    """Low-res mask logits ``[B, K, 256, 256]`` → logits at the original image size, the way
    ``Sam.postprocess_masks`` does it: to the padded frame, crop the padding, to the image."""
    import torch.nn.functional as F

    m = F.interpolate(low_res, (img_size, img_size), mode="bilinear", align_corners=False)
    m = m[..., : input_size[0], : input_size[1]]
    return F.interpolate(m, original_size, mode="bilinear", align_corners=False)


class SamSegmenterBase:
    """Point (and box) prompts → SAM's 3 masks; picks the one that agrees best with the map.

    Subclasses embed the image (``_embed``) and decode prompts (``predict``). The embedding is
    cached for the last image seen, so several expressions on one image pay for the encoder once.
    """

    name = "sam"

    def __init__(self, use_box: bool = True):
        from segment_anything.utils.transforms import ResizeLongestSide

        self.use_box = use_box
        self.transform = ResizeLongestSide(1024)
        self._image_key: str | None = None

    def set_image(self, image: np.ndarray) -> None:
        """Embed ``image`` ``[H, W, 3]`` uint8 unless it is the image embedded last (keyed by content)."""
        key = hashlib.blake2b(image.tobytes(), digest_size=16).hexdigest() + str(image.shape)
        if key != self._image_key:
            self._embed(image)
            self._image_key = key

    def _embed(self, image: np.ndarray) -> None:
        raise NotImplementedError

    def predict(
        self,
        points: np.ndarray,
        labels: np.ndarray,
        box: np.ndarray | None,
        return_logits: bool = False,
        mask_input: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(masks ``[3, H, W]`` — bool, or logits with ``return_logits`` —, IoU predictions ``[3]``,
        low-res logits ``[3, 256, 256]``) for prompts in image pixel coordinates; ``mask_input``
        ``[1, 256, 256]`` is a low-res mask prompt (e.g. the previous frame's)."""
        raise NotImplementedError

    def __call__(
        self,
        image: np.ndarray,
        heatmap: np.ndarray,
        prompts: Prompts,
        prev_mask: np.ndarray | None = None,
        mask_prompt: np.ndarray | None = None,
        identity_weight: float = 0.5,
    ) -> Segmentation:
        self.set_image(image)
        box = np.array(prompts.box, dtype=np.float32) if self.use_box and prompts.region.any() else None
        mask_input = None if mask_prompt is None else mask_prompt[None].astype(np.float32)
        masks, scores, low = self.predict(prompts.points, prompts.labels, box, mask_input=mask_input)
        best = choose(list(masks), prompts.region, [float(v) for v in scores], prev_mask, identity_weight)
        return Segmentation(masks[best].astype(bool), float(scores[best]), low[best])

    def segment_many(self, image: np.ndarray, heatmap: np.ndarray, prompts: list[Prompts]) -> list[Segmentation]:
        """One segmentation per prompt set (several instances of one image): the image embedded
        once, prompt sets with the same number of points decoded in one batched call."""
        self.set_image(image)
        groups: dict[int, list[int]] = defaultdict(list)
        for i, p in enumerate(prompts):
            groups[len(p.points)].append(i)
        out: list[Segmentation | None] = [None] * len(prompts)
        for idx in groups.values():
            pts = np.stack([prompts[i].points for i in idx]).astype(np.float32)
            labs = np.stack([prompts[i].labels for i in idx])
            boxes = np.array([prompts[i].box for i in idx], dtype=np.float32) if self.use_box else None
            masks, scores, low = self.predict_many(pts, labs, boxes)
            for j, i in enumerate(idx):
                best = choose(list(masks[j]), prompts[i].region, [float(v) for v in scores[j]])
                out[i] = Segmentation(masks[j][best].astype(bool), float(scores[j][best]), low[j][best])
        return out  # type: ignore[return-value]

    def predict_many(
        self, points: np.ndarray, labels: np.ndarray, boxes: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``predict`` for ``B`` prompt sets of ``K`` points each (``points`` ``[B, K, 2]``,
        ``labels`` ``[B, K]``, ``boxes`` ``[B, 4]``): masks ``[B, 3, H, W]``, IoU ``[B, 3]``, low-res
        logits ``[B, 3, 256, 256]``. This default decodes them one after another."""
        res = [self.predict(points[b], labels[b], None if boxes is None else boxes[b]) for b in range(len(points))]
        return tuple(np.stack(r) for r in zip(*res))  # type: ignore[return-value]


class SamSegmenter(SamSegmenterBase):
    """SAM in torch, through segment-anything's ``SamPredictor``."""

    def __init__(self, sam, device: str | torch.device = "cpu", use_box: bool = True):
        from segment_anything import SamPredictor

        super().__init__(use_box)
        self.sam = sam.to(device).eval()
        self.predictor = SamPredictor(self.sam)

    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path, model_type: str | None = None, device: str = "cpu", **kw):
        """A segmenter over the SAM checkpoint at ``checkpoint`` (type from its name unless given)."""
        return cls(load_sam(checkpoint, model_type), device, **kw)

    def _embed(self, image: np.ndarray) -> None:
        with torch.no_grad():
            self.predictor.set_image(image)

    def predict(self, points, labels, box, return_logits=False, mask_input=None):
        """SAM's ``predict`` for one prompt set on the embedded image: masks ``[3, H, W]``, IoU ``[3]``, low-res
        logits ``[3, 256, 256]``."""
        with torch.no_grad():
            return self.predictor.predict(
                point_coords=points,
                point_labels=labels,
                box=box,
                mask_input=mask_input,
                multimask_output=True,
                return_logits=return_logits,
            )

    def predict_many(self, points, labels, boxes):
        """All prompt sets in one ``SamPredictor.predict_torch`` call (SAM's batched prompts)."""
        p = self.predictor
        dev = p.device
        coords = torch.as_tensor(p.transform.apply_coords(points, p.original_size), dtype=torch.float, device=dev)
        labs = torch.as_tensor(labels, dtype=torch.int, device=dev)
        box = (
            None
            if boxes is None
            else torch.as_tensor(p.transform.apply_boxes(boxes, p.original_size), dtype=torch.float, device=dev)
        )
        with torch.no_grad():
            masks, iou, low = p.predict_torch(coords, labs, box, multimask_output=True)
        return masks.cpu().numpy(), iou.float().cpu().numpy(), low.float().cpu().numpy()


def ort_providers() -> list[str]:
    """CUDA only when torch sees a GPU (and onnxruntime has the provider); CPU always last."""
    import onnxruntime as ort

    providers = ["CPUExecutionProvider"]
    if torch.cuda.is_available() and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    return providers


def ort_graphs(folder: Path, providers: list[str] | None = None) -> tuple:
    """onnxruntime sessions on an export's ``encoder.onnx`` and ``decoder.onnx``: the given providers
    (default ``ort_providers()``) only, every graph optimization on, warnings off (an export's
    shape-merge notices are not the user's concern); ``ValueError`` naming the folder when they do
    not load."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    providers = providers or ort_providers()
    try:
        return tuple(
            ort.InferenceSession(str(folder / f"{part}.onnx"), opts, providers=providers)
            for part in ("encoder", "decoder")
        )
    except Exception as e:  # onnxruntime raises its own exception types
        raise ValueError(f"cannot load the ONNX graphs in {folder}: {e}") from None


class OnnxSamSegmenter(SamSegmenterBase):
    """SAM through onnxruntime on graphs from ``python -m exporters sam``; same outputs as the
    torch path (the masks are upscaled outside the graphs, with the same ops)."""

    def __init__(self, folder: str | Path, providers: list[str] | None = None, use_box: bool = True):
        from .manifest import FORMAT, validate

        super().__init__(use_box)
        self.folder = Path(folder)
        self.manifest = validate(self.folder, format=FORMAT)
        self.encoder, self.decoder = ort_graphs(self.folder, providers)
        self.provider = self.encoder.get_providers()[0]
        self.name = f"sam-onnx:{self.provider}"
        self.dtype = np.float16 if self.manifest["precision"] == "fp16" else np.float32
        self._mean = np.array(self.manifest["pixel_mean"], dtype=np.float32).reshape(3, 1, 1)
        self._std = np.array(self.manifest["pixel_std"], dtype=np.float32).reshape(3, 1, 1)
        self._embedding: np.ndarray | None = None

    def _embed(self, image: np.ndarray) -> None:
        size = self.manifest["image_size"]
        resized = self.transform.apply_image(image)
        self.original_size = image.shape[:2]
        self.input_size = resized.shape[:2]
        x = (resized.transpose(2, 0, 1).astype(np.float32) - self._mean) / self._std
        padded = np.zeros((1, 3, size, size), dtype=np.float32)
        padded[0, :, : x.shape[1], : x.shape[2]] = x
        self._embedding = self.encoder.run(None, {"image": padded.astype(self.dtype)})[0]

    def _decoder_prompts(self, points, labels, box) -> tuple[np.ndarray, np.ndarray]:
        """One prompt set in the decoder's terms: coordinates in the 1024 frame, box corners as
        labels 2 / 3 (else one padding point, label -1)."""
        coords = self.transform.apply_coords(np.asarray(points, dtype=np.float32), self.original_size)
        labs = np.asarray(labels, dtype=np.float32)
        if box is not None:
            corners = self.transform.apply_boxes(np.asarray(box, dtype=np.float32)[None], self.original_size)
            return np.concatenate([coords, corners.reshape(2, 2)]), np.concatenate([labs, [2.0, 3.0]])
        return np.concatenate([coords, np.zeros((1, 2), dtype=np.float32)]), np.concatenate([labs, [-1.0]])

    def _decode(self, coords: np.ndarray, labs: np.ndarray, mask_input, return_logits: bool):
        """``B`` prompt sets (``coords`` ``[B, N, 2]``) → masks ``[B, 3, H, W]``, IoU ``[B, 3]`` and
        low-res masks ``[B, 3, …]``."""
        low = self.manifest["low_res_size"]
        low_res, iou = self.decoder.run(
            None,
            {
                "image_embeddings": self._embedding,
                "point_coords": coords.astype(self.dtype),
                "point_labels": labs.astype(self.dtype),
                "mask_input": (np.zeros((1, 1, *low)) if mask_input is None else mask_input[None]).astype(self.dtype),
                "has_mask_input": np.full(1, 0.0 if mask_input is None else 1.0, dtype=self.dtype),
            },
        )
        low_t = torch.from_numpy(low_res.astype(np.float32))
        logits = upscale_masks(low_t, self.input_size, self.original_size, self.manifest["image_size"]).numpy()
        masks = logits if return_logits else logits > self.manifest["mask_threshold"]
        return masks, iou.astype(np.float32), low_res.astype(np.float32)

    def predict(self, points, labels, box, return_logits=False, mask_input=None):
        """SAM's ``predict`` for one prompt set on the embedded image: masks ``[3, H, W]``, IoU ``[3]``, low-res
        logits ``[3, 256, 256]``."""
        coords, labs = self._decoder_prompts(points, labels, box)
        masks, iou, low = self._decode(coords[None], labs[None], mask_input, return_logits)
        return masks[0], iou[0], low[0]

    def predict_many(self, points, labels, boxes):
        """One decoder run for every prompt set when the export has a prompt batch axis
        (``prompt_batch`` in the manifest; older exports decode one set at a time)."""
        if not self.manifest.get("prompt_batch"):
            return super().predict_many(points, labels, boxes)
        sets = [
            self._decoder_prompts(points[b], labels[b], None if boxes is None else boxes[b]) for b in range(len(points))
        ]
        return self._decode(np.stack([c for c, _ in sets]), np.stack([lab for _, lab in sets]), None, False)


def make_segmenter(spec, device: str = "cpu", dtype: torch.dtype | None = None):
    """``None``/"" → map threshold; a segmenter object passes through; a folder with
    ``manifest.json`` → SAM or a SAM 2-family model through onnxruntime (by the manifest's format);
    a folder of a transformers SAM 2 / SAM 3 tracker / EdgeTAM model → that model
    (``transformers_sam``, on ``device`` in ``dtype``: the DiT's); a file → a SAM checkpoint in
    torch; a hub id (``org/name``, not a local path) → a transformers SAM 2-family model from the hub."""
    if spec is None or spec == "":
        return MapSegmenter()
    if callable(spec):
        return spec
    from .transformers_sam import TransformersSamSegmenter, transformers_sam_type

    path = Path(spec)
    if path.is_dir():
        if (path / "manifest.json").is_file():
            from .manifest import FORMAT_SAM2, read

            if read(path)["format"] == FORMAT_SAM2:
                from .onnx_sam2 import OnnxSam2Segmenter

                return OnnxSam2Segmenter(spec)
            return OnnxSamSegmenter(spec)
        if transformers_sam_type(path):
            return TransformersSamSegmenter.from_pretrained(path, device=device, dtype=dtype)
        raise ValueError(
            f"{path.name} is not a segmenter folder: it has neither an ONNX export's manifest.json nor the "
            "config.json of a SAM 2 / SAM 3 tracker / EdgeTAM model"
        )
    if path.is_file():
        return SamSegmenter.from_checkpoint(spec, device=device)
    if str(spec).count("/") == 1 and not str(spec).endswith((".pth", ".pt", ".safetensors", ".onnx")):
        return TransformersSamSegmenter.from_pretrained(str(spec), device=device, dtype=dtype)
    raise FileNotFoundError(f"SAM checkpoint not found: {path}")
