"""One plan's autotuning: each term's verdict from the disk cache, or measured now and stored."""

from __future__ import annotations

import threading
from typing import Callable, List, Optional, Sequence

import torch

from ..lowering import Candidate, choose, cost
from .cache import AutotuneCache, key_of
from .measure import fastest, untimeable

#: Candidates with this many times the FLOPs of the cost model's choice are not run (a plain einsum
#: over a big convolution's index pattern can take seconds); nor those needing much more memory.
PRUNE = 8.0

_timing = threading.Lock()

#: ``(network name, labels)`` of the last plan built with autotuning in this process, for reports
#: (the benchmark shows which lowering won); ``None`` before any.
last = None


class Tuner:
    """Chooses a lowering per term of one plan: from the cache's verdict, by timing, or by the cost model.

    Args:
        fields: what the verdict depends on (JSON-able; hashed into the cache key).
        tensors: the call's input tensors (to check they can be timed).
        device: where they live (synchronized around timed calls).

    The compiler makes one per plan it builds with autotuning, calls
    :meth:`choose` for each term, then :meth:`finish`.

    Example:
        >>> import tnconv
        >>> x = torch.randn(2, 3, 8)
        >>> f = tnconv.compile(tnconv.diagrams.kfc(N=1, kernel_size=3))
        >>> tuner = Tuner({"example": 1}, [x], x.device)
        >>> plan = f._build(dict(x=x), tuner=tuner)  # times the candidates, stores the verdict
        >>> tuner.reason is None, len(tuner.choice), len(tuner.ms[0]) > 1
        (True, 1, True)
    """

    def __init__(self, fields: dict, tensors: Sequence[torch.Tensor], device: torch.device):
        self.fields = fields
        self.key = key_of(fields)
        self.cache = AutotuneCache()
        entry = self.cache.get(self.key)
        self.verdict: Optional[List[str]] = entry["choice"] if entry else None
        self.reason = untimeable(tensors)  # None: timeable
        self.device = device
        self.choice: List[str] = []
        self.ms: List[dict] = []
        self.measured = False

    def choose(self, found: Sequence[Candidate], operands: Callable[[Candidate], list], scale: float) -> Candidate:
        """The candidate for the next term; ``operands(candidate)`` gives its arguments (inputs detached)."""
        index = len(self.choice)
        fallback = choose(found)
        chosen, ms = None, {}
        if self.verdict is not None and index < len(self.verdict):
            chosen = next((c for c in found if c.label == self.verdict[index]), None)
        if chosen is None and self.reason is None and len(found) > 1:
            ranked = _ranked(found, fallback)
            runs = {c.label: _runner(c, operands(c), scale) for c in ranked}
            with _timing, torch.no_grad():  # one tuning at a time: threads tuning at once would time each other
                label, ms = fastest(runs, self.device)
            chosen = next((c for c in ranked if c.label == label), None)
            self.measured = True
        chosen = chosen or fallback
        self.choice.append(chosen.label)
        self.ms.append({label: round(t, 4) for label, t in ms.items()})
        return chosen

    def finish(self) -> None:
        """Store what was measured (nothing if every term came from the cache or the cost model)."""
        global last
        last = (self.fields.get("name"), tuple(self.choice))
        if self.measured:
            self.cache.put(self.key, {"fields": self.fields, "choice": self.choice, "ms": self.ms})


def _ranked(found, fallback):
    """The candidates worth running, the cost model's choice first, then by cost."""
    flops = fallback.plan.flops
    largest = fallback.plan.largest_intermediate
    keep = [c for c in found if c is fallback or
            c.plan.flops <= PRUNE * flops + 2**20 and c.plan.largest_intermediate <= 4 * largest + 2**20]
    return sorted(keep, key=lambda c: (c is not fallback, cost(c.plan)))


def _runner(candidate, operands, scale):
    plan = candidate.plan
    if scale != 1 and plan.with_scale is not None:
        plan, scale = plan.with_scale(scale), 1.0
    if scale == 1:
        return lambda: plan(*operands)
    return lambda: plan(*operands) * scale  # out of place: a plan may return a view of an input


__all__ = ["PRUNE", "Tuner"]
