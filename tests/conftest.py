import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import pytest
import torch
from PIL import Image

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_flux_dir(tmp_path_factory):
    from grounding.tiny import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("models") / "tiny-flux", "flux")


@pytest.fixture(scope="session")
def tiny_sd3_dir(tmp_path_factory):
    from grounding.tiny import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("models") / "tiny-sd3", "sd3")


@pytest.fixture(scope="session")
def flux_grounder(tiny_flux_dir):
    from grounding import Grounder

    return Grounder.from_pretrained(tiny_flux_dir, device="cpu")


@pytest.fixture(scope="session")
def sam_tiny_path(tmp_path_factory):
    from grounding.segmenter import build_sam_tiny

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("sam") / "sam_tiny.pth"
    torch.save(build_sam_tiny().state_dict(), path)
    return path


def scene(w: int = 64, h: int = 48, seed: int = 0) -> Image.Image:
    """A light background with a red disc and a blue square."""
    rng = np.random.RandomState(seed)
    arr = np.full((h, w, 3), 225, dtype=np.float32) + rng.normal(0, 4, (h, w, 3))
    yy, xx = np.mgrid[:h, :w]
    arr[(xx - w * 0.3) ** 2 + (yy - h * 0.5) ** 2 < (min(w, h) * 0.18) ** 2] = (220, 30, 30)
    arr[(abs(xx - w * 0.72) < w * 0.12) & (abs(yy - h * 0.5) < h * 0.16)] = (30, 40, 220)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


@pytest.fixture
def scene_image():
    return scene()
