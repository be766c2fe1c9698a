"""The transpose convolution the layers run, as :mod:`tnconv.ops.convolution` runs the convolution.

The backward pass runs the VJP diagrams derived from
:func:`tnconv.diagrams.conv_transpose` (:func:`~tnconv.diagrams.conv_transpose_input_vjp`,
:func:`~tnconv.diagrams.conv_transpose_weight_vjp`), forward-mode AD its derived JVP
diagrams; under ``torch.compile`` the custom operator ``torch.ops.tnconv.conv_transpose``
runs instead. Where the compiler lowers the forward and both VJPs to PyTorch's
kernels on the operands as given, ``torch.conv_transpose{1,2,3}d`` runs (PyTorch's
kernel pair, as for the convolution).
"""

from __future__ import annotations

import torch

from .. import functional as F
from .._args import ConvSpec, ntuple
from ..functional._common import _freeze
from ..functional._dispatch import FastPath, autocast, compiling, native_call, op_hyper
from . import library
from .convolution import _fast_apply, _jvp, _unbatched, plain_autograd

#: Whether calls whose forward and both VJPs the compiler lowers to PyTorch's kernels run ``torch.conv_transpose*d``.
NATIVE_PAIR = True

_KERNELS = {1: torch.conv_transpose1d, 2: torch.conv_transpose2d, 3: torch.conv_transpose3d}


def _normalized(weight, stride, padding, output_padding, groups, dilation):
    """``(stride, padding, output_padding, dilation, groups)`` as the custom operators take them."""
    N = weight.ndim - 2
    spec = ConvSpec.make(N, tuple(weight.shape[2:]), stride, padding, dilation, groups)
    stride_, padding_, dilation_ = op_hyper(spec)
    return stride_, padding_, list(ntuple(output_padding, N, "output_padding", minimum=0)), dilation_, groups


class ConvTransposeFunction(torch.autograd.Function):
    """``conv_transpose(x, weight, bias)`` whose backward and JVP run tnconv's derived diagrams.

    Arguments follow ``torch.nn.functional.conv_transpose{1,2,3}d``:
    ``(x, weight, bias, stride, padding, output_padding, groups, dilation)``.

    Example:
        >>> x, w = torch.randn(2, 4, 5, requires_grad=True), torch.randn(4, 3, 3, requires_grad=True)
        >>> y = ConvTransposeFunction.apply(x, w, None, 2, 0, 1, 1, 1)
        >>> y.sum().backward()
        >>> w.grad.shape
        torch.Size([4, 3, 3])
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x, weight, bias, stride, padding, output_padding, groups, dilation):
        return F.conv_transpose(x, weight, bias, stride, padding, output_padding, groups, dilation)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, bias, stride, padding, output_padding, groups, dilation = inputs
        ctx.save_for_backward(x, weight)
        ctx.save_for_forward(x, weight)
        ctx.hyper = _normalized(weight, stride, padding, output_padding, groups, dilation)
        ctx.has_bias = bias is not None
        ctx.output_shape = output.shape

    @staticmethod
    def backward(ctx, grad_output):
        x, weight = ctx.saved_tensors
        unbatched = _unbatched(x, weight)
        if unbatched:
            x, grad_output = x.unsqueeze(0), grad_output.unsqueeze(0)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = library.transpose_input_vjp(x.shape, weight, grad_output, *ctx.hyper)
            grad_x = grad_x.squeeze(0) if unbatched else grad_x
        if ctx.needs_input_grad[1]:
            grad_w = library.transpose_weight_vjp(x, weight.shape, grad_output, *ctx.hyper)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_output.sum(dim=(0,) + tuple(range(2, grad_output.ndim)))
        return grad_x, grad_w, grad_b, None, None, None, None, None

    @staticmethod
    def jvp(ctx, x_tangent, w_tangent, b_tangent, *_):
        x, weight = ctx.saved_tensors
        hyper = ctx.hyper
        return _jvp(x, weight, x_tangent, w_tangent, b_tangent,
                    lambda t, w: library.transpose_jvp(None, w, t, None, *hyper),
                    lambda x, t: library.transpose_jvp(x, weight, None, t, *hyper), ctx.output_shape)


def _output_shape(x, weight, hyper):
    """The shape of a transpose convolution's output from normalized hyper-parameters."""
    stride, padding, output_padding, dilation, groups = hyper
    size = [(i - 1) * stride[d] - padding[2 * d] - padding[2 * d + 1] + dilation[d] * (k - 1) + output_padding[d] + 1
            for d, (i, k) in enumerate(zip(x.shape[2:], weight.shape[2:]))]
    return (x.shape[0], weight.shape[1] * groups, *size)


_apply = _fast_apply(ConvTransposeFunction)


def native_convolution_transpose(x, weight, bias, stride, padding, output_padding, groups, dilation):
    """``(stride, padding, output_padding, dilation)`` when the forward diagram of this transpose convolution
    and both of its VJP diagrams are lowered to PyTorch's kernels, each on its operands untouched; else ``None``.

    Example:
        >>> x, w = torch.randn(2, 4, 5, 5), torch.randn(4, 3, 3, 3)
        >>> native_convolution_transpose(x, w, None, 2, 1, 1, 1, 1)
        ((2, 2), (1, 1), (1, 1), (1, 1))
        >>> native_convolution_transpose(x, w, None, 2, ((0, 1), (1, 0)), 0, 1, 1) is None   # asymmetric padding
        True
    """
    N = weight.ndim - 2
    if N not in _KERNELS or x.ndim != weight.ndim:
        return None
    spec = ConvSpec.make(N, tuple(weight.shape[2:]), stride, padding, dilation, groups)
    output_padding = ntuple(output_padding, N, "output_padding", minimum=0)
    hyper = dict(N=N, groups=groups, **_freeze(spec))
    out = _output_shape(x, weight, _normalized(weight, stride, padding, output_padding, groups, dilation))
    grad_output = x.new_empty(1).expand(out)
    forward = library.network("conv_transpose", hyper, bias=bias is not None, output_padding=output_padding)
    tensors = dict(x=x, w=weight) if bias is None else dict(x=x, w=weight, b=bias)
    # the transpose convolution is the input VJP of a convolution: its input plays the convolution's output
    found = [native_call(forward, forward.plan(**tensors), {"x": "y", "w": "w"}, {"x": x.shape, "w": weight.shape})]
    input_vjp = library.network("conv_transpose_input_vjp", hyper, output_padding=output_padding)
    found.append(native_call(input_vjp, input_vjp.plan(w=weight, grad_output=grad_output),
                             {"w": "w", "grad_output": "x"}, {"w": weight.shape, "grad_output": out}))
    weight_vjp = library.network("conv_transpose_weight_vjp", hyper, output_padding=output_padding)
    found.append(native_call(weight_vjp, weight_vjp.plan(x=x, grad_output=grad_output),
                             {"x": "y", "grad_output": "x"}, {"x": x.shape, "grad_output": out}))
    if any(f is None for f in found) or found[1][1] is not None or found[2][1] is not None:
        return None
    calls = [f[0] for f in found]
    if [c.role for c in calls] != ["x", "y", "w"] or (bias is not None) != (found[0][1] == "b"):
        return None
    if any(dict(c.shapes)["x"] != tuple(out) or (c.stride, c.padding, c.dilation, c.groups) !=
           (calls[0].stride, calls[0].padding, calls[0].dilation, groups) for c in calls):
        return None
    return calls[0].stride, calls[0].padding, output_padding, calls[0].dilation


_LAYER = FastPath()
_NO_PAIR = object()


def conv_transpose(x, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1,
                   native=None) -> torch.Tensor:
    """Transpose convolution with tnconv's forward, backward and JVP (arguments of ``F.conv_transpose*d``).

    ``native``: allow PyTorch's kernel pair where the compiler lowers to it (default :data:`NATIVE_PAIR`).

    Example:
        >>> x = torch.randn(2, 4, 5, requires_grad=True)
        >>> w = torch.randn(4, 3, 3, requires_grad=True)
        >>> y = conv_transpose(x, w, stride=2, output_padding=1)
        >>> torch.allclose(y, torch.nn.functional.conv_transpose1d(x, w, stride=2, output_padding=1), atol=1e-5)
        True
    """
    if compiling():  # what dynamo traces: the custom operator, with constant hyper-parameters
        return _traced(x, weight, bias, stride, padding, output_padding, groups, dilation)
    hyper = (stride, padding, output_padding, groups, dilation)
    run = _LAYER.get(x, weight, bias, hyper)
    if run is not None and run is not _NO_PAIR and (NATIVE_PAIR if native is None else native) and plain_autograd():
        return run(x, weight, bias)
    x_, weight_, bias_ = autocast(x, weight, bias)
    if run is None and x_ is x and weight_ is weight and bias_ is bias and plain_autograd():
        with torch.no_grad():  # validation (once per call signature): F.conv_transpose says what is wrong
            F.conv_transpose(x, weight, bias, *hyper)
        pair = native_convolution_transpose(x, weight, bias, *hyper)
        run = _NO_PAIR if pair is None else _pair_runner(weight.ndim - 2, pair, groups)
        _LAYER.put(x, weight, bias, hyper, run)
        if run is not _NO_PAIR and (NATIVE_PAIR if native is None else native):
            return run(x, weight, bias)  # from the first call as in every later one
    return _apply(x_, weight_, bias_, *hyper)  # F.conv_transpose validates


@torch._dynamo.assume_constant_result
def op_arguments(kernel_size, stride, padding, output_padding, groups, dilation):
    """A transpose convolution's hyper-parameters as the custom operator takes them, a constant for dynamo
    (see :func:`tnconv.ops.convolution.op_arguments`)."""
    N = len(kernel_size)
    stride_, padding_, dilation_ = op_hyper(ConvSpec.make(N, kernel_size, stride, padding, dilation, groups))
    return stride_, padding_, list(ntuple(output_padding, N, "output_padding", minimum=0)), dilation_


def _traced(x, weight, bias, stride, padding, output_padding, groups, dilation):
    if isinstance(padding, str):
        raise ValueError(f"padding must be an int or a tuple for conv_transpose, got {padding!r}")
    stride, padding, output_padding, dilation = op_arguments(tuple(weight.shape[2:]), stride, padding, output_padding,
                                                             groups, dilation)
    if x.ndim == weight.ndim - 1:  # unbatched
        y = torch.ops.tnconv.conv_transpose(x.unsqueeze(0), weight, bias, stride, padding, output_padding, dilation, groups)
        return y.squeeze(0)
    return torch.ops.tnconv.conv_transpose(x, weight, bias, stride, padding, output_padding, dilation, groups)


def _pair_runner(N, pair, groups):
    kernel = _KERNELS[N]
    stride, padding, output_padding, dilation = pair

    def run(x, weight, bias):
        return kernel(x, weight, bias, stride, padding, output_padding, groups, dilation)

    return run


__all__ = ["ConvTransposeFunction", "conv_transpose", "native_convolution_transpose", "NATIVE_PAIR"]
