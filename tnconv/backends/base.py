"""What a backend returns: a plan that contracts arrays given as leg-name tuples."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional


@dataclass
class Plan:
    """An executable contraction for fixed shapes.

    Attributes:
        run: ``run(*arrays) -> tensor`` with the output legs in order.
        equation: the einsum equation (letters only exist here).
        flops: estimated floating point operations of the contraction.
        largest_intermediate: number of elements of the largest intermediate.
        path: the pairwise contraction path, as positions (opt_einsum's format).
        slices: how many slices the contraction is split into (1: none).
        write: elements written in all (intermediates, copies and the output);
            0 when unknown. Lowerings are chosen by ``flops`` and ``write``.
        with_scale: ``with_scale(s)`` is the plan times ``s`` at no extra pass over
            the result (a matrix product's ``alpha``); ``None`` when the compiler
            must scale the result itself.
        native: for a plan that is one PyTorch convolution kernel on its operands as
            given, what it calls (:class:`tnconv.lowering.native.NativeCall`); else ``None``.
    """

    run: Callable
    equation: str
    flops: float
    largest_intermediate: int
    path: tuple = ()
    slices: int = 1
    write: float = 0.0
    with_scale: Optional[Callable[[float], "Plan"]] = None
    native: object = None

    def __call__(self, *arrays):
        return self.run(*arrays)
