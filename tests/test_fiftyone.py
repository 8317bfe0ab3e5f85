"""FiftyOne's ``apply_model`` over the service (``integrations.fiftyone_model.GroundingModel``),
against a real FiftyOne 1.22 and its own ``mongod`` on 127.0.0.1 (``make fiftyone``): a dataset of
the shipped example images with an expression per sample, every detection's mask (pasted back at
its box) equal to the instance mask ``/segment`` returns for that expression, pixel for pixel."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess

import httpx
import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, RUN_ID, RUN_MARKER, Server
from grounding.pipeline.result import rle_to_mask

FO_PYTHON = ROOT / ".venv-tools" / "fiftyone" / "bin" / "python"
SAMPLES = [
    ("shapes-1.png", "the red triangle"),
    ("shapes-2.png", "the green shapes"),
    ("hopper.jpg", "the woman in uniform"),
]
SCRIPT = """
import json, sys
import fiftyone as fo
from integrations.fiftyone_model import GroundingModel

ds = fo.Dataset()
for path, expr in json.loads(sys.argv[2]):
    ds.add_sample(fo.Sample(filepath=path, expression=expr))
ds.apply_model(GroundingModel(sys.argv[1]), label_field="grounded", prompt_field="expression", skip_failures=False)
out = []
for s in ds:
    dets = s.grounded.detections if s.grounded else []
    out.append([{"label": d.label, "box": d.bounding_box, "confidence": d.confidence,
                 "presence": d["presence_score"], "mask": d.mask.astype(int).tolist()} for d in dets])
print(json.dumps(out))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_fiftyone_apply_model_round_trip(tmp_path):
    if not FO_PYTHON.is_file():
        pytest.fail("FiftyOne is not installed: run `make fiftyone` (make test-slow does)")
    mongod = next(FO_PYTHON.parents[1].glob("lib/python*/site-packages/fiftyone/db/bin/mongod"))
    port = _free_port()
    (tmp_path / "db").mkdir()
    env = {**os.environ, RUN_MARKER: RUN_ID}
    db = subprocess.Popen(
        [str(mongod), "--dbpath", str(tmp_path / "db"), "--port", str(port), "--bind_ip", "127.0.0.1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    try:
        ours = Server(ROOT / "models" / "shapes-demo", tmp_path / "svc", GROUNDING_GRPC_PORT="0")
        try:
            samples = [(str(ROOT / "examples" / name), expr) for name, expr in SAMPLES]
            run = subprocess.run(
                [str(FO_PYTHON), "-c", SCRIPT, ours.url, json.dumps(samples)],
                env={
                    **env,
                    "PYTHONPATH": str(ROOT),
                    "FIFTYONE_DATABASE_URI": f"mongodb://127.0.0.1:{port}",
                    "FIFTYONE_DATABASE_VALIDATION": "false",
                    "FIFTYONE_DO_NOT_TRACK": "true",
                },
                capture_output=True,
                text=True,
                timeout=600,
            )
            assert run.returncode == 0, run.stderr[-3000:]
            found = json.loads(run.stdout.strip().splitlines()[-1])
            assert sum(len(d) for d in found) >= 1  # a referent is found (the photograph: none, as /segment says)
            for (path, expr), dets in zip(samples, found):
                w, h = Image.open(path).size
                r = httpx.post(
                    f"{ours.url}/segment",
                    files={"image": ("x", open(path, "rb").read(), "image/png")},
                    data={"expression": expr, "instances": "all"},
                    timeout=120,
                ).json()["results"][0]
                want = [rle_to_mask(i["segmentation"]) for i in r["instances"]] if r["present"] else []
                assert len(dets) == len(want), (expr, len(dets), len(want))
                for d, exp in zip(dets, want):
                    assert d["label"] == expr and 0.0 <= d["confidence"] <= 1.0
                    x, y, bw, bh = d["box"]
                    x0, y0 = round(x * w), round(y * h)
                    got = np.zeros((h, w), bool)
                    crop = np.asarray(d["mask"], bool)
                    got[y0 : y0 + crop.shape[0], x0 : x0 + crop.shape[1]] = crop
                    assert crop.shape == (round(bh * h), round(bw * w))
                    assert np.array_equal(got, exp), expr
        finally:
            ours.stop()
    finally:
        os.killpg(db.pid, signal.SIGTERM)
        try:
            db.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(db.pid, signal.SIGKILL)
            db.wait(timeout=10)
