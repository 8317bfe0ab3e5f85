"""Every released backbone at its released size, on the ``meta`` device (``bench/real_size.py``
over ``bench/released/*.json``, through ``bench/gpu_suite.py --dry-run``, so the GPU suite's
real-size path is what is walked): the pipeline builds from the released configurations with the
released vocabularies where a package ships them, and the capture path runs at the released
resolution — 1024² images, a 480 × 832 × 17-frame clip for the video DiTs (the service's default
clip length) — every block, then the early exit at half depth.

The parameter counts are checked against the model cards' published sizes (not against the
files they were built from), and the sequence layouts against the resolutions: 64 × 64 image
tokens, 30 × 52 per latent frame and (17 − 1) / 4 + 1 = 5 latent frames for the video DiTs.
"""

import json

import pytest

from conftest import ROOT
from fixtures import run_bench

# released model → (published transformer size, published text-encoder size, billions; blocks; heads)
PUBLISHED = {
    "flux1-dev": (12, 4.9, 57, 24),  # FLUX.1: "12 billion parameter"; T5-XXL encoder 4.76 B + CLIP-L
    "flux1-schnell": (12, 4.9, 57, 24),
    "sd3.5-large": (8.1, 5.6, 38, 38),  # "8.1 billion parameters"; CLIP-L + CLIP-G + T5-XXL
    "sd3.5-medium": (2.5, 5.6, 24, 24),  # "2.5 billion parameters" (MMDiT-X)
    "flux2-dev": (32, 24, 56, 48),  # "32 billion parameter"; Mistral Small 3.1 24B
    "flux2-klein-4b": (4, 4, 25, 24),  # 4B; Qwen3-4B
    "flux2-klein-9b": (9, 8, 32, 32),  # 9B; Qwen3-8B
    "qwen-image": (20, 8.3, 60, 24),  # "20B MMDiT"; Qwen2.5-VL-7B (8.3 B with its vision tower)
    "z-image-turbo": (6, 4, 30, 30),  # "6B"; Qwen3-4B
    "wan2.1-t2v-1.3b": (1.3, 5.7, 30, 12),  # "1.3B"; UMT5-XXL encoder
    "wan2.1-t2v-14b": (14, 5.7, 40, 40),  # "14B"
    "wan2.2-t2v-a14b": (27, 5.7, 40, 40),  # "27B total parameters, 14B active" (two experts)
    "hunyuanvideo": (13, 7.6, 60, 24),  # "13 billion parameters"; llava-llama-3-8b's Llama + CLIP-L
}
VIDEO = {"wan2.1-t2v-1.3b", "wan2.1-t2v-14b", "wan2.2-t2v-a14b", "hunyuanvideo"}
RELEASED_VOCAB = {"clip", "qwen", "llama3", "tekken"}


@pytest.fixture(scope="module")
def walked():
    doc = run_bench("bench/gpu_suite.py", "--dry-run", timeout=400)
    assert doc["dry_run"] is True and doc["device"] == "meta"
    return doc["models"]


def test_every_released_configuration_is_walked(walked):
    files = sorted(f.stem for f in (ROOT / "bench" / "released").glob("*.json"))
    assert sorted(walked) == files == sorted(PUBLISHED)
    for f in files:
        spec = json.loads((ROOT / "bench" / "released" / f"{f}.json").read_text())
        assert spec["sources"] and spec["checked_against"] and spec["hub_id"], f


@pytest.mark.parametrize("model", sorted(PUBLISHED))
def test_released_size_and_capture_path(walked, model):
    r = walked[model]
    transformer, text, blocks, heads = PUBLISHED[model]
    assert abs(r["transformer_params_b"] - transformer) / transformer < 0.12, (r["transformer_params_b"], transformer)
    assert abs(r["text_params_b"] - text) / text < 0.12, (r["text_params_b"], text)
    assert (r["blocks"], r["heads"]) == (blocks, heads)
    if model in VIDEO:
        assert r["resolution"] == "480x832x17" and (r["samples"], r["image_tokens_per_sample"]) == (5, 30 * 52)
    else:
        assert r["resolution"] == "1024x1024x1" and (r["samples"], r["image_tokens_per_sample"]) == (1, 64 * 64)
    # the maps of every block, and the early exit's first half: [L, V, T, H, N, C]
    assert r["map_shape"] == [blocks, 1, r["samples"], heads, r["image_tokens_per_sample"], r["captured_columns"]]
    assert r["early_exit_blocks"] == blocks // 2
    assert r["map_mib_fp32"] == round(
        blocks * r["samples"] * heads * r["image_tokens_per_sample"] * r["captured_columns"] * 4 / 2**20, 1
    )
    # int8 / nf4 / fp8 map onto exactly the transformer(s) and text encoders of the pipeline
    experts = ["transformer", "transformer_2"] if model == "wan2.2-t2v-a14b" else ["transformer"]
    assert set(experts) <= set(r["quantized_components"]) and "vae" not in r["quantized_components"]
    assert all(k in r["sizes"] for k in r["quantized_components"])
    # the released vocabulary wherever a package ships it (T5 / UMT5: none does)
    spec = json.loads((ROOT / "bench" / "released" / f"{model}.json").read_text())
    for key, kind in ((k, v["vocabulary"]) for k, v in spec["components"].items() if k.startswith("tokenizer")):
        assert r["vocabularies"][key] == ("released" if kind in RELEASED_VOCAB else "synthetic"), (key, kind)
