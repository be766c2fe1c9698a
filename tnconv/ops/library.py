"""tnconv's PyTorch custom operators (``torch.ops.tnconv.*``): what ``torch.compile`` sees.

Each operator runs a compiled diagram of :mod:`tnconv.diagrams`; the plan is
looked up inside the operator, so dynamo traces neither the plan cache nor the
compiler. Every operator has a fake (meta) implementation that computes the
result's shape with plain arithmetic (symbolic sizes welcome), the forward
operators an autograd rule whose backward calls the operators of the derived
VJP diagrams, and an autocast rule that casts like PyTorch's ``conv*d``.

Hyper-parameters are normalized lists: ``padding`` holds the ``(left, right)``
pair of every spatial dimension, flattened (``[l1, r1, l2, r2, ...]``).

====================================  =========================================================
operator                              diagram
====================================  =========================================================
``conv``                              :func:`~tnconv.diagrams.conv` (with bias: a sum)
``conv_input_vjp``                    :func:`~tnconv.diagrams.input_vjp`
``conv_weight_vjp``                   :func:`~tnconv.diagrams.weight_vjp`
``conv_transpose``                    :func:`~tnconv.diagrams.conv_transpose`
``conv_transpose_input_vjp``          :func:`~tnconv.diagrams.conv_transpose_input_vjp`
``conv_transpose_weight_vjp``         :func:`~tnconv.diagrams.conv_transpose_weight_vjp`
``kfc``, ``kfac_reduce``              :func:`~tnconv.diagrams.kfc`, :func:`~tnconv.diagrams.kfac_reduce`
``factor_vjp``                        ``passes.vjp`` of either factor's diagram with respect to ``x``
====================================  =========================================================

Example:
    >>> import torch, tnconv
    >>> x, w = torch.randn(2, 3, 8, 8), torch.randn(4, 3, 3, 3)
    >>> y = torch.ops.tnconv.conv(x, w, None, [1, 1], [1, 1, 1, 1], [1, 1], 1)
    >>> torch.allclose(y, torch.nn.functional.conv2d(x, w, padding=1), atol=1e-5)
    True
"""

from __future__ import annotations

from functools import lru_cache
from typing import List, Optional, Sequence

import torch
from torch import Tensor

from .. import diagrams, passes
from .._args import ConvSpec, check_same
from ..compiler import compile as _compile
from ..functional._common import BACKEND, _check_bias, check_transpose_output, compiled, conv_geometry


def pairs(padding: Sequence[int]):
    """The flattened ``[l1, r1, l2, r2, ...]`` as ``((l1, r1), (l2, r2), ...)``."""
    return tuple((padding[2 * d], padding[2 * d + 1]) for d in range(len(padding) // 2))


def flat(padding) -> List[int]:
    """``((l1, r1), (l2, r2), ...)`` flattened for the operators."""
    return [p for pair in padding for p in pair]


def _hyper(kernel_size, stride, padding, dilation, groups) -> dict:
    return dict(N=len(stride), groups=groups, kernel_size=tuple(kernel_size), stride=tuple(stride),
                padding=pairs(padding), dilation=tuple(dilation))


def network(op, hyper: dict, **extra):
    """The compiled diagram ``op`` from the functionals' cache, called with the keyword order they use
    (``input_size`` first, else ``N``, ``groups``, then ``extra`` in order, then the hyper-parameters), so an
    operator and a functional share one compiled network and its plans."""
    if "input_size" in extra:
        return compiled(op, input_size=extra["input_size"], **hyper)
    rest = {k: v for k, v in hyper.items() if k not in ("N", "groups")}
    return compiled(op, N=hyper["N"], groups=hyper["groups"], **extra, **rest)


def _fresh(result: Tensor, *inputs) -> Tensor:
    """A contiguous result that shares no memory with an input (what an operator must return)."""
    result = result.contiguous()
    if any(result.data_ptr() == t.data_ptr() for t in inputs if t is not None):
        result = result.clone()
    return result


def _conv_size(x_size, kernel_size, stride, padding, dilation):
    return [(i + padding[2 * d] + padding[2 * d + 1] - dilation[d] * (k - 1) - 1) // stride[d] + 1
            for d, (i, k) in enumerate(zip(x_size, kernel_size))]


def _conv_transpose_size(x_size, kernel_size, stride, padding, output_padding, dilation):
    return [(i - 1) * stride[d] - padding[2 * d] - padding[2 * d + 1] + dilation[d] * (k - 1) + output_padding[d] + 1
            for d, (i, k) in enumerate(zip(x_size, kernel_size))]


# -- convolution ---------------------------------------------------------------------------------------------
@torch.library.custom_op("tnconv::conv", mutates_args=())
def conv(x: Tensor, weight: Tensor, bias: Optional[Tensor], stride: Sequence[int], padding: Sequence[int],
         dilation: Sequence[int], groups: int) -> Tensor:
    """``tnconv.functional.conv`` on batched ``x`` with normalized hyper-parameters, unchecked."""
    fn = network("conv", _hyper(weight.shape[2:], stride, padding, dilation, groups), bias=bias is not None)
    y = fn(x=x, w=weight, b=bias) if bias is not None else fn(x=x, w=weight)
    return _fresh(y, x, weight, bias)


@conv.register_fake
def _(x, weight, bias, stride, padding, dilation, groups):
    # the layers hand torch.compile their tensors unchecked: the checks run here, once per trace
    check_same(x, "x", weight, "weight")
    if all(type(d) is int for d in x.shape):
        conv_geometry(x.shape, weight.shape, tuple(stride), pairs(padding), tuple(dilation), groups)
    else:  # symbolic sizes (dynamic shapes): the checks in integer arithmetic, each a guard
        _check_symbolic(x, weight, stride, padding, dilation, groups)
    _check_bias(bias, weight.shape[0], x)
    return x.new_empty([x.shape[0], weight.shape[0]] + _conv_size(x.shape[2:], weight.shape[2:], stride, padding, dilation))


def _check_symbolic(x, weight, stride, padding, dilation, groups):
    if x.ndim != weight.ndim:
        raise ValueError(f"x must have {weight.ndim} dimensions ([B, C_in, *spatial]) to match weight, got {x.ndim}")
    if weight.shape[0] % groups or x.shape[1] != weight.shape[1] * groups:
        raise ValueError(f"x has {x.shape[1]} channels, but weight {tuple(weight.shape)} with groups={groups} "
                         f"expects {weight.shape[1] * groups}")
    for d, size in enumerate(_conv_size(x.shape[2:], weight.shape[2:], stride, padding, dilation)):
        if size < 1:
            raise ValueError(f"the kernel is larger than the padded input of x along spatial dimension {d}")


@torch.library.custom_op("tnconv::conv_input_vjp", mutates_args=())
def conv_input_vjp(input_size: Sequence[int], weight: Tensor, grad_output: Tensor, stride: Sequence[int],
                   padding: Sequence[int], dilation: Sequence[int], groups: int) -> Tensor:
    """``tnconv.functional.input_vjp``, unchecked."""
    fn = network("input_vjp", _hyper(weight.shape[2:], stride, padding, dilation, groups),
                 input_size=tuple(input_size[2:]))
    return _fresh(fn(w=weight, grad_output=grad_output), weight, grad_output)


@conv_input_vjp.register_fake
def _(input_size, weight, grad_output, stride, padding, dilation, groups):
    return grad_output.new_empty(list(input_size))


@torch.library.custom_op("tnconv::conv_weight_vjp", mutates_args=())
def conv_weight_vjp(x: Tensor, weight_size: Sequence[int], grad_output: Tensor, stride: Sequence[int],
                    padding: Sequence[int], dilation: Sequence[int], groups: int) -> Tensor:
    """``tnconv.functional.weight_vjp``, unchecked."""
    fn = network("weight_vjp", _hyper(weight_size[2:], stride, padding, dilation, groups))
    return _fresh(fn(x=x, grad_output=grad_output), x, grad_output)


@conv_weight_vjp.register_fake
def _(x, weight_size, grad_output, stride, padding, dilation, groups):
    return x.new_empty(list(weight_size))


def conv_setup_context(ctx, inputs, output):
    """What the backward and JVP of a convolution keep: ``x``, ``weight`` and the hyper-parameters."""
    x, weight, bias, stride, padding, dilation, groups = inputs[:7]
    ctx.save_for_backward(x, weight)
    ctx.hyper = (stride, padding, dilation, groups)
    ctx.has_bias = bias is not None


def conv_backward(ctx, grad_output, input_vjp, weight_vjp):
    """``(grad_x, grad_weight, grad_bias)`` of a convolution from its VJP callables.

    ``input_vjp(input_size, weight, grad_output, *hyper)`` and ``weight_vjp(x,
    weight_size, grad_output, *hyper)`` run the derived VJP diagrams: the
    operators below under ``torch.compile``, the compiled networks in eager mode.
    """
    x, weight = ctx.saved_tensors
    grad_x = grad_w = grad_b = None
    if ctx.needs_input_grad[0]:
        grad_x = input_vjp(x.shape, weight, grad_output, *ctx.hyper)
    if ctx.needs_input_grad[1]:
        grad_w = weight_vjp(x, weight.shape, grad_output, *ctx.hyper)
    if ctx.has_bias and ctx.needs_input_grad[2]:
        grad_b = grad_output.sum(dim=(0,) + tuple(range(2, grad_output.ndim)))
    return grad_x, grad_w, grad_b


def _conv_backward(ctx, grad_output):
    return conv_backward(ctx, grad_output, conv_input_vjp, conv_weight_vjp) + (None,) * 4


conv.register_autograd(_conv_backward, setup_context=conv_setup_context)


# -- transpose convolution -----------------------------------------------------------------------------------
def _transpose(op, kernel_size, stride, padding, output_padding, dilation, groups, **extra):
    hyper = _hyper(kernel_size, stride, padding, dilation, groups)
    return network(op, hyper, **extra, output_padding=tuple(output_padding))


@torch.library.custom_op("tnconv::conv_transpose", mutates_args=())
def conv_transpose(x: Tensor, weight: Tensor, bias: Optional[Tensor], stride: Sequence[int], padding: Sequence[int],
                   output_padding: Sequence[int], dilation: Sequence[int], groups: int) -> Tensor:
    """``tnconv.functional.conv_transpose`` on batched ``x`` with normalized hyper-parameters, unchecked."""
    fn = _transpose("conv_transpose", weight.shape[2:], stride, padding, output_padding, dilation, groups,
                    bias=bias is not None)
    y = fn(x=x, w=weight, b=bias) if bias is not None else fn(x=x, w=weight)
    return _fresh(y, x, weight, bias)


@conv_transpose.register_fake
def _(x, weight, bias, stride, padding, output_padding, dilation, groups):
    check_same(x, "x", weight, "weight")
    if x.ndim != weight.ndim or x.shape[1] != weight.shape[0] or weight.shape[0] % groups:
        raise ValueError(f"x {tuple(x.shape)} and weight {tuple(weight.shape)} with groups={groups} do not fit a "
                         "transpose convolution: x must be [B, C_in, *I] and weight [C_in, C_out/groups, *K]")
    spec = ConvSpec.make(len(stride), tuple(weight.shape[2:]), tuple(stride), pairs(padding), tuple(dilation), groups)
    check_transpose_output(spec, tuple(output_padding), x.shape[2:])
    _check_bias(bias, weight.shape[1] * groups, x)
    size = _conv_transpose_size(x.shape[2:], weight.shape[2:], stride, padding, output_padding, dilation)
    return x.new_empty([x.shape[0], weight.shape[1] * groups] + size)


def transpose_input_vjp(input_size, weight, grad_output, stride, padding, output_padding, dilation, groups):
    """The compiled input VJP of a transpose convolution on these tensors (differentiable, unchecked)."""
    fn = _transpose("conv_transpose_input_vjp", weight.shape[2:], stride, padding, output_padding, dilation, groups)
    return fn(w=weight, grad_output=grad_output)


def transpose_weight_vjp(x, weight_size, grad_output, stride, padding, output_padding, dilation, groups):
    """The compiled weight VJP of a transpose convolution on these tensors (differentiable, unchecked)."""
    fn = _transpose("conv_transpose_weight_vjp", weight_size[2:], stride, padding, output_padding, dilation, groups)
    return fn(x=x, grad_output=grad_output)


def transpose_jvp(x, weight, x_tangent, w_tangent, stride, padding, output_padding, dilation, groups):
    """``∂y/∂x · ẋ + ∂y/∂w · ẇ`` of a transpose convolution from its derived JVP diagrams (either tangent may be ``None``)."""
    hyper = (weight.shape[2:], stride, padding, output_padding, dilation, groups)
    out = None
    if x_tangent is not None:
        out = _transpose("conv_transpose_input_jvp", *hyper)(w=weight, tangent=x_tangent)
    if w_tangent is not None:
        term = _transpose("conv_transpose_weight_jvp", *hyper)(x=x, tangent=w_tangent)
        out = term if out is None else out + term
    return out


@torch.library.custom_op("tnconv::conv_transpose_input_vjp", mutates_args=())
def conv_transpose_input_vjp(input_size: Sequence[int], weight: Tensor, grad_output: Tensor, stride: Sequence[int],
                             padding: Sequence[int], output_padding: Sequence[int], dilation: Sequence[int],
                             groups: int) -> Tensor:
    """The input VJP of a transpose convolution (:func:`tnconv.diagrams.conv_transpose_input_vjp`), unchecked."""
    y = transpose_input_vjp(input_size, weight, grad_output, stride, padding, output_padding, dilation, groups)
    return _fresh(y, weight, grad_output)


@conv_transpose_input_vjp.register_fake
def _(input_size, weight, grad_output, stride, padding, output_padding, dilation, groups):
    return grad_output.new_empty(list(input_size))


@torch.library.custom_op("tnconv::conv_transpose_weight_vjp", mutates_args=())
def conv_transpose_weight_vjp(x: Tensor, weight_size: Sequence[int], grad_output: Tensor, stride: Sequence[int],
                              padding: Sequence[int], output_padding: Sequence[int], dilation: Sequence[int],
                              groups: int) -> Tensor:
    """The weight VJP of a transpose convolution (:func:`tnconv.diagrams.conv_transpose_weight_vjp`), unchecked."""
    y = transpose_weight_vjp(x, weight_size, grad_output, stride, padding, output_padding, dilation, groups)
    return _fresh(y, x, grad_output)


@conv_transpose_weight_vjp.register_fake
def _(x, weight_size, grad_output, stride, padding, output_padding, dilation, groups):
    return x.new_empty(list(weight_size))


def conv_transpose_setup_context(ctx, inputs, output):
    """What the backward of a transpose convolution keeps: ``x``, ``weight`` and the hyper-parameters."""
    x, weight, bias, stride, padding, output_padding, dilation, groups = inputs[:8]
    ctx.save_for_backward(x, weight)
    ctx.hyper = (stride, padding, output_padding, dilation, groups)
    ctx.has_bias = bias is not None


def _conv_transpose_backward(ctx, grad_output):
    return conv_backward(ctx, grad_output, conv_transpose_input_vjp, conv_transpose_weight_vjp) + (None,) * 5


conv_transpose.register_autograd(_conv_transpose_backward, setup_context=conv_transpose_setup_context)


# -- Kronecker factors ---------------------------------------------------------------------------------------
def _factor_size(x, kernel_size, groups):
    per_group = x.shape[1] // groups
    for k in kernel_size:
        per_group = per_group * k
    return [groups, per_group, per_group]


@torch.library.custom_op("tnconv::kfc", mutates_args=())
def kfc(x: Tensor, kernel_size: Sequence[int], stride: Sequence[int], padding: Sequence[int],
        dilation: Sequence[int], groups: int) -> Tensor:
    """``tnconv.functional.kfc``, unchecked."""
    return _fresh(network("kfc", _hyper(kernel_size, stride, padding, dilation, groups))(x=x), x)


@kfc.register_fake
def _(x, kernel_size, stride, padding, dilation, groups):
    return x.new_empty(_factor_size(x, kernel_size, groups))


@torch.library.custom_op("tnconv::kfac_reduce", mutates_args=())
def kfac_reduce(x: Tensor, kernel_size: Sequence[int], stride: Sequence[int], padding: Sequence[int],
                dilation: Sequence[int], groups: int) -> Tensor:
    """``tnconv.functional.kfac_reduce``, unchecked."""
    return _fresh(network("kfac_reduce", _hyper(kernel_size, stride, padding, dilation, groups))(x=x), x)


@kfac_reduce.register_fake
def _(x, kernel_size, stride, padding, dilation, groups):
    return x.new_empty(_factor_size(x, kernel_size, groups))


def _register_trilinear(forward, input_vjp, weight_vjp):
    """Autograd rules of the two VJP operators of ``forward``, so that they can be differentiated again.

    ``<g, forward(x, w)>`` is one diagram, linear in each of ``x``, ``w`` and ``g``,
    and every VJP is that diagram with one tensor cut out: the VJP of the input
    VJP with respect to ``g`` is the forward operation with the vector in place of
    ``x``, with respect to ``w`` the weight VJP with the vector in place of ``x``;
    likewise for the weight VJP. So each rule calls the other two operators.
    """
    def input_setup(ctx, inputs, output):
        ctx.save_for_backward(inputs[1], inputs[2])
        ctx.hyper = inputs[3:]

    def input_backward(ctx, v):
        weight, grad_output = ctx.saved_tensors
        grad_w = weight_vjp(v, weight.shape, grad_output, *ctx.hyper) if ctx.needs_input_grad[1] else None
        grad_g = forward(v, weight, None, *ctx.hyper) if ctx.needs_input_grad[2] else None
        return (None, grad_w, grad_g) + (None,) * len(ctx.hyper)

    def weight_setup(ctx, inputs, output):
        ctx.save_for_backward(inputs[0], inputs[2])
        ctx.hyper = inputs[3:]

    def weight_backward(ctx, v):
        x, grad_output = ctx.saved_tensors
        grad_x = input_vjp(x.shape, v, grad_output, *ctx.hyper) if ctx.needs_input_grad[0] else None
        grad_g = forward(x, v, None, *ctx.hyper) if ctx.needs_input_grad[2] else None
        return (grad_x, None, grad_g) + (None,) * len(ctx.hyper)

    input_vjp.register_autograd(input_backward, setup_context=input_setup)
    weight_vjp.register_autograd(weight_backward, setup_context=weight_setup)


_register_trilinear(conv, conv_input_vjp, conv_weight_vjp)
_register_trilinear(conv_transpose, conv_transpose_input_vjp, conv_transpose_weight_vjp)


@lru_cache(maxsize=256)
def _factor_vjp_network(op, kernel_size, stride, padding, dilation, groups):
    """The VJP of a Kronecker factor with respect to ``x``, derived by the passes (product rule: ``x`` appears twice)."""
    tn = getattr(diagrams, op)(**_hyper(kernel_size, stride, padding, dilation, groups))
    return _compile(passes.vjp(tn, "x", "grad_output"), backend=BACKEND)


@torch.library.custom_op("tnconv::factor_vjp", mutates_args=())
def factor_vjp(op: str, x: Tensor, grad_output: Tensor, kernel_size: Sequence[int], stride: Sequence[int],
               padding: Sequence[int], dilation: Sequence[int], groups: int) -> Tensor:
    """The VJP of ``op`` (``"kfc"`` or ``"kfac_reduce"``) with respect to ``x``, unchecked."""
    fn = _factor_vjp_network(op, tuple(kernel_size), tuple(stride), tuple(padding), tuple(dilation), groups)
    return _fresh(fn(x=x, grad_output=grad_output), x, grad_output)


@factor_vjp.register_fake
def _(op, x, grad_output, kernel_size, stride, padding, dilation, groups):
    return x.new_empty(x.shape)


def _factor_setup_context(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])
    ctx.hyper = inputs[1:]


def _factor_backward(op):
    def backward(ctx, grad_output):
        (x,) = ctx.saved_tensors
        grad_x = factor_vjp(op, x, grad_output, *ctx.hyper) if ctx.needs_input_grad[0] else None
        return (grad_x,) + (None,) * 5

    return backward


kfc.register_autograd(_factor_backward("kfc"), setup_context=_factor_setup_context)
kfac_reduce.register_autograd(_factor_backward("kfac_reduce"), setup_context=_factor_setup_context)


# -- autocast: PyTorch's rule for conv*d and conv_transpose*d (lower precision), in the autocast dtype in force
def _autocast_kernel(op, device_type):
    key = getattr(torch._C.DispatchKey, "Autocast" + torch._C._dispatch_key_for_device(device_type))

    def kernel(keyset, *args):
        dtype = torch.get_autocast_dtype(device_type)
        args = [a.to(dtype) if isinstance(a, Tensor) and a.is_floating_point() and a.dtype is not torch.float64
                and a.device.type == device_type else a for a in args]
        with torch._C._ExcludeDispatchKeyGuard(torch._C.DispatchKeySet(key)):
            return op(*args)

    return kernel


for _op in (conv, conv_transpose):
    for _device in ("cpu", "cuda"):
        _op._lib.impl(_op._name, _autocast_kernel(_op._opoverload, _device),
                      "Autocast" + torch._C._dispatch_key_for_device(_device), with_keyset=True)


__all__ = ["conv", "conv_input_vjp", "conv_weight_vjp", "conv_transpose", "conv_transpose_input_vjp",
           "conv_transpose_weight_vjp", "kfc", "kfac_reduce", "factor_vjp", "conv_setup_context", "conv_backward",
           "conv_transpose_setup_context", "network", "transpose_input_vjp", "transpose_weight_vjp", "transpose_jvp", "pairs",
           "flat"]
