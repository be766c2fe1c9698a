"""Diagram builders: one function per operation, each returns a network."""

from .autodiff import (
    conv_transpose_input_jvp,
    conv_transpose_input_vjp,
    conv_transpose_weight_jvp,
    conv_transpose_weight_vjp,
    input_jvp,
    input_vjp,
    per_sample_weight_grad,
    weight_jvp,
    weight_vjp,
)
from .curvature import ggn_diagonal, ggn_gram, kfac_reduce, kfac_reduce_transpose, kfc, kfc_transpose
from .forward import conv, conv_transpose, fold, unfold, unfold_kernel, unfold_transpose
from .per_sample import (
    ggn_diagonal_transpose,
    per_sample_weight_grad_sq_norm,
    per_sample_weight_grad_sq_norm_transpose,
    per_sample_weight_grad_transpose,
)
from .second_order import (
    ggn_diagonal_input,
    hessian_diagonal_input,
    hessian_diagonal_weight,
    input_jacobian,
    kfac_reduce_output,
    kfc_output,
    mixed_second_derivative,
    weight_jacobian,
)

__all__ = [
    "conv", "conv_transpose", "unfold", "fold", "unfold_kernel", "unfold_transpose",
    "weight_vjp", "input_vjp", "weight_jvp", "input_jvp", "per_sample_weight_grad",
    "conv_transpose_input_vjp", "conv_transpose_weight_vjp", "conv_transpose_input_jvp", "conv_transpose_weight_jvp",
    "kfc", "kfac_reduce", "kfc_transpose", "kfac_reduce_transpose", "ggn_diagonal", "ggn_gram",
    "hessian_diagonal_weight", "hessian_diagonal_input", "ggn_diagonal_input",
    "input_jacobian", "weight_jacobian", "mixed_second_derivative", "kfc_output", "kfac_reduce_output",
    # per-sample gradients of transpose convolutions, squared norms, GGN diagonal of a transpose convolution
    "per_sample_weight_grad_transpose", "per_sample_weight_grad_sq_norm", "per_sample_weight_grad_sq_norm_transpose",
    "ggn_diagonal_transpose",
]
