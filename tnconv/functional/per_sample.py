"""Per-sample gradients of transpose convolutions, per-sample squared gradient norms, and a transpose GGN diagonal.

Compiled from the diagrams of :mod:`tnconv.diagrams.per_sample`. The squared
norms never materialize the per-sample gradients when contracting the two
copies' inputs first is cheaper (a Gram matrix of output positions per sample).
"""

from __future__ import annotations

import torch

from .._args import ConvSpec, check_size, check_tensor, ntuple
from ._common import _check_groups, _freeze, check_grad_output, check_sqrt_ggn, check_transpose_output, compiled, conv_geometry


def _hyper(N, spec, **extra):
    return dict(N=N, groups=spec.groups, **_freeze(spec), **extra)


def transpose_geometry(x_shape, weight_size, stride, padding, output_padding, dilation, groups,
                       weight_name="weight_size"):
    """Validate a transpose convolution's shapes; return ``(N, spec, output_padding, output spatial size)``.

    ``x_shape`` is ``[B, C_in, *I]`` and ``weight_size`` PyTorch's ``[C_in, C_out/groups, *K]``.

    Example:
        >>> transpose_geometry((2, 4, 5), (4, 3, 3), 2, 1, 1, 1, 2)[3]
        (10,)
    """
    _check_groups(groups)
    if len(weight_size) < 3:
        raise ValueError(f"{weight_name} must have at least 3 dimensions ([C_in, C_out/groups, *K]), got "
                         f"{tuple(weight_size)}")
    if len(x_shape) != len(weight_size):
        raise ValueError(f"x must have {len(weight_size)} dimensions ([B, C_in, *spatial]) to match {weight_name} "
                         f"{tuple(weight_size)}, got {tuple(x_shape)}")
    if isinstance(padding, str):
        raise ValueError(f"padding must be an int or a tuple for a transpose convolution, got {padding!r}")
    N = len(weight_size) - 2
    if x_shape[1] != weight_size[0]:
        raise ValueError(f"x has {x_shape[1]} channels, but {weight_name} {tuple(weight_size)} expects "
                         f"{weight_name}[0]={weight_size[0]}")
    if weight_size[0] % groups:
        raise ValueError(f"groups={groups} must divide the input channels {weight_name}[0]={weight_size[0]}")
    spec = ConvSpec.make(N, tuple(weight_size[2:]), stride, padding, dilation, groups)
    output_padding = ntuple(output_padding, N, "output_padding", minimum=0)
    check_transpose_output(spec, output_padding, x_shape[2:])
    O = tuple((I - 1) * S - pl - pr + D * (K - 1) + op + 1 for I, K, S, (pl, pr), D, op in
              zip(x_shape[2:], spec.kernel_size, spec.stride, spec.padding, spec.dilation, output_padding))
    return N, spec, output_padding, O


def per_sample_weight_grad_transpose(x, weight_size, grad_output, stride=1, padding=0, output_padding=0, groups=1,
                                     dilation=1) -> torch.Tensor:
    """Per-sample weight gradients of a transpose convolution, ``[B, *weight_size]``.

    Arguments in the order of ``torch.nn.functional.conv_transpose*d``; the sum
    over ``B`` is the weight gradient of ``conv_transpose(x, weight)`` with
    output gradient ``grad_output``.

    Args:
        x: the transpose convolution's input ``[B, C_in, *I]``.
        weight_size: ``[C_in, C_out/groups, *K]``.
        grad_output: ``[B, C_out, *O]``.

    Example:
        >>> x, w = torch.randn(2, 4, 5, dtype=torch.float64), torch.randn(4, 3, 3, dtype=torch.float64, requires_grad=True)
        >>> g = torch.randn(2, 3, 11, dtype=torch.float64)
        >>> per = per_sample_weight_grad_transpose(x, w.shape, g, stride=2)
        >>> grad, = torch.autograd.grad(torch.nn.functional.conv_transpose1d(x, w, stride=2), w, g)
        >>> per.shape, torch.allclose(per.sum(0), grad)
        (torch.Size([2, 4, 3, 3]), True)
    """
    check_tensor(x, "x", min_ndim=3)
    weight_size = check_size(weight_size, "weight_size", x.ndim)
    N, spec, op, O = transpose_geometry(x.shape, weight_size, stride, padding, output_padding, dilation, groups)
    check_grad_output(grad_output, (x.shape[0], weight_size[1] * groups) + O, x)
    return compiled("per_sample_weight_grad_transpose", **_hyper(N, spec, output_padding=op))(x=x,
                                                                                            grad_output=grad_output)


def per_sample_weight_grad_sq_norm(x, weight_size, grad_output, stride=1, padding=0, dilation=1,
                                   groups=1) -> torch.Tensor:
    """``‖∇_W ℓ_b‖²`` of every sample, ``[B]``: the squared norms of :func:`~tnconv.functional.per_sample_weight_grad`.

    What DP-SGD clips by (BackPACK's ``BatchL2Grad`` for the weight). The
    per-sample gradients are not materialized when the Gram route (``[O, O]``
    per sample) costs less.

    Example:
        >>> x, g = torch.randn(2, 3, 8, dtype=torch.float64), torch.randn(2, 4, 6, dtype=torch.float64)
        >>> from tnconv.functional import per_sample_weight_grad
        >>> ref = per_sample_weight_grad(x, (4, 3, 3), g).pow(2).sum((1, 2, 3))
        >>> torch.allclose(per_sample_weight_grad_sq_norm(x, (4, 3, 3), g), ref)
        True
    """
    check_tensor(x, "x", min_ndim=3)
    weight_size = check_size(weight_size, "weight_size", x.ndim)
    N, spec, O = conv_geometry(x.shape, weight_size, stride, padding, dilation, groups, weight_name="weight_size")
    check_grad_output(grad_output, (x.shape[0], weight_size[0]) + O, x)
    return compiled("per_sample_weight_grad_sq_norm", **_hyper(N, spec))(x=x, grad_output=grad_output)


def per_sample_weight_grad_sq_norm_transpose(x, weight_size, grad_output, stride=1, padding=0, output_padding=0,
                                             groups=1, dilation=1) -> torch.Tensor:
    """Squared norms ``[B]`` of :func:`per_sample_weight_grad_transpose`, without materializing it where cheaper.

    Example:
        >>> x, g = torch.randn(2, 4, 5), torch.randn(2, 3, 11)
        >>> per_sample_weight_grad_sq_norm_transpose(x, (4, 3, 3), g, stride=2).shape
        torch.Size([2])
    """
    check_tensor(x, "x", min_ndim=3)
    weight_size = check_size(weight_size, "weight_size", x.ndim)
    N, spec, op, O = transpose_geometry(x.shape, weight_size, stride, padding, output_padding, dilation, groups)
    check_grad_output(grad_output, (x.shape[0], weight_size[1] * groups) + O, x)
    return compiled("per_sample_weight_grad_sq_norm_transpose", **_hyper(N, spec, output_padding=op))(
        x=x, grad_output=grad_output)


def ggn_diagonal_transpose(x, weight_size, sqrt_ggn, stride=1, padding=0, output_padding=0, groups=1,
                           dilation=1) -> torch.Tensor:
    """GGN diagonal ``Σ_v Σ_b (J_Wᵀ s_vb)²`` for a transpose convolution's weight, shape ``weight_size``.

    Like :func:`~tnconv.functional.ggn_diagonal`, for ``conv_transpose(x, W)``
    with ``W`` of shape ``[C_in, C_out/groups, *K]``.

    Args:
        x: ``[B, C_in, *I]``.
        weight_size: ``[C_in, C_out/groups, *K]``.
        sqrt_ggn: ``[V, B, C_out, *O]``.

    Example:
        >>> x, s = torch.randn(2, 4, 5), torch.randn(3, 2, 6, 7)
        >>> ggn_diagonal_transpose(x, (4, 3, 3), s, groups=2).shape
        torch.Size([4, 3, 3])
    """
    check_tensor(x, "x", min_ndim=3)
    weight_size = check_size(weight_size, "weight_size", x.ndim)
    N, spec, op, O = transpose_geometry(x.shape, weight_size, stride, padding, output_padding, dilation, groups)
    check_sqrt_ggn(sqrt_ggn, x.shape[0], weight_size[1] * groups, O, x)
    return compiled("ggn_diagonal_transpose", **_hyper(N, spec, output_padding=op))(x=x, sqrt_ggn=sqrt_ggn)


__all__ = ["per_sample_weight_grad_transpose", "per_sample_weight_grad_sq_norm",
           "per_sample_weight_grad_sq_norm_transpose", "ggn_diagonal_transpose", "transpose_geometry"]
