"""Hypothesis strategies that draw valid convolution configurations.

Example:
    >>> from hypothesis import given
    >>> @given(conv_configs(N=st.just(2)))
    ... def test(c):
    ...     assert all(o >= 1 for o in c.output_size())
    >>> test()
"""

from __future__ import annotations

from hypothesis import assume
from hypothesis import strategies as st

from .._args import padding_pairs
from .references import ConvConfig

__all__ = ["conv_configs", "transpose_configs", "st"]


@st.composite
def conv_configs(draw, N=st.integers(1, 3), max_size: int = 6, max_kernel: int = 3, max_channels: int = 3,
                 asymmetric: bool = True, same: bool = True, max_batch: int = 3) -> ConvConfig:
    """A valid convolution: N, batch, channels, groups, kernel, stride, padding, dilation, input size.

    ``padding`` is drawn from ints, per-dimension tuples, ``'valid'``,
    ``'same'`` (only with stride 1) and, with ``asymmetric``, ``(left, right)``
    pairs. Input sizes are at least as large as the dilated kernel minus the
    padding, so every output size is positive (single-pixel outputs included).
    """
    N = draw(N) if not isinstance(N, int) else N
    groups = draw(st.integers(1, 3))
    cin = groups * draw(st.integers(1, max_channels))
    cout = groups * draw(st.integers(1, max_channels))
    kernel = tuple(draw(st.integers(1, max_kernel)) for _ in range(N))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(N))
    stride = tuple(draw(st.integers(1, 3)) for _ in range(N))
    choices = ["int", "tuple", "valid"] + (["same"] if same else []) + (["pairs"] if asymmetric else [])
    mode = draw(st.sampled_from(choices))
    if mode == "same":
        stride, padding = (1,) * N, "same"
    elif mode == "valid":
        padding = "valid"
    elif mode == "int":
        padding = draw(st.integers(0, 2))
    elif mode == "tuple":
        padding = tuple(draw(st.integers(0, 2)) for _ in range(N))
    else:
        padding = tuple((draw(st.integers(0, 2)), draw(st.integers(0, 2))) for _ in range(N))
    pads = padding_pairs(padding, N, kernel, dilation, stride)
    size = []
    for k, d, (pl, pr) in zip(kernel, dilation, pads):
        smallest = max(1, d * (k - 1) + 1 - pl - pr)
        size.append(draw(st.integers(smallest, max(smallest, max_size))))
    output_padding = tuple(draw(st.integers(0, max(s, d) - 1)) for s, d in zip(stride, dilation))
    batch = draw(st.integers(0 if max_batch > 3 else 1, max_batch))
    return ConvConfig(N, batch, cin, cout, tuple(size), kernel, stride, padding, dilation, groups, output_padding)


@st.composite
def transpose_configs(draw, N=st.integers(1, 3), max_size: int = 5) -> ConvConfig:
    """A valid transpose convolution (symmetric int padding, output_padding < max(stride, dilation)).

    ``in_channels`` is the transpose convolution's output channels, as for the
    convolution whose input VJP it is; its input has ``out_channels``.
    """
    c = draw(conv_configs(N=N, max_size=max_size, asymmetric=False, same=False))
    padding = c.padding if c.padding != "valid" else 0
    pads = padding if isinstance(padding, tuple) else (padding,) * c.N
    c.padding = padding
    out = [(I - 1) * s - 2 * p + d * (k - 1) + op + 1
           for I, s, p, d, k, op in zip(c.input_size, c.stride, pads, c.dilation, c.kernel_size, c.output_padding)]
    assume(all(o >= 1 for o in out))
    return c
