"""What a functional does around its validation: autocast, the cached-call fast path, torch.compile dispatch.

* :func:`autocast` casts a convolution's tensors as PyTorch's autocast does for
  ``conv*d`` (floating tensors on the autocast device, except float64, to the
  autocast dtype), so tnconv's contractions see one dtype.
* :class:`FastPath` remembers, per call signature (the shapes, dtypes, devices and
  layouts of the tensors and the hyper-parameters), that a call was validated and
  what runs it. Validation is a pure function of that signature, so a repeated
  signature skips it and the plan look-up: the cached call costs one key and
  one dictionary look-up on top of the kernel.
* :func:`compiling`: under ``torch.compile`` the functionals call tnconv's
  custom operators (:mod:`tnconv.ops`), so dynamo traces neither the plan
  cache nor the compiler.
"""

from __future__ import annotations

import torch

from ..autotune.switch import _state as _autotune

#: Call signatures a :class:`FastPath` keeps before it starts over.
FAST_PATH_SIZE = 4096


_is_compiling = torch.compiler.is_compiling


def compiling() -> bool:
    """Whether dynamo is tracing (``torch.compiler.is_compiling``)."""
    return _is_compiling()


def autocast(x, *others):
    """``(x, *others)`` cast like PyTorch's autocast casts a convolution's arguments, if autocast is on.

    The device is ``x``'s; ``None`` entries stay ``None``.

    Example:
        >>> x, w = torch.randn(1, 2, 5), torch.randn(3, 2, 3)
        >>> with torch.autocast("cpu", dtype=torch.bfloat16):
        ...     [t.dtype for t in autocast(x, w, None) if t is not None]
        [torch.bfloat16, torch.bfloat16]
    """
    if not torch._C._is_any_autocast_enabled():
        return (x,) + others
    device = x.device.type
    if not torch.is_autocast_enabled(device):
        return (x,) + others
    dtype = torch.get_autocast_dtype(device)
    return tuple(_cast(t, device, dtype) for t in (x,) + others)


def _cast(t, device, dtype):
    if t is None or not t.is_floating_point() or t.dtype is torch.float64 or t.device.type != device:
        return t
    return t.to(dtype)


def native_call(compiled, plan, roles: dict, shapes: dict):
    """``(call, bias)`` when ``plan`` is exactly one of PyTorch's convolution kernels, else ``None``.

    The compiler decides: the network's first term must be lowered to a native plan
    that calls the kernel on its operands untouched (``Plan.native``), with the inputs
    named in ``roles`` (input name -> ``"x"``, ``"w"`` or ``"y"``) in those roles and of
    the ``shapes`` given (input name -> shape). A second term is allowed only if it
    broadcasts an input vector along the channel axis (a bias); its name is ``bias``.

    Example:
        >>> import tnconv
        >>> f = tnconv.compile(tnconv.diagrams.conv(N=2, kernel_size=3, bias=True))
        >>> x, w, b = torch.randn(2, 3, 8, 8), torch.randn(4, 3, 3, 3), torch.randn(4)
        >>> call, bias = native_call(f, f.plan(x=x, w=w, b=b), {"x": "x", "w": "w"}, {"x": x.shape, "w": w.shape})
        >>> call.stride, call.padding, bias
        ((1, 1), (0, 0), 'b')
    """
    from ..lowering.native import broadcast_vector

    terms = plan.terms
    if not terms or terms[0].plan is None or terms[0].scale != 1 or len(terms) > 2:
        return None
    call = terms[0].plan.native
    if call is None or [roles.get(source[1]) for source in terms[0].sources] != list(call.operands):
        return None
    expected = dict(call.shapes)
    if any(tuple(shapes[name]) != expected[role] for name, role in roles.items()):
        return None
    bias = None
    if len(terms) == 2:
        found = broadcast_vector(compiled.network.terms[1])
        if found is None or found[1] != 1 or terms[1].scale != 1:
            return None
        bias = found[0]
    return call, bias


_KERNELS = {1: torch.conv1d, 2: torch.conv2d, 3: torch.conv3d}


def plan_runner(fn):
    """``run(x, w, b)``: the compiled network ``fn`` of a convolution-like call, under autocast as PyTorch casts."""
    def run(x, w, b):
        x, w, b = autocast(x, w, b)
        return fn(x=x, w=w, b=b) if b is not None else fn(x=x, w=w)

    return run


def conv_runner(fn, x, weight, bias):
    """What runs a convolution of these tensors' signature: PyTorch's kernel when the compiler lowered the
    compiled diagram ``fn`` to exactly that call (bias included), else :func:`plan_runner`.

    Example:
        >>> import tnconv
        >>> fn = tnconv.compile(tnconv.diagrams.conv(N=1, kernel_size=3))
        >>> x, w = torch.randn(2, 3, 8), torch.randn(4, 3, 3)
        >>> run = conv_runner(fn, x, w, None)
        >>> torch.allclose(run(x, w, None), torch.nn.functional.conv1d(x, w), atol=1e-6)
        True
    """
    N = weight.ndim - 2
    tensors = dict(x=x, w=weight, b=bias) if bias is not None else dict(x=x, w=weight)
    found = native_call(fn, fn.plan(**tensors), {"x": "x", "w": "w"}, {"x": x.shape, "w": weight.shape}) \
        if N in _KERNELS and x.ndim == weight.ndim else None
    if found is None:
        return plan_runner(fn)
    call = found[0]
    kernel, stride, padding, dilation, groups = _KERNELS[N], call.stride, call.padding, call.dilation, call.groups
    return lambda x, w, b: kernel(x, w, b, stride, padding, dilation, groups)  # PyTorch's autocast applies inside


def op_hyper(spec) -> tuple:
    """A :class:`~tnconv._args.ConvSpec`'s stride, padding and dilation as the custom operators take them
    (lists; padding as the flattened ``(left, right)`` pairs)."""
    return list(spec.stride), [p for pair in spec.padding for p in pair], list(spec.dilation)


def plain(value) -> bool:
    """Whether ``value`` is an int, a str or a tuple of those (nested): not a bool or float
    that would compare equal to an int in a key and so skip the validation that rejects it.

    Example:
        >>> plain(((1, 1), (0, 2))), plain((1, True)), plain(1.0)
        (True, False, False)
    """
    kind = type(value)
    if kind is not tuple:
        return kind is int or kind is str
    for v in value:  # unrolled one level: hyper-parameters are ints or tuples of ints
        kind = type(v)
        if kind is tuple:
            for u in v:
                if type(u) is not int and not plain(u):
                    return False
        elif kind is not int and kind is not str:
            return False
    return True


class FastPath:
    """Per call signature of up to three tensors, the runner of a call that passed validation.

    ``get(a, b, c, hyper)`` returns the runner or ``None`` (never seen, hyper-parameters
    other than ints, strs and tuples of them, or dynamo tracing); ``put(a, b, c, hyper,
    runner)`` records one. The signature holds every property of the tensors that
    validation reads: shape, dtype, device and layout (``None`` stays ``None``), and the
    state of :func:`tnconv.set_autotune`, since the runner follows the plan chosen under it.

    Example:
        >>> fast = FastPath()
        >>> x = torch.randn(2, 3)
        >>> fast.get(x, None, None, (1,)) is None
        True
        >>> fast.put(x, None, None, (1,), torch.neg)
        >>> fast.get(torch.randn(2, 3), None, None, (1,)) is torch.neg
        True
        >>> fast.get(torch.randn(2, 3), None, None, (True,)) is None
        True
    """

    def __init__(self):
        self.runners: dict = {}

    def get(self, a, b, c, hyper):
        if _is_compiling() or not plain(hyper):
            return None
        try:  # the key of _key, inline: this is the hot path of every cached call
            return self.runners.get((a.shape, a.dtype, a.device, a.layout,
                                     None if b is None else (b.shape, b.dtype, b.device),
                                     None if c is None else (c.shape, c.dtype, c.device), hyper,
                                     _autotune["enabled"]))
        except AttributeError:  # not tensors: the slow path says what is wrong
            return None

    def put(self, a, b, c, hyper, runner) -> None:
        if compiling() or not plain(hyper):
            return
        if len(self.runners) >= FAST_PATH_SIZE:
            self.runners.clear()
        self.runners[_key(a, b, c, hyper)] = runner


def _key(a, b, c, hyper):
    return (a.shape, a.dtype, a.device, a.layout,
            None if b is None else (b.shape, b.dtype, b.device),
            None if c is None else (c.shape, c.dtype, c.device), hyper, _autotune["enabled"])


__all__ = ["FAST_PATH_SIZE", "FastPath", "autocast", "compiling", "conv_runner", "native_call", "op_hyper", "plain",
           "plan_runner"]
