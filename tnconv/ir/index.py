"""Indices (legs) of a tensor network and their sizes.

A size is a positive ``int`` or a sympy expression of *size symbols* such as
``B`` or ``I1`` that are bound from the tensors' shapes when a network is
evaluated. All size symbols are positive integers, so sympy can simplify
expressions like ``floor((I - 1)*S/S) + 1`` to ``I``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache, reduce
from operator import mul
from typing import Union

import sympy

Size = Union[int, sympy.Expr]

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_']*$")


@lru_cache(maxsize=None)
def size_symbol(name: str) -> sympy.Symbol:
    """The size symbol called ``name`` (a positive integer).

    Example:
        >>> size_symbol("I1") + 1
        I1 + 1
    """
    if not _NAME.match(name):
        raise ValueError(f"size symbol name must be an identifier, got {name!r}")
    return sympy.Symbol(name, integer=True, positive=True)


def as_size(size) -> Size:
    """Normalize ``size`` to a positive ``int`` or a sympy expression."""
    if isinstance(size, bool):
        raise TypeError(f"size must be an int or a sympy expression, got {size!r}")
    if isinstance(size, int):
        if size < 1:
            raise ValueError(f"size must be positive, got {size}")
        return size
    if isinstance(size, sympy.Basic):
        size = sympy.sympify(size)
        if size.is_Integer:
            return as_size(int(size))
        return size
    raise TypeError(f"size must be an int or a sympy expression, got {type(size).__name__}")


_FUNCTIONS = {"floor": sympy.floor, "ceiling": sympy.ceiling, "Max": sympy.Max, "Min": sympy.Min}


def parse_expression(text: str) -> sympy.Expr:
    """Parse an expression of size symbols, as printed by sympy."""
    names = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", text)) - set(_FUNCTIONS)
    local = {name: size_symbol(name) for name in names}
    local.update(_FUNCTIONS)
    return sympy.parse_expr(text, local_dict=local, evaluate=True)


def parse_size(text: str) -> Size:
    """Parse a size written by :func:`format_size`."""
    text = text.strip()
    if re.fullmatch(r"\d+", text):
        return int(text)
    return as_size(parse_expression(text))


def format_size(size: Size) -> str:
    return str(size)


def product(sizes) -> Size:
    """Product of sizes; ``1`` for none."""
    result = reduce(mul, sizes, 1)
    return as_size(result) if not isinstance(result, int) else result


@dataclass(frozen=True)
class Index:
    """A leg of a tensor network: a name and a size.

    Two legs with the same name in one network are the same index; the network
    checker makes sure they agree on the size.

    Example:
        >>> Index("o1", 3)
        Index('o1', 3)
    """

    name: str
    size: Size

    def __post_init__(self):
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ValueError(f"Index name must be an identifier, got {self.name!r}")
        object.__setattr__(self, "size", as_size(self.size))

    def __repr__(self):
        return f"Index({self.name!r}, {self.size})"

    def renamed(self, name: str) -> "Index":
        return Index(name, self.size)
