"""The per-sample weight gradient, tnconv's and the standard PyTorch way.

The standard way is the one of Opacus's and BackPACK's convolution grad
samplers: ``torch.nn.functional.unfold`` the input, then one batched matrix
product per channel group of the output gradient with the unfolded input.
``unfold`` is 2d only, so the reference is too (like the Kronecker factors'
in :mod:`.ops`).
"""

from __future__ import annotations

from typing import Callable, Tuple

import torch

from .. import functional as tf
from .layers import Layer


def standard_per_sample_weight_grad(x, weight_size, grad_output, stride=1, padding=0, dilation=1, groups=1) -> torch.Tensor:
    """``[B, *weight_size]`` the usual way: ``unfold``, then ``g [[X]]ᵀ`` per sample and group.

    Example:
        >>> x, g = torch.randn(2, 4, 6, 6, dtype=torch.float64), torch.randn(2, 6, 4, 4, dtype=torch.float64)
        >>> ours = tf.per_sample_weight_grad(x, (6, 2, 3, 3), g, groups=2)
        >>> torch.allclose(standard_per_sample_weight_grad(x, (6, 2, 3, 3), g, groups=2), ours)
        True
    """
    kernel_size = tuple(weight_size[2:])
    u = torch.nn.functional.unfold(x, kernel_size, dilation=dilation, padding=padding, stride=stride)
    B, G = x.shape[0], groups
    u = u.reshape(B, G, u.shape[1] // G, u.shape[2])  # [B, G, C_in/G·K, O]
    g = grad_output.reshape(B, G, weight_size[0] // G, -1)  # [B, G, C_out/G, O]
    return torch.matmul(g, u.transpose(-1, -2)).reshape(B, *weight_size)


def make_per_sample(layer: Layer, dtype=torch.float32, seed: int = 0) -> Tuple[Callable, Callable]:
    """``(tnconv, standard)``: argument-free callables of the per-sample gradient on ``layer``'s random data.

    The data are :func:`tnconv.bench.ops.data`'s for the weight VJP.

    Example:
        >>> import dataclasses
        >>> from tnconv.bench.layers import NETS
        >>> ours, theirs = make_per_sample(dataclasses.replace(NETS["2c2d"][0], batch=2), torch.float64)
        >>> ours().shape, torch.allclose(ours(), theirs())
        (torch.Size([2, 32, 1, 5, 5]), True)
    """
    from .ops import data

    x, _, g = data(layer, "weight_vjp", dtype, seed)
    hyper = dict(stride=layer.stride, padding=layer.padding, dilation=layer.dilation, groups=layer.groups)
    size = layer.weight_size
    return (lambda: tf.per_sample_weight_grad(x, size, g, **hyper)), (lambda: standard_per_sample_weight_grad(x, size, g, **hyper))


__all__ = ["standard_per_sample_weight_grad", "make_per_sample"]
