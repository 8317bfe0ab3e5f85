"""Starting an engine worker: its gRPC port checked, the model loaded, gRPC served — or one line
that says why not.

Why not raise: BentoML's process manager restarts a worker whose start raised, for ever (a model
that cannot be downloaded restarted every ~9 s, ~1,600 log lines in 80 s, the cause buried). A
failed start is final instead: the worker stays up without a model, logs the cause once, and the
service reports it — ``/readyz`` answers 503 with ``{"error": <the line>}``, every API call 503
with the same line — until someone fixes the setting and restarts. Nothing is retried: a download
that failed, a gated repository, a port another process holds, memory that ran out do not mend
themselves in nine seconds.

The gRPC port is checked *before* the model is loaded (a clash fails in a second, not after
minutes of loading) and bound without ``SO_REUSEPORT`` (gRPC's default lets a second server share a
port with the first and silently split the calls between them).
"""

from __future__ import annotations

import logging
import socket
from typing import Any

from .settings import Settings

logger = logging.getLogger("bentoml.grounding")


class EngineStartError(RuntimeError):
    """A worker could not start; ``str(e)`` is one line naming the cause and what to do."""


def not_started(failure: str) -> str:
    """What a call answers (503) once the engine's start has failed with ``failure``."""
    return f"grounding engine not started: {failure}"


def port_in_use(host: str, port: int) -> bool:
    """Whether another socket holds ``host:port`` (a bind without ``SO_REUSEPORT`` fails)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        return False  # an unresolvable host fails later, in the gRPC bind, with its own message
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind(address)
        except OSError:
            return True
    return False


def _port_message(settings: Settings, port: int) -> str:
    return (
        f"gRPC port {settings.grpc_host}:{port} is already in use by another process; set GROUNDING_GRPC_PORT "
        "to a free port (0 turns gRPC off)"
    )


def start_engine(settings: Settings, worker_index: int = 1) -> tuple[Any, Any, int]:
    """``(engine, grpc_server or None, grpc_port or 0)`` for worker ``worker_index`` (1-based), or
    ``EngineStartError`` with one line. The full traceback of a failed load is logged at DEBUG."""
    from ..backends.load_errors import load_error_message
    from .engine import Engine

    port = settings.worker_grpc_port(worker_index)
    if port and port_in_use(settings.grpc_host, port):
        raise EngineStartError(_port_message(settings, port))
    try:
        engine = Engine.from_settings(settings, worker_index=worker_index)
    except Exception as e:  # every cause becomes one line; the chain stays at DEBUG
        logger.debug("model load failed", exc_info=True)
        raise EngineStartError(load_error_message(settings.model, e)) from e
    if not port:
        return engine, None, 0
    from .grpc_server import start_grpc_server

    try:
        server, bound = start_grpc_server(engine, settings, port)
    except (RuntimeError, ValueError, OSError) as e:  # taken since the check; an address or TLS files that fail
        taken = port_in_use(settings.grpc_host, port)
        raise EngineStartError(
            _port_message(settings, port) if taken else f"cannot serve gRPC on {settings.grpc_host}:{port}: {e}"
        ) from e
    return engine, server, bound
