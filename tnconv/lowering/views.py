"""Lowering of a pattern contraction to a strided view: ``X[.., i, ..] Π(i, o, k) = X̃[.., o, k, ..]``.

``Π[i, o, k] = 1`` iff ``i = o·S + k·D − P``, so contracting an input's leg
``i`` with the pattern only re-indexes it: after padding, ``X̃ = as_strided(X)``
with strides ``S`` and ``D`` times the stride of ``i``. No multiply-add is
spent on the zeros of Π, and for dense (``K = S``) and down-sampling
(``S ≥ K``) patterns the view does not even overlap, so the einsum that
follows can often use it without copying. The rewrite applies to a pattern
whose ``i`` leg is carried by exactly one input tensor and nothing else, and
whose ``o`` and ``k`` legs that tensor does not carry.
"""

from __future__ import annotations

from math import prod
from typing import Dict, List, Tuple

import torch.nn.functional as F


def find(term) -> Dict[int, List]:
    """Position of each input tensor in ``term.tensors`` -> the patterns that can become its view."""
    count: Dict[str, int] = {}
    for t in term.tensors:
        for leg in {l.name for l in t.legs}:
            count[leg] = count.get(leg, 0) + 1
    out_legs = {l.name for l in term.output_legs}
    holder = {}
    for n, t in enumerate(term.tensors):
        if t.kind == "input":
            names = [l.name for l in t.legs]
            if len(set(names)) == len(names):
                for leg in names:
                    holder[leg] = n
    found: Dict[int, List] = {}
    for p in term.tensors:
        if p.kind != "pattern":
            continue
        i, o, k = (l.name for l in p.legs)
        n = holder.get(i)
        if n is None or count[i] != 2 or i in out_legs:
            continue
        legs = {l.name for l in term.tensors[n].legs}
        if o in legs or k in legs or len({i, o, k}) != 3:
            continue
        found.setdefault(n, []).append(p)
    return found


def view_legs(legs: Tuple[str, ...], patterns) -> Tuple[str, ...]:
    """The legs of the view: each pattern's ``i`` replaced by its ``(o, k)``."""
    by_i = {p.legs[0].name: (p.legs[1].name, p.legs[2].name) for p in patterns}
    return tuple(n for leg in legs for n in (by_i[leg] if leg in by_i else (leg,)))


def make_view(legs: Tuple[str, ...], patterns, sizes: dict):
    """``(fn, padded)``: ``fn(array) -> view`` pads (or crops) each patterned axis, then
    takes ``as_strided``; ``padded`` is the number of elements of the padded copy (0: none)."""
    axes = []
    for p in patterns:
        i, o, k = (l.name for l in p.legs)
        a = p.attr
        I, O, K = sizes[i], sizes[o], sizes[k]
        left = a["pad_left"]
        right = (O - 1) * a["stride"] + (K - 1) * a["dilation"] + 1 - I - left
        axes.append((legs.index(i), O, K, a["stride"], a["dilation"], left, right))
    axes.sort()
    first = axes[0][0] if axes else len(legs)
    pad = [0] * (2 * (len(legs) - first))
    for axis, *_, left, right in axes:
        at = 2 * (len(legs) - 1 - axis)
        pad[at], pad[at + 1] = left, right
    needs_pad = any(pad)
    by_axis = {axis: (O, K, S, D) for axis, O, K, S, D, _, _ in axes}
    grown = {axis: sizes[legs[axis]] + max(left, 0) + max(right, 0) for axis, *_, left, right in axes}
    padded = prod(grown.get(a, sizes[leg]) for a, leg in enumerate(legs)) if any(p > 0 for p in pad) else 0

    def view(array):
        if needs_pad:
            array = pad_crop(array, pad)
        size, stride = [], []
        for axis, (n, st) in enumerate(zip(array.shape, array.stride())):
            if axis in by_axis:
                O, K, S, D = by_axis[axis]
                size += [O, K]
                stride += [S * st, D * st]
            else:
                size.append(n)
                stride.append(st)
        return array.as_strided(size, stride, array.storage_offset())

    return view, padded


def pad_crop(array, pad):
    """``F.pad`` in its ``pad`` order, but growing before cropping.

    ``F.pad`` crops negative amounts first, which fails when a crop on one side
    exceeds the axis before the other side's padding is added (an input of one
    pixel whose window starts two pixels to the left).
    """
    if any(p > 0 for p in pad):
        array = F.pad(array, [max(p, 0) for p in pad])
    for n in range(len(pad) // 2):
        left, right = min(pad[2 * n], 0), min(pad[2 * n + 1], 0)
        if left or right:
            axis = array.ndim - 1 - n
            array = array.narrow(axis, -left, array.shape[axis] + left + right)
    return array


def sum_axes(array, axes):
    """``array.sum(axes)``, but a view when every summed axis has size 1 (a sum would copy)."""
    if not axes:
        return array
    if all(array.shape[a] == 1 for a in axes):
        return array.squeeze(tuple(axes))
    return array.sum(axes)


def elements(legs, sizes) -> int:
    return prod(sizes[n] for n in legs)


__all__ = ["find", "view_legs", "make_view"]
