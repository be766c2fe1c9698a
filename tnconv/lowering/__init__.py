"""Lowering of one term, with sizes known, to the cheapest of three executions.

* ``"native"``: the term is a convolution, input VJP or weight VJP
  (:mod:`.native`) and runs PyTorch's kernel;
* ``"views"``: patterns on an input become strided views of it
  (:mod:`.views`) and the backend contracts what is left;
* the plain contraction of every tensor, patterns included, by the backend.

A term that is a network times a renamed copy of itself (a squared norm, a GGN
diagonal) may also compute that half once, by its own best lowering, and
square it (:mod:`.square`), whenever any lowering is allowed.

The choice is by the FLOPs and the elements written that each plan reports
(:func:`cost`; ties go to the earlier in that list, which never uses more memory). ``compile(..., lowering=())`` keeps only
the plain contraction, which is what the paper's einsum formulation runs.
"""

from __future__ import annotations

from math import prod
from typing import NamedTuple, Sequence, Tuple

import torch

from ..backends.base import Plan
from ..ir.pattern import pattern_sum
from . import native, square, views

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
        absorbed = _absorbable_selects(term, output)
        if absorbed:  # a sampled input, scattered back, may be a convolution again
            candidates.append(_scatter_plan(term, absorbed, sizes, dtype, plan_backend, memory_limit, lowering, cap))
        template = native.match(term)
        if native.applicable(template, dtype):
            inputs = tuple(n for n, t in enumerate(term.tensors) if t.kind == "input")
            candidates.append((inputs, native.plan(template, sizes, output)))
    if "views" in lowering:
        found = views.find(term)
        if found:
            candidates.append(_view_plan(term, legs, found, sizes, output, plan_backend, memory_limit))
    if lowering:  # a Hadamard square: its half once, by its own best lowering, squared (lowering/square.py)
        halves = square.find(term)
        if halves:
            candidates.append(square.plan(term, halves, sizes, lambda half: lower(
                half, sizes, dtype, plan_backend, memory_limit, lowering, cap)))
    limits = [l for l in (memory_limit, cap) if l is not None]
    if limits:  # the backend's slicing only bounds the plain contraction
        candidates = [c for c in candidates if c[1].largest_intermediate <= min(limits)]
    candidates.append((everything, _presummed(legs, output, sizes, plan_backend, memory_limit)))
    return min(candidates, key=lambda c: cost(c[1]))


def _presummed(legs, output, sizes, plan_backend, memory_limit):
    """The backend's plan, after summing each leg that one operand alone carries (and the output lacks).

    KFAC-reduce's ``Σ_o`` sits on the pattern alone: summed first, ``Π(i, o, k)``
    becomes an ``[I, K]`` matrix and the input meets it in two small matrix products,
    without padding or a view. Backends need not do this themselves.
    """
    count = {}
    for operand in legs:
        for leg in set(operand):
            count[leg] = count.get(leg, 0) + 1
    lone = [tuple(a for a, leg in enumerate(operand) if count[leg] == 1 and leg not in output
                  and operand.count(leg) == 1) for operand in legs]
    if not any(lone) or any(len(l) == len(operand) for l, operand in zip(lone, legs)):
        return plan_backend(legs, output, sizes, memory_limit)
    reduced = [tuple(leg for a, leg in enumerate(operand) if a not in l) for operand, l in zip(legs, lone)]
    inner = plan_backend(reduced, output, sizes, memory_limit)

    def run(*arrays):
        return inner(*(views.sum_axes(a, l) for a, l in zip(arrays, lone)))

    work = sum(views.elements(operand, sizes) for operand, l in zip(legs, lone) if l)
    return Plan(run, inner.equation, inner.flops + work, inner.largest_intermediate, inner.path, inner.slices,
                inner.write + sum(views.elements(r, sizes) for r, l in zip(reduced, lone) if l))


#: FLOPs one written element is worth. A contraction writing each output after
#: only a few multiply-adds (a GEMM with a short inner dimension, a transpose)
#: is bound by memory, not arithmetic: on these CPUs a well-shaped float32 GEMM
#: runs at ~50 GFLOP/s on one core while strided copies move ~0.2-0.5 G elements/s.
#: Calibrated by ``python benchmarks/write_cost.py 256 1024 4096`` on the benchmark's
#: layers: relative to 256, 1024 took 0.56x the time where the choice differed, 4096 4.1x.
WRITE_COST = 1024


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


def without_broadcasts(term, strip=None):
    """``(part, kept, gone)``: ``term`` without the constants :func:`_broadcasts` finds (or ``strip``),
    the positions of the tensors it keeps, and the output legs only those constants carried."""
    if strip is None:
        strip = _broadcasts(term, tuple(l.name for l in term.output_legs))
    kept = [n for n in range(len(term.tensors)) if n not in strip]
    gone = [l.name for n in strip for l in term.tensors[n].legs]
    part = _Part(tuple(term.tensors[n] for n in kept), tuple(l for l in term.output_legs if l.name not in gone))
    return part, kept, gone


def _lower_broadcast(term, strip, output, sizes, dtype, plan_backend, memory_limit, lowering, cap):
    part, kept, gone = without_broadcasts(term, strip)
    factor = prod(float(term.tensors[n].attr["value"]) for n in strip)
    positions, inner = lower(part, sizes, dtype, plan_backend, memory_limit, lowering, cap)
    order = tuple(l.name for l in part.output_legs) + tuple(gone)
    shape = tuple(sizes[n] for n in order)
    to_output = [order.index(n) for n in output]
    trivial = all(sizes[n] == 1 for n in gone)

    def run(*arrays):
        result = inner(*arrays).reshape(shape[:len(order) - len(gone)] + (1,) * len(gone))
        if factor != 1:
            result = result * factor
        # a stride-0 view: a bias is added to the convolution in place, never materialized
        # (the compiler copies a broadcast result it would otherwise hand to the caller)
        return (result if trivial else result.expand(shape)).permute(to_output)

    out_elements = prod(shape)
    extra = prod(shape[:len(order) - len(gone)]) * (factor != 1)
    return tuple(kept[p] for p in positions), Plan(run, inner.equation, inner.flops + out_elements * (factor != 1),
                                                   max(inner.largest_intermediate, out_elements), inner.path, inner.slices,
                                                   inner.write + extra)


def _absorbable_selects(term, output):
    """``(select, input)`` positions where a CRS selection ``S[i, s]`` meets its input alone on ``s``."""
    found = []
    for n, t in enumerate(term.tensors):
        if t.kind != "select":
            continue
        i, s = (l.name for l in t.legs)
        holders = [m for m, u in enumerate(term.tensors) if m != n and s in {l.name for l in u.legs}]
        if s in output or len(holders) != 1 or term.tensors[holders[0]].kind != "input":
            continue
        if i not in {l.name for l in term.tensors[holders[0]].legs}:
            found.append((n, holders[0]))
    return found


def _scatter_plan(term, absorbed, sizes, dtype, plan_backend, memory_limit, lowering, cap):
    """Contract each selection into its sampled input first: ``X[.., i, ..] = Σ_s S[i, s] X_sub[.., s, ..]``.

    The sampled weight VJP of a CRS layer is then a plain convolution VJP on a
    zero-filled input, which PyTorch's kernel runs faster than the einsum over the
    sampled indices (the samples are no longer a strided pattern). The product is
    a matrix product, exact for any ``S``, not a scatter that assumes one-hot columns.
    """
    selects = {n for n, _ in absorbed}
    renames = {}
    for n, m in absorbed:
        i, s = term.tensors[n].legs
        renames.setdefault(m, {})[s.name] = i
    kept = [n for n in range(len(term.tensors)) if n not in selects]
    part = _Part(tuple(term.tensors[n].rename_legs(renames[n]) if n in renames else term.tensors[n] for n in kept),
                 term.output_legs)
    positions, inner = lower(part, sizes, dtype, plan_backend, memory_limit, lowering, cap)
    positions = tuple(kept[p] for p in positions)
    steps, flops, write = [], 0.0, 0.0
    for k, (n, m) in enumerate(absorbed):
        i, s = term.tensors[n].legs
        legs = [l.name for l in term.tensors[m].legs]
        axis = legs.index(s.name)
        steps.append((positions.index(m), len(positions) + k, axis))
        rest = prod(sizes[l] for l in legs if l != s.name)
        flops += 2.0 * sizes[i.name] * sizes[s.name] * rest
        write += sizes[i.name] * rest

    def run(*arrays):
        operands = list(arrays[:len(positions)])
        for slot, select, axis in steps:
            operands[slot] = _select(arrays[select], operands[slot], axis)
        return inner(*operands)

    return positions + tuple(n for n, _ in absorbed), Plan(
        run, "scatter, " + inner.equation, inner.flops + flops, max(inner.largest_intermediate, int(write)),
        inner.path, inner.slices, inner.write + write)


def _select(S, X, axis):
    """``Σ_s S[i, s] X[.., s, ..]`` along ``axis``, as a matrix product without moving the last two axes."""
    if axis == X.ndim - 1:
        return X @ S.T
    if axis == X.ndim - 2:
        return S @ X
    return (X.movedim(axis, -1) @ S.T).movedim(-1, axis)


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
    extra_flops = 0.0
    for slot, n in enumerate(positions):
        if n not in found:
            new_legs.append(raw[slot])
            continue
        # KFAC-reduce sums each patch over the output positions: do it on the view, before any copy
        reduce = tuple(a for a, leg in enumerate(raw[slot]) if uses[leg] == 1 and leg not in output)
        key = (term.tensors[n].name, tuple(sorted(
            (legs[n].index(p.legs[0].name), sizes[p.legs[1].name], sizes[p.legs[2].name], p.attrs) for p in found[n])), reduce)
        presum = bool(reduce) and {raw[slot][a] for a in reduce} == {p.legs[1].name for p in found[n]}
        if presum:  # summed over every o: Σ_o Π(i, o, k) is an [I, K] matrix, no view needed
            maker, copy = _summed_patterns(legs[n], found[n], sizes), 0
            extra_flops += 2.0 * sum(views.elements(legs[n], sizes) * sizes[p.legs[2].name] for p in found[n])
        else:
            maker, copy = views.make_view(legs[n], found[n], sizes)
        makers[slot] = (key, maker, () if presum else reduce)
        padded.append(copy)
        new_legs.append(tuple(leg for a, leg in enumerate(raw[slot]) if a not in reduce))
        # what making the operand writes: the padded copy, then the sums, or (likely) the contraction's copy of the view
        copied = not (presum or reduce)
        written[key] = (copy, views.elements(raw[slot] if copied else new_legs[-1], sizes), copied)
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
                    made[key] = views.sum_axes(v, reduce)
                a = made[key]
            operands.append(a)
        return inner(*operands)

    # a view that the contraction copies costs as much memory as the im2col matrix
    largest = max([inner.largest_intermediate] + padded + [views.elements(new_legs[s], sizes) for s in makers])
    # gram counts its own copy of the view; padding is a contiguous copy, cheap beside a contraction's writes
    write = inner.write + sum(0 if gram and copied else made for _, made, copied in written.values())
    return positions, Plan(run, "views: " + inner.equation, inner.flops + extra_flops, largest, inner.path, inner.slices,
                           write)


def _summed_patterns(legs, patterns, sizes):
    """``fn(X)``: ``Σ_i X[.., i, ..] Σ_o Π(i, o, k)`` along each patterned axis (``i`` becomes ``k``)."""
    steps = []
    for p in patterns:
        i, o, k = (l.name for l in p.legs)
        a = p.attr
        steps.append((legs.index(i), (sizes[i], sizes[o], sizes[k], a["stride"], a["pad_left"], a["dilation"])))

    def fn(x):
        for axis, shape in steps:
            summed = pattern_sum(*shape, dtype=x.dtype, device=x.device)  # [I, K]
            x = _select(summed.T, x, axis)
        return x

    return fn


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
