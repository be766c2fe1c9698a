"""Reference implementations and random configurations for testing tnconv.

The references are deliberately naive and independent of tnconv's diagrams:
patches are cut out with ``Tensor.unfold`` after explicit padding, so they
work for any number of spatial dimensions and can check tnconv where PyTorch
has no N-d kernel. Derivatives of the references come from ``torch.autograd``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Tuple

import torch

from .._args import padding_pairs


def patches(x, kernel_size, stride, padding, dilation):
    """All receptive fields of ``x`` ``[B, C, *I]``: ``[B, C, *O, *K]`` (zero padding, any N).

    ``padding`` is in any form :func:`tnconv.functional.conv` accepts.

    Example:
        >>> patches(torch.arange(5.).view(1, 1, 5), (2,), (2,), 0, (1,))[0, 0]
        tensor([[0., 1.],
                [2., 3.]])
    """
    N = x.ndim - 2
    pads = padding_pairs(padding, N, kernel_size, dilation, stride)
    flat = []
    for left, right in reversed(pads):
        flat += [left, right]
    x = torch.nn.functional.pad(x, flat)
    for d in range(N):
        span = dilation[d] * (kernel_size[d] - 1) + 1
        x = x.unfold(2 + d, span, stride[d])  # [..., O_d, ..., span_d]
    # x: [B, C, O1..ON, span1..spanN]; keep every dilation-th entry of each span
    index = (slice(None),) * (2 + N) + tuple(slice(None, None, dilation[d]) for d in range(N))
    return x[index]


def conv(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """Slow N-d convolution: patches times the weight, per group.

    Example:
        >>> x, w = torch.randn(2, 4, 6, 5), torch.randn(6, 2, 3, 2)
        >>> torch.allclose(conv(x, w, groups=2, padding=1), torch.nn.functional.conv2d(x, w, groups=2, padding=1), atol=1e-5)
        True
    """
    N = x.ndim - 2
    K = tuple(weight.shape[2:])
    stride, dilation = _tuple(stride, N), _tuple(dilation, N)
    p = patches(x, K, stride, padding, dilation)  # [B, C, *O, *K]
    B, C = p.shape[:2]
    O = p.shape[2:2 + N]
    p = p.reshape(B, groups, C // groups, *O, -1)
    w = weight.reshape(groups, weight.shape[0] // groups, weight.shape[1], -1)
    y = torch.einsum("bgc...k,gdck->bgd...", p, w).reshape(B, weight.shape[0], *O)
    if bias is not None:
        y = y + bias.view(1, -1, *([1] * N))
    return y


def unfold(x, kernel_size, dilation=1, padding=0, stride=1):
    """Slow N-d im2col ``[B, C*K, O]`` (``torch.nn.functional.unfold``'s layout)."""
    N = x.ndim - 2
    K = _tuple(kernel_size, N)
    p = patches(x, K, _tuple(stride, N), padding, _tuple(dilation, N))
    B, C = p.shape[:2]
    p = p.permute(0, 1, *range(2 + N, 2 + 2 * N), *range(2, 2 + N))
    return p.reshape(B, C * _prod(K), -1)


def conv_transpose(x, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    """Slow N-d transpose convolution: the input VJP of :func:`conv`, by autograd."""
    N = x.ndim - 2
    K = tuple(weight.shape[2:])
    stride, dilation, output_padding = _tuple(stride, N), _tuple(dilation, N), _tuple(output_padding, N)
    pads = padding_pairs(padding, N, K, dilation, stride)
    size = [(I - 1) * s - pl - pr + d * (k - 1) + op + 1
            for I, s, (pl, pr), d, k, op in zip(x.shape[2:], stride, pads, dilation, K, output_padding)]
    C_out = weight.shape[1] * groups
    z = torch.zeros(x.shape[0], C_out, *size, dtype=x.dtype, device=x.device, requires_grad=True)
    with torch.enable_grad():
        y = conv(z, weight.detach(), None, stride, pads, dilation, groups)
        # with output_padding >= stride the convolution of z has more outputs than x has entries
        y = y[(slice(None), slice(None)) + tuple(slice(0, I) for I in x.shape[2:])]
        (out,) = torch.autograd.grad(y, z, x.detach())
    if bias is not None:
        out = out + bias.view(1, -1, *([1] * N))
    return out


def fold(x, output_size, kernel_size, dilation=1, padding=0, stride=1):
    """Slow N-d col2im: the adjoint of :func:`unfold`, by autograd."""
    N = len(output_size)
    C = x.shape[1] // _prod(_tuple(kernel_size, N))
    z = torch.zeros(x.shape[0], C, *output_size, dtype=x.dtype, device=x.device, requires_grad=True)
    with torch.enable_grad():
        u = unfold(z, kernel_size, dilation, padding, stride)
        (out,) = torch.autograd.grad(u, z, x.detach())
    return out


def _tuple(value, n):
    return tuple(value) if isinstance(value, (tuple, list)) else (value,) * n


def _prod(values):
    out = 1
    for v in values:
        out *= v
    return out


@dataclass
class ConvConfig:
    """A random, valid convolution: shapes and hyper-parameters."""

    N: int
    batch: int
    in_channels: int
    out_channels: int
    input_size: Tuple[int, ...]
    kernel_size: Tuple[int, ...]
    stride: Tuple[int, ...]
    padding: object
    dilation: Tuple[int, ...]
    groups: int
    output_padding: Tuple[int, ...] = field(default=())

    @property
    def weight_size(self):
        return (self.out_channels, self.in_channels // self.groups) + self.kernel_size

    @property
    def x_size(self):
        return (self.batch, self.in_channels) + self.input_size

    def kwargs(self):
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation, groups=self.groups)

    def output_size(self):
        pads = padding_pairs(self.padding, self.N, self.kernel_size, self.dilation, self.stride)
        return tuple((I + pl + pr - d * (k - 1) - 1) // s + 1 for I, (pl, pr), d, k, s in
                     zip(self.input_size, pads, self.dilation, self.kernel_size, self.stride))


#: Settings of :func:`draw_config` (and :func:`~tnconv.testing.strategies.conv_configs`) that reach real networks'
#: hyper-parameters, and the caps that keep them cheap: kernels up to 7, dilation up to 21, stride up to 6,
#: padding as large as the capped output allows (beyond the dilated kernel's span).
WIDE = dict(max_kernel=7, max_dilation=21, max_stride=6, max_padding=None, max_size=24, max_pixels=256, max_taps=64)


def draw_config(integer, N: int, max_size: int = 6, max_kernel: int = 3, max_channels: int = 3, asymmetric: bool = True,
                same: bool = True, max_batch: int = 3, min_batch: int = 1, max_stride: int = 3, max_dilation: int = 2,
                max_padding=2, max_pixels=None, max_taps=None):
    """A valid convolution drawn by ``integer(lo, hi)`` (inclusive), or ``None`` if it broke the pixel cap.

    ``padding`` is drawn from ints, per-dimension tuples, ``'valid'``,
    ``'same'`` (only with stride 1) and, with ``asymmetric``, ``(left, right)``
    pairs, each side at most ``max_padding`` -- or, with ``max_padding=None``,
    as much as keeps the output within its cap, which goes beyond the dilated
    kernel's span (border outputs that see only padding). Input and output sizes
    are at most ``max_size`` per dimension and, with ``max_pixels``, about
    ``max_pixels`` in all; the kernel has at most ``max_taps`` entries. Every
    output size is positive (single-pixel outputs included); an input is larger
    than ``max_size`` only where the dilated kernel needs it and the padding is capped.

    Example:
        >>> rng = random.Random(0)
        >>> c = draw_config(rng.randint, 3, **WIDE)
        >>> c is None or all(o >= 1 for o in c.output_size())
        True
    """
    groups = integer(1, 3)
    cin, cout = groups * integer(1, max_channels), groups * integer(1, max_channels)
    side = max_size if max_pixels is None else max(1, min(max_size, int(round(max_pixels ** (1 / N)))))
    kernel = _capped(integer, N, max_kernel, max_taps or max_kernel**N)
    stride = tuple(integer(1, max_stride) for _ in range(N))
    choices = ["int", "tuple", "valid"] + (["same"] if same else []) + (["pairs"] if asymmetric else [])
    mode = choices[integer(0, len(choices) - 1)]
    if mode == "same":
        stride = (1,) * N
    # dilation: a span the input can hold (without padding, for 'valid')
    dilation = []
    for k in kernel:
        room = side - 1 + (0 if mode == "valid" else 2 * (max_padding if max_padding is not None else side))
        dilation.append(integer(1, max(1, min(max_dilation, room // (k - 1) if k > 1 else max_dilation))))
    dilation = tuple(dilation)
    spans = [d * (k - 1) + 1 for k, d in zip(kernel, dilation)]
    # total padding per dimension: at least what keeps the input within its side, at most what keeps the output
    # there (with capped pixels, or uncapped padding; else the padding's own cap bounds it)
    bounded = max_pixels is not None or max_padding is None
    lows = [max(0, span - side) for span in spans]
    highs = [span - 1 + s * side - 1 if bounded else 2 * max_padding for span, s in zip(spans, stride)]
    cap = (lambda p: p) if max_padding is None else (lambda p: min(p, 2 * max_padding))
    padding = mode
    if mode == "int":
        lo, hi = max((l + 1) // 2 for l in lows), min(cap(h) // 2 for h in highs)
        mode = "int" if lo <= hi else "tuple"
        padding = integer(lo, hi) if mode == "int" else None
    if mode == "tuple":
        padding = tuple(integer(min((l + 1) // 2, cap(h) // 2), cap(h) // 2) for l, h in zip(lows, highs))
    elif mode == "pairs":
        most = max_padding if max_padding is not None else None
        pairs = []
        for l, h in zip(lows, highs):
            total = integer(min(l, cap(h)), cap(h))
            left = integer(max(0, total - (most if most is not None else total)), min(total, most if most is not None
                                                                                      else total))
            pairs.append((left, total - left))
        padding = tuple(pairs)
    pads = padding_pairs(padding, N, kernel, dilation, stride)
    size = []
    for span, s, (pl, pr) in zip(spans, stride, pads):
        smallest = max(1, span - pl - pr)
        size.append(integer(smallest, max(smallest, min(side, s * side - 1 + span - pl - pr) if bounded else side)))
    if max_pixels is not None and _prod(size) > 4 * max_pixels:  # a large dilation forced inputs beyond the side
        return None
    output_padding = tuple(integer(0, min(max(s, d) - 1, side)) for s, d in zip(stride, dilation))
    batch = integer(min_batch, max_batch)
    return ConvConfig(N, batch, cin, cout, tuple(size), kernel, stride, padding, dilation, groups, output_padding)


def _capped(integer, n, largest, total):
    """``n`` ints in ``[1, largest]`` whose product is at most ``total``, in a drawn order."""
    values, left = [], total
    for _ in range(n):
        v = integer(1, max(1, min(largest, left)))
        values.append(v)
        left //= v
    for i in range(n - 1, 0, -1):  # Fisher-Yates: any dimension may get the large kernel
        j = integer(0, i)
        values[i], values[j] = values[j], values[i]
    return tuple(values)


def random_config(rng: random.Random, N: int, max_size: int = 9, asymmetric: bool = False, allow_same: bool = True,
                  wide: bool = False) -> ConvConfig:
    """A random valid configuration (output size >= 1 in every dimension).

    ``padding`` is an int, a tuple, ``'valid'``, ``'same'`` (stride 1 only) or,
    with ``asymmetric``, ``(left, right)`` pairs. ``wide`` draws from the ranges
    of :data:`WIDE` instead (``max_size`` then caps each dimension, and the pixels
    and kernel taps are capped as there).

    Example:
        >>> cfg = random_config(random.Random(0), N=2)
        >>> all(o >= 1 for o in cfg.output_size())
        True
        >>> max(random_config(random.Random(3), N=1, wide=True).dilation) > 2
        True
    """
    if wide:
        while True:
            c = draw_config(rng.randint, N, asymmetric=asymmetric, same=allow_same, **dict(WIDE, max_size=max_size))
            if c is not None:
                return c
    groups = rng.choice([1, 1, 2, 3])
    cin, cout = groups * rng.randint(1, 3), groups * rng.randint(1, 3)
    kernel = tuple(rng.randint(1, 4) for _ in range(N))
    dilation = tuple(rng.choice([1, 1, 2]) for _ in range(N))
    stride = tuple(rng.choice([1, 1, 2, 3]) for _ in range(N))
    mode = rng.random()
    if allow_same and mode < 0.15:
        stride, padding = (1,) * N, "same"
    elif mode < 0.25:
        padding = "valid"
    elif asymmetric and mode < 0.45:
        padding = tuple((rng.randint(0, 2), rng.randint(0, 2)) for _ in range(N))
    elif mode < 0.6:
        padding = rng.randint(0, 2)
    else:
        padding = tuple(rng.randint(0, 2) for _ in range(N))
    pads = padding_pairs(padding, N, kernel, dilation, stride)
    size = []
    for k, d, (pl, pr) in zip(kernel, dilation, pads):
        smallest = max(1, d * (k - 1) + 1 - pl - pr)
        size.append(rng.randint(smallest, max(smallest, max_size)))
    output_padding = tuple(rng.randint(0, max(s, d) - 1) for s, d in zip(stride, dilation))
    return ConvConfig(N, rng.choice([1, 2, 3]), cin, cout, tuple(size), kernel, stride, padding, dilation, groups,
                      output_padding)
