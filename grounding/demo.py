"""The shipped demo model: a small FLUX-architecture pipeline trained from scratch on the synthetic
shapes world (``eval.shapes``) with rectified flow, FLUX's objective.

Stage 1 trains a small AutoencoderKL (64 px → 32 × 32 × 4) to reconstruct scenes; stage 2 trains
the FluxTransformer2DModel together with small T5 and CLIP text encoders (word-level tokenizers)
on scene captions. Both stages checkpoint to ``<out>/train/`` and resume from there, so a killed
run loses at most ``checkpoint_every`` steps. The result is a complete ``FluxPipeline`` folder that
loads through ``Grounder.from_pretrained`` like FLUX.1 does.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .config import GroundingConfig

log = logging.getLogger("grounding.demo")


@dataclass
class DemoConfig:
    size: int = 64
    seed: int = 0
    vae_steps: int = 400
    vae_lr: float = 1e-3
    steps: int = 3000
    batch: int = 32
    lr: float = 4e-4
    warmup: int = 100
    width_heads: int = 4
    head_dim: int = 32
    dual_blocks: int = 4
    single_blocks: int = 2
    text_dim: int = 64
    max_sequence_length: int = 32
    checkpoint_every: int = 100


def build_components(cfg: DemoConfig):
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from .tiny import _clip_tokenizer, _t5_tokenizer

    torch.manual_seed(cfg.seed)
    t5_tok, clip_tok = _t5_tokenizer(), _clip_tokenizer()
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(32, 64), layers_per_block=1,
        latent_channels=4, norm_num_groups=8, sample_size=cfg.size, use_quant_conv=False, use_post_quant_conv=False,
        shift_factor=0.0, scaling_factor=1.0,
    )
    t5 = T5EncoderModel(T5Config(vocab_size=len(t5_tok), d_model=cfg.text_dim, d_ff=2 * cfg.text_dim, d_kv=16,
                                 num_layers=2, num_heads=4, dropout_rate=0.0, relative_attention_num_buckets=16))
    n = len(clip_tok)
    clip = CLIPTextModel(CLIPTextConfig(vocab_size=n, hidden_size=cfg.text_dim, intermediate_size=2 * cfg.text_dim,
                                        num_hidden_layers=2, num_attention_heads=4, projection_dim=cfg.text_dim,
                                        max_position_embeddings=77, bos_token_id=n - 2, eos_token_id=n - 1,
                                        pad_token_id=n - 1))
    third = cfg.head_dim // 8
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=cfg.dual_blocks, num_single_layers=cfg.single_blocks,
        attention_head_dim=cfg.head_dim, num_attention_heads=cfg.width_heads, joint_attention_dim=cfg.text_dim,
        pooled_projection_dim=cfg.text_dim, guidance_embeds=False,
        axes_dims_rope=(cfg.head_dim - 6 * third, 3 * third, 3 * third),
    )
    return vae, t5, t5_tok, clip, clip_tok, transformer


def scene_batch(rng: np.random.RandomState, n: int, size: int) -> tuple[torch.Tensor, list[str]]:
    from eval.shapes import caption, random_scene

    images, captions = [], []
    for _ in range(n):
        s = random_scene(rng, size)
        images.append(np.asarray(s.image, dtype=np.float32))
        captions.append(caption(s, rng))
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2) / 127.5 - 1.0
    return x, captions


def _save(path: Path, **state) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def train_vae(vae, cfg: DemoConfig, work: Path) -> None:
    ckpt = work / "vae.pt"
    opt = torch.optim.Adam(vae.parameters(), lr=cfg.vae_lr)
    step = 0
    if ckpt.is_file():
        st = torch.load(ckpt, weights_only=False)
        vae.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        step = st["step"]
    vae.train()
    t0 = time.time()
    while step < cfg.vae_steps:
        x, _ = scene_batch(np.random.RandomState(cfg.seed * 1_000_003 + step), cfg.batch, cfg.size)
        post = vae.encode(x).latent_dist
        z = post.sample(generator=torch.Generator().manual_seed(step))
        rec = vae.decode(z).sample
        loss = F.mse_loss(rec, x) + 1e-6 * post.kl().mean()
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
    z = vae.encode(x).latent_dist.mode()
    return float(z.mean()), float(1.0 / z.std())


def encode_text(t5, t5_tok, clip, clip_tok, captions: list[str], max_len: int):
    ids = t5_tok(captions, padding="max_length", max_length=max_len, truncation=True, return_tensors="pt").input_ids
    embeds = t5(ids)[0]
    cids = clip_tok(captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    pooled = clip(cids).pooler_output
    return embeds, pooled


def pack(latents: torch.Tensor) -> torch.Tensor:
    b, c, h, w = latents.shape
    return latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def image_ids(h: int, w: int) -> torch.Tensor:
    ids = torch.zeros(h, w, 3)
    ids[..., 1] = torch.arange(h)[:, None]
    ids[..., 2] = torch.arange(w)[None, :]
    return ids.reshape(-1, 3)


def train_transformer(vae, t5, t5_tok, clip, clip_tok, transformer, cfg: DemoConfig, work: Path,
                      shift: float, scale: float) -> None:
    ckpt = work / "transformer.pt"
    params = list(transformer.parameters()) + list(t5.parameters()) + list(clip.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01)
    step = 0
    if ckpt.is_file():
        st = torch.load(ckpt, weights_only=False)
        transformer.load_state_dict(st["transformer"])
        t5.load_state_dict(st["t5"])
        clip.load_state_dict(st["clip"])
        opt.load_state_dict(st["opt"])
        step = st["step"]
    transformer.train(), t5.train(), clip.train()
    grid = cfg.size // 2 // 2
    img_ids = image_ids(grid, grid)
    txt_ids = torch.zeros(cfg.max_sequence_length, 3)
    t0, ema = time.time(), None
    while step < cfg.steps:
        rng = np.random.RandomState(cfg.seed * 7_000_003 + step)
        x, captions = scene_batch(rng, cfg.batch, cfg.size)
        with torch.no_grad():
            x0 = (vae.encode(x).latent_dist.mode() - shift) * scale
        g = torch.Generator().manual_seed(step)
        noise = torch.randn(x0.shape, generator=g)
        t = torch.rand(cfg.batch, generator=g)
        xt = (1 - t[:, None, None, None]) * x0 + t[:, None, None, None] * noise
        embeds, pooled = encode_text(t5, t5_tok, clip, clip_tok, captions, cfg.max_sequence_length)
        pred = transformer(hidden_states=pack(xt), timestep=t, pooled_projections=pooled,
                           encoder_hidden_states=embeds, txt_ids=txt_ids, img_ids=img_ids, return_dict=False)[0]
        loss = F.mse_loss(pred, pack(noise - x0))
        lr = cfg.lr * min(1.0, (step + 1) / cfg.warmup) * 0.5 * (1 + math.cos(math.pi * min(step / cfg.steps, 1.0)))
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        if step % 25 == 0 or step == cfg.steps:
            log.info("step %d loss %.4f (ema %.4f) lr %.2e (%.1fs)", step, loss.item(), ema, lr, time.time() - t0)
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            _save(ckpt, transformer=transformer.state_dict(), t5=t5.state_dict(), clip=clip.state_dict(),
                  opt=opt.state_dict(), step=step)
    transformer.eval(), t5.eval(), clip.eval()


def train_demo(out: str | Path, cfg: DemoConfig | None = None) -> Path:
    """Train (or resume) both stages and write the pipeline folder to ``out``."""
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
    return save_pipeline(out, cfg, vae, t5, t5_tok, clip, clip_tok, transformer)


def save_pipeline(out: Path, cfg: DemoConfig, vae, t5, t5_tok, clip, clip_tok, transformer) -> Path:
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False),
        vae=vae, text_encoder=clip, tokenizer=clip_tok, text_encoder_2=t5, tokenizer_2=t5_tok,
        transformer=transformer,
    )
    pipe.save_pretrained(out, safe_serialization=True)
    GroundingConfig(resolution=cfg.size, max_sequence_length=cfg.max_sequence_length, guidance_scale=1.0,
                    timesteps=(0.2,)).save_pretrained(out)
    return out


def export_checkpoint(work: Path, out: Path) -> Path:
    """The pipeline as it stands at the last checkpoints in ``work`` (to look at a run in progress)."""
    cfg = DemoConfig(**json.loads((work / "config.json").read_text()))
    vae, t5, t5_tok, clip, clip_tok, transformer = build_components(cfg)
    vae.load_state_dict(torch.load(work / "vae.pt", weights_only=False)["model"])
    shift, scale = latent_stats(vae.eval(), cfg)
    vae.register_to_config(shift_factor=shift, scaling_factor=scale)
    st = torch.load(work / "transformer.pt", weights_only=False)
    transformer.load_state_dict(st["transformer"])
    t5.load_state_dict(st["t5"])
    clip.load_state_dict(st["clip"])
    log.info("exporting step %d", st["step"])
    return save_pipeline(out, cfg, vae.eval(), t5.eval(), t5_tok, clip.eval(), clip_tok, transformer.eval())


@torch.no_grad()
def sample_grid(model: str | Path, captions: list[str], out: str | Path, steps: int = 20, seed: int = 0,
                scale: int = 2) -> Path:
    """Draw one scene per caption with ``steps`` Euler steps of the flow; save them side by side."""
    from diffusers import FluxPipeline
    from PIL import Image, ImageDraw

    pipe = FluxPipeline.from_pretrained(str(model))
    cfg = GroundingConfig.from_pretrained(model)
    size = cfg.resolution
    tiles = []
    for i, cap in enumerate(captions):
        g = torch.Generator().manual_seed(seed + i)
        im = pipe(cap, height=size, width=size, num_inference_steps=steps, guidance_scale=1.0,
                  max_sequence_length=cfg.max_sequence_length or 32, generator=g).images[0]
        tiles.append(im.resize((size * scale, size * scale), Image.NEAREST))
    cell = size * scale
    grid = Image.new("RGB", (cell * len(tiles), cell + 28), "white")
    draw = ImageDraw.Draw(grid)
    for i, (im, cap) in enumerate(zip(tiles, captions)):
        grid.paste(im, (i * cell, 0))
        draw.text((i * cell + 3, cell + 2), cap[: cell // 6], fill=(0, 0, 0))
        draw.text((i * cell + 3, cell + 14), cap[cell // 6: cell // 3], fill=(0, 0, 0))
    out = Path(out)
    grid.save(out)
    return out
