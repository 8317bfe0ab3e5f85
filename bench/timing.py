"""Timing the CPU benchmarks share: the median wall time of a call after a warm-up."""

from __future__ import annotations

import statistics
import time
from typing import Callable


def median_time(fn: Callable[[], object], reps: int) -> float:
    """Seconds: the median of ``reps`` timed calls of ``fn`` after one untimed warm-up call."""
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)
