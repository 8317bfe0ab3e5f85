import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_flux_dir(tmp_path_factory):
    from grounding.backends.tiny import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("models") / "tiny-flux", "flux")


@pytest.fixture(scope="session")
def tiny_sd3_dir(tmp_path_factory):
    from grounding.backends.tiny import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("models") / "tiny-sd3", "sd3")


@pytest.fixture(scope="session")
def flux_grounder(tiny_flux_dir):
    from grounding import Grounder

    return Grounder.from_pretrained(tiny_flux_dir, device="cpu")


@pytest.fixture(scope="session")
def sam_tiny_path(tmp_path_factory):
    from grounding.segment.segmenters import build_sam_tiny

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


ROOT = Path(__file__).resolve().parents[1]
MAX_PIXELS = 4_000_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def server(tiny_flux_dir, tmp_path_factory):
    port, grpc_port = free_port(), free_port()
    env = dict(os.environ, GROUNDING_MODEL=str(tiny_flux_dir), GROUNDING_GRPC_PORT=str(grpc_port),
               GROUNDING_MAX_IMAGE_PIXELS=str(MAX_PIXELS), GROUNDING_DEVICE="cpu", HF_HUB_OFFLINE="1",
               GROUNDING_JOBS_DIR=str(tmp_path_factory.mktemp("jobs")),
               BENTOML_HOME=str(tmp_path_factory.mktemp("bentoml_home")))
    log = open(tmp_path_factory.mktemp("logs") / "serve.log", "w+")
    proc = subprocess.Popen(
        [sys.executable, "-m", "bentoml", "serve", "service:Grounding", "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            pytest.fail(f"bentoml serve exited:\n{log.read()[-4000:]}")
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    else:
        log.seek(0)
        pytest.fail(f"server not ready in time:\n{log.read()[-4000:]}")
    yield {"url": url, "grpc": f"127.0.0.1:{grpc_port}", "model": str(tiny_flux_dir)}
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
