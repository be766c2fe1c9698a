"""Immutable tensor networks and sums of them."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Dict, Tuple

import sympy

from .index import Index, Size, as_size, product
from .tensor import Axis, Tensor


def _as_scale(scale):
    scale = sympy.nsimplify(scale) if not isinstance(scale, sympy.Basic) else scale
    return sympy.sympify(scale)


@dataclass(frozen=True)
class TensorNetwork:
    """A contraction of tensors: ``scale * Σ_{summed legs} Π tensors``.

    Legs that appear in ``output`` stay open, every other leg is summed. The
    output's axes may group legs, e.g. ``(g c_out)``.

    Example:
        >>> a, b, c = Index("a", 2), Index("b", 3), Index("c", 4)
        >>> tn = TensorNetwork((Tensor("A", (a, b)), Tensor("B", (b, c))), output=((a,), (c,)))
        >>> tn.inputs
        ('A', 'B')
    """

    tensors: Tuple[Tensor, ...]
    output: Tuple[Axis, ...]
    scale: sympy.Expr = sympy.Integer(1)
    name: str = "tn"
    #: Random source of ``select`` tensors; not part of the value (equality, hash, text).
    generator: object = field(default=None, compare=False, hash=False, repr=False)

    def __post_init__(self):
        object.__setattr__(self, "tensors", tuple(self.tensors))
        output = tuple(tuple(a) if isinstance(a, (tuple, list)) else (a,) for a in self.output)
        object.__setattr__(self, "output", output)
        object.__setattr__(self, "scale", _as_scale(self.scale))

    # -- structure ---------------------------------------------------------
    @property
    def output_legs(self) -> Tuple[Index, ...]:
        return tuple(leg for axis in self.output for leg in axis)

    @property
    def output_shape(self) -> Tuple[Size, ...]:
        return tuple(product(leg.size for leg in axis) for axis in self.output)

    @property
    def legs(self) -> Dict[str, Index]:
        """Every leg by name, in order of first appearance (tensors, then output)."""
        found: Dict[str, Index] = {}
        for tensor in self.tensors:
            for leg in tensor.legs:
                found.setdefault(leg.name, leg)
        for leg in self.output_legs:
            found.setdefault(leg.name, leg)
        return found

    @property
    def inputs(self) -> Tuple[str, ...]:
        """Names of the input tensors, in order of first appearance."""
        return tuple(dict.fromkeys(t.name for t in self.tensors if t.kind == "input"))

    def input_shapes(self) -> Dict[str, Tuple[Size, ...]]:
        return {t.name: t.shape for t in reversed(self.tensors) if t.kind == "input"}

    def occurrences(self, name: str) -> Tuple[int, ...]:
        """Positions of the input nodes called ``name``."""
        return tuple(n for n, t in enumerate(self.tensors) if t.name == name and t.kind == "input")

    @property
    def size_symbols(self) -> Tuple[sympy.Symbol, ...]:
        symbols = set()
        for leg in self.legs.values():
            if isinstance(leg.size, sympy.Basic):
                symbols |= leg.size.free_symbols
        if isinstance(self.scale, sympy.Basic):
            symbols |= self.scale.free_symbols
        return tuple(sorted(symbols, key=str))

    @property
    def terms(self) -> Tuple["TensorNetwork", ...]:
        return (self,)

    # -- edits (all return new networks) -----------------------------------
    def replace(self, **changes) -> "TensorNetwork":
        return replace(self, **changes)

    def rename_legs(self, mapping: Dict[str, Index]) -> "TensorNetwork":
        """Replace legs by name everywhere, output included."""
        tensors = tuple(t.rename_legs(mapping) for t in self.tensors)
        output = tuple(tuple(mapping.get(leg.name, leg) for leg in axis) for axis in self.output)
        return replace(self, tensors=tensors, output=output)

    def specialize(self, **sizes: int) -> "TensorNetwork":
        """The network with size symbols replaced by ints, e.g. ``I1=8``: sizes become concrete.

        The rewrites of :mod:`tnconv.passes` can then prove conditions such as
        ``I = O·K`` that a symbolic size leaves open (the compiler gets the same
        saving at call time, once the tensors fix the sizes).

        Example:
            >>> from tnconv import diagrams
            >>> diagrams.conv(N=1, kernel_size=2, stride=2).specialize(I1=8).output_shape
            (B, C_out, 4)
        """
        values = _size_values(sizes)
        mapping = {name: Index(name, _subs(leg.size, values)) for name, leg in self.legs.items()}
        return replace(self.rename_legs(mapping), scale=_subs(self.scale, values, scale=True))

    def fresh_name(self, base: str, taken=()) -> str:
        """A leg name starting with ``base`` that is not used yet."""
        used = set(self.legs) | set(taken)
        if base not in used:
            return base
        n = 1
        while f"{base}_{n}" in used:
            n += 1
        return f"{base}_{n}"

    # -- views ---------------------------------------------------------------
    def to_text(self) -> str:
        from .text import network_to_text

        return network_to_text(self)

    @staticmethod
    def from_text(text: str) -> "TensorNetwork | NetworkSum":
        """Parse the output of :meth:`to_text` (a network or a sum)."""
        from .text import parse

        return parse(text)

    def to_dot(self) -> str:
        from .draw import to_dot

        return to_dot(self)

    def to_networkx(self):
        from .draw import to_networkx

        return to_networkx(self)

    def check(self) -> "TensorNetwork":
        from .check import check

        check(self)
        return self

    def __str__(self):
        return self.to_text()


@dataclass(frozen=True)
class NetworkSum:
    """A sum of networks with the same output, e.g. from the product rule.

    Example:
        >>> a = Index("a", 2)
        >>> s = NetworkSum((TensorNetwork((Tensor("u", (a,)),), ((a,),)),
        ...                 TensorNetwork((Tensor("v", (a,)),), ((a,),))))
        >>> s.inputs
        ('u', 'v')
    """

    terms: Tuple[TensorNetwork, ...]
    name: str = "sum"

    def __post_init__(self):
        terms = []
        for term in self.terms:
            terms.extend(term.terms)
        if not terms:
            raise ValueError("a NetworkSum needs at least one term")
        object.__setattr__(self, "terms", tuple(terms))

    @property
    def output(self):
        return self.terms[0].output

    @property
    def output_shape(self):
        return self.terms[0].output_shape

    @property
    def output_legs(self):
        return self.terms[0].output_legs

    @property
    def inputs(self) -> Tuple[str, ...]:
        return tuple(dict.fromkeys(name for term in self.terms for name in term.inputs))

    def input_shapes(self):
        shapes = {}
        for term in reversed(self.terms):
            shapes.update(term.input_shapes())
        return shapes

    @property
    def size_symbols(self):
        return tuple(sorted({s for t in self.terms for s in t.size_symbols}, key=str))

    @property
    def generator(self):
        return next((t.generator for t in self.terms if t.generator is not None), None)

    def specialize(self, **sizes: int) -> "NetworkSum":
        """Every term with size symbols replaced by ints (see :meth:`TensorNetwork.specialize`).

        Example:
            >>> from tnconv import diagrams
            >>> diagrams.conv(N=1, kernel_size=3, bias=True).specialize(I1=5).output_shape
            (B, C_out, 3)
        """
        return NetworkSum(tuple(term.specialize(**sizes) for term in self.terms), self.name)

    def to_text(self) -> str:
        from .text import network_to_text

        return network_to_text(self)

    from_text = staticmethod(TensorNetwork.from_text)

    def to_dot(self) -> str:
        from .draw import to_dot

        return to_dot(self)

    def to_networkx(self):
        from .draw import to_networkx

        return to_networkx(self)

    def check(self) -> "NetworkSum":
        from .check import check

        check(self)
        return self

    def __str__(self):
        return self.to_text()


def _size_values(sizes) -> dict:
    from .index import size_symbol

    values = {}
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"size {name} must be a positive int, got {value!r}")
        values[size_symbol(name)] = value
    return values


def _subs(size, values, scale=False):
    if not isinstance(size, sympy.Basic) or not values:
        return size
    size = size.subs(values)
    return size if scale else as_size(size)


def simplify_size(size: Size) -> Size:
    return as_size(sympy.simplify(size)) if isinstance(size, sympy.Basic) else size
