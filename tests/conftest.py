import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import sys
import time
from pathlib import Path

import pytest
import torch

torch.set_num_threads(2)

from fixtures import scene  # noqa: E402  (the shared scene helper)


@pytest.fixture(scope="session")
def tiny_flux_dir(tmp_path_factory):
    from synthetic import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("models") / "tiny-flux", "flux")


@pytest.fixture(scope="session")
def tiny_sd3_dir(tmp_path_factory):
    from synthetic import save_tiny_model

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


@pytest.fixture(scope="session")
def sam_folders(tmp_path_factory):
    """A tiny random folder of each transformers SAM 2 family (``synthetic.segmenters.FAMILIES``),
    saved from its video model as released checkpoints are."""
    from synthetic.segmenters import FAMILIES, save_tiny_segmenter

    root = tmp_path_factory.mktemp("sam-folders")
    return {f: save_tiny_segmenter(root / f, f) for f in FAMILIES}


@pytest.fixture
def scene_image():
    return scene()


ROOT = Path(__file__).resolve().parents[1]
MAX_PIXELS = 4_000_000
sys.path.insert(0, str(ROOT / "bench"))
from local_server import LocalServer  # noqa: E402

# Every server a test starts carries this marker in its environment; at the end of the session
# no process may still carry it (``pytest_sessionfinish`` checks, kills and fails the run).
RUN_MARKER = "DIT_GROUNDING_TEST_RUN"
RUN_ID = f"{os.getpid()}-{time.time_ns()}"


def marked_processes() -> list[int]:
    """PIDs of live processes started by this test run (the marker in their environment)."""
    from eval.ray_watchdog import marked

    return marked(RUN_ID, RUN_MARKER)


class Server(LocalServer):
    """``bench/local_server.LocalServer`` on the tiny model with the test run's marker; a start
    that fails fails the test."""

    def __init__(self, model_dir, tmp: Path, ready_timeout: float = 180, **env: str | None):
        self.model = str(model_dir)
        try:
            super().__init__(
                tmp,
                ready_timeout=ready_timeout,
                GROUNDING_MODEL=str(model_dir),
                GROUNDING_MAX_IMAGE_PIXELS=str(MAX_PIXELS),
                **{RUN_MARKER: RUN_ID},
                **env,
            )
        except RuntimeError as e:
            pytest.fail(str(e))

    def as_dict(self) -> dict:
        return {"url": self.url, "grpc": self.grpc, "model": self.model, "jobs_dir": self.jobs_dir, "handle": self}


@pytest.fixture(scope="session")
def server(tiny_flux_dir, tmp_path_factory):
    srv = Server(tiny_flux_dir, tmp_path_factory.mktemp("server"))
    yield srv.as_dict()
    srv.stop()


@pytest.fixture(scope="session")
def demo_server(tmp_path_factory):
    """The shipped demo model served as ``make serve`` serves it: gRPC left to follow the REST
    port (+ 1), the model's own settings (card, threshold, presence)."""
    srv = Server(ROOT / "models" / "shapes-demo", tmp_path_factory.mktemp("demo-server"), GROUNDING_GRPC_PORT=None)
    yield srv
    srv.stop()


API_KEY = "s3cret-key-for-tests"


@pytest.fixture(scope="session")
def tls(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1 (openssl)."""
    import shutil
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("no openssl to make a test certificate")
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout",
            str(d / "key.pem"),
            "-out",
            str(d / "cert.pem"),
        ],
        check=True,
        capture_output=True,
    )
    return {"cert": d / "cert.pem", "key": d / "key.pem"}


@pytest.fixture(scope="session")
def guarded(tiny_flux_dir, tmp_path_factory, tls):
    """A server with an API key (from a file), gRPC over TLS, a 2 MB body limit, a 2 s body
    timeout and a jobs folder capped at ~1 byte."""
    tmp = tmp_path_factory.mktemp("guarded")
    (tmp / "key").write_text(API_KEY + "\n")
    srv = Server(
        tiny_flux_dir,
        tmp,
        GROUNDING_API_KEY_FILE=str(tmp / "key"),
        GROUNDING_MAX_BODY_MB="2",
        GROUNDING_BODY_TIMEOUT_S="2",
        GROUNDING_GRPC_TLS_CERT=str(tls["cert"]),
        GROUNDING_GRPC_TLS_KEY=str(tls["key"]),
        GROUNDING_JOBS_MAX_GB="0.000000001",
    )
    yield srv
    srv.stop()


# Fixtures that start a real server or browser: a test using one is an integration test.
PROCESS_FIXTURES = {"server", "demo_server", "guarded", "browser", "walked"}
# A test whose own code starts a process (a subprocess CLI, a bentoml serve, a Ray cluster).
PROCESS_CALLS = (
    "subprocess.",
    "run_python(",
    "run_module(",
    "run_bench(",
    "run(",
    "Server(",
    "LocalServer(",
    "ray.init(",
)


def pytest_collection_modifyitems(config, items):
    """Mark ``integration`` every test that starts a process (through a fixture or itself): `make
    test` runs them, `make test-fast` leaves them out for the inner loop. Marked from what the test
    does, so a new test needs no remembering."""
    import inspect

    for item in items:
        fn = getattr(item, "function", None)
        try:
            source = inspect.getsource(fn) if fn is not None else ""
        except (OSError, TypeError):
            source = ""
        if PROCESS_FIXTURES & set(getattr(item, "fixturenames", ())) or any(c in source for c in PROCESS_CALLS):
            item.add_marker(pytest.mark.integration)


def pytest_sessionfinish(session, exitstatus):
    """No process started by this run may outlive it."""
    import psutil

    left = marked_processes()
    if not left:
        return
    lines = []
    for pid in left:
        try:
            p = psutil.Process(pid)
            lines.append(f"{pid} ppid={p.ppid()} {' '.join(p.cmdline())[:160]}")
            p.kill()
        except psutil.NoSuchProcess:
            pass
    session.config.pluginmanager.get_plugin("terminalreporter").write_line(
        "FAILED: processes left running by the test run (killed now):\n  " + "\n  ".join(lines), red=True
    )
    session.exitstatus = 1
