"""``A Aᵀ`` of one operand: KFC's Gram product of a view, whole or in cache-sized blocks.

A term whose two operands are the same tensor with renamed free legs (the
two copies of the unfolded input in KFC) is ``M Mᵀ`` per batch leg, with
``M`` the operand reshaped to ``[batch, free, summed]``. Made whole, the
reshape copies the view into a fresh im2col-sized matrix, which the CPU
faults in page by page and the product then reads back from memory. Made in
blocks along the summed legs, each block is copied into one small buffer
that stays in cache and added into the result by ``baddbmm_``; the result
is the same sum in another order. Which is faster depends on the sizes (a
deep layer's result, written once per block, can outweigh the copy), so
the blocks are candidates for the autotuner only. So is the triangular
product, which computes only the blocks on and above the diagonal of the
symmetric result.

A scale (KFC's ``1/B``) is the product's ``alpha``: no pass over the result.
"""

from __future__ import annotations

import itertools
from math import prod
from typing import NamedTuple, Optional, Sequence, Tuple

import torch

from ..backends.base import Plan

#: Elements of one block's buffer the autotuner tries (float32: 256 KiB, 1 MiB, 4 MiB).
BLOCKS = (2**16, 2**18, 2**20)

#: A blocked product with more blocks than this spends its time in Python: not offered.
MAX_BLOCKS = 2048

#: Row blocks of the triangular products the autotuner tries.
TRIANGLES = (2, 4)


class Shape(NamedTuple):
    """How one operand's legs split: ``batch`` (kept, shared), ``free`` (its rows), ``summed``."""

    order: Tuple[int, ...]  # the operand's axes in the order batch + free + summed
    sizes: Tuple[int, ...]  # the operand's sizes in that order
    g: int
    f: int
    s: int
    n_batch: int
    n_free: int
    result: Tuple[int, ...]  # shape of batch + free + free'
    to_output: Tuple[int, ...]
    copies: bool = True  # whether reshaping a contiguous operand to [batch, free, summed] copies it
    summed_first: Optional[Tuple[int, ...]] = None  # batch + summed + free, when that order is a view and the other not


def match(legs: Sequence[Tuple[str, ...]], output: Tuple[str, ...], sizes: dict) -> Optional[Shape]:
    """The :class:`Shape` of ``A Aᵀ`` when both operands are one tensor with renamed free legs, else ``None``.

    Example:
        >>> match([("n", "c", "o"), ("n", "d", "o")], ("c", "d"), {"n": 2, "c": 3, "d": 3, "o": 5}).s
        10
    """
    if len(legs) != 2:
        return None
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
    order = tuple(a.index(leg) for leg in batch + free_a + summed)
    flipped = tuple(a.index(leg) for leg in batch + summed + free_a)
    result_legs = batch + free_a + free_b
    g, f, s = size(batch), size(free_a), size(summed)
    shape = tuple(sizes[leg] for leg in a)
    copies = not _viewable(shape, order, (g, f, s))
    first = flipped if copies and _viewable(shape, flipped, (g, s, f)) else None
    return Shape(order, tuple(sizes[a[i]] for i in order), g, f, s, len(batch), len(free_a),
                 tuple(sizes[n] for n in result_legs), tuple(result_legs.index(leg) for leg in output),
                 copies and first is None, first)


def _viewable(shape, order, grouped) -> bool:
    """Whether a contiguous tensor of ``shape``, permuted by ``order``, reshapes to ``grouped`` without a copy."""
    probe = torch.empty(shape, device="meta")
    return probe.permute(order).reshape(grouped)._base is probe


def _product(m, scale, transposed=False):
    a, b = (m.transpose(1, 2), m) if transposed else (m, m.transpose(1, 2))
    if scale == 1:
        return a @ b
    # beta=0: the zero is not read, the scale rides on the product
    return torch.baddbmm(m.new_zeros(()), a, b, beta=0, alpha=scale)


def plan(shape: Shape, scale: float = 1.0) -> Plan:
    """``M Mᵀ`` in one batched matrix product (the whole operand copied once).

    Example:
        >>> shape = match([("n", "c"), ("n", "d")], ("c", "d"), {"n": 5, "c": 3, "d": 3})
        >>> x = torch.randn(5, 3, dtype=torch.float64)
        >>> torch.allclose(plan(shape, 0.5)(x, x), 0.5 * x.T @ x)
        True
    """
    g, f, s = shape.g, shape.f, shape.s
    first = shape.summed_first  # [batch, summed, free] is a view of the operand: Mᵀ M, without a copy

    def run(x, _same):
        if first is not None:
            m = x.permute(first).reshape(g, s, f)
        else:
            m = x.permute(shape.order).reshape(g, f, s)
        return _product(m, scale, first is not None).reshape(shape.result).permute(shape.to_output)

    copy = g * f * s if shape.copies else 0
    return Plan(run, f"gram [{g}, {f}, {s}]", 2.0 * g * f * f * s, g * f * f + copy, write=g * f * f + copy,
                with_scale=lambda more: plan(shape, scale * more))


def _split(shape: Shape, target: int):
    """``(outer, block axis, rows)``: loop singly over ``outer`` summed axes, in blocks of ``rows`` along one more."""
    summed = shape.sizes[shape.n_batch + shape.n_free:]
    first = shape.n_batch + shape.n_free
    per = shape.g * shape.f
    inner = len(summed)
    while inner > 0 and per * summed[inner - 1] <= target:  # whole trailing axes that fit
        per *= summed[inner - 1]
        inner -= 1
    if inner == 0:
        return None  # everything fits: one block is the whole product
    block = inner - 1
    rows = max(1, target // per)
    return tuple(range(first, first + block)), first + block, min(rows, summed[block])


def blocked(shape: Shape, target: int, scale: float = 1.0) -> Optional[Plan]:
    """``M Mᵀ`` accumulated over blocks of about ``target`` elements of ``M``, or ``None`` (one block, or too many).

    Inputs that autograd records or that ``torch.func`` wraps take the whole
    product instead: the buffer is overwritten from block to block.

    Example:
        >>> shape = match([("n", "c", "o"), ("n", "d", "o")], ("c", "d"), {"n": 4, "c": 3, "d": 3, "o": 6})
        >>> x = torch.randn(4, 3, 6, dtype=torch.float64)
        >>> p = blocked(shape, 9)
        >>> p.equation, torch.allclose(p(x, x), plan(shape)(x, x))
        ('gram [1, 3, 24] in 8 blocks', True)
    """
    split = _split(shape, target)
    if split is None:
        return None
    outer, axis, rows = split
    sizes = shape.sizes
    blocks = prod(sizes[a] for a in outer) * -(-sizes[axis] // rows)
    if blocks > MAX_BLOCKS or blocks < 2:
        return None
    g, f = shape.g, shape.f
    buffer_shape = sizes[:axis] + (rows,) + sizes[axis + 1:]
    keep = [a for a in range(len(sizes)) if a not in outer]
    buffer_shape = tuple(buffer_shape[a] for a in keep)
    rest = prod(sizes[axis + 1:])
    whole = plan(shape, scale)

    def run(x, _same):
        if recorded(x):
            return whole.run(x, _same)
        xp = x.permute(shape.order)
        buffer = x.new_empty(buffer_shape)
        out = x.new_empty((g, f, f))
        first = True
        for index in itertools.product(*(range(sizes[a]) for a in outer)):
            part = xp[(slice(None),) * outer[0] + index] if outer else xp
            for start in range(0, sizes[axis], rows):
                n = min(rows, sizes[axis] - start)
                piece = part.narrow(axis - len(outer), start, n)
                target_ = buffer if n == rows else buffer.view(-1)[:g * f * n * rest].view(piece.shape)
                target_.copy_(piece)
                m = target_.view(g, f, n * rest)
                out.baddbmm_(m, m.transpose(1, 2), beta=0 if first else 1, alpha=scale)
                first = False
        return out.reshape(shape.result).permute(shape.to_output)

    s = shape.s
    return Plan(run, f"gram [{g}, {f}, {s}] in {blocks} blocks", 2.0 * g * f * f * s, g * f * (f + rows * rest),
                write=g * f * f * blocks + g * f * s, with_scale=lambda more: blocked(shape, target, scale * more))


def triangular(shape: Shape, parts: int, scale: float = 1.0) -> Optional[Plan]:
    """``M Mᵀ`` from its upper block triangle: ``parts`` row blocks, ``parts·(parts+1)/2`` products instead
    of ``parts²``, the lower triangle a transposed copy; ``None`` if ``M`` has fewer rows than ``parts``.

    The result is symmetric, so the products below the diagonal repeat those above
    it: with 4 row blocks, 10 of 16 are computed. Worth it where the product's
    arithmetic, not writing the result, is the cost (many summed legs).

    Example:
        >>> shape = match([("n", "c"), ("n", "d")], ("c", "d"), {"n": 5, "c": 8, "d": 8})
        >>> x = torch.randn(5, 8, dtype=torch.float64)
        >>> p = triangular(shape, 4)
        >>> p.equation, torch.allclose(p(x, x), x.T @ x)
        ('gram [1, 8, 5] in 10 of 16 blocks', True)
    """
    g, f, s = shape.g, shape.f, shape.s
    if parts < 2 or f < 2 * parts:
        return None
    edges = [f * k // parts for k in range(parts + 1)]
    blocks = list(zip(edges[:-1], edges[1:]))
    whole = plan(shape, scale)

    def run(x, _same):
        if recorded(x):
            return whole.run(x, _same)
        m = x.permute(shape.order).reshape(g, f, s)
        out = x.new_empty((g, f, f))
        for i, (a, b) in enumerate(blocks):
            for c, d in blocks[i:]:
                out[:, a:b, c:d].baddbmm_(m[:, a:b], m[:, c:d].transpose(1, 2), beta=0, alpha=scale)
                if c != a:
                    out[:, c:d, a:b] = out[:, a:b, c:d].transpose(1, 2)
        return out.reshape(shape.result).permute(shape.to_output)

    products = parts * (parts + 1) // 2
    return Plan(run, f"gram [{g}, {f}, {s}] in {products} of {parts * parts} blocks",
                2.0 * g * f * f * s * products / parts ** 2, g * f * (f + s), write=g * f * (f + s),
                with_scale=lambda more: triangular(shape, parts, scale * more))


def recorded(x) -> bool:
    """Whether an in-place, buffer-reusing product would break autograd or ``torch.func`` on ``x``.

    Plans that accumulate into a buffer (blocks, triangles, :mod:`.matmul`'s loop)
    take their whole, out-of-place form for such inputs.

    Example:
        >>> recorded(torch.ones(2)), recorded(torch.ones(2, requires_grad=True))
        (False, True)
    """
    return (x.requires_grad and torch.is_grad_enabled()) or type(x) is not torch.Tensor or \
        torch._C._functorch.is_functorch_wrapped_tensor(x)


__all__ = ["BLOCKS", "MAX_BLOCKS", "TRIANGLES", "Shape", "match", "plan", "blocked", "triangular", "recorded"]
