"""Lowering of one term, with sizes known, to one of its executions (:func:`candidates`).

* ``"native"``: the term is a convolution, input VJP or weight VJP
  (:mod:`.native`) and runs PyTorch's kernel;
* ``"views"``: patterns on an input become strided views of it
  (:mod:`.views`) and the backend contracts what is left;
* the plain contraction of every tensor, patterns included, by the backend.

Without autotuning the choice is by the FLOPs and the elements written that
each plan reports (:func:`cost`; ties go to the earlier in that list, which
never uses more memory). ``compile(..., lowering=())`` keeps only the plain
contraction, which is what the paper's einsum formulation runs. The
autotuner (:mod:`tnconv.autotune`) times these and the executions only
measurement can rank: each backend's plain contraction, pointwise terms as
one ``bmm`` (:mod:`.matmul`), other PyTorch kernels (:func:`.native.variants`),
Gram products in blocks or by their upper triangle (:mod:`.gram`) and window
sums (:mod:`.reduce`).

A term that is a network times a renamed copy of itself (a squared norm, a GGN
diagonal) may also compute that half once, by its own best lowering, and
square it (:mod:`.square`), whenever any lowering is allowed.
"""

from __future__ import annotations

from math import prod
from typing import List, Mapping, NamedTuple, Optional, Sequence, Tuple

import torch

from ..backends.base import Plan
from ..ir.pattern import pattern_sum
from . import gram, matmul, native, square, views
from . import reduce as reduction

LOWERINGS = ("native", "views")


def check_lowering(lowering) -> Tuple[str, ...]:
    """``lowering`` as a tuple of names from :data:`LOWERINGS`; a ``ValueError`` names the valid ones."""
    if isinstance(lowering, str):
        lowering = (lowering,)
    if not isinstance(lowering, (tuple, list)) or any(l not in LOWERINGS for l in lowering):
        raise ValueError(f"lowering must be a sequence of {LOWERINGS}, got {lowering!r}")
    return tuple(lowering)


class Candidate(NamedTuple):
    """One execution of a term: what :func:`candidates` returns and the autotuner times.

    Attributes:
        label: a stable name, unique among a term's candidates (``"native"``,
            ``"views"``, ``"plain"``, ``"plain/opt_einsum"``, ``"matmul/broadcast"``, ...);
            the autotuner's cache stores it.
        positions: which of ``term.tensors`` the plan takes, in order.
        plan: the :class:`~tnconv.backends.base.Plan`.
        default: whether the cost model chooses among it without autotuning.
    """

    label: str
    positions: Tuple[int, ...]
    plan: Plan
    default: bool = True


def candidates(term, sizes: dict, dtype, plan_backend, memory_limit, lowering: Sequence[str], cap=None,
               backends: Optional[Mapping[str, object]] = None) -> List[Candidate]:
    """Every lowering of ``term`` for these sizes, the cost model's first.

    Without ``backends`` only the cost model's candidates (native kernel,
    views, the plain contraction by ``plan_backend``); with them (name ->
    backend plan function, as the autotuner passes) also the plain
    contraction by each of those and the executions only measurement can
    rank (``default=False``): a pointwise term as one matrix product, views
    contracted blockwise. Whichever runs, the result is the same up to
    rounding. Candidates whose largest intermediate (padded copies and views
    included) exceeds ``memory_limit`` or ``cap`` are left out.

    Example:
        >>> import tnconv
        >>> term = tnconv.compile(tnconv.diagrams.kfc(N=1, kernel_size=3)).network.terms[0]
        >>> sizes = {"n": 8, "c": 4, "c'": 4, "i1": 10, "i1'": 10, "o1": 8, "k1": 3, "k1'": 3}
        >>> from tnconv.backends import get_backend
        >>> [c.label for c in candidates(term, sizes, torch.float32, get_backend("cotengra"), None, LOWERINGS)]
        ['views', 'plain']
    """
    output = tuple(l.name for l in term.output_legs)
    strip = _broadcasts(term, output)
    if strip and len(strip) < len(term.tensors):
        return _broadcast_candidates(term, strip, output, sizes, dtype, plan_backend, memory_limit, lowering, cap, backends)
    legs = [tuple(l.name for l in t.legs) for t in term.tensors]
    everything = tuple(range(len(term.tensors)))
    found: List[Candidate] = []
    same = len(term.tensors) == 2 and term.tensors[0].kind == term.tensors[1].kind == "input" and \
        term.tensors[0].name == term.tensors[1].name  # both operands are one tensor: a Gram product
    if "native" in lowering and memory_limit is None:
        absorbed = _absorbable_selects(term, output)
        if absorbed:  # a sampled input, scattered back, may be a convolution again
            found += _scatter_candidates(term, absorbed, sizes, dtype, plan_backend, memory_limit, lowering, cap, backends)
        summed_gram = matmul.presummed_gram(legs, output, sizes) if same else None
        if summed_gram is not None:  # KFAC-reduce of a 1x1 layer: a sum, then a small matrix product
            found.append(Candidate("gram", everything, summed_gram))
        template = native.match(term)
        if native.applicable(template, dtype):
            inputs = tuple(n for n, t in enumerate(term.tensors) if t.kind == "input")
            presum = sum(views.elements(legs[n], sizes) for n, axes in zip(inputs, template.summed)
                         if any(sizes[legs[n][a]] > 1 for a in axes))
            found.append(Candidate("native", inputs, native.plan(template, sizes, output, presum=presum)))
            if backends is not None:
                found += [Candidate(f"native/{label}", inputs, plan, False)
                          for label, plan in native.variants(template, sizes, output)]
    if "views" in lowering:
        patterns = views.find(term)
        if patterns:
            found += _view_candidates(term, legs, patterns, sizes, output, plan_backend, memory_limit, backends)
    if lowering:  # a Hadamard square: its half once, by its own best lowering, squared (lowering/square.py)
        halves = square.find(term)
        if halves:
            positions, plan = square.plan(term, halves, sizes, lambda half: lower(
                half, sizes, dtype, plan_backend, memory_limit, lowering, cap))
            found.append(Candidate("square", positions, plan))
    found.append(Candidate("plain", everything, _presummed(legs, output, sizes, plan_backend, memory_limit)))
    if backends is not None:
        for name, backend in backends.items():
            found.append(Candidate(f"plain/{name}", everything, _presummed(legs, output, sizes, backend, memory_limit),
                                   False))
        if "native" in lowering and memory_limit is None:
            found += [Candidate(label, everything, plan, False) for label, plan in matmul.plans(legs, output, sizes, same)]
    limits = [l for l in (memory_limit, cap) if l is not None]
    if limits:  # the backend's slicing bounds the plain contraction; others are left out when too large
        found = [c for c in found if c.label == "plain" or c.plan.largest_intermediate <= min(limits)]
    return found


def lower(term, sizes: dict, dtype, plan_backend, memory_limit, lowering: Sequence[str], cap=None):
    """``(positions, plan)``: the cost model's choice among :func:`candidates` (the cheapest by :func:`cost`).

    Ties go to the earlier candidate (native, views, plain), which never uses more memory.
    """
    best = choose(candidates(term, sizes, dtype, plan_backend, memory_limit, lowering, cap))
    return best.positions, best.plan


def choose(found: Sequence[Candidate]) -> Candidate:
    """The cost model's choice: the cheapest default candidate by :func:`cost`, the first of equals."""
    return min((c for c in found if c.default), key=lambda c: cost(c.plan))


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


def _broadcast_candidates(term, strip, output, sizes, dtype, plan_backend, memory_limit, lowering, cap, backends):
    """The candidates of ``term`` without its broadcast constants, each wrapped to broadcast its result back."""
    part, kept, gone = without_broadcasts(term, strip)
    factor = prod(float(term.tensors[n].attr["value"]) for n in strip)
    order = tuple(l.name for l in part.output_legs) + tuple(gone)
    shape = tuple(sizes[n] for n in order)
    to_output = [order.index(n) for n in output]
    trivial = all(sizes[n] == 1 for n in gone)
    out_elements = prod(shape)
    extra = prod(shape[:len(order) - len(gone)]) * (factor != 1)

    def wrap(inner):
        def run(*arrays):
            result = inner(*arrays).reshape(shape[:len(order) - len(gone)] + (1,) * len(gone))
            if factor != 1:
                result = result * factor
            # a stride-0 view: a bias is added to the convolution in place, never materialized
            # (the compiler copies a broadcast result it would otherwise hand to the caller)
            return (result if trivial else result.expand(shape)).permute(to_output)

        return Plan(run, inner.equation, inner.flops + out_elements * (factor != 1),
                    max(inner.largest_intermediate, out_elements), inner.path, inner.slices, inner.write + extra,
                    None if inner.with_scale is None else lambda more: wrap(inner.with_scale(more)))

    inner = candidates(part, sizes, dtype, plan_backend, memory_limit, lowering, cap, backends)
    return [Candidate(c.label, tuple(kept[p] for p in c.positions), wrap(c.plan), c.default) for c in inner]


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


def _scatter_candidates(term, absorbed, sizes, dtype, plan_backend, memory_limit, lowering, cap, backends):
    """Contract each selection into its sampled input first: ``X[.., i, ..] = Σ_s S[i, s] X_sub[.., s, ..]``.

    The sampled weight VJP of a CRS layer is then a plain convolution VJP on a
    zero-filled input, which PyTorch's kernel runs faster than the einsum over the
    sampled indices (the samples are no longer a strided pattern). The product is
    a matrix product, exact for any ``S``, not a scatter that assumes one-hot columns.
    One candidate ``"scatter"`` wraps the cost model's choice for the rest of the
    term; with ``backends``, ``"scatter/<label>"`` wraps each other one.
    """
    selects = {n for n, _ in absorbed}
    renames = {}
    for n, m in absorbed:
        i, s = term.tensors[n].legs
        renames.setdefault(m, {})[s.name] = i
    kept = [n for n in range(len(term.tensors)) if n not in selects]
    part = _Part(tuple(term.tensors[n].rename_legs(renames[n]) if n in renames else term.tensors[n] for n in kept),
                 term.output_legs)

    def wrap(positions_in, inner):
        positions = tuple(kept[p] for p in positions_in)
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
            inner.path, inner.slices, inner.write + write,
            None if inner.with_scale is None else lambda more: wrap(positions_in, inner.with_scale(more))[1])

    inner = candidates(part, sizes, dtype, plan_backend, memory_limit, lowering, cap, backends)
    best = choose(inner)
    found = [Candidate("scatter", *wrap(best.positions, best.plan))]
    if backends is not None:
        found += [Candidate(f"scatter/{c.label}", *wrap(c.positions, c.plan), False) for c in inner if c is not best]
    return found


def _select(S, X, axis):
    """``Σ_s S[i, s] X[.., s, ..]`` along ``axis``, as a matrix product without moving the last two axes."""
    if axis == X.ndim - 1:
        return X @ S.T
    if axis == X.ndim - 2:
        return S @ X
    return (X.movedim(axis, -1) @ S.T).movedim(-1, axis)


def _view_candidates(term, legs, found, sizes, output, plan_backend, memory_limit, backends):
    """Patterns become views; legs only a view carries are summed on it; equal views are made once.

    The cost model's candidate ``"views"`` sums a view over every ``o`` by a matrix
    product with ``Σ_o Π`` and contracts what is left by one Gram product (KFC) or the
    backend. With ``backends`` also: the Gram product in cache-sized blocks
    (``"views/blocks-<elements>"``), the rest by each other backend or as one ``bmm``
    (``"views/<backend>"``, ``"views/matmul..."``), and the sums over ``o`` as residue sums
    with edge corrections (``"views/window-sums"``, :mod:`.reduce`).
    """
    dropped = {id(p) for ps in found.values() for p in ps}
    positions = tuple(n for n, t in enumerate(term.tensors) if id(t) not in dropped)
    raw = [views.view_legs(legs[n], found[n]) if n in found else legs[n] for n in positions]
    uses = {}
    for slot_legs in raw:
        for leg in slot_legs:
            uses[leg] = uses.get(leg, 0) + 1
    new_legs, makers, padded, written = [], {}, [0], {}  # written: per distinct view, its copies
    sums, windows = {}, {}  # slot -> a maker summing over o by Σ_o Π, or by window sums, where the default does not
    extra_flops = 0.0
    for slot, n in enumerate(positions):
        if n not in found:
            new_legs.append(raw[slot])
            continue
        # KFAC-reduce sums each patch over the output positions: do it on the view, before any copy
        reduce = tuple(a for a, leg in enumerate(raw[slot]) if uses[leg] == 1 and leg not in output)
        key = (term.tensors[n].name, tuple(sorted(
            (legs[n].index(p.legs[0].name), sizes[p.legs[1].name], sizes[p.legs[2].name], p.attrs) for p in found[n])), reduce)
        summed = {raw[slot][a] for a in reduce}
        o_legs = {p.legs[1].name for p in found[n]}
        presum = bool(reduce) and summed == o_legs
        if presum:  # summed over every o: Σ_o Π(i, o, k) is an [I, K] matrix, no view needed
            maker, copy = _summed_patterns(legs[n], found[n], sizes), 0
            extra_flops += 2.0 * sum(views.elements(legs[n], sizes) * sizes[p.legs[2].name] for p in found[n])
        else:
            maker, copy = views.make_view(legs[n], found[n], sizes)
        if backends is not None and reduce and o_legs <= summed and summed - o_legs <= set(legs[n]):
            # the same sums over o, after summing the input's own lone legs (a trivial dimension's pixels)
            first = tuple(a for a, leg in enumerate(legs[n]) if leg in summed)
            rest = tuple(leg for leg in legs[n] if leg not in summed)
            if not presum:
                sums[slot] = _then(first, _summed_patterns(rest, found[n], sizes))
            if reduction.applicable(found[n], sizes):
                windows[slot] = _then(first, reduction.window_sums(rest, found[n], sizes))
        makers[slot] = (key, maker, () if presum else reduce)
        padded.append(copy)
        new_legs.append(tuple(leg for a, leg in enumerate(raw[slot]) if a not in reduce))
        # what making the operand writes: the padded copy, then the sums, or (likely) the contraction's copy of the view
        copied = not (presum or reduce)
        written[key] = (copy, views.elements(raw[slot] if copied else new_legs[-1], sizes), copied)
    same = len(new_legs) == 2 and len(makers) == 2 and makers[0][0] == makers[1][0]
    shape = gram.match(new_legs, output, sizes) if same else None

    def build(label, inner, gram_like, default=True, chosen=makers):
        def run(*arrays):
            made, operands = {}, []
            for s, a in enumerate(arrays):
                if s in chosen:
                    key, maker, reduce = chosen[s]
                    if key not in made:
                        made[key] = views.sum_axes(maker(a), reduce)
                    a = made[key]
                operands.append(a)
            return inner(*operands)

        # a view that the contraction copies costs as much memory as the im2col matrix
        largest = max([inner.largest_intermediate] + padded + [views.elements(new_legs[s], sizes) for s in chosen])
        # gram counts its own copy of the view; padding is a contiguous copy, cheap beside a contraction's writes
        write = inner.write + sum(0 if gram_like and copied else made for _, made, copied in written.values())
        scaled = None if inner.with_scale is None else \
            (lambda more: build(label, inner.with_scale(more), gram_like, default, chosen).plan)
        return Candidate(label, positions, Plan(run, "views: " + inner.equation, inner.flops + extra_flops, largest,
                                                inner.path, inner.slices, write, scaled), default)

    default = gram.plan(shape) if shape else plan_backend(new_legs, output, sizes, memory_limit)
    result = [build("views", default, shape is not None)]
    if backends is None:
        return result
    if shape is not None:
        for target in gram.BLOCKS:
            blocked = gram.blocked(shape, target)
            if blocked is not None:
                result.append(build(f"views/blocks-{target}", blocked, True, False))
        for parts in gram.TRIANGLES:
            triangle = gram.triangular(shape, parts)
            if triangle is not None:
                result.append(build(f"views/triangle-{parts}", triangle, True, False))
    else:
        for name, backend in backends.items():
            result.append(build(f"views/{name}", backend(new_legs, output, sizes, memory_limit), False, False))
        if memory_limit is None:
            result += [build(f"views/{label}", plan, False, False) for label, plan in matmul.plans(new_legs, output, sizes)]
    for label, alternative in (("views/presum", sums), ("views/window-sums", windows)):
        if alternative:
            chosen = {s: (key, alternative[s], ()) if s in alternative else (key, maker, reduce)
                      for s, (key, maker, reduce) in makers.items()}
            result.append(build(label, default, shape is not None, False, chosen))
    return result


def _then(axes, fn):
    """``fn`` after summing ``axes`` (a view when they have size 1)."""
    return lambda x: fn(views.sum_axes(x, axes))


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


__all__ = ["LOWERINGS", "Candidate", "candidates", "check_lowering", "choose", "cost", "lower"]
