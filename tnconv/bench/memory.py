"""Peak memory of one call on the CPU, from the profiler's allocation records.

PyTorch keeps no allocator statistics on the CPU, but ``torch.profiler`` with
``profile_memory=True`` records every allocation and free of the CPU
allocator with its time and size. Their running sum in time order is the
memory the call holds beyond what existed before it; its maximum is the
call's extra peak, the output it returns included. The records are read raw,
one per allocation: the profiler's per-operator summary nets out an
allocation freed within the same operator (an im2col buffer, say) and would
hide it. Memory a library takes from the system by itself rather than from
PyTorch's allocator (a BLAS workspace, say) is not seen, for either
implementation alike.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from typing import Callable, Tuple

import torch

_MEMORY_EVENT = "[memory]"


@contextlib.contextmanager
def _without_kineto_banner():
    """Drop the ``USDT:... profiler_start/stop`` lines kineto writes to fd 2, pass anything else on.

    Kineto reads its log level only when torch loads, too early for the
    benchmark to set it, and its lines would break the progress bar.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            other = [line for line in sink.read().decode(errors="replace").splitlines(True) if not line.startswith("USDT:")]
            if other:
                sys.stderr.write("".join(other))


def peak_memory(fn: Callable[[], object]) -> Tuple[object, int]:
    """``(fn(), extra peak bytes)``: the most CPU memory ``fn`` held at once beyond what existed before.

    Example:
        >>> out, peak = peak_memory(lambda: torch.empty(1000, dtype=torch.float64))
        >>> peak
        8000
    """
    from torch.profiler import ProfilerActivity, profile

    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    with _without_kineto_banner():
        prof.start()
    try:
        result = fn()  # outside the redirection: what fn writes to stderr stays visible
    finally:
        with _without_kineto_banner():
            prof.stop()
    cpu = torch.autograd.DeviceType.CPU
    records = [e for e in prof.profiler.kineto_results.events() if e.name() == _MEMORY_EVENT and e.device_type() == cpu]
    running = peak = 0
    for event in sorted(records, key=lambda e: e.start_ns()):
        running += event.nbytes()
        peak = max(peak, running)
    return result, peak


__all__ = ["peak_memory"]
