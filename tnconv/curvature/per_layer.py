"""One layer's per-sample gradients, their squared norms and its GGN diagonal, from :mod:`tnconv.functional`.

Every function takes the layer's input ``x`` (as :meth:`Layer.functional_input`
returns it) and backpropagated vectors at its output: ``g`` ``[B, C_out, *O]``
(the loss's output gradient) or ``s`` ``[V, B, C_out, *O]`` (columns of the
loss Hessian's square root). A linear layer on ``[B, *S, d]`` inputs shares its
weight over the positions ``S`` like a convolution with a 1x1 kernel over ``S``
pixels: its squared norms and GGN diagonal are that convolution's (``[B, d]``:
one pixel); its per-sample gradients are one batched matrix product.

Kernel taps that only ever see padding (a 3x3 convolution with padding 1 on a
1x1 input: the eight outer taps, as in ResNet-18's last stage at 32x32) have
zero gradients in every sample: the squared norms and the GGN diagonal are
computed for the live taps only, with the cropped convolution (as KFAC's input
factors are; the diagonal is padded with zeros to the weight's shape).
"""

from __future__ import annotations

import torch

from .. import functional as F
from .factors import _live_kernel as live_kernel
from .layers import Layer


def _as_conv(layer: Layer, x: torch.Tensor, g: torch.Tensor):
    """A linear layer's ``x [B, *S, d]`` and ``g [..., B, *S, m]`` as a 1x1 convolution's ``[B, d, S]``, ``[..., B, m, S]``."""
    lead = g.shape[:g.ndim - x.ndim]
    B, d, m = x.shape[0], x.shape[-1], g.shape[-1]
    return x.reshape(B, -1, d).transpose(1, 2), g.reshape(*lead, B, -1, m).transpose(-1, -2)


def _conv_args(layer: Layer, x: torch.Tensor, output_shape, crop: bool = True):
    """``(weight shape, functional keyword arguments, zero padding to the full kernel or None)`` of a convolution.

    With ``crop``, for a convolution (not a transpose one) whose kernel has taps
    that never see the input, the shape and arguments are those of the cropped convolution.
    """
    shape = tuple(layer.module.weight.shape)
    hyper = layer.hyper(x, torch.empty(output_shape, device="meta")) if layer.transposed else layer.hyper()
    kernel = hyper.pop("kernel_size")
    if layer.transposed or not crop:
        return shape, hyper, None
    crop = live_kernel(tuple(x.shape[2:]), kernel, hyper["stride"], hyper["padding"], hyper["dilation"])
    if crop is None:
        return shape, hyper, None
    cropped, slices = crop
    hyper["padding"] = cropped["padding"]
    pad = []
    for (start, stop), K in zip(reversed(slices), reversed(kernel)):
        pad += [start, K - stop]
    return shape[:2] + cropped["kernel_size"], hyper, pad


def _padded(t: torch.Tensor, pad) -> torch.Tensor:
    """``t`` (live taps last) padded with zeros to the full kernel."""
    return t if pad is None else torch.nn.functional.pad(t, pad)


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
    if layer.kind == "linear":
        # Σ_s g_bs x_bsᵀ is a batched matrix product (one outer product per sample for [B, d] inputs); the 1x1
        # convolution's diagram would run a convolution with B groups, which PyTorch's CPU kernels do one group
        # at a time
        B, d, m = x.shape[0], x.shape[-1], g.shape[-1]
        rows, grads = x.reshape(B, -1, d), g.reshape(B, -1, m)
        if rows.shape[1] == 1:
            return grads.reshape(B, m, 1) * rows.reshape(B, 1, d)
        return torch.bmm(grads.transpose(1, 2), rows)
    # not cropped: dead taps leave few output positions, so writing the [B, *W] result dominates, and padding a
    # cropped one would write it twice
    shape, hyper, _ = _conv_args(layer, x, g.shape, crop=False)
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
    if layer.kind == "linear":
        shape = tuple(layer.module.weight.shape)
        xc, gc = _as_conv(layer, x, g)
        return F.per_sample_weight_grad_sq_norm(xc, shape + (1,), gc)
    shape, hyper, _ = _conv_args(layer, x, g.shape)  # dead taps add nothing to the norm
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
    if layer.kind == "linear":
        shape = tuple(layer.module.weight.shape)
        xc, sc = _as_conv(layer, x, s)
        return F.ggn_diagonal(xc, shape + (1,), sc).reshape(shape)
    shape, hyper, pad = _conv_args(layer, x, s.shape[1:])
    if layer.transposed:
        return F.ggn_diagonal_transpose(x, shape, s, **hyper)
    return _padded(F.ggn_diagonal(x, shape, s, **hyper), pad)


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
