"""Column-row sampling (CRS): unbiased Monte-Carlo contraction over a summed index.

A sum ``Σ_i A[.., i] B[i, ..]`` over ``I`` terms is replaced by ``I/M`` times
the sum over ``M`` indices drawn uniformly *without replacement*: every index
is kept with probability ``M/I``, so the estimate is unbiased. Each tensor
carrying the index is contracted with one random selection ``S[i, s]``
(a ``select`` tensor, one-hot, drawn anew at every call and shared by all
carriers), so all of them see the same sampled indices.

A fixed number ``M = max(1, round(p·I))`` of kept indices, rather than the
paper's independent Bernoulli(p) draws, keeps every shape fixed, so a compiled
network reuses one contraction plan across calls; both estimators are unbiased
and keep each index with probability ``M/I ≈ p``.
"""

from __future__ import annotations

import sympy
import torch

from ..ir import Index, Tensor
from ._util import fresh, rebuild, terms_of, used_names


def keep_count(size, keep_prob):
    """``max(1, round(keep_prob · size))`` (a sympy expression for a symbolic size)."""
    if isinstance(size, int):
        return max(1, int(keep_prob * size + 0.5))
    return sympy.Max(1, sympy.floor(sympy.nsimplify(keep_prob) * size + sympy.Rational(1, 2)))


def crs(tn, index: str, keep_prob: float, generator=None):
    """Sample the summed leg ``index``: keep ``M ≈ keep_prob · I`` of its values, rescale by ``I/M``.

    Args:
        tn: a network or sum in which ``index`` is a summed leg.
        index: the leg to sample (it must not be an output leg).
        keep_prob: fraction of the leg's range kept, in (0, 1]; 1 returns ``tn``.
        generator: ``torch.Generator`` the selections are drawn from at call
            time (also accepted by the compiled network's call).

    Example:
        >>> import torch, tnconv
        >>> from tnconv import diagrams
        >>> tn = crs(diagrams.weight_vjp(N=1, kernel_size=3), "i1", 0.5)
        >>> sorted({t.name for t in tn.tensors if t.kind == "select"})
        ['crs_i1']
        >>> f = tnconv.compile(tn)
        >>> f(x=torch.randn(2, 3, 10), grad_output=torch.randn(2, 4, 8)).shape
        torch.Size([4, 3, 3])
    """
    terms = terms_of(tn)
    if isinstance(keep_prob, bool) or not isinstance(keep_prob, (int, float)):
        raise TypeError(f"keep_prob must be a float in (0, 1], got {keep_prob!r}")
    if not 0 < keep_prob <= 1:
        raise ValueError(f"keep_prob must be in (0, 1], got {keep_prob}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    if not isinstance(index, str) or index not in used_names(tn):
        legs = sorted(used_names(tn)) if isinstance(index, str) else None
        raise ValueError(f"index={index!r} is not a leg of the network; its legs are {legs}")
    for term in terms:
        if index in {leg.name for leg in term.output_legs}:
            raise ValueError(f"index={index!r} is an output leg, not a summed one; CRS can only sample summed legs")
    if keep_prob == 1:
        return tn
    used = used_names(tn)
    out = []
    for term in terms:
        if index not in term.legs:
            out.append(term.replace(generator=generator) if generator is not None else term)
            continue
        leg = term.legs[index]
        kept = Index(fresh(f"{index}_s", used), keep_count(leg.size, keep_prob))
        tensors = []
        for t in term.tensors:
            if index not in {l.name for l in t.legs}:
                tensors.append(t)
                continue
            own = Index(fresh(f"{index}_{t.name}", used), leg.size)
            tensors.append(t.rename_legs({index: own}))
            tensors.append(Tensor(f"crs_{index}", ((own,), (kept,)), "select"))
        scale = term.scale * leg.size / kept.size
        out.append(term.replace(tensors=tuple(tensors), scale=scale, generator=generator))
    return rebuild(tn, out)


def presample(tn, name: str):
    """Absorb the selections on input ``name``: the caller then passes it already sampled.

    After :func:`crs`, ``x[.., i] S[i, s]`` becomes ``x[.., s]``; the caller
    supplies the sampled sub-tensor of ``x`` and the selection tensors (one-hot)
    for the other carriers, drawn from the same indices. This is how a layer
    stores only the sampled part of its input for the backward pass.

    Example:
        >>> from tnconv import diagrams
        >>> tn = presample(crs(diagrams.weight_vjp(N=1, kernel_size=3), "i1", 0.5), "x")
        >>> [t.name for t in tn.tensors]
        ['x', 'pi1', 'crs_i1', 'grad_output']
    """
    out = []
    for term in terms_of(tn):
        carriers = [t for t in term.tensors if t.kind == "input" and t.name == name]
        own = {leg.name for t in carriers for leg in t.legs}
        rename, drop = {}, set()
        for n, t in enumerate(term.tensors):
            if t.kind == "select" and t.legs[0].name in own:
                rename[t.legs[0].name] = t.legs[1]
                drop.add(n)
        tensors = tuple(t.rename_legs(rename) if t.kind == "input" and t.name == name else t
                        for n, t in enumerate(term.tensors) if n not in drop)
        out.append(term.replace(tensors=tensors))
    return rebuild(tn, out)
