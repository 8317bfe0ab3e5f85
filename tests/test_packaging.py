"""`bentoml build` works offline and its Dockerfile serves REST and gRPC on a CUDA base."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bentoml_build_offline_and_dockerfile(tmp_path):
    # built as for a 2-GPU deployment: the engine service then declares its GPUs
    env = dict(
        os.environ, BENTOML_HOME=str(tmp_path), HF_HUB_OFFLINE="1", GROUNDING_DEVICE="cuda", GROUNDING_WORKERS="2"
    )
    p = subprocess.run(
        [sys.executable, "-m", "bentoml", "build", "."], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    (bento,) = [d for d in (tmp_path / "bentos" / "dit-grounding").iterdir() if d.name != "latest"]
    dockerfile = (bento / "env" / "docker" / "Dockerfile").read_text()
    assert "FROM nvidia/cuda:" in dockerfile
    assert "EXPOSE 3000" in dockerfile and "EXPOSE 50051" in dockerfile
    assert "GROUNDING_GRPC_PORT=50051" in dockerfile.replace('"', "")
    assert "GROUNDING_GRPC_HOST=0.0.0.0" in dockerfile.replace('"', "")  # in a container, as REST
    # a probe on readiness, a Hugging Face cache to mount, and the driver the torch wheels need stated
    assert "HEALTHCHECK" in dockerfile and "/readyz" in dockerfile.split("HEALTHCHECK", 1)[1].split("\n\n")[0]
    assert (
        "HF_HOME=/home/bentoml/.cache/huggingface" in dockerfile
        and "VOLUME /home/bentoml/.cache/huggingface" in dockerfile
    )
    assert "nvidia-driver-min" in dockerfile
    import yaml

    services = {s["name"]: s for s in yaml.safe_load((bento / "bento.yaml").read_text())["services"]}
    assert services["grounding-engine"]["config"]["resources"] == {"gpu": 2}
    assert services["grounding-engine"]["config"]["workers"] == 2
    assert "resources" not in services["grounding"]["config"]  # the public API service needs no GPU
    src = bento / "src"
    for f in (
        "service.py",
        "grounding/serving/proto/grounding_pb2.py",
        "grounding/serving/proto/grounding.proto",
        "grounding/readout/maps.py",
        "examples/examples.json",
        "examples/shapes-1.png",
        "examples/hopper.jpg",
    ):
        assert (src / f).is_file(), f
    for d in ("eval", "training", "exporters", "tests", "bench", "synthetic"):  # no training, eval or model builders
        assert not (src / d).exists(), d
    builders = [
        str(f.relative_to(src))
        for f in src.rglob("*.py")
        if "build_tiny_" in f.read_text() or "save_tiny_model" in f.read_text()
    ]
    assert not builders, builders
    reqs = (bento / "env" / "python" / "requirements.txt").read_text()
    assert "torch==2.14.1" in reqs and "bentoml==1.4.40" in reqs
