"""Per-sample diagrams for differentially private training and diagonal curvature, derived by passes.

* the per-sample weight gradient of a *transpose* convolution: the unbatched
  weight VJP of :func:`~tnconv.diagrams.conv_transpose`, batched over ``x``
  and ``grad_output`` (as :func:`~tnconv.diagrams.per_sample_weight_grad` is
  for the convolution);
* the squared norm of every sample's weight gradient (BackPACK's
  ``BatchL2Grad``, the quantity DP-SGD clips by): the per-sample gradient
  network joined with a renamed copy of itself along its open legs, which are
  then summed except the batch leg. Nothing in the diagram says in which order
  to contract: the backend may materialize the per-sample gradient and square
  it, or contract each copy's input with the other's first (a Gram matrix
  ``[O, O]`` per sample) when ``O²`` is smaller than the weight;
* the GGN diagonal of a transpose convolution's weight, like
  :func:`~tnconv.diagrams.ggn_diagonal`.
"""

from __future__ import annotations

from .. import passes
from .autodiff import per_sample_weight_grad
from .forward import conv_transpose


def squared_norm(per_sample, name: str):
    """``Σ`` over every open leg but the first (the batch) of ``per_sample``'s square: output ``[B]``.

    The Hadamard square of ``per_sample`` (a copy renamed apart except on the
    open legs, which both copies then share) summed over the shared legs.

    Example:
        >>> tn = squared_norm(per_sample_weight_grad(N=1, kernel_size=3), "norms")
        >>> tn.output_shape, tn.inputs
        ((B,), ('x', 'grad_output'))
    """
    keep = {leg.name for leg in per_sample.output_legs}
    copy = passes.rename_apart(per_sample, keep=keep)
    return passes.contract(per_sample, copy, output=per_sample.output[:1], name=name)


def per_sample_weight_grad_transpose(N, kernel_size, stride=1, padding=0, output_padding=0, dilation=1, groups=1):
    """Per-sample weight gradients of a transpose convolution ``[B, C_in, C_out/G, *K]``.

    Inputs ``x`` ``[B, C_in, *I]`` (the transpose convolution's input) and
    ``grad_output`` ``[B, C_out, *O]``; the weight has PyTorch's transpose
    layout ``[C_in, C_out/G, *K]``. The unbatched weight VJP, batched.

    Example:
        >>> per_sample_weight_grad_transpose(N=1, kernel_size=3, stride=2).output_shape
        (B, C_in, C_out, 3)
    """
    tn = conv_transpose(N, kernel_size, stride, padding, output_padding, dilation, groups, batch=False)
    single = passes.vjp(tn, "w", "grad_output")
    return passes.batch(single, "n", "B", ["x", "grad_output"]).replace(name=f"per_sample_weight_grad_transpose{N}d")


def per_sample_weight_grad_sq_norm(N, kernel_size, stride=1, padding=0, dilation=1, groups=1):
    """``‖∇_W ℓ_b‖²`` for every sample ``b``: inputs ``x`` and ``grad_output``, output ``[B]``.

    :func:`squared_norm` of :func:`~tnconv.diagrams.per_sample_weight_grad`.

    Example:
        >>> per_sample_weight_grad_sq_norm(N=2, kernel_size=3, groups=2).output_shape
        (B,)
    """
    per_sample = per_sample_weight_grad(N, kernel_size, stride, padding, dilation, groups)
    return squared_norm(per_sample, f"per_sample_weight_grad_sq_norm{N}d")


def per_sample_weight_grad_sq_norm_transpose(N, kernel_size, stride=1, padding=0, output_padding=0, dilation=1,
                                             groups=1):
    """:func:`per_sample_weight_grad_sq_norm` for a transpose convolution: output ``[B]``.

    Example:
        >>> per_sample_weight_grad_sq_norm_transpose(N=1, kernel_size=2, stride=2).inputs
        ('x', 'grad_output')
    """
    per_sample = per_sample_weight_grad_transpose(N, kernel_size, stride, padding, output_padding, dilation, groups)
    return squared_norm(per_sample, f"per_sample_weight_grad_sq_norm_transpose{N}d")


def ggn_diagonal_transpose(N, kernel_size, stride=1, padding=0, output_padding=0, dilation=1, groups=1):
    """GGN diagonal for a transpose convolution's weight, ``Σ_v Σ_b (J_Wᵀ s_vb)²``, shape ``[C_in, C_out/G, *K]``.

    Inputs ``x`` ``[B, C_in, *I]`` and ``sqrt_ggn`` ``[V, B, C_out, *O]``: the
    per-sample VJPs of the transpose convolution, batched over ``v`` and
    ``n``, times a copy sharing the weight legs, ``v`` and ``n``.

    Example:
        >>> ggn_diagonal_transpose(N=1, kernel_size=3, groups=2).output_shape
        (C_in, C_out/2, 3)
    """
    tn = conv_transpose(N, kernel_size, stride, padding, output_padding, dilation, groups, batch=False)
    single = passes.vjp(tn, "w", "sqrt_ggn")
    vjps = passes.batch(passes.batch(single, "n", "B", ["x", "sqrt_ggn"]), "v", "V", ["sqrt_ggn"])
    weight_axes = vjps.output[2:]
    keep = {"v", "n"} | {leg.name for axis in weight_axes for leg in axis}
    copy = passes.rename_apart(vjps, keep=keep)
    return passes.contract(vjps, copy, output=weight_axes, name=f"ggn_diagonal_transpose{N}d")


__all__ = ["squared_norm", "per_sample_weight_grad_transpose", "per_sample_weight_grad_sq_norm",
           "per_sample_weight_grad_sq_norm_transpose", "ggn_diagonal_transpose"]
