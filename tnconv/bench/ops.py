"""The benchmarked operations, each as a pair: tnconv's and the standard PyTorch way.

The standard implementations are what a PyTorch user writes today:
``torch.nn.functional.conv2d`` and ``torch.nn.grad.conv2d_{input,weight}`` for
the convolution and its VJPs, and for the Kronecker factors the im2col
recipe of KFAC libraries -- ``torch.nn.functional.unfold``, then a matrix
product per channel group (KFC) or an average over output positions before
it (KFAC-reduce). ``unfold`` is 2d only, so the factors' references are too.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple

import torch

from .. import functional as tf
from .layers import Layer

#: Operation names, in the order tables and plots list them.
OPS = ("forward", "input_vjp", "weight_vjp", "kfc", "kfac_reduce")


def _unfold_groups(x, kernel_size, stride, padding, dilation, groups):
    """im2col of ``x`` split by channel group: ``[B, G, C_in/G·K, O]``."""
    u = torch.nn.functional.unfold(x, kernel_size, dilation=dilation, padding=padding, stride=stride)
    return u.reshape(x.shape[0], groups, u.shape[1] // groups, u.shape[2])


def standard_kfc(x, kernel_size, stride=1, padding=0, dilation=1, groups=1) -> torch.Tensor:
    """KFC the usual way: ``unfold``, then ``[[X]] [[X]]ᵀ / B`` per group, ``[G, C_in/G·K, C_in/G·K]``.

    Example:
        >>> x = torch.randn(2, 4, 6, 6, dtype=torch.float64)
        >>> torch.allclose(standard_kfc(x, 3, groups=2), tf.kfc(x, (3, 3), groups=2))
        True
    """
    u = _unfold_groups(x, kernel_size, stride, padding, dilation, groups)
    B, G, CK, O = u.shape
    # rows (b, o) of each group's matrix: the copy a permute-and-reshape makes is part of the recipe
    u = u.permute(1, 0, 3, 2).reshape(G, B * O, CK)
    return torch.bmm(u.transpose(1, 2), u) / B


def standard_kfac_reduce(x, kernel_size, stride=1, padding=0, dilation=1, groups=1) -> torch.Tensor:
    """KFAC-reduce the usual way: ``unfold``, average over output positions, outer product per group, ``/ B``.

    Example:
        >>> x = torch.randn(2, 4, 6, 6, dtype=torch.float64)
        >>> torch.allclose(standard_kfac_reduce(x, 3, groups=2), tf.kfac_reduce(x, (3, 3), groups=2))
        True
    """
    u = _unfold_groups(x, kernel_size, stride, padding, dilation, groups)
    m = u.mean(-1).transpose(0, 1)  # [G, B, C_in/G·K]
    return torch.bmm(m.transpose(1, 2), m) / x.shape[0]


def _torch_conv(N: int):
    return getattr(torch.nn.functional, f"conv{N}d")


def _torch_grad(N: int, what: str):
    return getattr(torch.nn.grad, f"conv{N}d_{what}")


def data(layer: Layer, op: str, dtype=torch.float32, seed: int = 0) -> Tuple[torch.Tensor, Optional[torch.Tensor],
                                                                               Optional[torch.Tensor]]:
    """``(x, w, g)``: the random input, weight and output gradient ``op`` takes on ``layer`` (None where unused).

    Every implementation gets these same values for the same ``seed``.

    Example:
        >>> from tnconv.bench.layers import NETS
        >>> x, w, g = data(NETS["2c2d"][0], "kfc")
        >>> tuple(x.shape), w, g
        ((128, 1, 28, 28), None, None)
    """
    if op not in OPS:
        raise ValueError(f"unknown operation {op!r}; choose from {list(OPS)}")
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(layer.x_size, generator=gen, dtype=dtype)
    if op in ("kfc", "kfac_reduce"):
        return x, None, None
    w = torch.randn(layer.weight_size, generator=gen, dtype=dtype)
    if op == "forward":
        return x, w, None
    g = torch.randn((layer.batch, layer.out_channels) + layer.output_size, generator=gen, dtype=dtype)
    return x, w, g


def make(layer: Layer, op: str, dtype=torch.float32, seed: int = 0) -> Tuple[Callable, Callable]:
    """``(tnconv, standard)``: two argument-free callables computing ``op`` on ``layer`` from the same random data.

    Example:
        >>> from tnconv.bench.layers import NETS
        >>> ours, theirs = make(NETS["2c2d"][0], "forward", torch.float64)
        >>> torch.allclose(ours(), theirs())
        True
    """
    x, w, g = data(layer, op, dtype, seed)
    N = len(layer.input_size)
    hyper = dict(stride=layer.stride, padding=layer.padding, dilation=layer.dilation, groups=layer.groups)
    if op in ("kfc", "kfac_reduce"):
        ours_fn, theirs_fn = (tf.kfc, standard_kfc) if op == "kfc" else (tf.kfac_reduce, standard_kfac_reduce)
        args = (layer.kernel_size, layer.stride, layer.padding, layer.dilation, layer.groups)
        return (lambda: ours_fn(x, *args)), (lambda: theirs_fn(x, *args))
    if op == "forward":
        conv = _torch_conv(N)
        return (lambda: tf.conv(x, w, **hyper)), (lambda: conv(x, w, **hyper))
    if op == "input_vjp":
        grad, size = _torch_grad(N, "input"), layer.x_size
        return (lambda: tf.input_vjp(size, w, g, **hyper)), (lambda: grad(size, w, g, **hyper))
    grad, size = _torch_grad(N, "weight"), layer.weight_size
    return (lambda: tf.weight_vjp(x, size, g, **hyper)), (lambda: grad(x, size, g, **hyper))


#: Operation name -> one-line description, for the README table and ``--help``.
DESCRIPTIONS: Dict[str, str] = {
    "forward": "tnconv.functional.conv vs torch.nn.functional.conv2d",
    "input_vjp": "tnconv.functional.input_vjp vs torch.nn.grad.conv2d_input",
    "weight_vjp": "tnconv.functional.weight_vjp vs torch.nn.grad.conv2d_weight",
    "kfc": "tnconv.functional.kfc vs unfold + per-group [[X]][[X]]ᵀ / B",
    "kfac_reduce": "tnconv.functional.kfac_reduce vs unfold, mean over positions, outer product / B",
}

__all__ = ["OPS", "DESCRIPTIONS", "data", "make", "standard_kfc", "standard_kfac_reduce"]
