"""Hypothesis strategies that draw valid convolution configurations.

The defaults draw small configurations (kernels up to 3, dilation up to 2, stride
up to 3, padding up to 2); :data:`WIDE` reaches what real networks use -- kernels
up to 7, dilation up to 21, stride up to 6, padding beyond the dilated kernel's
span (border outputs that see no input) -- with the number of pixels and kernel
taps capped so that a 6-d configuration stays small.

Example:
    >>> from hypothesis import given
    >>> @given(conv_configs(N=st.just(2)))
    ... def test(c):
    ...     assert all(o >= 1 for o in c.output_size())
    >>> test()
    >>> @given(conv_configs(N=st.just(4), **WIDE))
    ... def test_wide(c):
    ...     assert max(c.output_size()) <= 4 and math.prod(c.kernel_size) <= WIDE["max_taps"]
    >>> test_wide()
"""

from __future__ import annotations

import math

from hypothesis import assume
from hypothesis import strategies as st

from .references import WIDE, ConvConfig, draw_config

__all__ = ["conv_configs", "transpose_configs", "st", "WIDE"]


@st.composite
def conv_configs(draw, N=st.integers(1, 3), max_size: int = 6, max_kernel: int = 3, max_channels: int = 3,
                 asymmetric: bool = True, same: bool = True, max_batch: int = 3, max_stride: int = 3,
                 max_dilation: int = 2, max_padding=2, max_pixels=None, max_taps=None) -> ConvConfig:
    """A valid convolution: N, batch, channels, groups, kernel, stride, padding, dilation, input size.

    The arguments are those of :func:`~tnconv.testing.references.draw_config`;
    ``max_batch > 3`` also draws empty batches.
    """
    N = draw(N) if not isinstance(N, int) else N
    c = draw_config(lambda lo, hi: draw(st.integers(lo, hi)), N, max_size, max_kernel, max_channels, asymmetric, same,
                    max_batch, 0 if max_batch > 3 else 1, max_stride, max_dilation, max_padding, max_pixels, max_taps)
    assume(c is not None)
    return c


@st.composite
def transpose_configs(draw, N=st.integers(1, 3), max_size: int = 5, **options) -> ConvConfig:
    """A valid transpose convolution (symmetric padding, output_padding < max(stride, dilation)).

    ``in_channels`` is the transpose convolution's output channels, as for the
    convolution whose input VJP it is; its input has ``out_channels`` and spatial
    size ``input_size``. The transpose convolution's output is about the size of a
    convolution input drawn by :func:`conv_configs` (with ``options``), so the caps
    on the pixels hold for it too.
    """
    c = draw(conv_configs(N=N, max_size=max_size, asymmetric=False, same=False, **options))
    padding = c.padding if c.padding != "valid" else 0
    pads = padding if isinstance(padding, tuple) else (padding,) * c.N
    if options.get("max_pixels") is not None:  # the transpose's input: the convolution's output, within the caps
        c.input_size = c.output_size()
    c.padding = padding
    out = [(I - 1) * s - 2 * p + d * (k - 1) + op + 1
           for I, s, p, d, k, op in zip(c.input_size, c.stride, pads, c.dilation, c.kernel_size, c.output_padding)]
    assume(all(o >= 1 for o in out))
    return c
