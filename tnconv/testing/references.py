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


def random_config(rng: random.Random, N: int, max_size: int = 9, asymmetric: bool = False, allow_same: bool = True) -> ConvConfig:
    """A random valid configuration (output size >= 1 in every dimension).

    ``padding`` is an int, a tuple, ``'valid'``, ``'same'`` (stride 1 only) or,
    with ``asymmetric``, ``(left, right)`` pairs.

    Example:
        >>> cfg = random_config(random.Random(0), N=2)
        >>> all(o >= 1 for o in cfg.output_size())
        True
    """
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
