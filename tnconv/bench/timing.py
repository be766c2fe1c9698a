"""Interleaved timing: implementations alternate, so drifting machine load hits them alike."""

from __future__ import annotations

import statistics
import time
from typing import Callable, List, Sequence


def seconds(fn: Callable) -> float:
    """Wall time of one call of ``fn``, in seconds."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved_medians(fns: Sequence[Callable], repeats: int) -> List[float]:
    """Median seconds per call of each of ``fns``, timed in turns; which goes first rotates.

    The callables should be warm (caches, plans, allocator): this times
    every call. With two, they alternate which runs first.

    Example:
        >>> a, b = interleaved_medians([lambda: sum(range(10)), lambda: sum(range(1000))], repeats=3)
        >>> 0 < a and 0 < b
        True
    """
    fns = list(fns)
    times = [[] for _ in fns]
    for r in range(repeats):
        k = r % len(fns)
        for n in list(range(k, len(fns))) + list(range(k)):
            times[n].append(seconds(fns[n]))
    return [statistics.median(t) for t in times]


__all__ = ["seconds", "interleaved_medians"]
