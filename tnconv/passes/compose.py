"""Wiring networks together: renaming a copy apart, and the product of networks."""

from __future__ import annotations

import itertools

import sympy

from ..ir import NetworkSum, TensorNetwork
from ._util import fresh, rebuild, terms_of, used_names


def rename_apart(tn, keep=(), suffix: str = "'", avoid=()):
    """A copy of ``tn`` whose legs, except those named in ``keep``, get new names.

    The new names are the old ones with ``suffix`` (made unique against both
    ``tn`` and ``avoid``), so the copy can be wired to the original along the
    kept legs only.

    Example:
        >>> from tnconv import diagrams
        >>> u = diagrams.unfold(N=1, kernel_size=2)
        >>> [leg.name for leg in rename_apart(u, keep=["n"]).output_legs]
        ['n', "c'", "k1'", "o1'"]
    """
    keep = set(keep)
    used = used_names(tn) | set(avoid)
    if isinstance(avoid, (TensorNetwork, NetworkSum)):
        used |= used_names(avoid)
    mapping = {}
    for term in terms_of(tn):
        for name, leg in term.legs.items():
            if name not in keep and name not in mapping:
                mapping[name] = leg.renamed(fresh(f"{name}{suffix}", used))
    return rebuild(tn, [term.rename_legs(mapping) for term in terms_of(tn)])


def contract(*networks, output, scale=1, name: str = "product"):
    """The product of ``networks``: legs with equal names are joined, ``output`` stays open.

    Sums distribute: the product of sums is the sum of the products of their
    terms. ``output`` is a tuple of axes (tuples of :class:`~tnconv.ir.Index`);
    ``scale`` multiplies the result (a number or a sympy expression of sizes).

    Example:
        >>> from tnconv import diagrams
        >>> u = diagrams.unfold(N=1, kernel_size=2)
        >>> v = rename_apart(u, keep=["n", "o1"])
        >>> c, k, c2, k2 = u.legs["c"], u.legs["k1"], v.legs["c'"], v.legs["k1'"]
        >>> contract(u, v, output=((c, k), (c2, k2))).output_shape
        (2*C, 2*C)
    """
    if not networks:
        raise ValueError("contract needs at least one network")
    output = tuple(tuple(a) if isinstance(a, (tuple, list)) else (a,) for a in output)
    terms = []
    for combo in itertools.product(*(terms_of(tn) for tn in networks)):
        tensors = tuple(t for term in combo for t in term.tensors)
        factor = sympy.Mul(*(term.scale for term in combo)) * sympy.sympify(scale)
        terms.append(TensorNetwork(tensors, output, factor, name))
    result = terms[0] if len(terms) == 1 else NetworkSum(tuple(terms), name)
    result.check()
    return result
