"""Rewrites that use the index pattern's structure.

Any two legs of ``Π[i, o, k] = [i == k·D + o·S − P]`` determine the third
(``D, S ≥ 1``), so two patterns with the same attributes that share two legs
are one pattern and a Kronecker delta between their third legs:
``Π[i, o, k] Π[i, o, k'] = Π[i, o, k] δ[k, k']``. In squared Jacobians
(Hessian diagonals) this turns the square of the unfolded kernel into the
unfolded kernel of the squared weight: for fixed input and output position at
most one kernel entry connects them.
"""

from __future__ import annotations

from ..ir import Tensor
from ._util import rebuild, terms_of
from .deltas import fuse_deltas
from .pipeline import register


def _pair(term):
    patterns = [(n, t) for n, t in enumerate(term.tensors) if t.kind == "pattern"]
    for a in range(len(patterns)):
        for b in range(a + 1, len(patterns)):
            (_, p), (m, q) = patterns[a], patterns[b]
            if p.attrs != q.attrs:
                continue
            same = [x.name == y.name for x, y in zip(p.legs, q.legs)]
            if sum(same) == 2:
                slot = same.index(False)
                delta = Tensor(f"delta_{q.name}", ((p.legs[slot],), (q.legs[slot],)), "delta")
                tensors = term.tensors[:m] + (delta,) + term.tensors[m + 1:]
                return term.replace(tensors=tensors)
            if sum(same) == 3:  # Π ⊙ Π = Π for a binary tensor
                return term.replace(tensors=term.tensors[:m] + term.tensors[m + 1:])
    return None


@register("pattern_pairs")
def pattern_pairs(tn):
    """Replace the second of two patterns sharing two legs by a delta, then fuse deltas.

    Example:
        >>> from tnconv import diagrams, passes
        >>> u = diagrams.unfold(N=1, kernel_size=3, batch=False)
        >>> v = passes.rename_apart(u, keep=["i1", "o1"])
        >>> out = (u.output[0], v.output[0])  # Σ_i Σ_o: the pair shares i and o
        >>> tn = pattern_pairs(passes.contract(u, v, output=out))
        >>> sorted(t.kind for t in tn.tensors)
        ['delta', 'input', 'input', 'pattern']
    """
    out = []
    for term in terms_of(tn):
        while True:
            paired = _pair(term)
            if paired is None:
                break
            term = paired
        out.append(term)
    return fuse_deltas(rebuild(tn, out))
