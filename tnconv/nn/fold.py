"""``Unfold`` and ``Fold``: ``torch.nn.Unfold``/``torch.nn.Fold`` for any number of spatial dimensions.

Same constructor arguments in the same order, same ``extra_repr``, the
computation of :func:`tnconv.functional.unfold` / :func:`~tnconv.functional.fold`.
Like PyTorch's modules they are 2-d unless told otherwise: ``N`` is the keyword
``N``, else the length of any tuple argument, else 2 — so ``Unfold(3)`` reads a
4-d input as a batch of images and a 3-d one as a single image, exactly as
``torch.nn.Unfold(3)`` does, and ``Unfold((3, 3, 3))`` unfolds volumes.
"""

from __future__ import annotations

import torch

from .. import functional as F
from .._args import ConvSpec, ntuple
from ..functional._common import spatial_dims


def _dims(N, *args) -> int:
    N = spatial_dims(N, *args) or 2
    return N


def _repr_N(N, *args) -> str:
    """``", N=…"`` when the arguments alone would not give ``N`` (so the repr reads back)."""
    return "" if (spatial_dims(None, *args) or 2) == N else f", N={N}"


class Unfold(torch.nn.Module):
    """Sliding blocks of an N-d input as columns, like ``torch.nn.Unfold`` (which is 2-d only).

    Args:
        kernel_size, dilation, padding, stride: as ``torch.nn.Unfold`` (ints or tuples of
            ``N`` entries; ``padding`` also ``'same'``, ``'valid'`` or ``(left, right)`` pairs).
        N: the number of spatial dimensions (default: the length of a tuple argument, else 2).

    Shape:
        ``[B, C, *I]`` -> ``[B, C·K1·..·KN, O1·..·ON]``; unbatched ``[C, *I]`` -> ``[C·K1·..·KN, O1·..·ON]``.

    Example:
        >>> x = torch.randn(2, 3, 6, 7)
        >>> Unfold(3, padding=1)
        Unfold(kernel_size=3, dilation=1, padding=1, stride=1)
        >>> torch.allclose(Unfold(3, padding=1)(x), torch.nn.Unfold(3, padding=1)(x))
        True
        >>> Unfold((2, 2, 2))(torch.randn(2, 3, 4, 4, 4)).shape
        torch.Size([2, 24, 27])
    """

    __constants__ = ["kernel_size", "dilation", "padding", "stride", "N"]

    def __init__(self, kernel_size, dilation=1, padding=0, stride=1, *, N=None):
        super().__init__()
        self.N = _dims(N, kernel_size, dilation, padding, stride)
        ConvSpec.make(self.N, kernel_size, stride, padding, dilation)  # bad arguments fail here, not at the first call
        self.kernel_size, self.dilation, self.padding, self.stride = kernel_size, dilation, padding, stride

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.unfold(input, self.kernel_size, self.dilation, self.padding, self.stride, N=self.N)

    def extra_repr(self) -> str:
        return (f"kernel_size={self.kernel_size}, dilation={self.dilation}, padding={self.padding}, "
                f"stride={self.stride}" + _repr_N(self.N, self.kernel_size, self.dilation, self.padding, self.stride))


class Fold(torch.nn.Module):
    """Columns summed back into an N-d tensor, like ``torch.nn.Fold`` (which is 2-d only); the adjoint of :class:`Unfold`.

    Args:
        output_size: the spatial size of the result.
        kernel_size, dilation, padding, stride, N: as :class:`Unfold`.

    Shape:
        ``[B, C·K1·..·KN, L]`` -> ``[B, C, *output_size]``; unbatched ``[C·K1·..·KN, L]`` -> ``[C, *output_size]``.

    Example:
        >>> y = torch.randn(2, 3 * 4, 9)
        >>> Fold((4, 4), 2)
        Fold(output_size=(4, 4), kernel_size=2, dilation=1, padding=0, stride=1)
        >>> torch.allclose(Fold((4, 4), 2)(y), torch.nn.Fold((4, 4), 2)(y))
        True
        >>> Fold(6, 2, stride=2, N=1)(torch.randn(2, 6, 3)).shape
        torch.Size([2, 3, 6])
    """

    __constants__ = ["output_size", "kernel_size", "dilation", "padding", "stride", "N"]

    def __init__(self, output_size, kernel_size, dilation=1, padding=0, stride=1, *, N=None):
        super().__init__()
        self.N = _dims(N, output_size, kernel_size, dilation, padding, stride)
        ntuple(output_size, self.N, "output_size")
        ConvSpec.make(self.N, kernel_size, stride, padding, dilation)
        self.output_size, self.kernel_size, self.dilation, self.padding, self.stride = (
            output_size, kernel_size, dilation, padding, stride)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.fold(input, self.output_size, self.kernel_size, self.dilation, self.padding, self.stride, N=self.N)

    def extra_repr(self) -> str:
        args = (self.output_size, self.kernel_size, self.dilation, self.padding, self.stride)
        return (f"output_size={self.output_size}, kernel_size={self.kernel_size}, dilation={self.dilation}, "
                f"padding={self.padding}, stride={self.stride}" + _repr_N(self.N, *args))


__all__ = ["Unfold", "Fold"]
