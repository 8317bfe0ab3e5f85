"""The shipped demo model: a small FLUX-architecture pipeline trained from scratch on the synthetic
shapes world (``eval.shapes``) with rectified flow, FLUX's objective.

Stage 1 trains a small AutoencoderKL (64 px → 32 × 32 × 4) to reconstruct scenes; stage 2 trains
the FluxTransformer2DModel together with small T5 and CLIP text encoders (word-level tokenizers)
on scene captions. Both stages checkpoint to ``<out>/train/`` and resume from there, so a killed
run loses at most ``checkpoint_every`` steps. The result is a complete ``FluxPipeline`` folder that
loads through ``Grounder.from_pretrained`` like FLUX.1 does.

One module (~640 lines): the two training stages, their checkpoints and the export are one
resumable recipe, read top to bottom.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from grounding.backends.capture import dispatcher_capture
from grounding.config import GroundingConfig, MagnetConfig, ModelCard
from grounding.readout.tokens import build_prompt

from .appearance import restyle

log = logging.getLogger("grounding.demo")


@dataclass
class DemoConfig:
    """Defaults are the shipped ``models/shapes-demo`` recipe (README)."""

    size: int = 64
    seed: int = 0
    vae_steps: int = 300
    vae_lr: float = 1e-3
    steps: int = 2200
    batch: int = 32
    lr: float = 4e-4
    warmup: int = 100
    width_heads: int = 4
    head_dim: int = 32
    dual_blocks: int = 4
    single_blocks: int = 2
    text_dim: int = 64
    max_sequence_length: int = 48
    checkpoint_every: int = 100
    # Training captions: chance that an object gets its position phrase, that only some are named.
    position_words: float = 0.5
    subset_captions: float = 0.3
    # Weight of the token grounding loss (TokenCompose, arXiv 2312.03626) on the dual blocks'
    # head-mean image→text attention; 0 = flow matching alone.
    grounding_loss: float = 0.5
    # Stage 3, referring fine-tune: ``refer_steps`` more steps (lr ``refer_lr``, fresh optimiser) in
    # which a share ``referring`` of the scenes are referring examples (``eval.shapes.referring_example``:
    # distractors, size, position, relations) captioned by their expression, its words supervised
    # onto the referent (a relation's complement onto its anchor); the rest are captions as before.
    refer_steps: int = 4500
    referring: float = 0.75
    refer_lr: float = 2e-4
    # Per-word targets (issue #32): each content word is supervised onto what it denotes in the scene
    # (``eval.shapes.denotation``: a colour word → every object of that colour, a shape word → every
    # object of that shape, a position word → its third of the image), as a real DiT's columns light
    # their words, instead of every word of a phrase onto its object. And a share ``generalized`` of
    # the referring stage's scenes are generalized examples (several targets with plural and count
    # words, or the target absent). Off in the shipped recipe.
    word_targets: bool = False
    generalized: float = 0.0
    # More image sides to train at besides ``size`` (issue #32: 64 and 96 px at least): batch ``k``
    # is drawn at ``sides[k % len(sides)]``, ``sides = (size, *more_sizes)``; each a multiple of 4.
    more_sizes: tuple[int, ...] = ()
    # Share of training captions with the engine's attention magnets appended (RefAM's stop words,
    # ``grounding.config.MagnetConfig``; unsupervised, like every stop word). The engine always
    # appends them, so a model that never saw them reads a prompt unlike its training text: in a
    # model trained without them, per-word maps stopped lighting what their words denote.
    magnet_captions: float = 0.0
    # Share of training scenes redrawn with more varied appearance (``training.appearance``:
    # polygons at any angle, some outlines, gradient backgrounds), so shape words learn shapes,
    # not one rendering of them.
    varied: float = 0.0
    # Where and how to run (not part of the model): device, bf16 autocast on CUDA, data workers,
    # and a time budget in minutes for stage 2 (0 = run ``steps``; else ``steps`` is fixed
    # from the measured step time after the first steps and recorded in train/config.json).
    device: str = "cpu"
    amp: bool = False
    workers: int = 0
    minutes: float = 0.0

    @property
    def grid(self) -> int:
        """Image tokens per side: the VAE halves the image, packing halves it again."""
        return self.size // 4

    def side(self, k: int) -> int:
        """Image side of batch ``k`` (``size`` unless ``more_sizes`` are given)."""
        sides = (self.size, *self.more_sizes)
        return sides[k % len(sides)]


def build_components(cfg: DemoConfig):
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from synthetic.tokenizers import clip_tokenizer, t5_tokenizer

    torch.manual_seed(cfg.seed)
    t5_tok, clip_tok = t5_tokenizer(), clip_tokenizer()
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(32, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=cfg.size,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.0,
        scaling_factor=1.0,
    )
    t5 = T5EncoderModel(
        T5Config(
            vocab_size=len(t5_tok),
            d_model=cfg.text_dim,
            d_ff=2 * cfg.text_dim,
            d_kv=16,
            num_layers=2,
            num_heads=4,
            dropout_rate=0.0,
            relative_attention_num_buckets=16,
        )
    )
    n = len(clip_tok)
    clip = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=n,
            hidden_size=cfg.text_dim,
            intermediate_size=2 * cfg.text_dim,
            num_hidden_layers=2,
            num_attention_heads=4,
            projection_dim=cfg.text_dim,
            max_position_embeddings=77,
            bos_token_id=n - 2,
            eos_token_id=n - 1,
            pad_token_id=n - 1,
        )
    )
    third = cfg.head_dim // 8
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,
        num_layers=cfg.dual_blocks,
        num_single_layers=cfg.single_blocks,
        attention_head_dim=cfg.head_dim,
        num_attention_heads=cfg.width_heads,
        joint_attention_dim=cfg.text_dim,
        pooled_projection_dim=cfg.text_dim,
        guidance_embeds=False,
        axes_dims_rope=(cfg.head_dim - 6 * third, 3 * third, 3 * third),
    )
    return vae, t5, t5_tok, clip, clip_tok, transformer


def scene_batch(
    rng: np.random.RandomState, n: int, size: int, position: float = 0.0, subset: float = 0.0
) -> tuple[torch.Tensor, list[str]]:
    """``n`` random scenes ``[n, 3, size, size]`` in [-1, 1] and their captions."""
    x, captions, _ = scene_batch_with_spans(rng, n, size, position, subset)
    return x, captions


def scene_batch_with_spans(
    rng: np.random.RandomState,
    n: int,
    size: int,
    position: float = 0.0,
    subset: float = 0.0,
    referring: float = 0.0,
    word_targets: bool = False,
    generalized: float = 0.0,
    magnets: float = 0.0,
    varied: float = 0.0,
):
    """Scenes, captions, and per scene the supervised spans ``(target mask [size, size], start,
    end)``: each named object's phrase onto that object, or with ``word_targets`` each word onto
    what it denotes (``eval.shapes.word_spans``). With probability ``referring`` a scene is a
    referring example captioned by its expression — of those, a share ``generalized`` are
    generalized examples (several targets, or none). A share ``magnets`` of captions end with the
    engine's magnet words (never supervised); a share ``varied`` of scenes are redrawn with
    ``training.appearance.restyle`` (turned, outlined shapes on varied backgrounds)."""
    from eval.shapes import (
        GENERALIZED_WEIGHTS,
        TYPE_WEIGHTS,
        caption_spans,
        generalized_example,
        random_scene,
        referring_example,
        word_spans,
    )

    kinds, gkinds = list(TYPE_WEIGHTS), [k for k in GENERALIZED_WEIGHTS if k != "single"]
    images, captions, where = [], [], []
    for _ in range(n):
        if referring and rng.rand() < referring:
            if generalized and rng.rand() < generalized:
                s, _, text = generalized_example(rng, gkinds[rng.randint(len(gkinds))], size)
                spans = []
            else:
                s, _, text, spans = referring_example(rng, kinds[rng.randint(len(kinds))], size)
        else:
            s = random_scene(rng, size)
            text, spans = caption_spans(s, rng, position, subset)
        if varied and rng.rand() < varied:
            s = restyle(s, size, rng)
        if magnets and rng.rand() < magnets:
            text = build_prompt(text, MagnetConfig())[0]  # appended: the spans' offsets stay valid
        images.append(np.asarray(s.image, dtype=np.float32))
        captions.append(text)
        where.append(word_spans(text, s) if word_targets else [(s.masks[k], a, e) for k, a, e in spans])
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2) / 127.5 - 1.0
    return x, captions, where


def token_targets(tokenizer, captions: list[str], where, max_len: int, grid: int) -> torch.Tensor:
    """float ``[B, N, T]``: for text position ``t`` of a content word inside a supervised span
    ``(mask, start, end)``, the share of each image token's cell the span's mask covers; zero
    columns elsewhere (articles, "at", "and", punctuation, EOS, padding)."""
    from grounding.config import STOP_WORDS

    enc = tokenizer(captions, padding="max_length", max_length=max_len, truncation=True, return_offsets_mapping=True)
    out = np.zeros((len(captions), grid * grid, max_len), dtype=np.float32)
    for b, (text, spans) in enumerate(zip(captions, where)):
        cells = [
            (m.reshape(grid, m.shape[0] // grid, grid, m.shape[1] // grid).mean(axis=(1, 3)).reshape(-1), a, e)
            for m, a, e in spans
        ]
        for t, (s0, e0) in enumerate(enc["offset_mapping"][b]):
            if e0 <= s0 or text[s0:e0].strip().lower() in STOP_WORDS or not text[s0:e0].strip().isalpha():
                continue
            for c, a, e in cells:
                if a <= s0 and e0 <= e:
                    out[b, :, t] = c
    return torch.from_numpy(out)


class SceneBatches(torch.utils.data.IterableDataset):
    """Batch ``k`` for steps ``start ≤ k < stop``, each drawn from its own seed, so a run is the
    same however many workers render it (the DataLoader takes workers' batches in turn).
    Yields ``(x, captions, targets)``; targets (see ``token_targets``) only when ``tokenizer``."""

    def __init__(
        self,
        cfg: DemoConfig,
        start: int,
        stop: int,
        seed_base: int,
        captions: bool = True,
        tokenizer=None,
        referring: float = 0.0,
    ):
        self.cfg, self.start, self.stop, self.seed_base, self.captions = cfg, start, stop, seed_base, captions
        self.tokenizer, self.referring = tokenizer, referring

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        wid, nw = (info.id, info.num_workers) if info else (0, 1)
        c = self.cfg
        for k in range(self.start + wid, self.stop, nw):
            rng = np.random.RandomState(c.seed * self.seed_base + k)
            side = c.side(k)
            x, caps, where = scene_batch_with_spans(
                rng,
                c.batch,
                side,
                c.position_words if self.captions else 0.0,
                c.subset_captions if self.captions else 0.0,
                self.referring,
                c.word_targets,
                c.generalized if self.referring else 0.0,
                c.magnet_captions,
                c.varied,
            )
            targets = None
            if self.tokenizer is not None:
                targets = token_targets(self.tokenizer, caps, where, c.max_sequence_length, side // 4)
            yield x, caps, targets


def _batches(
    cfg: DemoConfig,
    start: int,
    stop: int,
    seed_base: int,
    captions: bool = True,
    tokenizer=None,
    referring: float = 0.0,
):
    ds = SceneBatches(cfg, start, stop, seed_base, captions, tokenizer, referring)
    if cfg.workers <= 0:
        return iter(ds)
    return iter(
        torch.utils.data.DataLoader(
            ds,
            batch_size=None,
            num_workers=cfg.workers,
            prefetch_factor=4,
            worker_init_fn=lambda _: torch.set_num_threads(1),
        )
    )


def _autocast(cfg: DemoConfig):
    import contextlib

    if cfg.amp and cfg.device.startswith("cuda"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _save(path: Path, **state) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def train_vae(vae, cfg: DemoConfig, work: Path) -> None:
    ckpt = work / "vae.pt"
    dev = torch.device(cfg.device)
    vae.to(dev)
    opt = torch.optim.Adam(vae.parameters(), lr=cfg.vae_lr)
    step = 0
    if ckpt.is_file():
        st = torch.load(ckpt, weights_only=False, map_location=dev)
        vae.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        step = st["step"]
    vae.train()
    t0 = time.time()
    for x, _, _ in _batches(cfg, step, cfg.vae_steps, 1_000_003, captions=False):
        x = x.to(dev)
        with _autocast(cfg):
            post = vae.encode(x).latent_dist
            z = post.sample(generator=torch.Generator(dev).manual_seed(step))
            rec = vae.decode(z).sample
        loss = F.mse_loss(rec.float(), x) + 1e-6 * post.kl().float().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if step % 50 == 0 or step == cfg.vae_steps:
            log.info("vae step %d loss %.5f (%.1fs)", step, loss.item(), time.time() - t0)
        if step % cfg.checkpoint_every == 0 or step == cfg.vae_steps:
            _save(ckpt, model=vae.state_dict(), opt=opt.state_dict(), step=step)
    vae.eval()


@torch.no_grad()
def latent_stats(vae, cfg: DemoConfig) -> tuple[float, float]:
    x, _ = scene_batch(np.random.RandomState(cfg.seed + 7), 256, cfg.size)
    dev = next(vae.parameters()).device
    z = torch.cat([vae.encode(x[i : i + 64].to(dev)).latent_dist.mode() for i in range(0, len(x), 64)])
    return float(z.mean()), float(1.0 / z.std())


def encode_text(t5, t5_tok, clip, clip_tok, captions: list[str], max_len: int):
    dev = next(t5.parameters()).device
    ids = t5_tok(captions, padding="max_length", max_length=max_len, truncation=True, return_tensors="pt").input_ids
    embeds = t5(ids.to(dev))[0]
    cids = clip_tok(captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    pooled = clip(cids.to(dev)).pooler_output
    return embeds, pooled


def pack(latents: torch.Tensor) -> torch.Tensor:
    b, c, h, w = latents.shape
    return latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def image_ids(h: int, w: int) -> torch.Tensor:
    ids = torch.zeros(h, w, 3)
    ids[..., 1] = torch.arange(h)[:, None]
    ids[..., 2] = torch.arange(w)[None, :]
    return ids.reshape(-1, 3)


class _TextLogitsRecorder:
    """Training-time recorder (``grounding.backends.capture``): the stock attention output, plus
    the image→text logits ``[B, H, N, T]`` of each captured block appended to ``sink`` (with
    gradient) for the grounding loss. FLUX puts the ``n_txt`` text tokens first."""

    def __init__(self, sink: list, n_txt: int):
        self.sink, self.n_txt = sink, n_txt

    def attend(self, block, q, k, v, attn_mask=None, scale=None):
        t = self.n_txt
        self.sink.append((q[:, :, t:] @ k[:, :, :t].transpose(-1, -2)) * q.shape[-1] ** -0.5)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale)


def grounding_loss(logits: list[torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
    """TokenCompose's token loss on head-mean attention: for every supervised text position,
    ``(1 − share of its column's mass on the object's cells)²``, averaged over positions and
    blocks. Each image token's attention is taken over the text keys (what the engine reads
    with redistribution on); ``targets`` ``[B, N, T]`` as ``token_targets``."""
    used = targets.amax(dim=1) > 0  # [B, T]
    if not used.any():
        return logits[0].sum() * 0.0
    losses = []
    for lg in logits:
        p = lg.float().softmax(dim=-1).mean(dim=1)  # [B, N, T]
        col = p / p.sum(dim=1, keepdim=True).clamp_min(1e-12)
        share = (col * targets).sum(dim=1)  # [B, T]
        losses.append(((1 - share) ** 2)[used].mean())
    return torch.stack(losses).mean()


def _lr(base: float, warmup: int, total: int, step: int) -> float:
    """Linear warm-up, then cosine decay to zero at ``total``."""
    return base * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(step / total, 1.0)))


def train_transformer(
    vae,
    t5,
    t5_tok,
    clip,
    clip_tok,
    transformer,
    cfg: DemoConfig,
    work: Path,
    shift: float,
    scale: float,
    refer: bool = False,
) -> None:
    """Stage 2 (captions; ``train/transformer.pt``) or, with ``refer``, stage 3 (referring
    fine-tune from stage 2's weights; ``train/refer.pt``)."""
    ckpt = work / ("refer.pt" if refer else "transformer.pt")
    total = cfg.refer_steps if refer else cfg.steps
    base_lr = cfg.refer_lr if refer else cfg.lr
    minutes = 0.0 if refer else cfg.minutes
    dev = torch.device(cfg.device)
    if dev.type == "cuda":
        # bf16 autocast backward hit an illegal memory access on an H200 (torch 2.11, cuDNN attention
        # chosen by default); fp32 with TF32 matmuls and the memory-efficient kernel is what ran.
        torch.backends.cuda.enable_cudnn_sdp(False)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    for m in (vae, t5, clip, transformer):
        m.to(dev)
    params = list(transformer.parameters()) + list(t5.parameters()) + list(clip.parameters())
    opt = torch.optim.AdamW(params, lr=base_lr, weight_decay=0.01)
    step = 0
    if ckpt.is_file():
        st = torch.load(ckpt, weights_only=False, map_location=dev)
        transformer.load_state_dict(st["transformer"])
        t5.load_state_dict(st["t5"])
        clip.load_state_dict(st["clip"])
        opt.load_state_dict(st["opt"])
        step = st["step"]
        if minutes:  # a time-budgeted run resumes with the length it fixed
            cfg.steps = total = st.get("steps", cfg.steps)
            cfg.minutes = minutes = 0.0
    transformer.train(), t5.train(), clip.train()
    txt_ids = torch.zeros(cfg.max_sequence_length, 3, device=dev)
    logits: list[torch.Tensor] = []
    capture = contextlib.ExitStack()
    if cfg.grounding_loss:  # the dual-stream blocks' attention, through the engine's capture mechanism
        capture.enter_context(
            dispatcher_capture(
                {f"transformer_blocks.{i}": b.attn for i, b in enumerate(transformer.transformer_blocks)},
                _TextLogitsRecorder(logits, cfg.max_sequence_length),
            )
        )
    t0, ema, gema, probe = time.time(), None, None, None
    batches = (
        _batches(
            cfg,
            step,
            10**9 if minutes else total,
            9_000_011 if refer else 7_000_003,
            tokenizer=t5_tok if cfg.grounding_loss else None,
            referring=cfg.referring if refer else 0.0,
        )
        if step < total
        else iter(())
    )
    while step < total:
        x, captions, targets = next(batches)
        logits.clear()
        with torch.no_grad():
            x0 = (vae.encode(x.to(dev)).latent_dist.mode() - shift) * scale
        g = torch.Generator().manual_seed(step)
        noise = torch.randn(x0.shape, generator=g).to(dev)
        t = torch.rand(cfg.batch, generator=g).to(dev)
        xt = (1 - t[:, None, None, None]) * x0 + t[:, None, None, None] * noise
        img_ids = image_ids(x0.shape[-2] // 2, x0.shape[-1] // 2).to(dev)
        with _autocast(cfg):
            embeds, pooled = encode_text(t5, t5_tok, clip, clip_tok, captions, cfg.max_sequence_length)
            pred = transformer(
                hidden_states=pack(xt),
                timestep=t,
                pooled_projections=pooled,
                encoder_hidden_states=embeds,
                txt_ids=txt_ids,
                img_ids=img_ids,
                return_dict=False,
            )[0]
        loss = flow = F.mse_loss(pred.float(), pack(noise - x0))
        if cfg.grounding_loss:
            g_loss = grounding_loss(logits, targets.to(dev))
            loss = flow + cfg.grounding_loss * g_loss
            gema = g_loss.item() if gema is None else 0.98 * gema + 0.02 * g_loss.item()
        lr = _lr(base_lr, cfg.warmup, total, step)
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        if minutes and step == 20:
            probe = time.time()
        if minutes and step == 60:  # fix the run length from the measured step time
            per = (time.time() - probe) / 40
            cfg.steps = total = max(60, min(cfg.steps, int(minutes * 60 / per)))
            (work / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
            log.info("%.1f ms/step: %d steps fit in %.1f min", per * 1e3, total, minutes)
        if minutes and time.time() - t0 > 1.3 * 60 * minutes and step < total:
            log.warning("step %d: past 1.3 x the time budget (the machine got slower); stopping here", step)
            cfg.steps = total = step
            (work / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
        ema = flow.item() if ema is None else 0.98 * ema + 0.02 * flow.item()
        if step % 100 == 0 or step == total:
            log.info(
                "%s step %d flow %.4f (ema %.4f) grounding (ema) %s lr %.2e (%.1fs)",
                "refer" if refer else "caption",
                step,
                flow.item(),
                ema,
                "-" if gema is None else f"{gema:.4f}",
                lr,
                time.time() - t0,
            )
        if step % cfg.checkpoint_every == 0 or step == total:
            _save(
                ckpt,
                transformer=transformer.state_dict(),
                t5=t5.state_dict(),
                clip=clip.state_dict(),
                opt=opt.state_dict(),
                step=step,
                steps=total,
            )
    capture.close()
    transformer.eval(), t5.eval(), clip.eval()


def train_demo(out: str | Path, cfg: DemoConfig | None = None, weights_only: bool = False) -> Path:
    """Train (or resume) both stages; write the pipeline folder to ``out`` (or, with
    ``weights_only``, just ``out/weights.pt`` for ``export_weights`` to turn into one elsewhere)."""
    cfg = cfg or DemoConfig()
    out = Path(out)
    work = out / "train"
    work.mkdir(parents=True, exist_ok=True)
    (work / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    torch.manual_seed(cfg.seed)
    vae, t5, t5_tok, clip, clip_tok, transformer = build_components(cfg)
    train_vae(vae, cfg, work)
    shift, scale = latent_stats(vae, cfg)
    vae.register_to_config(shift_factor=shift, scaling_factor=scale)
    log.info("latent shift %.4f scale %.4f", shift, scale)
    train_transformer(vae, t5, t5_tok, clip, clip_tok, transformer, cfg, work, shift, scale)
    if cfg.refer_steps:
        train_transformer(vae, t5, t5_tok, clip, clip_tok, transformer, cfg, work, shift, scale, refer=True)
    if weights_only:
        return save_weights(out / "weights.pt", cfg, vae, t5, clip, transformer)
    for m in (vae, t5, clip, transformer):
        m.to("cpu")
    return save_pipeline(out, cfg, vae, t5, t5_tok, clip, clip_tok, transformer)


def finetune_demo(model: str | Path, out: str | Path, cfg: DemoConfig) -> Path:
    """A referring fine-tune (stage 3's loop, ``cfg.refer_steps`` steps at ``cfg.refer_lr``, fresh
    AdamW) from a saved demo pipeline — e.g. the shipped model retaught with per-word targets
    (``cfg.word_targets``) and generalized examples (``cfg.generalized``). Checkpoints in
    ``out/train/refer.pt`` (resumable); the pipeline folder is written to ``out`` with the source
    model's ``grounding.json`` (recalibrate it for the new weights)."""
    from diffusers import FluxPipeline

    out = Path(out)
    work = out / "train"
    work.mkdir(parents=True, exist_ok=True)
    source = GroundingConfig.from_pretrained(model)  # the scenes and the text length the model was built for
    cfg.size, cfg.max_sequence_length = source.resolution, source.max_sequence_length or cfg.max_sequence_length
    (work / "config.json").write_text(json.dumps({**asdict(cfg), "finetuned_from": str(model)}, indent=2))
    torch.manual_seed(cfg.seed)
    pipe = FluxPipeline.from_pretrained(str(model))
    vae, t5, clip, transformer = pipe.vae.eval(), pipe.text_encoder_2, pipe.text_encoder, pipe.transformer
    shift, scale = vae.config.shift_factor, vae.config.scaling_factor
    train_transformer(vae, t5, pipe.tokenizer_2, clip, pipe.tokenizer, transformer, cfg, work, shift, scale, refer=True)
    for m in (vae, t5, clip, transformer):
        m.to("cpu")
    save_pipeline(out, cfg, vae, t5, pipe.tokenizer_2, clip, pipe.tokenizer, transformer)
    if (Path(model) / "grounding.json").is_file():  # its read-out and calibration, over save_pipeline's defaults
        source.save_pretrained(out)
    return out


def save_weights(path: Path, cfg: DemoConfig, vae, t5, clip, transformer) -> Path:
    """Model weights (fp16) and config in one file: small enough to carry off a training machine."""
    half = {
        name: {k: v.detach().to("cpu", torch.float16) for k, v in m.state_dict().items()}
        for name, m in (("vae", vae), ("t5", t5), ("clip", clip), ("transformer", transformer))
    }
    vcfg = vae.config
    _save(path, config=asdict(cfg), latent=(vcfg.shift_factor, vcfg.scaling_factor), **half)
    return path


def export_weights(path: str | Path, out: str | Path) -> Path:
    """A ``save_weights`` file → a complete FluxPipeline folder (fp32) with its grounding.json."""
    st = torch.load(path, weights_only=False, map_location="cpu")
    known = set(DemoConfig.__dataclass_fields__)
    cfg = DemoConfig(**{k: v for k, v in st["config"].items() if k in known})
    cfg.device, cfg.amp, cfg.workers, cfg.minutes = "cpu", False, 0, 0.0
    vae, t5, t5_tok, clip, clip_tok, transformer = build_components(cfg)
    for name, m in (("vae", vae), ("t5", t5), ("clip", clip), ("transformer", transformer)):
        m.load_state_dict({k: v.float() for k, v in st[name].items()})
    shift, scale = st["latent"]
    vae.register_to_config(shift_factor=shift, scaling_factor=scale)
    return save_pipeline(Path(out), cfg, vae.eval(), t5.eval(), t5_tok, clip.eval(), clip_tok, transformer.eval())


# What the demo model knows (its ``grounding.json`` model card; calibration commands add theirs).
DEMO_DOMAIN = (
    "the project's synthetic shapes world only: 2-4 coloured circles, squares and triangles (six "
    "colours, two sizes) on plain light backgrounds, 64 px, expressions of colour, shape, size, position "
    "and relation words; photographs and other words are outside it (expect present: false)"
)
DEMO_NOTES = (
    "a 3 M-parameter FluxPipeline trained from scratch by `python -m training train-demo`; a stand-in "
    "for real DiT weights, not a photo model"
)


def save_pipeline(out: Path, cfg: DemoConfig, vae, t5, t5_tok, clip, clip_tok, transformer) -> Path:
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False),
        vae=vae,
        text_encoder=clip,
        tokenizer=clip_tok,
        text_encoder_2=t5,
        tokenizer_2=t5_tok,
        transformer=transformer,
    )
    pipe.save_pretrained(out, safe_serialization=True)
    GroundingConfig(
        resolution=cfg.size,
        max_sequence_length=cfg.max_sequence_length,
        guidance_scale=1.0,
        timesteps=(0.2,),
        card=ModelCard(domain=DEMO_DOMAIN, notes=DEMO_NOTES),
    ).save_pretrained(out)
    return out


def export_checkpoint(work: Path, out: Path) -> Path:
    """The pipeline as it stands at the last checkpoints in ``work`` (to look at a run in progress)."""
    cfg = DemoConfig(**json.loads((work / "config.json").read_text()))
    cfg.device = "cpu"
    vae, t5, t5_tok, clip, clip_tok, transformer = build_components(cfg)
    vae.load_state_dict(torch.load(work / "vae.pt", weights_only=False, map_location="cpu")["model"])
    shift, scale = latent_stats(vae.eval(), cfg)
    vae.register_to_config(shift_factor=shift, scaling_factor=scale)
    st = torch.load(
        work / ("refer.pt" if (work / "refer.pt").is_file() else "transformer.pt"),
        weights_only=False,
        map_location="cpu",
    )
    transformer.load_state_dict(st["transformer"])
    t5.load_state_dict(st["t5"])
    clip.load_state_dict(st["clip"])
    log.info("exporting step %d", st["step"])
    return save_pipeline(out, cfg, vae.eval(), t5.eval(), t5_tok, clip.eval(), clip_tok, transformer.eval())


@torch.no_grad()
def sample_grid(
    model: str | Path, captions: list[str], out: str | Path, steps: int = 20, seed: int = 0, scale: int = 2
) -> Path:
    """Draw one scene per caption with ``steps`` Euler steps of the flow; save them side by side."""
    from diffusers import FluxPipeline
    from PIL import Image, ImageDraw

    pipe = FluxPipeline.from_pretrained(str(model))
    cfg = GroundingConfig.from_pretrained(model)
    size = cfg.resolution
    tiles = []
    for i, cap in enumerate(captions):
        g = torch.Generator().manual_seed(seed + i)
        im = pipe(
            cap,
            height=size,
            width=size,
            num_inference_steps=steps,
            guidance_scale=1.0,
            max_sequence_length=cfg.max_sequence_length or 32,
            generator=g,
        ).images[0]
        tiles.append(im.resize((size * scale, size * scale), Image.NEAREST))
    cell = size * scale
    grid = Image.new("RGB", (cell * len(tiles), cell + 28), "white")
    draw = ImageDraw.Draw(grid)
    for i, (im, cap) in enumerate(zip(tiles, captions)):
        grid.paste(im, (i * cell, 0))
        draw.text((i * cell + 3, cell + 2), cap[: cell // 6], fill=(0, 0, 0))
        draw.text((i * cell + 3, cell + 14), cap[cell // 6 : cell // 3], fill=(0, 0, 0))
    out = Path(out)
    grid.save(out)
    return out
