"""Hessian and GGN diagonals, full Jacobians and output-gradient Kronecker factors of a convolution.

The diagrams are derived in :mod:`tnconv.diagrams.second_order`.
"""

from __future__ import annotations

import torch

from .._args import check_same, check_size, check_tensor
from ._common import _check_groups, _freeze, check_grad_output, check_sqrt_ggn, compiled, conv_geometry, read_layout, spatial_dims


def _hyper(N, spec):
    return dict(N=N, groups=spec.groups, **_freeze(spec))


def hessian_diagonal_weight(x, weight_size, output_diag, stride=1, padding=0, dilation=1, groups=1) -> torch.Tensor:
    """``Σ_b Σ_o output_diag[b, c_out, o] · (∂y[b, c_out, o]/∂w)²``, shape ``weight_size``.

    The diagonal of ``Jᵀ diag(h) J`` for the weight, given a diagonal
    approximation ``h`` of the loss Hessian with respect to the output
    (Becker & LeCun, 1989; HesScale).

    Args:
        x: ``[B, C_in, *I]``.
        weight_size: ``[C_out, C_in/groups, *K]``.
        output_diag: ``[B, C_out, *O]``.

    Example:
        >>> x, h = torch.randn(2, 3, 8), torch.rand(2, 4, 6)
        >>> hessian_diagonal_weight(x, (4, 3, 3), h).shape
        torch.Size([4, 3, 3])
    """
    check_tensor(x, "x")
    weight_size = check_size(weight_size, "weight_size")
    N, spec, O = conv_geometry(x.shape, weight_size, stride, padding, dilation, groups, weight_name="weight_size")
    check_grad_output(output_diag, (x.shape[0], weight_size[0]) + O, x, "output_diag")
    return compiled("hessian_diagonal_weight", **_hyper(N, spec))(x=x, output_diag=output_diag)


def hessian_diagonal_input(weight, input_size, output_diag, stride=1, padding=0, dilation=1, groups=1) -> torch.Tensor:
    """``Σ_{c_out, o} output_diag[b, c_out, o] · (∂y[b, c_out, o]/∂x[b, c_in, i])²``, shape ``input_size``.

    Args:
        weight: ``[C_out, C_in/groups, *K]``.
        input_size: the input's full shape ``[B, C_in, *I]``.
        output_diag: ``[B, C_out, *O]``.

    Example:
        >>> w, h = torch.randn(4, 3, 3), torch.rand(2, 4, 6)
        >>> hessian_diagonal_input(w, (2, 3, 8), h).shape
        torch.Size([2, 3, 8])
    """
    check_tensor(weight, "weight", min_ndim=3)
    input_size = check_size(input_size, "input_size")
    N, spec, O = conv_geometry(input_size, weight.shape, stride, padding, dilation, groups, x_name="input_size")
    check_grad_output(output_diag, (input_size[0], weight.shape[0]) + O, weight, "output_diag")
    fn = compiled("hessian_diagonal_input", input_size=tuple(input_size[2:]), **_hyper(N, spec))
    return fn(w=weight, output_diag=output_diag)


def ggn_diagonal_input(weight, input_size, sqrt_ggn, stride=1, padding=0, dilation=1, groups=1) -> torch.Tensor:
    """GGN diagonal for the input, ``Σ_v (J_xᵀ s_vb)²`` per sample, shape ``input_size``.

    Args:
        weight: ``[C_out, C_in/groups, *K]``.
        input_size: ``[B, C_in, *I]``.
        sqrt_ggn: ``[V, B, C_out, *O]``.

    Example:
        >>> w, s = torch.randn(4, 3, 3), torch.randn(5, 2, 4, 6)
        >>> ggn_diagonal_input(w, (2, 3, 8), s).shape
        torch.Size([2, 3, 8])
    """
    check_tensor(weight, "weight", min_ndim=3)
    input_size = check_size(input_size, "input_size")
    N, spec, O = conv_geometry(input_size, weight.shape, stride, padding, dilation, groups, x_name="input_size")
    check_sqrt_ggn(sqrt_ggn, input_size[0], weight.shape[0], O, weight)
    fn = compiled("ggn_diagonal_input", input_size=tuple(input_size[2:]), **_hyper(N, spec))
    return fn(w=weight, sqrt_ggn=sqrt_ggn)


def input_jacobian(weight, input_size, stride=1, padding=0, dilation=1, groups=1) -> torch.Tensor:
    """The full Jacobian ``∂y/∂x``, shape ``[B, C_out, *O, B, C_in, *I]`` (for small problems).

    Example:
        >>> w = torch.randn(2, 1, 2)
        >>> input_jacobian(w, (1, 1, 3)).shape
        torch.Size([1, 2, 2, 1, 1, 3])
    """
    check_tensor(weight, "weight", min_ndim=3)
    input_size = check_size(input_size, "input_size")
    N, spec, _ = conv_geometry(input_size, weight.shape, stride, padding, dilation, groups, x_name="input_size")
    fn = compiled("input_jacobian", input_size=tuple(input_size[2:]), **_hyper(N, spec))
    return fn(w=weight, B=input_size[0])


def weight_jacobian(x, weight_size, stride=1, padding=0, dilation=1, groups=1) -> torch.Tensor:
    """The full Jacobian ``∂y/∂w``, shape ``[B, C_out, *O, C_out, C_in/G, *K]`` (for small problems).

    Example:
        >>> weight_jacobian(torch.randn(1, 1, 3), (2, 1, 2)).shape
        torch.Size([1, 2, 2, 2, 1, 2])
    """
    check_tensor(x, "x")
    weight_size = check_size(weight_size, "weight_size")
    N, spec, _ = conv_geometry(x.shape, weight_size, stride, padding, dilation, groups, weight_name="weight_size")
    return compiled("weight_jacobian", **_hyper(N, spec))(x=x, C_out=weight_size[0])


def mixed_second_derivative(input_size, weight_size, stride=1, padding=0, dilation=1, groups=1, dtype=None,
                            device=None) -> torch.Tensor:
    """``∂²y/∂w∂x``, shape ``[B, C_out, *O, *weight_size, *input_size]``; a constant of the convolution.

    Args:
        input_size: ``[B, C_in, *I]``.
        weight_size: ``[C_out, C_in/groups, *K]``.
        dtype, device: of the result (default: torch's default dtype, CPU).

    Example:
        >>> mixed_second_derivative((1, 1, 3), (1, 1, 2)).shape
        torch.Size([1, 1, 2, 1, 1, 2, 1, 1, 3])
    """
    input_size = check_size(input_size, "input_size")
    weight_size = check_size(weight_size, "weight_size")
    N, spec, _ = conv_geometry(input_size, weight_size, stride, padding, dilation, groups, x_name="input_size",
                               weight_name="weight_size")
    fn = compiled("mixed_second_derivative", input_size=tuple(input_size[2:]), **_hyper(N, spec))
    kwargs = dict(B=input_size[0], C_in=input_size[1], C_out=weight_size[0],
                  dtype=dtype or torch.get_default_dtype(), device=torch.device(device or "cpu"))
    return fn(**kwargs)


def _output_grad(grad_output, groups, N):
    """``grad_output`` as ``[B', C_out, *O]``: batched, vectors ``[V, B, ...]`` flattened into ``B``, or one sample."""
    check_tensor(grad_output, "grad_output")
    N = spatial_dims(N)
    lead = read_layout(grad_output, N, "grad_output", lead=(1, 2, 3), channels="C_out", spatial="O",
                       hint="pass N, the convolution's number of spatial dimensions")
    g = grad_output.unsqueeze(0) if lead == 1 else grad_output.flatten(0, 1) if lead == 3 else grad_output
    _check_groups(groups)
    if g.shape[1] % groups:
        raise ValueError(f"groups={groups} must divide the output channels grad_output.shape[{lead - 1}]={g.shape[1]}")
    return g


def kfc_output(grad_output, groups=1, *, N=None) -> torch.Tensor:
    """KFAC-expand output-gradient factor ``Γ = Σ_b Σ_o g_bo g_boᵀ`` per group, ``[G, C_out/G, C_out/G]``.

    ``g_bo = grad_output[b, :, o]`` are the gradients of the loss with respect
    to the convolution's output (for a Fisher, sampled ones; for the GGN,
    columns of its square root). With the input factor
    ``Ω`` of :func:`~tnconv.functional.kfc` (``1/B Σ_b Σ_o``), KFAC-expand as in
    Eschenhagen et al. (2023) and curvlinops' ``kfac_approx="expand"`` is
    ``(Ω / O) ⊗ Γ``. BackPACK's KFAC/KFLR pair ``Ω`` itself (no ``1/O``) with
    the reduce form :func:`kfac_reduce_output` of its backpropagated square
    root, not with this ``Γ`` (``docs/curvature.md`` tabulates the conventions).

    Args:
        grad_output: ``[B, C_out, *O]``, vectors ``[V, B, C_out, *O]`` (as
            :func:`~tnconv.functional.ggn_diagonal` takes them; the sum runs over
            ``V`` too) or one sample's ``[C_out, *O]``.
        groups: the convolution's groups.
        N: the number of spatial dimensions; needed unless ``grad_output``'s rank fits one
            layout only (its rank alone cannot tell ``[V, B, C_out, O1, O2]`` from a
            3-d convolution's ``[B, C_out, O1, O2, O3]``).

    Example:
        >>> g = torch.randn(2, 4, 5)
        >>> torch.allclose(kfc_output(g, N=1)[0], torch.einsum("bio,bjo->ij", g, g), atol=1e-5)
        True
        >>> kfc_output(torch.randn(3, 2, 4, 5, 5), N=2).shape
        torch.Size([1, 4, 4])
    """
    g = _output_grad(grad_output, groups, N)
    return compiled("kfc_output", N=g.ndim - 2, groups=groups)(grad_output=g)


def kfac_reduce_output(grad_output, groups=1, *, N=None) -> torch.Tensor:
    """KFAC-reduce output-gradient factor ``Γ̂ = Σ_b (Σ_o g_bo)(Σ_o g_bo)ᵀ`` per group.

    With :func:`~tnconv.functional.kfac_reduce`'s ``Ω̂`` (the outer product of
    the *average* patch), KFAC-reduce is ``Ω̂ ⊗ Γ̂`` (Eschenhagen et al., 2023).
    Arguments as in :func:`kfc_output`.

    Example:
        >>> g = torch.randn(2, 4, 5)
        >>> s = g.sum(-1)
        >>> torch.allclose(kfac_reduce_output(g, N=1)[0], s.T @ s, atol=1e-5)
        True
    """
    g = _output_grad(grad_output, groups, N)
    return compiled("kfac_reduce_output", N=g.ndim - 2, groups=groups)(grad_output=g)


__all__ = ["hessian_diagonal_weight", "hessian_diagonal_input", "ggn_diagonal_input", "input_jacobian",
           "weight_jacobian", "mixed_second_derivative", "kfc_output", "kfac_reduce_output"]
