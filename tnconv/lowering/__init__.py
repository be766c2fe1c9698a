"""Lowering of one term, with sizes known, to the cheapest of three executions.

* ``"native"``: the term is a convolution, input VJP or weight VJP
  (:mod:`.native`) and runs PyTorch's kernel;
* ``"views"``: patterns on an input become strided views of it
  (:mod:`.views`) and the backend contracts what is left;
* the plain contraction of every tensor, patterns included, by the backend.

The choice is by the FLOPs and the elements written that each plan reports
(:func:`cost`; ties go to the earlier in that list, which never uses more memory). ``compile(..., lowering=())`` keeps only
the plain contraction, which is what the paper's einsum formulation runs.
"""

from __future__ import annotations

from math import prod
from typing import NamedTuple, Sequence, Tuple

from ..backends.base import Plan
from . import native, views

LOWERINGS = ("native", "views")


def check_lowering(lowering) -> Tuple[str, ...]:
    """``lowering`` as a tuple of names from :data:`LOWERINGS`; a ``ValueError`` names the valid ones."""
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
    strip = _broadcasts(term, output)
    if strip and len(strip) < len(term.tensors):
        return _lower_broadcast(term, strip, output, sizes, dtype, plan_backend, memory_limit, lowering, cap)
    legs = [tuple(l.name for l in t.legs) for t in term.tensors]
    everything = tuple(range(len(term.tensors)))
    candidates = []
    if "native" in lowering and memory_limit is None:
        template = native.match(term)
        if native.applicable(template, dtype):
            inputs = tuple(n for n, t in enumerate(term.tensors) if t.kind == "input")
            candidates.append((inputs, native.plan(template, sizes, output)))
    if "views" in lowering:
        found = views.find(term)
        if found:
            candidates.append(_view_plan(term, legs, found, sizes, output, plan_backend, memory_limit))
    limits = [l for l in (memory_limit, cap) if l is not None]
    if limits:  # the backend's slicing only bounds the plain contraction
        candidates = [c for c in candidates if c[1].largest_intermediate <= min(limits)]
    candidates.append((everything, plan_backend(legs, output, sizes, memory_limit)))
    return min(candidates, key=lambda c: cost(c[1]))


#: FLOPs one written element is worth. A contraction writing each output after
#: only a few multiply-adds (a GEMM with a short inner dimension, a transpose)
#: is bound by memory, not arithmetic: on these CPUs a well-shaped float32 GEMM
#: runs at ~50 GFLOP/s on one core while strided copies move ~0.2-0.5 G elements/s.
WRITE_COST = 256


def cost(plan: Plan) -> float:
    """What the choice among lowerings minimizes: FLOPs plus :data:`WRITE_COST` per element written."""
    return plan.flops + WRITE_COST * plan.write


class _Part(NamedTuple):
    """A term seen without some of its tensors (what :func:`lower` reads of a network)."""

    tensors: tuple
    output_legs: tuple


def _broadcasts(term, output):
    """Positions of constants whose legs are output legs no other tensor carries: they only broadcast.

    Such a constant is what remains of a size-1 kernel leg after ``squeeze_trivial``
    (the ``k`` legs of a 1x1 weight VJP or KFC); left in, it hides the term's
    template and becomes an operand of every contraction.
    """
    found = []
    for n, t in enumerate(term.tensors):
        names = [l.name for l in t.legs]
        if t.kind != "constant" or not names or len(set(names)) != len(names):
            continue
        others = {l.name for m, u in enumerate(term.tensors) if m != n for l in u.legs}
        if all(name in output and name not in others for name in names):
            found.append(n)
    return found


def _lower_broadcast(term, strip, output, sizes, dtype, plan_backend, memory_limit, lowering, cap):
    kept = [n for n in range(len(term.tensors)) if n not in strip]
    gone = [l.name for n in strip for l in term.tensors[n].legs]
    factor = prod(float(term.tensors[n].attr["value"]) for n in strip)
    part = _Part(tuple(term.tensors[n] for n in kept), tuple(l for l in term.output_legs if l.name not in gone))
    positions, inner = lower(part, sizes, dtype, plan_backend, memory_limit, lowering, cap)
    order = tuple(l.name for l in part.output_legs) + tuple(gone)
    shape = tuple(sizes[n] for n in order)
    to_output = [order.index(n) for n in output]
    trivial = all(sizes[n] == 1 for n in gone)

    def run(*arrays):
        result = inner(*arrays).reshape(shape[:len(order) - len(gone)] + (1,) * len(gone))
        # expand makes a stride-0 view; a copy lets callers write into the result
        result = result if trivial else result.expand(shape).contiguous()
        return (result * factor if factor != 1 else result).permute(to_output)

    out_elements = prod(shape)
    extra = out_elements * ((factor != 1) + (not trivial))
    return tuple(kept[p] for p in positions), Plan(run, inner.equation, inner.flops + out_elements * (factor != 1),
                                                   max(inner.largest_intermediate, out_elements), inner.path, inner.slices,
                                                   inner.write + extra)


def _view_plan(term, legs, found, sizes, output, plan_backend, memory_limit):
    """Patterns become views; legs only a view carries are summed on it; equal views are made once."""
    dropped = {id(p) for ps in found.values() for p in ps}
    positions = tuple(n for n, t in enumerate(term.tensors) if id(t) not in dropped)
    raw = [views.view_legs(legs[n], found[n]) if n in found else legs[n] for n in positions]
    uses = {}
    for slot_legs in raw:
        for leg in slot_legs:
            uses[leg] = uses.get(leg, 0) + 1
    new_legs, makers, padded, written = [], {}, [0], {}  # written: per distinct view, its copies
    for slot, n in enumerate(positions):
        if n not in found:
            new_legs.append(raw[slot])
            continue
        # KFAC-reduce sums each patch over the output positions: do it on the view, before any copy
        reduce = tuple(a for a, leg in enumerate(raw[slot]) if uses[leg] == 1 and leg not in output)
        maker, copy = views.make_view(legs[n], found[n], sizes)
        key = (term.tensors[n].name, tuple(sorted(
            (legs[n].index(p.legs[0].name), sizes[p.legs[1].name], sizes[p.legs[2].name], p.attrs) for p in found[n])), reduce)
        makers[slot] = (key, maker, reduce)
        padded.append(copy)
        new_legs.append(tuple(leg for a, leg in enumerate(raw[slot]) if a not in reduce))
        # the padded copy, then the sum over reduced legs or (likely) the contraction's copy of the view
        written[key] = (copy, views.elements(new_legs[-1] if reduce else raw[slot], sizes))
    gram = _gram(new_legs, output, sizes) if len(new_legs) == 2 and len(makers) == 2 and \
        makers[0][0] == makers[1][0] else None
    inner = gram or plan_backend(new_legs, output, sizes, memory_limit)

    def run(*arrays):
        made, operands = {}, []
        for s, a in enumerate(arrays):
            if s in makers:
                key, maker, reduce = makers[s]
                if key not in made:
                    v = maker(a)
                    made[key] = v.sum(reduce) if reduce else v
                a = made[key]
            operands.append(a)
        return inner(*operands)

    # a view that the contraction copies costs as much memory as the im2col matrix
    largest = max([inner.largest_intermediate] + padded + [views.elements(new_legs[s], sizes) for s in makers])
    # gram counts its own copy of the view; padding is a contiguous copy, cheap beside a contraction's writes
    write = inner.write + sum(0 if gram and not makers[0][2] else view for _, view in written.values())
    return positions, Plan(run, "views: " + inner.equation, inner.flops, largest, inner.path, inner.slices, write)


def _gram(legs, output, sizes):
    """``A Aᵀ`` as one matrix product when both operands are the same tensor with renamed free legs."""
    a, b = legs
    if len(a) != len(b):
        return None
    batch, free_a, free_b, summed = [], [], [], []
    for la, lb in zip(a, b):
        if la == lb:
            (batch if la in output else summed).append(la)
        elif la in output and lb in output and la not in b and lb not in a:
            free_a.append(la)
            free_b.append(lb)
        else:
            return None
    if sorted(output) != sorted(batch + free_a + free_b) or len(set(a)) != len(a):
        return None
    size = lambda names: prod(sizes[n] for n in names)  # noqa: E731
    g, f, s = size(batch), size(free_a), size(summed)
    order = [a.index(leg) for leg in batch + free_a + summed]
    result_legs = batch + free_a + free_b
    to_output = [result_legs.index(leg) for leg in output]
    shape = tuple(sizes[n] for n in result_legs)

    def run(x, _same):
        m = x.permute(order).reshape(g, f, s)
        return (m @ m.transpose(1, 2)).reshape(shape).permute(to_output)

    return Plan(run, f"gram [{g}, {f}, {s}]", 2.0 * g * f * f * s, g * f * (f + s), write=g * f * (f + s))


__all__ = ["LOWERINGS", "check_lowering", "lower"]
