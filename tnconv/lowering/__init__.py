"""Lowering of one term, with sizes known, to the cheapest of three executions.

* ``"native"``: the term is a convolution, input VJP or weight VJP
  (:mod:`.native`) and runs PyTorch's kernel;
* ``"views"``: patterns on an input become strided views of it
  (:mod:`.views`) and the backend contracts what is left;
* the plain contraction of every tensor, patterns included, by the backend.

The choice is by the FLOPs each plan reports (ties go to the earlier in that
list, which never uses more memory). ``compile(..., lowering=())`` keeps only
the plain contraction, which is what the paper's einsum formulation runs.
"""

from __future__ import annotations

from typing import Sequence, Tuple

from ..backends.base import Plan
from . import native, views

LOWERINGS = ("native", "views")


def check_lowering(lowering) -> Tuple[str, ...]:
    if isinstance(lowering, str):
        lowering = (lowering,)
    if not isinstance(lowering, (tuple, list)) or any(l not in LOWERINGS for l in lowering):
        raise ValueError(f"lowering must be a sequence of {LOWERINGS}, got {lowering!r}")
    return tuple(lowering)


def lower(term, sizes: dict, dtype, plan_backend, memory_limit, lowering: Sequence[str], cap=None):
    """``(positions, plan)``: which of ``term.tensors`` the plan takes, in order, and the plan.

    Lowerings whose largest intermediate (padded copies and views included)
    exceeds ``memory_limit`` or ``cap`` are not considered.
    """
    output = tuple(l.name for l in term.output_legs)
    legs = [tuple(l.name for l in t.legs) for t in term.tensors]
    everything = tuple(range(len(term.tensors)))
    candidates = []
    if "native" in lowering and memory_limit is None:
        template = native.match(term)
        if native.applicable(template, dtype):
            inputs = tuple(n for n, t in enumerate(term.tensors) if t.kind != "pattern")
            candidates.append((inputs, native.plan(template, sizes, output)))
    if "views" in lowering:
        found = views.find(term)
        if found:
            candidates.append(_view_plan(term, legs, found, sizes, output, plan_backend, memory_limit))
    limits = [l for l in (memory_limit, cap) if l is not None]
    if limits:  # the backend's slicing only bounds the plain contraction
        candidates = [c for c in candidates if c[1].largest_intermediate <= min(limits)]
    candidates.append((everything, plan_backend(legs, output, sizes, memory_limit)))
    return min(candidates, key=lambda c: c[1].flops)


def _view_plan(term, legs, found, sizes, output, plan_backend, memory_limit):
    dropped = {id(p) for ps in found.values() for p in ps}
    positions = tuple(n for n, t in enumerate(term.tensors) if id(t) not in dropped)
    new_legs, makers, padded = [], {}, [0]
    for slot, n in enumerate(positions):
        if n in found:
            new_legs.append(views.view_legs(legs[n], found[n]))
            makers[slot], copy = views.make_view(legs[n], found[n], sizes)
            padded.append(copy)
        else:
            new_legs.append(legs[n])
    inner = plan_backend(new_legs, output, sizes, memory_limit)

    def run(*arrays):
        return inner(*(makers[s](a) if s in makers else a for s, a in enumerate(arrays)))

    # a view that the contraction copies costs as much memory as the im2col matrix
    largest = max([inner.largest_intermediate] + padded + [views.elements(new_legs[s], sizes) for s in makers])
    return positions, Plan(run, "views: " + inner.equation, inner.flops, largest, inner.path, inner.slices)


__all__ = ["LOWERINGS", "check_lowering", "lower"]
