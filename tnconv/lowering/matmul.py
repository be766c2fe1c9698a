"""A pointwise term of two operands as one batched matrix product (``bmm``).

A 1x1 convolution, its VJPs, a dense convolution once :func:`~tnconv.passes.dense`
turned its patterns into reshapes, and KFC of a 1x1 layer are terms without
patterns: two operands whose legs are batch legs (on both and the output),
rows (on the first and the output), columns (on the second and the output)
and summed legs (on both only). That is ``bmm([batch, rows, summed],
[batch, summed, columns])`` after permuting and reshaping each operand,
which copies an operand only when its legs are not already grouped so.

Which grouping is fastest the sizes decide, so each is a candidate for the
autotuner:

* ``"matmul"``: the legs as they fall; a large batch of small products
  when the operands share many legs, one large product otherwise;
* ``"matmul/broadcast"``: the output's leading legs of one operand become
  batch legs, the other operand broadcast along them (stride 0, no copy) -- a
  1x1 convolution as one product per sample, written straight into ``[B, C, P]``;
* ``"matmul/batched-sum"``: the summed legs both operands lead with become
  batch legs whose products are then summed -- a 1x1 weight VJP as one
  product per sample, no operand copied; ``"matmul/loop"``: the same
  products accumulated in place (``baddbmm_``), one per summed index;
* ``"gram"``: both operands are one tensor (KFC of a 1x1 layer):
  :mod:`.gram`'s product of it with itself, whole, in blocks or by its
  upper triangle; for KFAC-reduce, after summing the pixels
  (:func:`presummed_gram`, which the cost model considers too).

A leg only one operand carries (and the output lacks) is summed out first.
"""

from __future__ import annotations

from math import prod
from typing import List, Optional, Sequence, Tuple

import torch

from ..backends.base import Plan
from . import gram, views


def _lone(legs, output):
    count = {}
    for operand in legs:
        for leg in set(operand):
            count[leg] = count.get(leg, 0) + 1
    return [tuple(a for a, leg in enumerate(operand) if count[leg] == 1 and leg not in output) for operand in legs]


def plans(legs: Sequence[Tuple[str, ...]], output: Tuple[str, ...], sizes: dict,
          same: bool = False) -> List[Tuple[str, Plan]]:
    """``(label, plan)`` of every grouping of a two-operand term as ``bmm`` (none for other terms).

    ``same``: both operands are one tensor, which adds the ``"gram"`` candidates.

    Example:
        >>> [label for label, _ in plans([("o", "c"), ("b", "c", "p")], ("b", "o", "p"), {"o": 4, "c": 3, "b": 2, "p": 5})]
        ['matmul', 'matmul/broadcast']
    """
    if len(legs) != 2 or any(len(set(l)) != len(l) for l in legs) or set(output) - set(legs[0]) - set(legs[1]):
        return []
    lone = _lone(legs, output)
    reduced = [tuple(leg for a, leg in enumerate(operand) if a not in l) for operand, l in zip(legs, lone)]
    presum = sum(views.elements(operand, sizes) for operand, l in zip(legs, lone) if l)
    a, b = reduced
    found = []
    summed = _summed_grouping(a, b, output)
    for label, grouping, loop in (("matmul", _plain_grouping(a, b, output), False),
                                  ("matmul/broadcast", _broadcast_grouping(a, b, output, sizes), False),
                                  ("matmul/batched-sum", summed, False), ("matmul/loop", summed, True)):
        if grouping is not None:
            found.append((label, _plan(a, b, output, sizes, lone, presum, *grouping, loop=loop)))
    if same and not any(lone):  # with lone legs, presummed_gram is the cost model's candidate
        shape = gram.match(reduced, output, sizes)
        if shape is not None:
            found.append(("gram", gram.plan(shape)))
            for target in gram.BLOCKS:
                blocked = gram.blocked(shape, target)
                if blocked is not None:
                    found.append((f"gram/blocks-{target}", blocked))
            for parts in gram.TRIANGLES:
                triangle = gram.triangular(shape, parts)
                if triangle is not None:
                    found.append((f"gram/triangle-{parts}", triangle))
    return found


def _classes(a, b, output):
    batch = [l for l in output if l in a and l in b]
    rows = [l for l in a if l in output and l not in b]
    cols = [l for l in b if l in output and l not in a]
    summed = [l for l in a if l in b and l not in output]
    return batch, rows, cols, summed


def _plain_grouping(a, b, output):
    batch, rows, cols, summed = _classes(a, b, output)
    big = a if len(a) >= len(b) else b
    summed = sorted(summed, key=big.index)  # the larger operand keeps its order: it is the one not to copy
    return batch, rows, cols, summed, ()


def _broadcast_grouping(a, b, output, sizes):
    """Batch legs extended by the output's leading legs of one operand (the other broadcast, if it is the
    smaller: broadcasting the larger one makes many small products of it)."""
    batch, rows, cols, summed = _classes(a, b, output)
    lead = []
    for leg in output:
        if leg in batch:
            continue
        if leg in rows and all(l in rows for l in lead) or leg in cols and all(l in cols for l in lead):
            lead.append(leg)
        else:
            break
    if not lead:
        return None
    head = [l for l in output if l in batch or l in lead]
    big = a if lead[0] in rows else b
    small = b if big is a else a
    if views.elements(small, sizes) > views.elements(big, sizes):
        return None
    summed = sorted(summed, key=big.index)
    return head, [l for l in rows if l not in lead], [l for l in cols if l not in lead], summed, ()


def _summed_grouping(a, b, output):
    """Summed legs that lead both operands become batch legs, summed after the product."""
    batch, rows, cols, summed = _classes(a, b, output)
    lead = []
    for la, lb in zip(a, b):
        if la == lb and la in summed:
            lead.append(la)
        else:
            break
    if not lead or len(lead) == len(summed):
        return None
    return batch, rows, cols, [l for l in summed if l not in lead], tuple(lead)


def _plan(a, b, output, sizes, lone, presum, batch, rows, cols, summed, summed_batch, loop=False):
    size = lambda names: prod(sizes[n] for n in names)  # noqa: E731
    head = list(summed_batch) + list(batch)
    # A is [head, rows, summed], or [head, summed, rows] transposed when a holds its summed legs first; B likewise
    a_t = bool(rows) and bool(summed) and a.index(summed[0]) < a.index(rows[0])
    b_t = bool(cols) and bool(summed) and b.index(cols[0]) < b.index(summed[0])
    swap = _first(output, rows, cols) == "cols"  # the output wants columns first: compute (A B)ᵀ = Bᵀ Aᵀ
    Bt, M, N, K = size(head), size(rows), size(cols), size(summed)
    steps = (_bring(a, head, (summed, rows) if a_t else (rows, summed), sizes, a_t),
             _bring(b, head, (cols, summed) if b_t else (summed, cols), sizes, b_t))
    copies = sum(_copied(step, tuple(sizes[l] for l in legs)) for step, legs in zip(steps, (a, b)))
    kept = list(batch) + (cols + rows if swap else rows + cols)
    to_output = [kept.index(l) for l in output]
    identity = to_output == sorted(to_output)
    out_shape = tuple(sizes[l] for l in kept)
    n_sum, s_shape = len(summed_batch), tuple(sizes[l] for l in summed_batch)
    count = prod(s_shape)

    def make(scale):
        def run(x, y):
            A = steps[0](views.sum_axes(x, lone[0]))
            B = steps[1](views.sum_axes(y, lone[1]))
            first, second = (B.transpose(1, 2), A.transpose(1, 2)) if swap else (A, B)
            if loop and not (gram.recorded(first) or gram.recorded(second)):
                # one product per summed index, accumulated in place: no [summed, M, N] intermediate
                first, second = first.reshape((count, -1) + first.shape[1:]), second.reshape((count, -1) + second.shape[1:])
                r = first.new_empty(first.shape[1:2] + (first.shape[2], second.shape[3]))
                for i in range(count):
                    r.baddbmm_(first[i], second[i], beta=0 if i == 0 else 1, alpha=scale)
                r = r.reshape(out_shape)
                return r if identity else r.permute(to_output)
            if scale == 1 or n_sum:
                r = torch.bmm(first, second)
            else:  # beta=0: the zero is not read, the scale rides on the product
                r = torch.baddbmm(first.new_zeros(()), first, second, beta=0, alpha=scale)
            if n_sum:
                r = r.view(s_shape + (-1,)).sum(tuple(range(n_sum)))
                if scale != 1:
                    r = r * scale
            r = r.reshape(out_shape)
            return r if identity else r.permute(to_output)

        return run

    summing = Bt * M * N if n_sum else 0  # the batched products' result, summed after (none with the loop)
    flops = 2.0 * Bt * M * N * K + (0 if loop else summing) + presum
    out = size(output)
    write = out + copies + (out * count if loop else summing) + (0 if identity else out)
    name = f"bmm [{Bt}, {M}, {K}] x [{Bt}, {K}, {N}]" + (" accumulated" if loop else " summed" if n_sum else "")

    def planned(scale):
        return Plan(make(scale), name, flops, max(Bt * M * N, copies, out), write=write,
                    with_scale=lambda more: planned(scale * more))

    return planned(1.0)


def _bring(legs, head, groups, sizes, transposed):
    """``fn(x)``: the operand as ``[head, groups[0], groups[1]]`` (transposed back if so), head legs it lacks
    broadcast (stride 0)."""
    size = lambda names: prod(sizes[n] for n in names)  # noqa: E731
    present = [l for l in head if l in legs]
    perm = [legs.index(l) for l in present + groups[0] + groups[1]]
    tail = (size(groups[0]), size(groups[1]))
    if present == head:
        shape = (size(head),) + tail
        expand = None
    else:
        shape = tuple(sizes[l] if l in legs else 1 for l in head) + tail
        expand = tuple(sizes[l] for l in head) + tail

    def fn(x):
        x = x.permute(perm).reshape(shape)
        if expand is not None:
            x = x.expand(expand).reshape((size(head),) + tail)
        return x.transpose(1, 2) if transposed else x

    return fn


def _copied(step, shape) -> int:
    """Elements ``step`` copies on a contiguous operand of ``shape`` (0: it is a view)."""
    probe = torch.empty(shape, device="meta")
    result = step(probe)
    return 0 if result._base is probe else result.numel()


def _first(output, rows, cols) -> Optional[str]:
    for leg in output:
        if leg in rows:
            return "rows"
        if leg in cols:
            return "cols"
    return None


def presummed_gram(legs: Sequence[Tuple[str, ...]], output: Tuple[str, ...], sizes: dict) -> Optional[Plan]:
    """``A Aᵀ`` of one operand after summing the legs only it carries (KFAC-reduce of a 1x1 layer), or ``None``.

    Both operands are one tensor (the caller checks); the sum runs once, on the
    first, and what is left is a small Gram product (:func:`.gram.plan`). The
    cost model ranks it like PyTorch's kernel, which sums the same legs first.

    Example:
        >>> p = presummed_gram([("n", "c", "p"), ("n", "d", "q")], ("c", "d"), {"n": 2, "c": 3, "d": 3, "p": 4, "q": 4})
        >>> x = torch.randn(2, 3, 4, dtype=torch.float64)
        >>> torch.allclose(p(x, x), x.sum(2).T @ x.sum(2))
        True
    """
    lone = _lone(legs, output)
    if len(legs) != 2 or not all(lone) or any(len(set(l)) != len(l) for l in legs):
        return None
    reduced = [tuple(leg for a, leg in enumerate(operand) if a not in l) for operand, l in zip(legs, lone)]
    shape = gram.match(reduced, output, sizes)
    if shape is None:
        return None
    presum = views.elements(legs[0], sizes)

    def wrap(p):
        def run(x, _same):
            return p.run(views.sum_axes(x, lone[0]), None)

        return Plan(run, "sum, " + p.equation, p.flops + presum, p.largest_intermediate, write=p.write,
                    with_scale=lambda more: wrap(p.with_scale(more)))

    return wrap(gram.plan(shape))


__all__ = ["plans", "presummed_gram"]
