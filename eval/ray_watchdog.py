"""Ends a local Ray instance whose driver died.

A driver killed with SIGKILL cannot stop the Ray instance it started, and some of Ray's helper
processes (its dashboard and runtime-env agents) outlive their raylet, reparented to init. The
driver starts this watchdog (``python -m eval.ray_watchdog DRIVER_PID MARKER``) before Ray: while
the driver lives, the watchdog keeps the set of the driver's descendants that appeared after it
started (Ray's processes); when the driver is gone it kills those and every process carrying the
driver's environment marker. A driver that finishes stops the watchdog and sweeps itself.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

MARKER_VAR = "DIT_GROUNDING_RAY_SESSION"


def marked(marker: str, var: str = MARKER_VAR) -> list[int]:
    """Live processes whose environment holds ``var=marker`` (this one and zombies excepted)."""
    needle = f"{var}={marker}".encode()
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            if needle in (d / "environ").read_bytes().split(b"\0") and _alive(int(d.name)):
                out.append(int(d.name))
        except OSError:
            continue
    return out


def _parents() -> dict[int, int]:
    out = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                out[int(d.name)] = int((d / "stat").read_text().rsplit(") ", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    return out


def descendants(root: int) -> set[int]:
    """Every process below ``root``."""
    children: dict[int, list[int]] = {}
    for pid, ppid in _parents().items():
        children.setdefault(ppid, []).append(pid)
    out, todo = set(), [root]
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


def kill_all(pids: set[int], grace_s: float = 2.0) -> None:
    """SIGTERM ``pids``, SIGKILL the ones left after ``grace_s``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.monotonic() + grace_s
        while sig == signal.SIGTERM and time.monotonic() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.1)
        pids = {p for p in pids if _alive(p)}
        if not pids:
            return


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie has exited
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def main() -> int:
    driver, marker = int(sys.argv[1]), sys.argv[2]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # the driver finished and stops us
    before = descendants(driver) | {os.getpid()}
    known: set[int] = set()
    while _alive(driver):
        known |= descendants(driver) - before
        time.sleep(0.25)
    kill_all({p for p in known if _alive(p)} | set(marked(marker)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
