"""Interleaved timing: implementations alternate, so drifting machine load hits them alike."""

from __future__ import annotations

import statistics
import time
from typing import Callable, List, Sequence

from ..autotune.measure import balanced_orders


def seconds(fn: Callable) -> float:
    """Wall time of one call of ``fn``, in seconds."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved_medians(fns: Sequence[Callable], repeats: int, flush: bool = False) -> List[float]:
    """Median seconds per call of each of ``fns``, timed in turns, in :func:`balanced_orders`.

    The callables should be warm (caches, plans, allocator): this times
    every call. With two, they alternate which runs first. With ``flush``,
    16 MiB are overwritten before every timed call
    (:func:`tnconv.autotune.measure.flush`), so no call finds its operands in
    the caches its predecessor warmed.

    Example:
        >>> a, b = interleaved_medians([lambda: sum(range(10)), lambda: sum(range(1000))], repeats=3)
        >>> 0 < a and 0 < b
        True
    """
    from ..autotune.measure import flush as overwrite

    fns = list(fns)
    orders = balanced_orders(len(fns)) if fns else []
    times = [[] for _ in fns]
    for r in range(repeats):
        for n in orders[r % len(orders)]:
            if flush:
                overwrite()
            times[n].append(seconds(fns[n]))
    return [statistics.median(t) for t in times]


__all__ = ["seconds", "balanced_orders", "interleaved_medians"]
