"""``Σ_o`` of a view in one pass over the input: KFAC-reduce's window sums.

KFAC-reduce sums every patch over the output positions:
``Σ_o X[.., o·S + k·D − P, ..] = Σ_i X[.., i, ..] A[i, k]`` with
``A = Σ_o Π`` (:func:`~tnconv.ir.pattern.pattern_sum`), an ``[I, K]`` 0/1
matrix. Taken as a matrix product, that reads the input once per kernel
tap in a product with only ``K`` columns. But ``A`` is nearly periodic: away
from the edges, ``A[i, k] = 1`` iff ``i ≡ k·D − P (mod S)``, so

``X A = R(X) A_S + X[.., :L] E_left + X[.., I−T:] E_right``

where ``R(X)`` sums ``X`` per residue class mod ``S`` (one reduction over
the input, ``[.., S]``), ``A_S`` maps residues to taps, and the corrections
``E = A − periodic`` live on the first ``L`` and last ``T`` rows only (a
few kernel widths). For stride 1 that is ``X.sum(i)`` and a handful of edge
rows. A window of one tap (a 1x1 down-sampling convolution) reads one
strided slice, summed with the other such axes at once, so rows it skips
are never read. Axes are reduced last first (the contiguous one, where the
input is largest); the window sums are a candidate beside the matrix product.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch

from ..ir.pattern import pattern_sum


def _decompose(I: int, O: int, K: int, S: int, pad_left: int, D: int) -> Optional[Tuple[int, int, int]]:
    """``(full, L, T)``: rows ``[0, full)`` are periodic but for the first ``L`` and last ``T`` rows; ``None``
    when the edges would cover most of the axis (the plain product is as good)."""
    A = pattern_sum(I, O, K, S, pad_left, D, dtype=torch.float64)
    full = I // S * S
    periodic = _periodic(I, K, S, pad_left, D, full)
    rows = torch.nonzero((A != periodic).any(1)).flatten().tolist()
    L = max((i + 1 for i in rows if i < I // 2), default=0)  # corrections on rows [0, L) and [I - T, I)
    T = max((I - i for i in rows if i >= I // 2), default=0)
    if L + T > I // 2 or full == 0:
        return None
    return full, L, T


def _periodic(I, K, S, pad_left, D, full, dtype=torch.float64, device="cpu"):
    """``[I, K]``: 1 where ``i < full`` and ``i ≡ k·D − P (mod S)``."""
    i = torch.arange(I, device=device).view(I, 1)
    k = torch.arange(K, device=device).view(1, K)
    return (((i - k * D + pad_left) % S == 0) & (i < full)).to(dtype)


def applicable(patterns, sizes) -> bool:
    """Whether every pattern's window sums have edges narrower than half its axis (or one tap)."""
    return all(_shape(p, sizes)[2] == 1 or _decompose(*_shape(p, sizes)) is not None for p in patterns)


def _shape(p, sizes):
    i, o, k = (l.name for l in p.legs)
    a = p.attr
    return sizes[i], sizes[o], sizes[k], a["stride"], a["pad_left"], a["dilation"]


def window_sums(legs: Tuple[str, ...], patterns, sizes: dict):
    """``fn(X)``: ``Σ_i X[.., i, ..] Σ_o Π(i, o, k)`` along each patterned axis (``i`` becomes ``k``), by
    residue sums and edge corrections; the last axis first.

    Example:
        >>> from tnconv.ir import Index, Tensor
        >>> p = Tensor("pi", (Index("i", 9), Index("o", 7), Index("k", 3)), kind="pattern",
        ...            attrs=(("stride", 1), ("pad_left", 0), ("pad_right", 0), ("dilation", 1)))
        >>> x = torch.randn(2, 9, dtype=torch.float64)
        >>> fn = window_sums(("n", "i"), [p], {"i": 9, "o": 7, "k": 3})
        >>> expected = torch.stack([x[:, k:k + 7].sum(1) for k in range(3)], 1)
        >>> torch.allclose(fn(x), expected)
        True
    """
    steps: List[tuple] = []
    slices = {}  # axis -> the positions a one-tap window reads: a strided slice, summed with the others at once
    for p in sorted(patterns, key=lambda p: -legs.index(p.legs[0].name)):
        I, O, K, S, pad, D = _shape(p, sizes)
        axis = legs.index(p.legs[0].name)
        if K == 1:
            slices[axis] = _positions(I, O, S, pad)
        else:
            steps.append((axis, (I, O, K, S, pad, D), _decompose(I, O, K, S, pad, D)))
    empty = any(part is None for part in slices.values())
    index = tuple(slices.get(a, slice(None)) for a in range(max(slices, default=-1) + 1))
    summed = tuple(slices)

    made = {}  # (dtype, device) -> per step, the small matrices (built once, not at every call)

    def fn(x):
        if summed:  # down-sampling (S > K = 1): only the rows and columns a window reads are touched
            x = x.new_zeros(()).expand(_kept(x.shape, summed)) if empty else x[index].sum(summed, keepdim=True)
        key = (x.dtype, x.device)
        if key not in made:
            made[key] = [_matrices(shape, split, x.dtype, x.device) for _, shape, split in steps]
        for (axis, shape, split), matrices in zip(steps, made[key]):
            x = _reduce_axis(x, axis, shape, split, matrices)
        return x

    return fn


def _positions(I, O, S, pad):
    """The slice of the input positions a window of one tap reads, ``o·S − P`` in ``[0, I)``; ``None``: none."""
    read = [o * S - pad for o in range(O) if 0 <= o * S - pad < I]
    return slice(read[0], read[-1] + 1, S) if read else None


def _kept(shape, axes):
    return tuple(1 if a in axes else n for a, n in enumerate(shape))


def _matrices(shape, split, dtype, device):
    I, O, K, S, pad, D = shape
    A = pattern_sum(I, O, K, S, pad, D, dtype=dtype, device=device)
    if split is None:
        return A
    full, L, T = split
    taps = torch.arange(K, device=device)
    to_taps = ((taps.view(1, K) * D - pad) % S == torch.arange(S, device=device).view(S, 1)).to(dtype)  # [S, K]
    edges = A - _periodic(I, K, S, pad, D, full, dtype, device)
    return to_taps, edges[:L], edges[I - T:]


def _reduce_axis(x, axis, shape, split, matrices):
    if split is None:
        return _apply(matrices, x, axis)
    I, O, K, S, pad, D = shape
    full, L, T = split
    to_taps, left, right = matrices
    main = x.narrow(axis, 0, full)
    if S == 1:
        residues = main.sum(axis, keepdim=True)  # [.., 1, ..]
    else:
        residues = main.unflatten(axis, (full // S, S)).sum(axis)  # [.., S, ..]
    result = _apply(to_taps, residues, axis)
    if L:
        result = result + _apply(left, x.narrow(axis, 0, L), axis)
    if T:
        result = result + _apply(right, x.narrow(axis, I - T, T), axis)
    return result


def _apply(M, x, axis):
    """``Σ_i x[.., i, ..] M[i, k]`` along ``axis``, a matrix product without moving the last two axes."""
    if axis == x.ndim - 1:
        return x @ M
    if axis == x.ndim - 2:
        return M.T @ x
    return (x.movedim(axis, -1) @ M).movedim(-1, axis)


__all__ = ["applicable", "window_sums"]
