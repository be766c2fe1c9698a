"""Structure-aware rewrites of index patterns (the paper's §4.1 simplifications).

Each rule rewrites one pattern ``Π(i, o, k)`` whose leg ``i`` belongs to a
single input tensor ``X`` (and nothing else), replacing the contraction
``X[.., i, ..] Π(i, o, k)`` by something cheaper:

* ``squeeze_trivial``: ``K = S = D = 1``, no padding, so ``O = I`` and
  ``Π = δ(i, o)``: a delta, which :func:`fuse_deltas` then removes.
* ``dense``: ``K = S``, no padding, ``D = 1`` and ``I = O·K``: the patches
  tile the input, so ``i = o·K + k`` and ``X``'s axis ``(i)`` *is* the axis
  group ``(o k)`` — a reshape, no pattern left.
* ``downsample``: ``S > K``, no padding, ``D = 1`` and ``I = O·S``: reshape
  ``(i)`` into ``(o s)`` with a new leg ``s`` of size ``S``; what remains is
  ``[s = k]``, the pattern of a kernel ``K`` on an input ``S`` with one
  output, which keeps the first ``K`` of every ``S`` pixels.

Applied per pattern, they also cover *mixed-dense* convolutions (dense along
some dimensions only). The conditions must be provable from the network's
sizes: with a symbolic input size (``I`` bound at call time) ``I = O·K``
does not follow, so the rules leave such patterns alone and the compiler's
strided-view lowering (:mod:`tnconv.lowering.views`), which runs once the
sizes are known, gets the same saving there. Build the diagram with
``input_size=...`` to see the rewrites in the IR.

``swap_kernel_output`` is the symmetry ``Π(I, K, S, P, D)[i, o, k] =
Π(I, O, D, P, S)[i, k, o]`` (since ``i = o·S + k·D − P``), which lets a
network match another template.
"""

from __future__ import annotations

import sympy

from ..ir import Index, Tensor
from ..ir.check import _same
from ._util import fresh, rebuild, terms_of, used_names
from .deltas import drop_ones, fuse_deltas
from .pipeline import register


def _sole_carrier(term, pattern):
    """Position of the input carrying ``pattern``'s leg ``i`` as a one-leg axis, if it alone does.

    ``"output"`` when the output carries it so and no tensor does (an input VJP):
    the output's axis is then reshaped instead, e.g. ``(i)`` becomes ``(o k)``.
    """
    i, o, k = (leg.name for leg in pattern.legs)
    out = {leg.name for leg in term.output_legs}
    if i in out:
        alone = all(t is pattern or i not in {leg.name for leg in t.legs} for t in term.tensors)
        own_axis = (i,) in [tuple(leg.name for leg in a) for a in term.output]
        return "output" if alone and own_axis and o not in out and k not in out else None
    found = None
    for n, t in enumerate(term.tensors):
        if t is pattern:
            continue
        names = [leg.name for leg in t.legs]
        if i in names:
            if found is not None or t.kind != "input" or (i,) not in [tuple(l.name for l in a) for a in t.axes]:
                return None
            if o in names or k in names:
                return None
            found = n
    return found


def _rewrite(tn, rule):
    """Apply ``rule(term, pattern, carrier, used) -> term | None`` to every pattern it accepts."""
    used = used_names(tn)
    out = []
    for term in terms_of(tn):
        changed = True
        while changed:
            changed = False
            for p in term.tensors:
                if p.kind != "pattern":
                    continue
                n = _sole_carrier(term, p)
                if n is None:
                    continue
                new = rule(term, p, n, used)
                if new is not None:
                    term, changed = new, True
                    break
        out.append(term)
    return rebuild(tn, out)


def _replace(term, pattern, carrier, axis_legs, extra=()):
    """``term`` with the carrier's axis ``(i)`` replaced by ``axis_legs`` and ``pattern`` by ``extra``."""
    i = pattern.legs[0].name

    def regroup(axes):
        return tuple(tuple(axis_legs) if len(a) == 1 and a[0].name == i else a for a in axes)

    tensors = []
    for n, t in enumerate(term.tensors):
        if t is pattern:
            tensors.extend(extra)
        elif n == carrier:
            tensors.append(Tensor(t.name, regroup(t.axes), t.kind, t.attrs))
        else:
            tensors.append(t)
    if carrier == "output":
        return term.replace(tensors=tuple(tensors), output=regroup(term.output))
    return term.replace(tensors=tuple(tensors))


def _plain(a) -> bool:
    return a["pad_left"] == 0 and a["pad_right"] == 0 and a["dilation"] == 1


def _trivial(term, p, carrier, used):
    i, o, k = p.legs
    a = p.attr
    if k.size == 1 and a["stride"] == 1 and _plain(a) and _same(i.size, o.size):
        return term.replace(tensors=tuple(t if t is not p else Tensor(p.name, ((i,), (o,)), "delta")
                                          for t in term.tensors) + (Tensor(f"ones_{k.name}", ((k,),), "constant",
                                                                           (("value", 1),)),))
    return None


def _dense(term, p, carrier, used):
    i, o, k = p.legs
    a = p.attr
    if a["stride"] == k.size and _plain(a) and _same(i.size, o.size * k.size):
        return _replace(term, p, carrier, (o, k))
    return None


def _downsample(term, p, carrier, used):
    i, o, k = p.legs
    a = p.attr
    S = a["stride"]
    # not on an output leg: what would remain is a pattern on the output alone, which hides the
    # input VJP's template from the native lowering
    if carrier != "output" and S > k.size and _plain(a) and _same(i.size, o.size * S):
        s = Index(fresh(f"s_{i.name}", used), S)
        unit = Index(fresh(f"u_{i.name}", used), 1)
        keep_first = Tensor.pattern(p.name, s, unit, k, stride=1, pad_left=0, pad_right=0, dilation=1)
        return _replace(term, p, carrier, (o, s), (keep_first,))
    return None


@register("squeeze_trivial")
def squeeze_trivial(tn):
    """Turn identity patterns (``K = S = D = 1``, no padding) into deltas and fuse them.

    Example:
        >>> from tnconv import diagrams
        >>> tn = squeeze_trivial(diagrams.conv(N=1, kernel_size=1))
        >>> [t.kind for t in tn.tensors]
        ['input', 'input']
    """
    return drop_ones(fuse_deltas(_rewrite(tn, _trivial)))


@register("dense")
def dense(tn):
    """Replace dense patterns (``K = S``, no padding, ``D = 1``, ``I = O·K``) by a reshape of their input.

    Example:
        >>> from tnconv import diagrams
        >>> tn = dense(diagrams.conv(N=1, kernel_size=2, stride=2, input_size=8))
        >>> [t.kind for t in tn.tensors], tn.tensors[0].shape
        (['input', 'input'], (B, C_in, 8))
    """
    return _rewrite(tn, _dense)


@register("downsample")
def downsample(tn):
    """Reshape the input of down-sampling patterns (``S > K``, no padding, ``D = 1``, ``I = O·S``).

    What is left is a pattern that keeps the first ``K`` of every ``S`` pixels.

    Example:
        >>> from tnconv import diagrams
        >>> tn = downsample(diagrams.conv(N=1, kernel_size=1, stride=2, input_size=8))
        >>> [a[-1].size for a in tn.tensors[0].axes[-1:]], tn.tensors[1].shape
        ([2], (2, 1, 1))
    """
    return _rewrite(tn, _downsample)


@register("simplify")
def simplify(tn):
    """Run ``squeeze_trivial``, ``dense`` and ``downsample`` to a fixpoint, fusing deltas between.

    Example:
        >>> from tnconv import diagrams
        >>> tn = simplify(diagrams.conv(N=2, kernel_size=(1, 2), stride=(1, 2), input_size=(5, 6)))
        >>> sorted(t.kind for t in tn.tensors)
        ['input', 'input']
    """
    while True:
        new = drop_ones(fuse_deltas(downsample(dense(squeeze_trivial(tn)))))
        if new == tn:
            return tn
        tn = new


def swap_kernel_output(tn, patterns=None):
    """Exchange the roles of the ``o`` and ``k`` legs of patterns, swapping stride and dilation.

    ``Π(I, K, S, P, D)[i, o, k] = Π(I, O, D, P, S)[i, k, o]`` because
    ``i = o·S + k·D − P`` is symmetric in ``(o, S)`` and ``(k, D)``. The
    network's value is unchanged; what changes is which leg a template
    matcher sees as the kernel. ``patterns``: names to swap (default: all).

    Example:
        >>> from tnconv import diagrams
        >>> tn = swap_kernel_output(diagrams.conv(N=1, kernel_size=3, stride=2, input_size=9))
        >>> p = [t for t in tn.tensors if t.kind == "pattern"][0]
        >>> [leg.name for leg in p.legs], p.attr["stride"], p.attr["dilation"]
        (['i1', 'k1', 'o1'], 1, 2)
    """
    names = None if patterns is None else set([patterns] if isinstance(patterns, str) else patterns)
    out = []
    for term in terms_of(tn):
        tensors = []
        for t in term.tensors:
            if t.kind == "pattern" and (names is None or t.name in names):
                i, o, k = t.legs
                a = t.attr
                t = Tensor.pattern(t.name, i, k, o, stride=a["dilation"], dilation=a["stride"],
                                   pad_left=a["pad_left"], pad_right=a["pad_right"])
            tensors.append(t)
        out.append(term.replace(tensors=tuple(tensors)))
    return rebuild(tn, out)


__all__ = ["squeeze_trivial", "dense", "downsample", "simplify", "swap_kernel_output"]
