"""Autodiff diagrams, each derived from :func:`~tnconv.diagrams.conv` by passes.

Nothing here writes a contraction by hand: the weight VJP is the convolution
with ``w`` cut out and ``grad_output`` wired to its output, the per-sample
gradient is the unbatched weight VJP batched over ``x`` and ``grad_output``.
"""

from __future__ import annotations

from .. import passes
from .forward import conv, conv_transpose


def weight_vjp(N, kernel_size, stride=1, padding=0, dilation=1, groups=1):
    """Weight VJP: inputs ``x`` ``[B, C_in, *I]`` and ``grad_output`` ``[B, C_out, *O]``, output ``[C_out, C_in/G, *K]``.

    Example:
        >>> print(weight_vjp(N=1, kernel_size=3).to_text().splitlines()[-3])
          output (c_out') (c_in') (k1')
    """
    return passes.vjp(conv(N, kernel_size, stride, padding, dilation, groups), "w", "grad_output")


def input_vjp(N, kernel_size, input_size, stride=1, padding=0, dilation=1, groups=1):
    """Input VJP (a transpose convolution): inputs ``w`` and ``grad_output``, output ``[B, C_in, *input_size]``.

    ``input_size`` (spatial) is part of the diagram because several input sizes
    share one output size.

    Example:
        >>> input_vjp(N=2, kernel_size=3, input_size=(8, 8)).inputs
        ('w', 'grad_output')
    """
    return passes.vjp(conv(N, kernel_size, stride, padding, dilation, groups, input_size=input_size), "x", "grad_output")


def weight_jvp(N, kernel_size, stride=1, padding=0, dilation=1, groups=1):
    """Weight JVP: inputs ``x`` and ``tangent`` (weight-shaped), output ``[B, C_out, *O]``.

    Example:
        >>> weight_jvp(N=1, kernel_size=3).inputs
        ('x', 'tangent')
    """
    return passes.jvp(conv(N, kernel_size, stride, padding, dilation, groups), "w", "tangent")


def input_jvp(N, kernel_size, stride=1, padding=0, dilation=1, groups=1):
    """Input JVP: inputs ``w`` and ``tangent`` (input-shaped), output ``[B, C_out, *O]``.

    Example:
        >>> input_jvp(N=1, kernel_size=3).inputs
        ('w', 'tangent')
    """
    return passes.jvp(conv(N, kernel_size, stride, padding, dilation, groups), "x", "tangent")


def conv_transpose_input_vjp(N, kernel_size, stride=1, padding=0, output_padding=0, dilation=1, groups=1):
    """Input VJP of a transpose convolution: inputs ``w`` ``[C_in, C_out/G, *K]`` and ``grad_output``, output ``[B, C_in, *I]``.

    Cut ``x`` out of :func:`~tnconv.diagrams.conv_transpose`; the result is a
    convolution of ``grad_output`` (the compiler lowers it to PyTorch's kernel).

    Example:
        >>> conv_transpose_input_vjp(N=1, kernel_size=3, stride=2).inputs
        ('w', 'grad_output')
    """
    tn = conv_transpose(N, kernel_size, stride, padding, output_padding, dilation, groups)
    return passes.vjp(tn, "x", "grad_output")


def conv_transpose_weight_vjp(N, kernel_size, stride=1, padding=0, output_padding=0, dilation=1, groups=1):
    """Weight VJP of a transpose convolution: inputs ``x`` and ``grad_output``, output ``[C_in, C_out/G, *K]``.

    Example:
        >>> conv_transpose_weight_vjp(N=1, kernel_size=3, stride=2).inputs
        ('x', 'grad_output')
    """
    tn = conv_transpose(N, kernel_size, stride, padding, output_padding, dilation, groups)
    return passes.vjp(tn, "w", "grad_output")


def conv_transpose_input_jvp(N, kernel_size, stride=1, padding=0, output_padding=0, dilation=1, groups=1):
    """Input JVP of a transpose convolution: inputs ``w`` and ``tangent`` (input-shaped), output ``[B, C_out, *O]``.

    Example:
        >>> conv_transpose_input_jvp(N=1, kernel_size=3).inputs
        ('w', 'tangent')
    """
    tn = conv_transpose(N, kernel_size, stride, padding, output_padding, dilation, groups)
    return passes.jvp(tn, "x", "tangent")


def conv_transpose_weight_jvp(N, kernel_size, stride=1, padding=0, output_padding=0, dilation=1, groups=1):
    """Weight JVP of a transpose convolution: inputs ``x`` and ``tangent`` (weight-shaped), output ``[B, C_out, *O]``.

    Example:
        >>> conv_transpose_weight_jvp(N=1, kernel_size=3).inputs
        ('x', 'tangent')
    """
    tn = conv_transpose(N, kernel_size, stride, padding, output_padding, dilation, groups)
    return passes.jvp(tn, "w", "tangent")


def per_sample_weight_grad(N, kernel_size, stride=1, padding=0, dilation=1, groups=1):
    """Per-sample weight gradients ``[B, C_out, C_in/G, *K]``: the unbatched weight VJP, batched.

    Example:
        >>> per_sample_weight_grad(N=2, kernel_size=3).output_shape
        (B, C_out, C_in, 3, 3)
    """
    single = passes.vjp(conv(N, kernel_size, stride, padding, dilation, groups, batch=False), "w", "grad_output")
    return passes.batch(single, "n", "B", ["x", "grad_output"]).replace(name=f"per_sample_weight_grad{N}d")
