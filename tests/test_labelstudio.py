"""The Label Studio ML backend (``/labelstudio``) against a real Label Studio 1.23 on 127.0.0.1.

Label Studio runs from its own venv (``make labelstudio``) with its own SQLite: a project whose
config has BrushLabels and RectangleLabels on an image, an uploaded image task, our service
registered as its ML backend, predictions asked for through Label Studio's API; each brush region
is decoded with Label Studio's own converter and must equal, pixel for pixel, the mask our
``/segment`` returns for the label's name. The pure parts (config parsing, expressions, the brush
codec, the fetch rule) are checked in process without it.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, RUN_ID, RUN_MARKER, Server
from grounding.pipeline.result import rle_to_mask
from grounding.serving import brush
from grounding.serving.labelstudio import LabelStudioBackend, expressions, parse_config
from grounding.serving.schema import RequestError
from grounding.serving.settings import Settings

LS_PYTHON = ROOT / ".venv-tools" / "labelstudio" / "bin" / "python"
TOKEN = "0123456789abcdef0123456789abcdef01234567"
CONFIG = """<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="mask" toName="image"><Label value="red triangle"/><Label value="blue circle"/></BrushLabels>
  <RectangleLabels name="box" toName="image"><Label value="red triangle"/><Label value="blue circle"/></RectangleLabels>
  <TextArea name="prompt" toName="image" editable="true"/>
</View>"""


def test_config_and_expressions():
    cfg = parse_config(CONFIG)
    assert (cfg.image, cfg.data_key, cfg.text) == ("image", "image", "prompt")
    assert cfg.brush == ("mask", ["red triangle", "blue circle"]) and cfg.rectangle[0] == "box"
    assert expressions(cfg, None) == [("red triangle", "red triangle"), ("blue circle", "blue circle")]
    typed = {"result": [{"from_name": "prompt", "type": "textarea", "value": {"text": ["the big one\nthe small one"]}}]}
    assert expressions(cfg, typed) == [("the big one", "red triangle"), ("the small one", "red triangle")]
    for bad in ("<View/>", "not xml", '<View><Image name="i" value="$image"/></View>'):
        with pytest.raises(RequestError):
            parse_config(bad)


def test_brush_codec_round_trip_and_long_runs():
    rng = np.random.RandomState(0)
    for shape in ((1, 1), (7, 5), (300, 257)):
        m = rng.rand(*shape) > 0.7
        assert np.array_equal(brush.decode(brush.encode(m), *shape), m)
    big = np.ones((300, 300), bool)  # 360,000 equal values: runs split at the 16-bit field
    assert np.array_equal(brush.decode(brush.encode(big), 300, 300), big)


def test_images_are_read_only_from_the_configured_server():
    import asyncio

    backend = LabelStudioBackend(Settings(label_studio_url="http://127.0.0.1:9"))
    png = base64.b64encode((ROOT / "examples" / "shapes-1.png").read_bytes()).decode()
    assert asyncio.run(backend.fetch(f"data:image/png;base64,{png}"))[:4] == b"\x89PNG"
    for ref in ("http://169.254.169.254/latest/meta-data", "https://example.com/x.png", "//evil.host/x.png", ""):
        with pytest.raises(RequestError, match="refused|no image"):
            asyncio.run(backend.fetch(ref))
    with pytest.raises(RequestError, match="GROUNDING_LABEL_STUDIO_URL"):
        asyncio.run(LabelStudioBackend(Settings()).fetch("/data/upload/1/x.png"))


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LabelStudio:
    """``label-studio start`` on a free loopback port with its own data folder and a known user
    token; stopped with its whole process group."""

    def __init__(self, workdir: Path, timeout: float = 180):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            RUN_MARKER: RUN_ID,
            "LABEL_STUDIO_USERNAME": "test@example.com",
            "LABEL_STUDIO_PASSWORD": "test-password-123",
            "LABEL_STUDIO_USER_TOKEN": TOKEN,
            "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
            "LATEST_VERSION_CHECK": "false",
            "SENTRY_DSN": "",
            "FRONTEND_SENTRY_DSN": "",
            "SSRF_PROTECTION_ENABLED": "false",
            "ML_BLOCK_LOCAL_IP": "false",
        }
        cmd = [str(LS_PYTHON.parent / "label-studio"), "start", "--no-browser", "--internal-host", "127.0.0.1"]
        cmd += ["-p", str(self.port), "--data-dir", str(workdir)]
        workdir.mkdir(parents=True, exist_ok=True)
        self.log = open(workdir / "label-studio.log", "wb")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        self.stop()
        raise RuntimeError(f"Label Studio did not start: {(workdir / 'label-studio.log').read_text()[-2000:]}")

    def api(self, method: str, path: str, **kw) -> httpx.Response:
        r = httpx.request(method, f"{self.url}{path}", headers={"Authorization": f"Token {TOKEN}"}, timeout=120, **kw)
        assert r.status_code < 300, f"{method} {path}: {r.status_code} {r.text[:500]}"
        return r

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.log.close()


def _ls_decode(rle: list[int], height: int, width: int) -> np.ndarray:
    """Label Studio's own decoder (``label_studio_sdk.converter.brush.decode_rle``), channel 3."""
    code = (
        "import json, sys; from label_studio_sdk.converter.brush import decode_rle; "
        "print(json.dumps(decode_rle(json.load(sys.stdin)).tolist()))"
    )
    out = subprocess.run(
        [str(LS_PYTHON), "-c", code], input=json.dumps(rle), capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return np.array(json.loads(out.stdout), dtype=np.uint8).reshape(height, width, 4)[:, :, 3] > 0


@pytest.mark.slow
def test_label_studio_round_trip(tmp_path):
    if not LS_PYTHON.is_file():
        pytest.fail("Label Studio is not installed: run `make labelstudio` (make test-slow does)")
    studio = LabelStudio(tmp_path / "ls")
    try:
        ours = Server(
            ROOT / "models" / "shapes-demo",
            tmp_path / "svc",
            GROUNDING_LABEL_STUDIO_URL=studio.url,
            GROUNDING_LABEL_STUDIO_TOKEN=TOKEN,
            GROUNDING_GRPC_PORT="0",
        )
        try:
            project = studio.api("POST", "/api/projects", json={"title": "pre-labels", "label_config": CONFIG}).json()
            image = ROOT / "examples" / "shapes-1.png"
            studio.api(
                "POST",
                f"/api/projects/{project['id']}/import",
                files={"file": (image.name, image.read_bytes(), "image/png")},
            )
            backend = f"{ours.url}/labelstudio"
            ml = studio.api(
                "POST", "/api/ml", json={"project": project["id"], "url": backend, "title": "dit-grounding"}
            ).json()
            assert ml["state"] == "CO", ml  # connected: /health and /setup answered
            studio.api(
                "POST",
                "/api/dm/actions",
                params={"id": "retrieve_tasks_predictions", "project": project["id"]},
                json={"selectedItems": {"all": True, "excluded": []}},
            )
            (pred,) = studio.api("GET", "/api/predictions", params={"project": project["id"]}).json()
            assert pred["model_version"].startswith("dit-grounding:")
            w, h = Image.open(image).size
            by_label: dict[str, list[np.ndarray]] = {}
            for region in pred["result"]:
                if region["type"] == "brushlabels":
                    (label,) = region["value"]["brushlabels"]
                    by_label.setdefault(label, []).append(_ls_decode(region["value"]["rle"], h, w))
            assert by_label, pred["result"]
            for label, masks in by_label.items():
                r = httpx.post(
                    f"{ours.url}/segment",
                    files={"image": (image.name, image.read_bytes(), "image/png")},
                    data={"expression": label, "instances": "all"},
                    timeout=120,
                ).json()["results"][0]
                assert r["present"]
                want = [rle_to_mask(i["segmentation"]) for i in r["instances"]]
                assert len(masks) == len(want)
                for got, exp in zip(masks, want):
                    assert np.array_equal(got, exp), label
            boxes = [r for r in pred["result"] if r["type"] == "rectanglelabels"]
            assert len(boxes) == sum(len(m) for m in by_label.values())
        finally:
            ours.stop()
    finally:
        studio.stop()
