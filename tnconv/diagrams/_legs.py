"""Shared leg construction for the convolution diagrams."""

from __future__ import annotations

from ..ir import Index, Tensor, output_size, size_symbol
from ..ir.pattern import transpose_input_size


def channel_legs(name: str, symbol: str, groups: int):
    """Legs of a channel axis: ``(g name)`` for grouped convolutions, else ``(name)``.

    The channel count itself is the symbol ``symbol``, so the leg ``name`` has
    size ``symbol / groups``.
    """
    if groups == 1:
        return (Index(name, size_symbol(symbol)),)
    return (Index("g", groups), Index(name, size_symbol(symbol) / groups))


def group_leg(groups: int):
    return (Index("g", groups),) if groups > 1 else ()


def spatial(spec, d: int, input_size=None, prefix=("i", "o", "k")):
    """Legs ``i_d, o_d, k_d`` and the pattern tensor of dimension ``d`` (1-based names)."""
    K, S, (pl, pr), D = spec.kernel_size[d], spec.stride[d], spec.padding[d], spec.dilation[d]
    I = input_size[d] if input_size is not None else size_symbol(f"I{d + 1}")
    O = output_size(I, K, S, pl, pr, D)
    if isinstance(O, int) and O < 1:
        raise ValueError(f"kernel_size {K} with dilation {D} does not fit the input of size {I} padded by "
                         f"({pl}, {pr}) along dimension {d}: the output size would be {O}")
    i = Index(f"{prefix[0]}{d + 1}", I)
    o = Index(f"{prefix[1]}{d + 1}", O)
    k = Index(f"{prefix[2]}{d + 1}", K)
    return i, o, k, Tensor.pattern(f"pi{d + 1}", i, o, k, stride=S, pad_left=pl, pad_right=pr, dilation=D)


def transpose_spatial(spec, d: int, output_padding, input_size=None):
    """Legs of a transpose convolution along ``d``: its input ``i`` is the pattern's output slot.

    The transpose convolution's output ``o`` has the size of the convolution
    input whose output is ``i``.
    """
    K, S, (pl, pr), D = spec.kernel_size[d], spec.stride[d], spec.padding[d], spec.dilation[d]
    I = input_size[d] if input_size is not None else size_symbol(f"I{d + 1}")
    i = Index(f"i{d + 1}", I)
    o = Index(f"o{d + 1}", transpose_input_size(I, K, S, pl, pr, D, output_padding[d]))
    k = Index(f"k{d + 1}", K)
    return i, o, k, Tensor.pattern(f"pi{d + 1}", o, i, k, stride=S, pad_left=pl, pad_right=pr, dilation=D)
