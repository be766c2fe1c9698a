"""Lowering of a Hadamard square: a term that is a sub-network times a renamed copy of itself.

``Σ_rest T[out, rest]²`` arises when a network is contracted with a copy of
itself renamed apart except on its open legs (the squared norm of per-sample
gradients, a GGN diagonal). A backend sees two unrelated halves: when the
cheapest order is to materialize ``T``, it computes ``T`` twice and by
einsum. This lowering computes the half once — lowered by :func:`~tnconv.lowering.lower`
like any term, so a per-sample gradient runs PyTorch's convolution kernel —
then squares it and sums. It is one more candidate: the whole term's other
plans (a Gram matrix of output positions per sample, when ``O²`` is small)
still win when they cost less.
"""

from __future__ import annotations

from math import prod
from typing import NamedTuple, Optional, Tuple

from ..backends.base import Plan


class Square(NamedTuple):
    """A term found to be ``half ⊙ copy``: the half's positions and its open (shared) legs, in order."""

    half: Tuple[int, ...]
    shared: tuple  # Index objects of the legs both halves carry


def find(term) -> Optional[Square]:
    """The term as a Hadamard square of its first half, or ``None``.

    The second half's tensors must be the first half's, in the same order,
    with the same names, kinds and attributes and with legs renamed by one
    bijection that keeps exactly the legs both halves carry; the output legs
    must be among those.
    """
    tensors = term.tensors
    if len(tensors) < 2 or len(tensors) % 2:
        return None
    h = len(tensors) // 2
    mapping: dict = {}
    for a, b in zip(tensors[:h], tensors[h:]):
        if (a.name, a.kind, a.attrs) != (b.name, b.kind, b.attrs) or len(a.axes) != len(b.axes) \
                or any(len(x) != len(y) for x, y in zip(a.axes, b.axes)):
            return None
        for la, lb in zip(a.legs, b.legs):
            if mapping.setdefault(la.name, lb.name) != lb.name or la.size != lb.size:
                return None
    if len(set(mapping.values())) != len(mapping):
        return None
    second = {l.name for t in tensors[h:] for l in t.legs}
    shared_names = [name for name in mapping if name in second]
    if any(mapping[name] != name for name in shared_names):
        return None
    if not any(t.kind == "input" for t in tensors[:h]):
        return None
    output = [l.name for l in term.output_legs]
    if not set(output) <= set(shared_names):
        return None
    legs = {l.name: l for t in tensors[:h] for l in t.legs}
    return Square(tuple(range(h)), tuple(legs[name] for name in shared_names))


class _Half(NamedTuple):
    tensors: tuple
    output_legs: tuple


def plan(term, found: Square, sizes: dict, lower_half) -> Tuple[tuple, Plan]:
    """``(positions, plan)``: the half lowered by ``lower_half(part) -> (positions, plan)``, squared and summed.

    The half's result is fresh (a plan never returns an input), so it is
    squared in place: no second array of its size.
    """
    half = _Half(tuple(term.tensors[n] for n in found.half), found.shared)
    positions, inner = lower_half(half)
    names = [l.name for l in found.shared]
    output = [l.name for l in term.output_legs]
    elements = prod(sizes[n] for n in names)
    result_elements = prod(sizes[n] for n in output)

    def run(*arrays):
        t = inner(*arrays)
        t = t.mul_(t) if _writable(t, arrays) else t * t
        # sum with the axes in memory order: PyTorch's reduction over a permuted view is ~10x slower
        order = sorted(range(t.ndim), key=lambda a: -t.stride(a))
        legs = [names[a] for a in order]
        summed = tuple(a for a, name in enumerate(legs) if name not in output)
        t = t.permute(order)
        if summed:
            t = t.sum(summed)
            legs = [name for name in legs if name in output]
        return t.permute([legs.index(name) for name in output])

    # the square is written over the half's result, the sum once more
    return positions, Plan(run, "square: " + inner.equation, inner.flops + 2.0 * elements,
                           max(inner.largest_intermediate, elements), inner.path, inner.slices,
                           inner.write + elements + result_elements)


def _writable(t, arrays) -> bool:
    """Whether ``t`` is the plan's own memory: no autograd history, no broadcast, no storage shared with an input."""
    if t.requires_grad or t._base is not None and t._base.requires_grad:
        return False
    if any(stride == 0 and size > 1 for stride, size in zip(t.stride(), t.shape)):
        return False
    try:
        storage = t.untyped_storage().data_ptr()
        return all(a.untyped_storage().data_ptr() != storage for a in arrays if hasattr(a, "untyped_storage"))
    except (NotImplementedError, RuntimeError):  # functorch's wrapped tensors (vmap, grad) have no plain storage
        return False


__all__ = ["Square", "find", "plan"]
