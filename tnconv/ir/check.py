"""The invariants every network satisfies; passes are checked against them."""

from __future__ import annotations

import sympy

from .network import NetworkSum, TensorNetwork
from .pattern import output_size
from .tensor import PATTERN_ATTRS


class InvalidNetwork(ValueError):
    """A network breaks an invariant of the IR."""


def _same(a, b) -> bool:
    if a == b:
        return True
    if isinstance(a, sympy.Basic) or isinstance(b, sympy.Basic):
        return sympy.simplify(sympy.sympify(a) - sympy.sympify(b)) == 0
    return False


def _check_single(tn: TensorNetwork) -> None:
    where = f"network {tn.name!r}"
    sizes = {}
    for t in tn.tensors:
        names = [leg.name for leg in t.legs]
        if len(set(names)) != len(names):
            raise InvalidNetwork(f"{where}: tensor {t.name!r} repeats a leg in {names}; use a delta tensor")
        for leg in t.legs:
            known = sizes.setdefault(leg.name, leg.size)
            if not _same(known, leg.size):
                raise InvalidNetwork(f"{where}: leg {leg.name!r} has size {known} and {leg.size}")
    out = [leg.name for leg in tn.output_legs]
    if len(set(out)) != len(out):
        raise InvalidNetwork(f"{where}: output repeats a leg in {out}")
    for leg in tn.output_legs:
        if leg.name not in sizes:
            raise InvalidNetwork(f"{where}: output leg {leg.name!r} is on no tensor")
        if not _same(sizes[leg.name], leg.size):
            raise InvalidNetwork(f"{where}: output leg {leg.name!r} has size {leg.size}, tensors say {sizes[leg.name]}")
    shapes = {}
    for t in tn.tensors:
        if t.kind == "input":
            shape = shapes.setdefault(t.name, t.shape)
            if len(shape) != len(t.shape) or not all(_same(a, b) for a, b in zip(shape, t.shape)):
                raise InvalidNetwork(f"{where}: input {t.name!r} occurs with shapes {shape} and {t.shape}")
        elif t.kind == "pattern":
            _check_pattern(t, where)
        elif t.kind == "delta":
            if not t.legs or any(not _same(leg.size, t.legs[0].size) for leg in t.legs):
                raise InvalidNetwork(f"{where}: delta {t.name!r} needs legs of one size, got {t.legs}")
        elif t.kind == "select":
            if len(t.axes) != 2 or any(len(axis) != 1 for axis in t.axes):
                raise InvalidNetwork(f"{where}: select {t.name!r} needs the two legs (index) (sample)")
        elif t.kind == "constant" and set(t.attr) != {"value"}:
            raise InvalidNetwork(f"{where}: constant {t.name!r} needs exactly the attribute 'value'")


def _at_most(a, b) -> bool:
    difference = sympy.simplify(sympy.sympify(b) - sympy.sympify(a))
    return bool(difference.is_nonnegative)


def _check_pattern(t, where):
    if len(t.axes) != 3 or any(len(axis) != 1 for axis in t.axes):
        raise InvalidNetwork(f"{where}: pattern {t.name!r} needs the three legs (i) (o) (k)")
    if set(t.attr) != set(PATTERN_ATTRS):
        raise InvalidNetwork(f"{where}: pattern {t.name!r} needs the attributes {PATTERN_ATTRS}, got {t.attr}")
    a = t.attr
    if a["stride"] < 1 or a["dilation"] < 1 or a["pad_left"] < 0 or a["pad_right"] < 0:
        raise InvalidNetwork(f"{where}: pattern {t.name!r} has invalid attributes {a}")
    i, o, k = t.legs
    if not isinstance(k.size, int):
        raise InvalidNetwork(f"{where}: pattern {t.name!r} needs a concrete kernel size, got {k.size}")
    # A transpose convolution with output_padding >= stride uses fewer output
    # positions than the formula allows: a sub-pattern, still well formed.
    expected = output_size(i.size, k.size, a["stride"], a["pad_left"], a["pad_right"], a["dilation"])
    if not _same(expected, o.size) and not _at_most(o.size, expected):
        raise InvalidNetwork(f"{where}: pattern {t.name!r} has output size {o.size}, expected at most {expected}")


def check(tn) -> None:
    """Raise :class:`InvalidNetwork` unless ``tn`` is well formed.

    Checks that legs agree on their sizes, that open legs are legs of some
    tensor, that every occurrence of an input has one shape, that pattern and
    delta tensors are well formed, and that the terms of a sum share one output.

    Example:
        >>> from tnconv import diagrams
        >>> check(diagrams.conv(N=2, kernel_size=3))
    """
    if isinstance(tn, NetworkSum):
        first = tn.terms[0]
        for term in tn.terms:
            _check_single(term)
            if [leg.name for leg in term.output_legs] != [leg.name for leg in first.output_legs] or len(term.output) != len(first.output):
                raise InvalidNetwork(f"sum {tn.name!r}: terms have different outputs")
        return
    if not isinstance(tn, TensorNetwork):
        raise TypeError(f"expected a TensorNetwork or NetworkSum, got {type(tn).__name__}")
    _check_single(tn)
