"""Absorbing Kronecker deltas into their neighbours by renaming legs."""

from __future__ import annotations

from ..ir import Tensor, TensorNetwork
from ._util import rebuild, terms_of
from .pipeline import register


def _fuse_one(term: TensorNetwork):
    """Remove one delta that has a summed leg; ``None`` if there is none to remove."""
    open_names = {leg.name for leg in term.output_legs}
    seen = set()
    for n, delta in enumerate(term.tensors):  # δ ⊙ δ = δ
        if delta.kind == "delta":
            legs = frozenset(leg.name for leg in delta.legs)
            if legs in seen:
                return term.replace(tensors=term.tensors[:n] + term.tensors[n + 1:])
            seen.add(legs)
    for n, delta in enumerate(term.tensors):
        if delta.kind != "delta":
            continue
        keep = next((leg for leg in delta.legs if leg.name in open_names), delta.legs[0])
        drop = {leg.name for leg in delta.legs if leg.name != keep.name and leg.name not in open_names}
        if not drop:
            continue
        rest = term.tensors[:n] + term.tensors[n + 1:]
        merged = drop | {keep.name}
        if any(len(merged.intersection(leg.name for leg in t.legs)) > 1 for t in rest):
            continue  # renaming would put one leg twice on a tensor: a diagonal, keep the delta
        tensors = tuple(t.rename_legs({name: keep for name in drop}) for t in rest)
        remaining = [leg for leg in delta.legs if leg.name not in drop]
        scale = term.scale
        if len(remaining) > 1:
            tensors += (Tensor(delta.name, tuple((leg,) for leg in remaining), "delta"),)
        elif not any(keep.name == leg.name for t in tensors for leg in t.legs):
            if keep.name in open_names:  # the delta alone carried this open leg
                tensors += (Tensor(f"ones_{keep.name}", ((keep,),), "constant", (("value", 1),)),)
            else:  # a summed leg on nothing else contributes its size
                scale = scale * keep.size
        return term.replace(tensors=tensors, scale=scale)
    return None


@register("fuse_deltas")
def fuse_deltas(tn):
    """Sum out every Kronecker delta that has a summed leg.

    ``Σ_j A[.., j] δ[j, k]`` becomes ``A[.., k]``; deltas between open legs
    stay, since they are structure of the result.

    Example:
        >>> from tnconv import diagrams, passes
        >>> tn = passes.vjp(diagrams.conv(N=1, kernel_size=3), "w", fuse=False)
        >>> any(t.kind == "delta" for t in fuse_deltas(tn).tensors)
        False
    """
    out = []
    for term in terms_of(tn):
        while True:
            fused = _fuse_one(term)
            if fused is None:
                break
            term = fused
        out.append(term)
    return rebuild(tn, out)


def _is_ones(t) -> bool:
    return t.kind == "constant" and t.attr.get("value") == 1 and len(t.legs) == 1


@register("drop_ones")
def drop_ones(tn):
    """Remove vectors of ones on summed legs that another tensor carries.

    Summing a leg already multiplies by one; the vector only costs a
    contraction. Ones that broadcast an open leg stay.

    Example:
        >>> from tnconv import diagrams, passes
        >>> g = passes.vjp(diagrams.conv(N=1, kernel_size=3, bias=True), "b", "v")
        >>> [t.name for t in drop_ones(g).tensors]
        ['v']
    """
    out = []
    for term in terms_of(tn):
        open_names = {leg.name for leg in term.output_legs}
        tensors = list(term.tensors)
        for t in list(tensors):
            leg = t.legs[0] if _is_ones(t) else None
            if leg is None or leg.name in open_names:
                continue
            if any(u is not t and leg.name in {l.name for l in u.legs} for u in tensors):
                tensors.remove(t)
        out.append(term.replace(tensors=tuple(tensors)))
    return rebuild(tn, out)
