"""VJPs, JVPs and per-sample gradients of the convolution, compiled from derived diagrams."""

from __future__ import annotations

import torch

from .._args import check_same, check_size, check_tensor
from ._common import _batched, _freeze, check_grad_output, compiled, conv_geometry
from ._dispatch import FastPath, compiling, op_hyper

_WEIGHT_VJP, _INPUT_VJP = FastPath(), FastPath()


def _hyper(N, spec):
    return dict(N=N, groups=spec.groups, **_freeze(spec))


def weight_vjp(x, weight_size, grad_output, stride=1, padding=0, dilation=1, groups=1) -> torch.Tensor:
    """Gradient with respect to the weight, same as ``torch.nn.grad.conv{1,2,3}d_weight``, any N.

    Args:
        x: the convolution's input ``[B, C_in, *I]`` (batched only, as in PyTorch).
        weight_size: the weight's shape ``[C_out, C_in/groups, *K]``.
        grad_output: ``[B, C_out, *O]``.

    Example:
        >>> x, w = torch.randn(2, 3, 8), torch.randn(4, 3, 3)
        >>> g = torch.randn(2, 4, 6)
        >>> torch.allclose(weight_vjp(x, w.shape, g), torch.nn.grad.conv1d_weight(x, w.shape, g), atol=1e-5)
        True
    """
    hyper = (weight_size, stride, padding, dilation, groups)
    run = _WEIGHT_VJP.get(x, grad_output, None, hyper)  # a repeated call signature: validated before
    if run is not None:
        return run(x=x, grad_output=grad_output)
    check_tensor(x, "x")
    weight_size = check_size(weight_size, "weight_size")
    N, spec, O = conv_geometry(x.shape, weight_size, stride, padding, dilation, groups, weight_name="weight_size")
    check_grad_output(grad_output, (x.shape[0], weight_size[0]) + O, x)
    if compiling():  # torch.compile sees the custom operator, not the plan cache
        return torch.ops.tnconv.conv_weight_vjp(x, list(weight_size), grad_output, *op_hyper(spec), groups)
    fn = compiled("weight_vjp", **_hyper(N, spec))
    _WEIGHT_VJP.put(x, grad_output, None, hyper, fn)
    return fn(x=x, grad_output=grad_output)


def input_vjp(input_size, weight, grad_output, stride=1, padding=0, dilation=1, groups=1) -> torch.Tensor:
    """Gradient with respect to the input, same as ``torch.nn.grad.conv{1,2,3}d_input``, any N.

    Args:
        input_size: the input's full shape ``[B, C_in, *I]`` (as in PyTorch).
        weight: ``[C_out, C_in/groups, *K]``.
        grad_output: ``[B, C_out, *O]``.

    Example:
        >>> w, g = torch.randn(4, 3, 3), torch.randn(2, 4, 6)
        >>> torch.allclose(input_vjp((2, 3, 8), w, g), torch.nn.grad.conv1d_input((2, 3, 8), w, g), atol=1e-5)
        True
    """
    hyper = (input_size, stride, padding, dilation, groups)
    run = _INPUT_VJP.get(weight, grad_output, None, hyper)  # a repeated call signature: validated before
    if run is not None:
        return run(w=weight, grad_output=grad_output)
    check_tensor(weight, "weight", min_ndim=3)
    input_size = check_size(input_size, "input_size")
    N, spec, O = conv_geometry(input_size, weight.shape, stride, padding, dilation, groups, x_name="input_size")
    check_grad_output(grad_output, (input_size[0], weight.shape[0]) + O, weight, "grad_output")
    if compiling():  # torch.compile sees the custom operator, not the plan cache
        return torch.ops.tnconv.conv_input_vjp(list(input_size), weight, grad_output, *op_hyper(spec), groups)
    fn = compiled("input_vjp", input_size=tuple(input_size[2:]), **_hyper(N, spec))
    _INPUT_VJP.put(weight, grad_output, None, hyper, fn)
    return fn(w=weight, grad_output=grad_output)


def weight_jvp(x, weight_tangent, stride=1, padding=0, dilation=1, groups=1) -> torch.Tensor:
    """Jacobian-vector product with a weight tangent: ``∂conv(x, w)/∂w · weight_tangent``.

    For a convolution (linear in ``w``) this equals ``conv(x, weight_tangent)``;
    here it is computed from the JVP diagram.

    Args:
        x: ``[B, C_in, *I]`` (or unbatched ``[C_in, *I]``, as the convolution takes it).
        weight_tangent: weight-shaped ``[C_out, C_in/groups, *K]``.

    Example:
        >>> x, t = torch.randn(2, 3, 8), torch.randn(4, 3, 3)
        >>> torch.allclose(weight_jvp(x, t), torch.nn.functional.conv1d(x, t), atol=1e-5)
        True
    """
    check_tensor(weight_tangent, "weight_tangent", min_ndim=3)
    check_tensor(x, "x")
    x, squeeze = _batched(x, weight_tangent.ndim, weight_name="weight_tangent")
    check_same(x, "x", weight_tangent, "weight_tangent")
    N, spec, _ = conv_geometry(x.shape, weight_tangent.shape, stride, padding, dilation, groups, weight_name="weight_tangent")
    y = compiled("weight_jvp", **_hyper(N, spec))(x=x, tangent=weight_tangent)
    return y.squeeze(0) if squeeze else y


def input_jvp(input_tangent, weight, stride=1, padding=0, dilation=1, groups=1) -> torch.Tensor:
    """Jacobian-vector product with an input tangent: ``∂conv(x, w)/∂x · input_tangent``.

    Args:
        input_tangent: input-shaped ``[B, C_in, *I]`` (or unbatched ``[C_in, *I]``).
        weight: ``[C_out, C_in/groups, *K]``.

    Example:
        >>> t, w = torch.randn(2, 3, 8), torch.randn(4, 3, 3)
        >>> torch.allclose(input_jvp(t, w), torch.nn.functional.conv1d(t, w), atol=1e-5)
        True
    """
    check_tensor(weight, "weight", min_ndim=3)
    check_tensor(input_tangent, "input_tangent")
    input_tangent, squeeze = _batched(input_tangent, weight.ndim, "input_tangent")
    check_same(weight, "weight", input_tangent, "input_tangent")
    N, spec, _ = conv_geometry(input_tangent.shape, weight.shape, stride, padding, dilation, groups, x_name="input_tangent")
    y = compiled("input_jvp", **_hyper(N, spec))(w=weight, tangent=input_tangent)
    return y.squeeze(0) if squeeze else y


def per_sample_weight_grad(x, weight_size, grad_output, stride=1, padding=0, dilation=1, groups=1) -> torch.Tensor:
    """Per-sample weight gradients ``[B, *weight_size]``; their sum over ``B`` is :func:`weight_vjp`.

    Example:
        >>> x, g = torch.randn(2, 3, 8), torch.randn(2, 4, 6)
        >>> per = per_sample_weight_grad(x, (4, 3, 3), g)
        >>> per.shape, torch.allclose(per.sum(0), weight_vjp(x, (4, 3, 3), g), atol=1e-5)
        (torch.Size([2, 4, 3, 3]), True)
    """
    check_tensor(x, "x")
    weight_size = check_size(weight_size, "weight_size")
    N, spec, O = conv_geometry(x.shape, weight_size, stride, padding, dilation, groups, weight_name="weight_size")
    check_grad_output(grad_output, (x.shape[0], weight_size[0]) + O, x)
    return compiled("per_sample_weight_grad", **_hyper(N, spec))(x=x, grad_output=grad_output)


__all__ = ["weight_vjp", "input_vjp", "weight_jvp", "input_jvp", "per_sample_weight_grad"]
