"""Tensor nodes of a network.

A node has a name, a kind and *axes*: each axis is a group of legs whose sizes
multiply to the axis length, so ``w`` of a grouped convolution has the axes
``(g c_out), (c_in), (k1), ...`` and the caller never reshapes by hand.

Kinds:

``input``
    supplied by the caller under ``name`` when the network is evaluated; a name
    may occur on several nodes (KFC uses ``x`` twice), all with the same shape.
``pattern``
    an index pattern Π with legs ``(i), (o), (k)`` and the attributes
    ``stride``, ``pad_left``, ``pad_right``, ``dilation``.
``delta``
    a Kronecker delta: one on the diagonal of its legs (all of one size).
``constant``
    every entry equal to the attribute ``value`` (``1`` gives the vectors of
    ones that broadcast a bias).
``select``
    a random selection ``[I, M]`` (one-hot columns, ``M`` of the ``I`` indices
    sampled without replacement) drawn anew at every call, the same for all
    nodes of one name; see :func:`tnconv.passes.crs`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

from .index import Index, Size, product

Axis = Tuple[Index, ...]
KINDS = ("input", "pattern", "delta", "constant", "select")
PATTERN_ATTRS = ("stride", "pad_left", "pad_right", "dilation")


@dataclass(frozen=True)
class Tensor:
    """A node of a tensor network.

    Example:
        >>> i, o, k = Index("i1", 5), Index("o1", 3), Index("k1", 3)
        >>> Tensor.pattern("pi1", i, o, k, stride=1, pad_left=0, pad_right=0, dilation=1).shape
        (5, 3, 3)
    """

    name: str
    axes: Tuple[Axis, ...]
    kind: str = "input"
    attrs: Tuple[Tuple[str, int], ...] = ()

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        axes = tuple(tuple(axis) if isinstance(axis, (tuple, list)) else (axis,) for axis in self.axes)
        for axis in axes:
            for leg in axis:
                if not isinstance(leg, Index):
                    raise TypeError(f"tensor {self.name!r}: legs must be Index objects, got {leg!r}")
        object.__setattr__(self, "axes", axes)
        object.__setattr__(self, "attrs", tuple(sorted((str(k), int(v)) for k, v in dict(self.attrs).items())))

    @classmethod
    def pattern(cls, name: str, i: Index, o: Index, k: Index, *, stride: int, pad_left: int, pad_right: int, dilation: int) -> "Tensor":
        attrs = dict(stride=stride, pad_left=pad_left, pad_right=pad_right, dilation=dilation)
        return cls(name, ((i,), (o,), (k,)), "pattern", tuple(attrs.items()))

    @property
    def legs(self) -> Tuple[Index, ...]:
        """All legs, axis groups flattened."""
        return tuple(leg for axis in self.axes for leg in axis)

    @property
    def shape(self) -> Tuple[Size, ...]:
        return tuple(product(leg.size for leg in axis) for axis in self.axes)

    @property
    def attr(self) -> dict:
        return dict(self.attrs)

    def rename_legs(self, mapping: dict) -> "Tensor":
        """A copy whose legs named in ``mapping`` (old name -> new Index) are replaced."""
        axes = tuple(tuple(mapping.get(leg.name, leg) for leg in axis) for axis in self.axes)
        return Tensor(self.name, axes, self.kind, self.attrs)
