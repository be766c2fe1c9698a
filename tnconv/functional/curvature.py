"""Kronecker factors and GGN quantities of a convolution, compiled from derived diagrams.

Scaling conventions are documented in :mod:`tnconv.diagrams.curvature`.
"""

from __future__ import annotations

import torch

from .._args import ConvSpec, check_size, check_tensor
from ._common import (_check_groups, _check_output, _freeze, check_sqrt_ggn, check_transpose_output, compiled,
                      conv_geometry, read_layout, spatial_dims, transpose_output_padding)
from ._dispatch import compiling, op_hyper


def _factor_input(x, N, kernel_size, stride, padding, dilation, groups, output_padding=0):
    """``(x as [B, C_in, *I], spec, unbatched)``: the convolution's input, batched or not, and its hyper-parameters."""
    check_tensor(x, "x")
    N = spatial_dims(N, kernel_size, stride, padding, dilation, output_padding)
    unbatched = read_layout(x, N, channels="C_in", hint="pass N or kernel_size as a tuple") == 1
    x = x.unsqueeze(0) if unbatched else x  # one sample: B = 1
    _check_groups(groups)
    if x.shape[1] % groups:
        raise ValueError(f"groups={groups} must divide the input channels x.shape[{1 - unbatched}]={x.shape[1]}")
    return x, ConvSpec.make(x.ndim - 2, kernel_size, stride, padding, dilation, groups), unbatched


def kfc(x, kernel_size, stride=1, padding=0, dilation=1, groups=1, *, N=None) -> torch.Tensor:
    """KFC (KFAC-expand) input factor ``1/B Σ_b [[X_b]] [[X_b]]ᵀ``, shape ``[G, C_in/G·K, C_in/G·K]``.

    ``[[X_b]]`` is sample ``b``'s unfolded input (im2col) restricted to channel
    group ``g``: the sum runs over the batch and all output positions. The
    unfolded input is never materialized.

    Args:
        x: the convolution's input, ``[B, C_in, *I]`` or unbatched ``[C_in, *I]`` (``B = 1``).
        kernel_size, stride, padding, dilation, groups: the convolution's hyper-parameters.
        N: the number of spatial dimensions. Needed only when every hyper-parameter is
            an int, where ``x``'s rank cannot tell a batch of ``N``-d inputs from one
            ``N + 1``-d input; a tuple ``kernel_size`` gives it too.

    Example:
        >>> x = torch.randn(4, 3, 8, 8)
        >>> u = torch.nn.functional.unfold(x, 3)
        >>> torch.allclose(kfc(x, (3, 3))[0], torch.einsum("bio,bjo->ij", u, u) / 4, atol=1e-4)
        True
        >>> kfc(x[0], 3, N=2).shape
        torch.Size([1, 27, 27])
    """
    x, spec, _ = _factor_input(x, N, kernel_size, stride, padding, dilation, groups)
    _check_output(spec, x.shape[2:])
    if compiling():  # torch.compile sees the custom operator, not the plan cache
        return torch.ops.tnconv.kfc(x, list(spec.kernel_size), *op_hyper(spec), groups)
    return compiled("kfc", N=spec.N, groups=groups, **_freeze(spec))(x=x)


def kfac_reduce(x, kernel_size, stride=1, padding=0, dilation=1, groups=1, *, N=None) -> torch.Tensor:
    """KFAC-reduce input factor ``1/(B·O²) Σ_b ([[X_b]] 1)([[X_b]] 1)ᵀ``, same shape as :func:`kfc`.

    ``O = O1·..·ON`` is the number of output positions; ``[[X_b]] 1 / O`` is
    the average patch of sample ``b``. ``x`` and ``N`` as in :func:`kfc`.

    Example:
        >>> x = torch.randn(4, 3, 8, 8)
        >>> m = torch.nn.functional.unfold(x, 3).mean(-1)
        >>> torch.allclose(kfac_reduce(x, (3, 3))[0], m.T @ m / 4, atol=1e-5)
        True
    """
    x, spec, _ = _factor_input(x, N, kernel_size, stride, padding, dilation, groups)
    _check_output(spec, x.shape[2:])
    if compiling():  # torch.compile sees the custom operator, not the plan cache
        return torch.ops.tnconv.kfac_reduce(x, list(spec.kernel_size), *op_hyper(spec), groups)
    return compiled("kfac_reduce", N=spec.N, groups=groups, **_freeze(spec))(x=x)


def _transpose_input(x, N, kernel_size, stride, padding, output_padding, dilation, groups, output_size):
    if isinstance(padding, str):
        raise ValueError(f"padding must be an int or a tuple for a transpose convolution, got {padding!r}")
    x, spec, unbatched = _factor_input(x, N, kernel_size, stride, padding, dilation, groups, output_padding)
    output_padding = transpose_output_padding(spec, output_padding, output_size, x.shape[2:], unbatched)
    check_transpose_output(spec, output_padding, x.shape[2:])
    return x, spec, output_padding


def kfc_transpose(x, kernel_size, stride=1, padding=0, output_padding=0, groups=1, dilation=1, *, output_size=None,
                  N=None) -> torch.Tensor:
    """KFC input factor of a transpose convolution, ``[G, C_in/G·K, C_in/G·K]``.

    Like :func:`kfc` with the unfolded input of the transpose convolution
    (:func:`~tnconv.functional.unfold_transpose`) in place of ``[[X]]``.
    Arguments follow ``torch.nn.functional.conv_transpose*d``; ``output_size``
    (the transpose convolution's) sets ``output_padding`` as in
    :func:`~tnconv.functional.conv_transpose`; ``x`` and ``N`` as in :func:`kfc`.

    Example:
        >>> x = torch.randn(2, 3, 5)
        >>> kfc_transpose(x, (2,), stride=2).shape
        torch.Size([1, 6, 6])
    """
    x, spec, op = _transpose_input(x, N, kernel_size, stride, padding, output_padding, dilation, groups, output_size)
    return compiled("kfc_transpose", N=spec.N, groups=groups, output_padding=op, **_freeze(spec))(x=x)


def kfac_reduce_transpose(x, kernel_size, stride=1, padding=0, output_padding=0, groups=1, dilation=1, *,
                          output_size=None, N=None) -> torch.Tensor:
    """KFAC-reduce input factor of a transpose convolution, ``[G, C_in/G·K, C_in/G·K]``.

    Arguments as in :func:`kfc_transpose`.

    Example:
        >>> x = torch.randn(2, 4, 5)
        >>> kfac_reduce_transpose(x, 3, groups=2, N=1).shape
        torch.Size([2, 6, 6])
    """
    x, spec, op = _transpose_input(x, N, kernel_size, stride, padding, output_padding, dilation, groups, output_size)
    return compiled("kfac_reduce_transpose", N=spec.N, groups=groups, output_padding=op, **_freeze(spec))(x=x)


def _ggn_args(x, weight_size, sqrt_ggn, stride, padding, dilation, groups):
    check_tensor(x, "x")
    weight_size = check_size(weight_size, "weight_size")
    N, spec, O = conv_geometry(x.shape, weight_size, stride, padding, dilation, groups, weight_name="weight_size")
    check_sqrt_ggn(sqrt_ggn, x.shape[0], weight_size[0], O, x)
    return dict(N=N, groups=spec.groups, **_freeze(spec))


def ggn_diagonal(x, weight_size, sqrt_ggn, stride=1, padding=0, dilation=1, groups=1) -> torch.Tensor:
    """Diagonal of the GGN for the weight, ``Σ_v Σ_b (J_Wᵀ s_vb)²``, shape ``weight_size``.

    ``J_W`` is the Jacobian of sample ``b``'s convolution output with respect
    to the weight and ``s_vb = sqrt_ggn[v, b]`` a backpropagated column of a
    symmetric factorization ``Σ_v s_v s_vᵀ`` of the loss Hessian (as in BackPACK's
    ``DiagGGN``).

    Args:
        x: ``[B, C_in, *I]``.
        weight_size: ``[C_out, C_in/groups, *K]``.
        sqrt_ggn: ``[V, B, C_out, *O]``.

    Example:
        >>> x, s = torch.randn(2, 3, 6), torch.randn(5, 2, 4, 4)
        >>> ggn_diagonal(x, (4, 3, 3), s).shape
        torch.Size([4, 3, 3])
    """
    hyper = _ggn_args(x, weight_size, sqrt_ggn, stride, padding, dilation, groups)
    return compiled("ggn_diagonal", **hyper)(x=x, sqrt_ggn=sqrt_ggn)


def ggn_gram(x, weight_size, sqrt_ggn, stride=1, padding=0, dilation=1, groups=1) -> torch.Tensor:
    """Gram matrix ``[V·B, V·B]`` of the vectors ``J_Wᵀ s_vb`` (flattened over the weight), ``(v, b)`` row-major.

    Its non-zero eigenvalues are those of the weight's GGN (ViViT's Gram trick).

    Example:
        >>> x, s = torch.randn(2, 3, 6), torch.randn(5, 2, 4, 4)
        >>> ggn_gram(x, (4, 3, 3), s).shape
        torch.Size([10, 10])
    """
    hyper = _ggn_args(x, weight_size, sqrt_ggn, stride, padding, dilation, groups)
    return compiled("ggn_gram", **hyper)(x=x, sqrt_ggn=sqrt_ggn)


__all__ = ["kfc", "kfac_reduce", "kfc_transpose", "kfac_reduce_transpose", "ggn_diagonal", "ggn_gram"]
