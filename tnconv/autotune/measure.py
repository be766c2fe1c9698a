"""Timing a term's candidates on the actual tensors -- and knowing when that would mean nothing.

Each candidate runs once to warm up (and to fail, if it must: a failing
candidate is skipped with a warning; one :data:`HOPELESS` times slower than
the fastest warm-up so far is not timed). Then rounds: each round times every
candidate once, interleaved (:func:`balanced_orders`), each call after
:data:`FLUSH` bytes were overwritten (so none runs from the cache the previous
call warmed); after the first,
those slower than :data:`GIVE_UP` times the fastest drop out; after
:data:`REPEATS` rounds the lowest median wins, by a :data:`MARGIN` over the
cost model's choice. The device is synchronized
around every call, so the times are of the work, not of its launch.
"""

from __future__ import annotations

import statistics
import time
import warnings
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import torch

#: Timed calls of each candidate (after its warm-up) that is not given up.
REPEATS = 5

#: A candidate whose first timed call took this many times the fastest one is not timed further.
GIVE_UP = 3.0

#: A candidate whose warm-up took this many times the fastest warm-up so far is not timed at all.
HOPELESS = 10.0

#: Seconds beyond which one timed call is measurement enough (no repeats).
SLOW = 1.0

#: Another candidate replaces the cost model's choice only below this fraction of its time.
MARGIN = 0.97

#: Bytes overwritten before every timed call (several times a core's L2 cache).
FLUSH = 16 * 2**20


def untimeable(tensors: Iterable[torch.Tensor]) -> Optional[str]:
    """Why running candidates on ``tensors`` here would time nothing meaningful, or ``None``.

    Tracing (``torch.compile``, ``torch.jit.trace``), ``torch.func`` transforms,
    dispatch or function modes (a ``FlopCounterMode``, ``with torch.device(...)``),
    CUDA graph capture, fake, meta and subclassed tensors. Inputs that require
    gradients are not on the list: candidates then run on detached inputs under
    ``torch.no_grad()``, so no autograd history is recorded.

    Example:
        >>> untimeable([torch.ones(2)]) is None, untimeable([torch.ones(2, device="meta")])
        (True, 'meta tensors')
    """
    if torch.compiler.is_compiling():
        return "inside torch.compile's tracing"
    if torch.jit.is_tracing():
        return "inside torch.jit tracing"
    if torch._C._are_functorch_transforms_active():
        return "under a torch.func transform"
    if torch._C._len_torch_dispatch_stack() or torch._C._len_torch_function_stack():
        return "under a TorchDispatchMode or TorchFunctionMode"
    for t in tensors:
        if type(t) not in (torch.Tensor, torch.nn.Parameter):
            return f"tensors of type {type(t).__name__}"
        if t.device.type == "meta":
            return "meta tensors"
        if t.device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            return "during CUDA graph capture"
    return None


def _sync(device: torch.device) -> None:
    if device.type != "cpu":
        module = getattr(torch, device.type, None)
        synchronize = getattr(module, "synchronize", None)
        if synchronize is not None:
            synchronize()


_scratch: Dict[torch.device, torch.Tensor] = {}


def flush(device: torch.device = torch.device("cpu")) -> None:
    """Overwrite :data:`FLUSH` bytes on ``device``: the next call starts without its operands in the
    closest caches, as it would inside a real program (back-to-back calls favour whatever fits them,
    and a call after one that swept the caches pays for it).

    Example:
        >>> flush()  # 16 MiB of zeros written on the CPU
    """
    buffer = _scratch.get(device)
    if buffer is None:
        buffer = _scratch[device] = torch.empty(FLUSH // 4, dtype=torch.float32, device=device)
    buffer.zero_()


def _once(run: Callable[[], object], device: torch.device) -> float:
    flush(device)
    _sync(device)
    start = time.perf_counter()
    run()
    _sync(device)
    return time.perf_counter() - start


def balanced_orders(n: int) -> List[List[int]]:
    """Orders of ``n`` callables in which each one runs right after each other one equally often.

    A Williams design: row ``i`` is ``0, 1, n−1, 2, n−2, …`` plus ``i`` (mod ``n``);
    for odd ``n`` the rows and their reverses. Rotating one order is not enough: with
    three or more callables, one of them follows the same other one in most rounds,
    and a call right after one that swept the caches and the allocator (the standard
    KFC's im2col matrix) ran up to 1.4x slower than the same call after a light one.

    Example:
        >>> balanced_orders(4)
        [[0, 1, 3, 2], [1, 2, 0, 3], [2, 3, 1, 0], [3, 0, 2, 1]]
        >>> balanced_orders(2)
        [[0, 1], [1, 0]]
    """
    first, low, high = [0], 1, n - 1
    while len(first) < n:
        first.append(low)
        low += 1
        if len(first) < n:
            first.append(high)
            high -= 1
    rows = [[(v + i) % n for v in first] for i in range(n)]
    return rows if n % 2 == 0 else rows + [row[::-1] for row in rows]


def fastest(runs: Dict[str, Callable[[], object]], device: torch.device) -> Tuple[Optional[str], Dict[str, float]]:
    """``(label, {label: milliseconds})``: the fastest of ``runs`` (``None`` if every one failed).

    ``runs`` are argument-free calls, the cost model's choice first: another
    wins only if its median is below :data:`MARGIN` times the first's, so noise
    does not trade a good default for a lucky draw. Candidates given up report
    their last time (the first round's, or the warm-up's).

    Example:
        >>> label, ms = fastest({"slow": lambda: time.sleep(0.02), "fast": lambda: None}, torch.device("cpu"))
        >>> label, sorted(ms)
        ('fast', ['fast', 'slow'])
    """
    alive, warm = [], {}
    for label, run in runs.items():
        try:
            # warm-up: one-time costs (first use of a kernel, faulting in memory) are not the candidate's
            warm[label] = _once(run, device)
        except Exception as error:  # one broken candidate must not break the call: the others remain
            warnings.warn(f"tnconv autotune: candidate {label!r} failed ({type(error).__name__}: {error}); "
                          "skipping it", RuntimeWarning, stacklevel=4)
            continue
        if warm[label] <= HOPELESS * min(warm.values()):
            alive.append(label)
    if not alive:
        return None, {}
    samples: Dict[str, list] = {label: [] for label in alive}
    for r in range(REPEATS):
        # interleaved, each candidate after each other equally often: drifting load and what the previous
        # call left in the caches and the allocator hit all alike
        orders = balanced_orders(len(alive))
        for n in orders[r % len(orders)]:
            samples[alive[n]].append(_once(runs[alive[n]], device))
        if r == 0:  # after one round, drop the hopeless; a slow first round is measurement enough
            best = min(samples[label][0] for label in alive)
            alive = [label for label in alive if samples[label][0] <= GIVE_UP * best]
            if best >= SLOW:
                break
    times = {label: 1e3 * (statistics.median(samples[label]) if samples.get(label) else t) for label, t in warm.items()}
    chosen = min(alive, key=lambda label: times[label])
    first = next(iter(runs))
    if first in alive and times[chosen] > MARGIN * times[first]:
        chosen = first
    return chosen, times


__all__ = ["REPEATS", "GIVE_UP", "HOPELESS", "SLOW", "MARGIN", "FLUSH", "flush", "balanced_orders", "untimeable", "fastest"]
