"""A worker's life: a start that failed for good (``START``), and shutdown with a deadline
(``SHUTDOWN``), for each worker process of the service.

``START.failure`` is the engine's one-line reason for not starting (``startup.start_engine``), once
the REST worker has learnt it (``EngineCalls``): ``/readyz`` and every call then answer 503 with it.

Shutdown:

uvicorn (under ``bentoml serve``) waits for in-flight requests without a limit after SIGTERM, and
BentoML's process manager waits a day before it kills a worker. ``Shutdown.install`` chains a
handler in front of uvicorn's own SIGTERM/SIGINT handler (uvicorn still stops accepting and drains
as usual); when the signal comes it

1. marks the process as draining (``/readyz`` answers 503, new requests 503 with Retry-After),
2. after ``grace`` seconds cancels the requests still running — each gets a 503 if its response has
   not started (the ``RequestGuard`` middleware registers them), so uvicorn can finish its drain,
3. after ``grace + 3`` seconds exits the process whatever it is doing (``os._exit``): a model
   forward in a worker thread cannot be cancelled, and Python would wait for it at exit.

Video jobs need no more than that: every finished frame is already on disk, and a resubmitted job
resumes (``jobs.VideoJobs``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
from typing import Any

logger = logging.getLogger("bentoml.grounding")


class Shutdown:
    """Per-process drain state; one instance per worker (``SHUTDOWN``)."""

    def __init__(self) -> None:
        self.since: float | None = None  # monotonic time of the first SIGTERM/SIGINT
        self.grace = 10.0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._installed = False

    @property
    def draining(self) -> bool:
        """True once a shutdown has begun (SIGTERM): no new work is taken."""
        return self.since is not None

    def install(self, grace: float) -> bool:
        """Chain the handler (main thread only; idempotent). False when it cannot be installed
        (not the main thread: e.g. the service built inside a test process)."""
        if self._installed:
            return True
        if threading.current_thread() is not threading.main_thread():
            return False
        self.grace = float(grace)
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous = signal.getsignal(sig)

            def handler(signum: int, frame: Any, previous: Any = previous) -> None:
                """Begin draining, then hand the signal to the handler that was there before."""
                self.begin()
                if callable(previous):
                    previous(signum, frame)
                elif previous == signal.SIG_DFL:
                    raise SystemExit(128 + signum)

            signal.signal(sig, handler)
        self._installed = True
        return True

    def begin(self) -> None:
        """Start draining (first call only): timers for the cancel and for the hard exit."""
        if self.since is not None:
            return
        self.since = time.monotonic()
        logger.info("shutdown: draining for up to %.0f s", self.grace)
        for delay, fn in ((self.grace, self._cancel_inflight), (self.grace + 3, self._exit)):
            t = threading.Timer(delay, fn)
            t.daemon = True
            t.start()

    def track(self, task: asyncio.Task[Any]) -> None:
        """A request task, cancelled at the deadline (the guard answers it 503)."""
        self._loop = task.get_loop()
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _cancel_inflight(self) -> None:
        loop, tasks = self._loop, list(self._tasks)
        if loop is None or not tasks or loop.is_closed():
            return
        logger.warning("shutdown: grace of %.0f s over, failing %d in-flight request(s)", self.grace, len(tasks))
        for task in tasks:
            loop.call_soon_threadsafe(task.cancel)

    def _exit(self) -> None:
        logger.warning("shutdown: still running %.0f s after the signal; exiting", self.grace + 3)
        logging.shutdown()
        os._exit(0)


SHUTDOWN = Shutdown()


class Start:
    """The engine's failed start as this process knows it; ``failure`` stays None while it starts or runs."""

    def __init__(self) -> None:
        self.failure: str | None = None


START = Start()
