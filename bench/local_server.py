"""A real ``bentoml serve service:Grounding`` on 127.0.0.1, for benchmarks and tests.

Stopped with its whole process tree: BentoML's process manager starts each worker in a session of
its own, so a process-group kill of ``bentoml serve`` misses them (they outlive it, re-parented to
init). ``stop`` sends SIGTERM to the manager, waits for every process of the tree, then SIGKILLs
what is left.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalServer:
    """``bentoml serve`` with ``env`` (``GROUNDING_*`` settings; a None value unsets a variable) on
    free loopback ports; REST at ``url``, gRPC at ``grpc``. Raises ``RuntimeError`` (with the log's
    tail) if it does not get ready; ``ready_timeout=0`` returns once started, without waiting."""

    def __init__(self, workdir: Path, ready_timeout: float = 300, **env: str | None):
        workdir.mkdir(parents=True, exist_ok=True)
        self.port, self.grpc_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.grpc = f"127.0.0.1:{self.grpc_port}"
        self.env = dict(
            os.environ,
            GROUNDING_GRPC_PORT=str(self.grpc_port),
            GROUNDING_DEVICE="cpu",
            HF_HUB_OFFLINE="1",
            GROUNDING_JOBS_DIR=str(workdir / "jobs"),
            BENTOML_HOME=str(workdir / "bentoml_home"),
            HOST="127.0.0.1",
        )
        self.env.update(env)
        self.env = {k: v for k, v in self.env.items() if v is not None}  # None: unset it
        if "GROUNDING_GRPC_PORT" not in self.env:  # unset: the service's own rule, the REST port + 1
            self.grpc_port = self.port + 1
            self.grpc = f"127.0.0.1:{self.grpc_port}"
        self.jobs_dir = Path(self.env["GROUNDING_JOBS_DIR"])
        self.log_path = workdir / "serve.log"
        self.log = open(self.log_path, "w+")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bentoml",
                "serve",
                "service:Grounding",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
            ],
            cwd=ROOT,
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            if ready_timeout:
                self.wait_ready(ready_timeout)
        except RuntimeError:
            self.stop()
            raise

    def wait_ready(self, timeout: float) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"bentoml serve exited:\n{self.tail()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"server not ready in {timeout:.0f} s:\n{self.tail()}")

    def tail(self, n: int = 4000) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")[-n:]

    def tree(self) -> list:
        """The manager and every process under it (psutil)."""
        import psutil

        try:
            root = psutil.Process(self.proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def worker(self, name: str):
        """The worker process of service ``name`` ("grounding" or "grounding-engine")."""
        for p in self.tree()[1:]:
            try:
                cmd = p.cmdline()
            except Exception:
                continue
            if "--service-name" in cmd and cmd[cmd.index("--service-name") + 1] == name:
                return p
        raise RuntimeError(f"no {name} worker among {[p.pid for p in self.tree()]}")

    def stop(self, timeout: float = 30) -> None:
        import psutil

        procs = self.tree()
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
        _, alive = psutil.wait_procs(procs, timeout=timeout)
        for p in alive:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=10)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        self.log.close()

    def __enter__(self) -> "LocalServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
