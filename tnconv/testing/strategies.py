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

from .._args import padding_pairs
from .references import ConvConfig

__all__ = ["conv_configs", "transpose_configs", "st", "WIDE"]

#: Settings of :func:`conv_configs` that reach real networks' hyper-parameters (and caps that keep them cheap).
WIDE = dict(max_kernel=7, max_dilation=21, max_stride=6, max_padding=None, max_size=24, max_pixels=256,
            max_taps=64)


def _capped(draw, n, largest, total):
    """``n`` ints in ``[1, largest]`` whose product is at most ``total``, in a drawn order."""
    values, left = [], total
    for _ in range(n):
        v = draw(st.integers(1, max(1, min(largest, left))))
        values.append(v)
        left //= v
    order = draw(st.permutations(range(n)))
    return tuple(values[i] for i in order)


@st.composite
def conv_configs(draw, N=st.integers(1, 3), max_size: int = 6, max_kernel: int = 3, max_channels: int = 3,
                 asymmetric: bool = True, same: bool = True, max_batch: int = 3, max_stride: int = 3,
                 max_dilation: int = 2, max_padding=2, max_pixels=None, max_taps=None) -> ConvConfig:
    """A valid convolution: N, batch, channels, groups, kernel, stride, padding, dilation, input size.

    ``padding`` is drawn from ints, per-dimension tuples, ``'valid'``,
    ``'same'`` (only with stride 1) and, with ``asymmetric``, ``(left, right)``
    pairs, each side at most ``max_padding`` -- or, with ``max_padding=None``,
    as much as keeps the output within its cap, which goes beyond the dilated
    kernel's span (border outputs that see only padding). Input and output sizes
    are at most ``max_size`` per dimension and their products at most
    ``max_pixels``; the kernel has at most ``max_taps`` entries. Every output size
    is positive (single-pixel outputs included); an input is larger than
    ``max_size`` only where the dilated kernel needs it and the padding is capped.
    """
    N = draw(N) if not isinstance(N, int) else N
    groups = draw(st.integers(1, 3))
    cin = groups * draw(st.integers(1, max_channels))
    cout = groups * draw(st.integers(1, max_channels))
    side = max_size if max_pixels is None else max(1, min(max_size, int(round(max_pixels ** (1 / N)))))
    kernel = _capped(draw, N, max_kernel, max_taps or max_kernel**N)
    stride = tuple(draw(st.integers(1, max_stride)) for _ in range(N))
    choices = ["int", "tuple", "valid"] + (["same"] if same else []) + (["pairs"] if asymmetric else [])
    mode = draw(st.sampled_from(choices))
    if mode == "same":
        stride = (1,) * N
    # dilation: a span the input can hold (without padding, for 'valid')
    dilation = []
    for k in kernel:
        room = side - 1 + (0 if mode == "valid" else 2 * (max_padding if max_padding is not None else side))
        dilation.append(draw(st.integers(1, max(1, min(max_dilation, room // (k - 1) if k > 1 else max_dilation)))))
    dilation = tuple(dilation)
    spans = [d * (k - 1) + 1 for k, d in zip(kernel, dilation)]
    # total padding per dimension: at least what keeps the input within its side, at most what keeps the output
    # there (with capped pixels, or uncapped padding, else the padding's own cap bounds it)
    bounded = max_pixels is not None or max_padding is None
    lows = [max(0, span - side) for span in spans]
    highs = [span - 1 + s * side - 1 if bounded else 2 * max_padding for span, s in zip(spans, stride)]
    cap = (lambda p: p) if max_padding is None else (lambda p: min(p, 2 * max_padding))
    if mode == "int":
        lo, hi = max((l + 1) // 2 for l in lows), min(cap(h) // 2 for h in highs)
        mode = "int" if lo <= hi else "tuple"
        padding = draw(st.integers(lo, hi)) if mode == "int" else None
    if mode == "same":
        padding = "same"
    elif mode == "valid":
        padding = "valid"
    elif mode == "tuple":
        padding = tuple(draw(st.integers(min((l + 1) // 2, cap(h) // 2), cap(h) // 2)) for l, h in zip(lows, highs))
    elif mode == "pairs":
        pairs = []
        for l, h in zip(lows, highs):
            total = draw(st.integers(min(l, cap(h)), cap(h)))
            left = draw(st.integers(max(0, total - (max_padding if max_padding is not None else total)),
                                    min(total, max_padding if max_padding is not None else total)))
            pairs.append((left, total - left))
        padding = tuple(pairs)
    pads = padding_pairs(padding, N, kernel, dilation, stride)
    size = []
    for span, s, (pl, pr) in zip(spans, stride, pads):
        smallest = max(1, span - pl - pr)
        largest = max(smallest, min(side, s * side - 1 + span - pl - pr) if bounded else side)
        size.append(draw(st.integers(smallest, largest)))
    if max_pixels is not None:  # a large dilation may have forced inputs beyond the side: keep the total in check
        total = 1
        for n in size:
            total *= n
        assume(total <= 4 * max_pixels)
    output_padding = tuple(draw(st.integers(0, min(max(s, d) - 1, side))) for s, d in zip(stride, dilation))
    batch = draw(st.integers(0 if max_batch > 3 else 1, max_batch))
    return ConvConfig(N, batch, cin, cout, tuple(size), kernel, stride, padding, dilation, groups, output_padding)


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
