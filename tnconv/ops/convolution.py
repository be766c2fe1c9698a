"""The convolution the layers run: tnconv's diagrams under every PyTorch 2 transform.

:func:`conv` is what :class:`tnconv.nn.Conv2d` and its siblings call. Where it runs:

* **under torch.compile**: the custom operator ``torch.ops.tnconv.conv``
  (:mod:`tnconv.ops.library`), with the hyper-parameters normalized once as
  constants and the shapes checked by its fake kernel, so dynamo traces a few
  bytecodes per layer; its autograd rule calls the operators of the derived VJP
  diagrams;
* **in eager mode**: :class:`ConvFunction`, a ``torch.autograd.Function`` whose
  backward runs the derived VJP diagrams, whose ``jvp`` runs the derived JVP
  diagrams (``torch.func.jvp``, ``jacfwd``, forward-over-reverse ``hessian``), and
  whose vmap rule is generated (``torch.func.vmap``);
* **PyTorch's kernel pair**, a lowering: when the compiler lowers the forward
  diagram and *both* VJP diagrams of a call's shapes to PyTorch's own convolution
  kernels on the operands as given (:func:`native_convolution` reads that off the
  three plans), the call runs ``torch.conv{1,2,3}d``, whose autograd runs the same
  two kernels in one ``convolution_backward``. This saves the Python autograd
  plumbing (tens of microseconds on small layers). Forward-mode AD and ``torch.func``
  transforms always take :class:`ConvFunction`, so JVPs come from tnconv's diagrams.
  ``native = False`` on a call (or :data:`NATIVE_PAIR` ``= False``) turns it off.

With column-row sampling (``crs_keep``), :class:`SampledConvFunction` saves a
sampled part of the input; its weight VJP is the unbiased estimate of
:func:`tnconv.functional.sampled_weight_vjp`.

Autocast follows PyTorch's rule for ``conv*d``: the floating tensors (except
float64) are cast to the autocast dtype; the backward runs in the forward's dtypes.
"""

from __future__ import annotations

import torch
import torch.autograd.forward_ad as _forward_ad

from .. import functional as F
from .._args import ConvSpec
from ..functional._common import _freeze
from ..functional._dispatch import FastPath, autocast, compiling, native_call, op_hyper
from ..functional.sampled import check_keep, estimate_weight_vjp
from . import library

#: Whether calls whose forward and both VJPs the compiler lowers to PyTorch's kernels run ``torch.conv*d``.
NATIVE_PAIR = True

_KERNELS = {1: torch.conv1d, 2: torch.conv2d, 3: torch.conv3d}


def plain_autograd() -> bool:
    """Neither a ``torch.func`` transform nor forward-mode AD (``forward_ad.dual_level``) is active."""
    return not torch._C._are_functorch_transforms_active() and _forward_ad._current_level < 0


def _fast_apply(function):
    """``function.apply`` without the per-call signature binding ``torch.autograd.Function.apply`` does
    for ``setup_context``-style functions; every argument must be given positionally. Under
    ``torch.func`` transforms it is ``function.apply`` itself."""
    plain = super(torch.autograd.Function, function).apply

    def apply(*args):
        return plain(*args) if not torch._C._are_functorch_transforms_active() else function.apply(*args)

    return apply


def _unbatched(x, weight):
    return x.ndim == weight.ndim - 1


def _eager_input_vjp(input_size, weight, grad_output, stride, padding, dilation, groups):
    return F.input_vjp(tuple(input_size), weight, grad_output, stride, padding, dilation, groups)


def _eager_weight_vjp(x, weight_size, grad_output, stride, padding, dilation, groups):
    return F.weight_vjp(x, tuple(weight_size), grad_output, stride, padding, dilation, groups)


def _bias_tangent(bias_tangent, ndim):
    return bias_tangent.view((1, -1) + (1,) * (ndim - 2))


def _jvp(x, weight, x_tangent, w_tangent, b_tangent, input_jvp, weight_jvp, output_shape):
    """``∂y/∂x · ẋ + ∂y/∂w · ẇ + ḃ`` from the JVP callables (the derived JVP diagrams)."""
    unbatched = _unbatched(x, weight)
    if unbatched:
        x = x.unsqueeze(0)
        x_tangent = None if x_tangent is None else x_tangent.unsqueeze(0)
    out = None
    if x_tangent is not None:
        out = input_jvp(x_tangent, weight)
    if w_tangent is not None:
        term = weight_jvp(x, w_tangent)
        out = term if out is None else out + term
    if out is not None and unbatched:
        out = out.squeeze(0)
    if b_tangent is not None:
        term = _bias_tangent(b_tangent, len(output_shape) + unbatched)[0 if unbatched else slice(None)]
        out = term.expand(output_shape).clone() if out is None else out + term
    return out


class ConvFunction(torch.autograd.Function):
    """``conv(x, weight, bias)`` whose backward and JVP run tnconv's derived diagrams.

    The backward pass is built from differentiable contractions, so it can be
    differentiated again (``gradgradcheck``, forward-over-reverse ``hessian``).
    ``jvp`` runs :func:`tnconv.functional.input_jvp` and
    :func:`tnconv.functional.weight_jvp`; the vmap rule is generated.

    Example:
        >>> x, w = torch.randn(2, 3, 8), torch.randn(4, 3, 3)
        >>> t = torch.randn_like(w)
        >>> _, y_dot = torch.func.jvp(lambda w: ConvFunction.apply(x, w, None, 1, 0, 1, 1), (w,), (t,))
        >>> torch.allclose(y_dot, torch.nn.functional.conv1d(x, t), atol=1e-5)
        True
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x, weight, bias, stride, padding, dilation, groups):
        return F.conv(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def setup_context(ctx, inputs, output):
        library.conv_setup_context(ctx, inputs, output)
        ctx.save_for_forward(inputs[0], inputs[1])
        ctx.output_shape = output.shape

    @staticmethod
    def backward(ctx, grad_output):
        x, weight = ctx.saved_tensors
        unbatched = _unbatched(x, weight)
        if unbatched:
            grad_output = grad_output.unsqueeze(0)
        grads = library.conv_backward(_Saved(ctx, unbatched), grad_output, _eager_input_vjp, _eager_weight_vjp)
        grad_x = grads[0].squeeze(0) if unbatched and grads[0] is not None else grads[0]
        return (grad_x,) + grads[1:] + (None,) * 4

    @staticmethod
    def jvp(ctx, x_tangent, w_tangent, b_tangent, *_):
        x, weight = ctx.saved_tensors
        hyper = ctx.hyper
        return _jvp(x, weight, x_tangent, w_tangent, b_tangent,
                    lambda t, w: F.input_jvp(t, w, *hyper), lambda x, t: F.weight_jvp(x, t, *hyper), ctx.output_shape)


class _Saved:
    """``ctx`` as :func:`tnconv.ops.library.conv_backward` reads it, with ``x`` batched."""

    def __init__(self, ctx, unbatched):
        x, weight = ctx.saved_tensors
        self.saved_tensors = (x.unsqueeze(0) if unbatched else x, weight)
        self.needs_input_grad = ctx.needs_input_grad
        self.hyper = ctx.hyper
        self.has_bias = ctx.has_bias


class SampledConvFunction(torch.autograd.Function):
    """``conv(x, weight, bias)`` that saves only a column-row-sampled part of ``x``.

    The forward pass, the input VJP and the JVP are exact; the weight VJP is the
    unbiased estimate of :func:`tnconv.functional.sampled_weight_vjp` from the
    sub-tensor kept by :func:`tnconv.functional.sample_input`.

    Under ``torch.func.vmap`` the sampling follows vmap's ``randomness``: ``"same"``
    draws one sample for all vmapped calls (as one batched call shares its draw among
    the batch), ``"different"`` draws one per vmapped call (per-sample gradients
    with per-sample sampling), ``"error"`` (vmap's default) refuses, as for dropout.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x, weight, bias, stride, padding, dilation, groups, crs_keep, generator):
        return F.conv(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, bias, stride, padding, dilation, groups, crs_keep, generator = inputs
        unbatched = _unbatched(x, weight)
        ctx.save_for_forward(x, weight)
        x = x.unsqueeze(0) if unbatched else x
        if ctx.needs_input_grad[1]:
            x_sub, indices = F.sample_input(x, crs_keep, groups, generator)
        else:
            x_sub, indices = x[:0], []
        ctx.save_for_backward(x_sub, weight, *indices)
        ctx.hyper = (stride, padding, dilation, groups)
        ctx.meta = (tuple(x.shape), unbatched, bias is not None)
        ctx.output_shape = output.shape

    @staticmethod
    def backward(ctx, grad_output):
        x_sub, weight, *indices = ctx.saved_tensors
        input_size, unbatched, has_bias = ctx.meta
        stride, padding, dilation, groups = ctx.hyper
        grad_output = grad_output.unsqueeze(0) if unbatched else grad_output
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = F.input_vjp(input_size, weight, grad_output, stride, padding, dilation, groups)
            grad_x = grad_x.squeeze(0) if unbatched else grad_x
        if ctx.needs_input_grad[1]:
            grad_w = estimate_weight_vjp(x_sub, indices, input_size, tuple(weight.shape), grad_output, stride, padding,
                                         dilation, groups)
        if has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_output.sum(dim=(0,) + tuple(range(2, grad_output.ndim)))
        return grad_x, grad_w, grad_b, None, None, None, None, None, None

    @staticmethod
    def jvp(ctx, x_tangent, w_tangent, b_tangent, *_):
        x, weight = ctx.saved_tensors
        hyper = ctx.hyper
        return _jvp(x, weight, x_tangent, w_tangent, b_tangent,
                    lambda t, w: F.input_jvp(t, w, *hyper), lambda x, t: F.weight_jvp(x, t, *hyper), ctx.output_shape)


_apply_conv = _fast_apply(ConvFunction)
_apply_sampled = _fast_apply(SampledConvFunction)


def native_convolution(x, weight, bias, stride, padding, dilation, groups):
    """``(stride, padding, dilation)`` when the forward diagram and both VJP diagrams of this call are
    lowered to PyTorch's convolution kernels, each on its operands untouched, with these hyper-parameters;
    else ``None``. The call's arguments must be valid (it plans, it does not check).

    Example:
        >>> x, w = torch.randn(2, 3, 8, 8), torch.randn(4, 3, 3, 3)
        >>> native_convolution(x, w, None, 1, 1, 1, 1)
        ((1, 1), (1, 1), (1, 1))
        >>> native_convolution(x, w, None, 1, ((0, 1), (1, 0)), 1, 1) is None   # asymmetric padding: no kernel pair
        True
    """
    N = weight.ndim - 2
    if N not in _KERNELS or x.ndim != weight.ndim:
        return None
    spec = ConvSpec.make(N, tuple(weight.shape[2:]), stride, padding, dilation, groups)
    hyper = dict(N=N, groups=groups, **_freeze(spec))  # in the functionals' keyword order (library.network)
    out = (x.shape[0], weight.shape[0]) + tuple(
        (i + pl + pr - d * (k - 1) - 1) // s + 1
        for i, k, s, (pl, pr), d in zip(x.shape[2:], spec.kernel_size, spec.stride, spec.padding, spec.dilation))
    grad_output = x.new_empty(1).expand(out)  # a stand-in: planning reads shape, dtype and device
    forward = library.network("conv", hyper, bias=bias is not None)
    found = [native_call(forward, forward.plan(**dict(x=x, w=weight, **({} if bias is None else {"b": bias}))),
                         {"x": "x", "w": "w"}, {"x": x.shape, "w": weight.shape})]
    input_vjp = library.network("input_vjp", hyper, input_size=tuple(x.shape[2:]))
    found.append(native_call(input_vjp, input_vjp.plan(w=weight, grad_output=grad_output),
                             {"w": "w", "grad_output": "y"}, {"w": weight.shape, "grad_output": out}))
    weight_vjp = library.network("weight_vjp", hyper)
    found.append(native_call(weight_vjp, weight_vjp.plan(x=x, grad_output=grad_output),
                             {"x": "x", "grad_output": "y"}, {"x": x.shape, "grad_output": out}))
    if any(f is None for f in found) or found[1][1] is not None or found[2][1] is not None:
        return None
    calls = [f[0] for f in found]
    if [c.role for c in calls] != ["y", "x", "w"] or (bias is not None) != (found[0][1] == "b"):
        return None
    if any(dict(c.shapes)["y"] != out or (c.stride, c.padding, c.dilation, c.groups) !=
           (calls[0].stride, calls[0].padding, calls[0].dilation, groups) for c in calls):
        return None
    return calls[0].stride, calls[0].padding, calls[0].dilation


_LAYER = FastPath()
_NO_PAIR = object()  # a call that was validated and runs ConvFunction


def conv(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, crs_keep=None, generator=None,
         native=None) -> torch.Tensor:
    """Convolution with tnconv's forward and backward passes (see the module's description).

    With ``crs_keep`` (keep probabilities for the channel axis, then each
    spatial axis), the backward pass estimates the weight gradient from a
    sampled part of ``x`` — the only part saved (see :class:`SampledConvFunction`).
    ``native``: allow PyTorch's kernel pair where the compiler lowers to it
    (default :data:`NATIVE_PAIR`).

    Example:
        >>> x = torch.randn(2, 3, 8, requires_grad=True)
        >>> w = torch.randn(4, 3, 3, requires_grad=True)
        >>> conv(x, w).sum().backward()
        >>> w.grad.shape
        torch.Size([4, 3, 3])
        >>> conv(x, w, crs_keep=(1.0, 0.5)).sum().backward()
    """
    if crs_keep is not None:
        keep = check_keep(crs_keep, weight.ndim - 2)
        if any(p < 1 for p in keep):
            return _sampled(x, weight, bias, stride, padding, dilation, groups, keep, generator)
    if compiling():  # what dynamo traces: the custom operator, with constant hyper-parameters
        return _traced(x, weight, bias, stride, padding, dilation, groups)
    hyper = (stride, padding, dilation, groups)
    run = _LAYER.get(x, weight, bias, hyper)
    if run is not None and run is not _NO_PAIR and (NATIVE_PAIR if native is None else native) and plain_autograd():
        return run(x, weight, bias)  # PyTorch's autocast applies inside
    x_, weight_, bias_ = autocast(x, weight, bias)
    if run is None and x_ is x and weight_ is weight and bias_ is bias and plain_autograd():
        with torch.no_grad():  # validation (once per call signature): F.conv says what is wrong
            F.conv(x, weight, bias, stride, padding, dilation, groups)
        pair = native_convolution(x, weight, bias, *hyper)  # planned for these dtypes: not under autocast
        run = _NO_PAIR if pair is None else _pair_runner(weight.ndim - 2, pair, groups)
        _LAYER.put(x, weight, bias, hyper, run)
        if run is not _NO_PAIR and (NATIVE_PAIR if native is None else native):
            return run(x, weight, bias)  # from the first call as in every later one
    return _apply_conv(x_, weight_, bias_, stride, padding, dilation, groups)  # F.conv validates


@torch._dynamo.assume_constant_result
def op_arguments(kernel_size, stride, padding, dilation, groups):
    """A convolution's stride, padding and dilation as the custom operators take them (see
    :func:`tnconv.functional._dispatch.op_hyper`). Dynamo calls it while tracing and keeps the result
    as a constant, so a compiled layer traces no argument handling; the operator's fake kernel
    checks the shapes."""
    return op_hyper(ConvSpec.make(len(kernel_size), kernel_size, stride, padding, dilation, groups))


def _traced(x, weight, bias, stride, padding, dilation, groups):
    stride, padding, dilation = op_arguments(tuple(weight.shape[2:]), stride, padding, dilation, groups)
    if x.ndim == weight.ndim - 1:  # unbatched
        return torch.ops.tnconv.conv(x.unsqueeze(0), weight, bias, stride, padding, dilation, groups).squeeze(0)
    return torch.ops.tnconv.conv(x, weight, bias, stride, padding, dilation, groups)


def _pair_runner(N, pair, groups):
    kernel = _KERNELS[N]
    stride, padding, dilation = pair

    def run(x, weight, bias):
        return kernel(x, weight, bias, stride, padding, dilation, groups)

    return run


@torch.compiler.disable(reason="column-row sampling draws from a torch.Generator, which dynamo does not trace")
def _sampled(x, weight, bias, stride, padding, dilation, groups, keep, generator):
    x, weight, bias = autocast(x, weight, bias)
    return _apply_sampled(x, weight, bias, stride, padding, dilation, groups, keep, generator)


__all__ = ["ConvFunction", "SampledConvFunction", "conv", "native_convolution", "plain_autograd", "NATIVE_PAIR"]
