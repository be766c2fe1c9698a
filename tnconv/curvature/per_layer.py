"""One layer's per-sample gradients, their squared norms and its GGN diagonal, from :mod:`tnconv.functional`.

Every function takes the layer's input ``x`` (as :meth:`Layer.functional_input`
returns it) and backpropagated vectors at its output: ``g`` ``[B, C_out, *O]``
(the loss's output gradient) or ``s`` ``[V, B, C_out, *O]`` (columns of the
loss Hessian's square root). A linear layer on ``[B, *S, d]`` inputs shares its
weight over the positions ``S`` like a convolution with a 1x1 kernel over ``S``
pixels, and is computed as that convolution (``[B, d]``: one pixel).
"""

from __future__ import annotations

import torch

from .. import functional as F
from .layers import Layer


def _as_conv(layer: Layer, x: torch.Tensor, g: torch.Tensor):
    """A linear layer's ``x [B, *S, d]`` and ``g [..., B, *S, m]`` as a 1x1 convolution's ``[B, d, S]``, ``[..., B, m, S]``."""
    lead = g.shape[:g.ndim - x.ndim]
    B, d, m = x.shape[0], x.shape[-1], g.shape[-1]
    return x.reshape(B, -1, d).transpose(1, 2), g.reshape(*lead, B, -1, m).transpose(-1, -2)


def _conv_args(layer: Layer, x: torch.Tensor, output_shape) -> dict:
    hyper = layer.hyper(x, torch.empty(output_shape, device="meta")) if layer.transposed else layer.hyper()
    hyper.pop("kernel_size")
    return hyper


def weight_grad_batch(layer: Layer, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Per-sample weight gradients ``[B, *weight.shape]`` for output gradients ``g`` ``[B, C_out, *O]``.

    Example:
        >>> from tnconv.curvature import find_layers
        >>> conv = torch.nn.Conv1d(2, 3, 3, stride=2)
        >>> layer = find_layers(conv)[0]
        >>> x = torch.randn(4, 2, 9)
        >>> weight_grad_batch(layer, x, torch.randn(4, 3, 4)).shape
        torch.Size([4, 3, 2, 3])
    """
    shape = tuple(layer.module.weight.shape)
    if layer.kind == "linear":
        xc, gc = _as_conv(layer, x, g)
        return F.per_sample_weight_grad(xc, shape + (1,), gc).reshape(x.shape[0], *shape)
    hyper = _conv_args(layer, x, g.shape)
    if layer.transposed:
        return F.per_sample_weight_grad_transpose(x, shape, g, **hyper)
    return F.per_sample_weight_grad(x, shape, g, **hyper)


def weight_sq_norms(layer: Layer, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``‖∇_W ℓ_b‖²`` of every sample, ``[B]``, without materializing the per-sample gradients where cheaper.

    Example:
        >>> from tnconv.curvature import find_layers
        >>> layer = find_layers(torch.nn.Linear(3, 2))[0]
        >>> x, g = torch.randn(5, 3), torch.randn(5, 2)
        >>> torch.allclose(weight_sq_norms(layer, x, g), (x * x).sum(1) * (g * g).sum(1))
        True
    """
    shape = tuple(layer.module.weight.shape)
    if layer.kind == "linear":
        xc, gc = _as_conv(layer, x, g)
        return F.per_sample_weight_grad_sq_norm(xc, shape + (1,), gc)
    hyper = _conv_args(layer, x, g.shape)
    if layer.transposed:
        return F.per_sample_weight_grad_sq_norm_transpose(x, shape, g, **hyper)
    return F.per_sample_weight_grad_sq_norm(x, shape, g, **hyper)


def weight_diag_ggn(layer: Layer, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """``Σ_v Σ_b (J_Wᵀ s_vb)²``, shape of the weight, for backpropagated vectors ``s`` ``[V, B, C_out, *O]``.

    Example:
        >>> from tnconv.curvature import find_layers
        >>> layer = find_layers(torch.nn.ConvTranspose2d(4, 6, 3, groups=2))[0]
        >>> weight_diag_ggn(layer, torch.randn(2, 4, 5, 5), torch.randn(3, 2, 6, 7, 7)).shape
        torch.Size([4, 3, 3, 3])
    """
    shape = tuple(layer.module.weight.shape)
    if layer.kind == "linear":
        xc, sc = _as_conv(layer, x, s)
        return F.ggn_diagonal(xc, shape + (1,), sc).reshape(shape)
    hyper = _conv_args(layer, x, s.shape[1:])
    if layer.transposed:
        return F.ggn_diagonal_transpose(x, shape, s, **hyper)
    return F.ggn_diagonal(x, shape, s, **hyper)


def _position_sums(layer: Layer, t: torch.Tensor, lead: int) -> torch.Tensor:
    """``t`` ``[*lead, B, C_out, *O]`` (linear: ``[*lead, B, *S, m]``) summed over the positions: ``[*lead, B, C_out]``."""
    if layer.kind == "linear":
        return t.reshape(*t.shape[:lead + 1], -1, t.shape[-1]).sum(-2)
    return t.reshape(*t.shape[:lead + 2], -1).sum(-1)


def bias_grad_batch(layer: Layer, g: torch.Tensor) -> torch.Tensor:
    """Per-sample bias gradients ``[B, C_out]``: ``g`` summed over the output positions.

    Example:
        >>> from tnconv.curvature import find_layers
        >>> bias_grad_batch(find_layers(torch.nn.Conv2d(1, 3, 2))[0], torch.ones(4, 3, 5, 5))[0]
        tensor([25., 25., 25.])
    """
    return _position_sums(layer, g, 0)


def bias_diag_ggn(layer: Layer, s: torch.Tensor) -> torch.Tensor:
    """``Σ_v Σ_b (Σ_o s_vbo)²``, ``[C_out]``.

    Example:
        >>> from tnconv.curvature import find_layers
        >>> bias_diag_ggn(find_layers(torch.nn.Linear(2, 3))[0], torch.ones(2, 4, 3))
        tensor([8., 8., 8.])
    """
    return _position_sums(layer, s, 1).pow(2).sum((0, 1))


__all__ = ["weight_grad_batch", "weight_sq_norms", "weight_diag_ggn", "bias_grad_batch", "bias_diag_ggn"]
