"""Forward-family operations: convolution, transpose convolution, unfold, fold.

Every function takes PyTorch's arguments in PyTorch's order, works for any
number ``N >= 1`` of spatial dimensions (inferred from the tensors), validates
its arguments before contracting anything, and compiles its diagram once per
hyper-parameters; the compiled network caches one plan per shape.
"""

from __future__ import annotations

import torch

from .._args import ConvSpec, check_same, check_tensor, ntuple
from ._common import (_batched, _check_bias, _check_groups, _check_output, _freeze, check_transpose_output, compiled,
                      conv_geometry)
from ._dispatch import FastPath, autocast, compiling, conv_runner, op_hyper, plan_runner

_CONV, _CONV_TRANSPOSE = FastPath(), FastPath()


def conv(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1) -> torch.Tensor:
    """N-d convolution, same as ``torch.nn.functional.conv{1,2,3}d``.

    Args:
        x: ``[B, C_in, *I]`` (or unbatched ``[C_in, *I]``).
        weight: ``[C_out, C_in/groups, *K]``.
        bias: optional ``[C_out]``.
        stride, dilation: int or tuple of N ints, positive.
        padding: int, tuple, ``'same'``, ``'valid'`` or N ``(left, right)`` pairs.
        groups: number of channel groups.

    Returns:
        ``[B, C_out, *O]``.

    Example:
        >>> x, w = torch.randn(2, 3, 8, 8), torch.randn(4, 3, 3, 3)
        >>> torch.allclose(conv(x, w, padding="same"), torch.nn.functional.conv2d(x, w, padding="same"), atol=1e-5)
        True
    """
    hyper = (stride, padding, dilation, groups)
    run = _CONV.get(x, weight, bias, hyper)  # a repeated call signature: validated before
    if run is not None:
        return run(x, weight, bias)
    given = (x, weight, bias)
    x, weight, bias = autocast(x, weight, bias)
    check_tensor(weight, "weight", min_ndim=3)
    check_tensor(x, "x")
    x, squeeze = _batched(x, weight.ndim)
    check_same(x, "x", weight, "weight")
    N, spec, _ = conv_geometry(x.shape, weight.shape, stride, padding, dilation, groups)
    C_out = weight.shape[0]
    _check_bias(bias, C_out, x)
    if compiling():  # torch.compile sees the custom operator, not the plan cache
        stride_, padding_, dilation_ = op_hyper(spec)
        y = torch.ops.tnconv.conv(x, weight, bias, stride_, padding_, dilation_, groups)
        return y.squeeze(0) if squeeze else y
    fn = compiled("conv", N=N, groups=groups, bias=bias is not None, **_freeze(spec))
    run = conv_runner(fn, x, weight, bias)
    if not squeeze and all(a is b for a, b in zip(given, (x, weight, bias))):  # not autocast: the plan is of these dtypes
        _CONV.put(x, weight, bias, hyper, run)
    y = run(x, weight, bias)  # from the first call as in every later one
    return y.squeeze(0) if squeeze else y


def conv_transpose(x, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1) -> torch.Tensor:
    """N-d transpose convolution, same as ``torch.nn.functional.conv_transpose{1,2,3}d``.

    Args:
        x: ``[B, C_in, *I]`` (or unbatched).
        weight: ``[C_in, C_out/groups, *K]``.
        bias: optional ``[C_out]``.
        output_padding: extra size on one side of the output, smaller than stride or dilation.

    Example:
        >>> x, w = torch.randn(2, 4, 5), torch.randn(4, 3, 3)
        >>> torch.allclose(conv_transpose(x, w, stride=2), torch.nn.functional.conv_transpose1d(x, w, stride=2), atol=1e-5)
        True
    """
    hyper = (stride, padding, output_padding, groups, dilation)
    run = _CONV_TRANSPOSE.get(x, weight, bias, hyper)  # a repeated call signature: validated before
    if run is not None:
        return run(x, weight, bias)
    given = (x, weight, bias)
    x, weight, bias = autocast(x, weight, bias)
    check_tensor(weight, "weight", min_ndim=3)
    check_tensor(x, "x")
    x, squeeze = _batched(x, weight.ndim)
    check_same(x, "x", weight, "weight")
    _check_groups(groups)
    N = weight.ndim - 2
    if isinstance(padding, str):
        raise ValueError(f"padding must be an int or a tuple for conv_transpose, got {padding!r}")
    if x.shape[1] != weight.shape[0]:
        raise ValueError(f"x has {x.shape[1]} channels, but weight {tuple(weight.shape)} expects weight.shape[0]={weight.shape[0]}")
    if weight.shape[0] % groups:
        raise ValueError(f"groups={groups} must divide the input channels weight.shape[0]={weight.shape[0]}")
    spec = ConvSpec.make(N, tuple(weight.shape[2:]), stride, padding, dilation, groups)
    output_padding = ntuple(output_padding, N, "output_padding", minimum=0)
    for d, I in enumerate(x.shape[2:]):
        K, S, (pl, pr), D = spec.kernel_size[d], spec.stride[d], spec.padding[d], spec.dilation[d]
        if (I - 1) * S - pl - pr + D * (K - 1) + output_padding[d] + 1 < 1:
            raise ValueError(f"padding {spec.padding} is too large: the output of conv_transpose would be empty "
                             f"along spatial dimension {d}")
    _check_bias(bias, weight.shape[1] * groups, x)
    if compiling():  # torch.compile sees the custom operator, not the plan cache
        stride_, padding_, dilation_ = op_hyper(spec)
        y = torch.ops.tnconv.conv_transpose(x, weight, bias, stride_, padding_, list(output_padding), dilation_, groups)
        return y.squeeze(0) if squeeze else y
    fn = compiled("conv_transpose", N=N, groups=groups, bias=bias is not None, output_padding=output_padding, **_freeze(spec))
    y = fn(x=x, w=weight, b=bias) if bias is not None else fn(x=x, w=weight)
    if not squeeze and all(a is b for a, b in zip(given, (x, weight, bias))):
        _CONV_TRANSPOSE.put(x, weight, bias, hyper, plan_runner(fn))
    return y.squeeze(0) if squeeze else y


def unfold(x, kernel_size, dilation=1, padding=0, stride=1) -> torch.Tensor:
    """im2col for any N, same as ``torch.nn.functional.unfold`` for N = 2.

    Args:
        x: ``[B, C, *I]``.

    Returns:
        ``[B, C*K1*..*KN, O1*..*ON]``.

    Example:
        >>> x = torch.randn(2, 3, 6, 7)
        >>> torch.allclose(unfold(x, 3, padding=1), torch.nn.functional.unfold(x, 3, padding=1))
        True
    """
    check_tensor(x, "x", min_ndim=3)
    N = x.ndim - 2
    spec = ConvSpec.make(N, kernel_size, stride, padding, dilation)
    _check_output(spec, x.shape[2:])
    return compiled("unfold", N=N, **_freeze(spec))(x=x)


def _fold_dims(*args) -> int:
    for value in args:
        if isinstance(value, (tuple, list, torch.Size)) and len(value) >= 1:
            return len(value)
    return 2


def fold(x, output_size, kernel_size, dilation=1, padding=0, stride=1) -> torch.Tensor:
    """col2im for any N, same as ``torch.nn.functional.fold`` for N = 2.

    ``N`` is the length of the first tuple among ``output_size``,
    ``kernel_size``, ``dilation``, ``padding``, ``stride`` (2 if all are ints).

    Args:
        x: ``[B, C*K1*..*KN, O1*..*ON]``.
        output_size: spatial size of the result.

    Returns:
        ``[B, C, *output_size]``.

    Example:
        >>> x = torch.randn(2, 3 * 4, 9)
        >>> torch.allclose(fold(x, (4, 4), 2), torch.nn.functional.fold(x, (4, 4), 2), atol=1e-6)
        True
    """
    check_tensor(x, "x", ndim=3)
    N = _fold_dims(output_size, kernel_size, dilation, padding, stride)
    output_size = ntuple(output_size, N, "output_size")
    spec = ConvSpec.make(N, kernel_size, stride, padding, dilation)
    O = _check_output(spec, output_size, "output_size")
    K = 1
    for k in spec.kernel_size:
        K *= k
    L = 1
    for o in O:
        L *= o
    if x.shape[1] % K:
        raise ValueError(f"x.shape[1]={x.shape[1]} must be divisible by the kernel's {K} entries (kernel_size={spec.kernel_size})")
    if x.shape[2] != L:
        raise ValueError(f"x.shape[2]={x.shape[2]} must equal the number of blocks {L} for output_size={output_size}")
    return compiled("fold", N=N, output_size=output_size, **_freeze(spec))(x=x)


def unfold_kernel(weight, input_size, stride=1, padding=0, dilation=1, groups=1) -> torch.Tensor:
    """The Toeplitz matrix ``A(W)``, ``[C_out*O1*..*ON, C_in*I1*..*IN]``.

    ``conv(x, W).flatten(1) == x.flatten(1) @ A(W).T`` (no bias).

    Args:
        weight: ``[C_out, C_in/groups, *K]``.
        input_size: spatial size ``(I1, .., IN)`` of the convolution's input.

    Example:
        >>> x, w = torch.randn(2, 3, 5), torch.randn(4, 3, 2)
        >>> a = unfold_kernel(w, (5,))
        >>> torch.allclose(x.flatten(1) @ a.T, torch.nn.functional.conv1d(x, w).flatten(1), atol=1e-5)
        True
    """
    check_tensor(weight, "weight", min_ndim=3)
    _check_groups(groups)
    N = weight.ndim - 2
    input_size = ntuple(input_size, N, "input_size")
    if weight.shape[0] % groups:
        raise ValueError(f"groups={groups} must divide the output channels weight.shape[0]={weight.shape[0]}")
    spec = ConvSpec.make(N, tuple(weight.shape[2:]), stride, padding, dilation, groups)
    _check_output(spec, input_size, "input_size")
    return compiled("unfold_kernel", N=N, input_size=input_size, groups=groups, **_freeze(spec))(w=weight)


def unfold_transpose(x, kernel_size, stride=1, padding=0, output_padding=0, dilation=1) -> torch.Tensor:
    """Unfolded input of a transpose convolution, ``[B, C*K1*..*KN, O1*..*ON]``.

    ``conv_transpose(x, W).flatten(2) == W.transpose(0, 1).flatten(1) @ unfold_transpose(x, ...)``
    for ``groups=1``, where ``O`` is the transpose convolution's output size.

    Example:
        >>> x, w = torch.randn(2, 3, 5), torch.randn(3, 4, 2)
        >>> u = unfold_transpose(x, 2, stride=2)
        >>> y = torch.nn.functional.conv_transpose1d(x, w, stride=2)
        >>> torch.allclose(w.transpose(0, 1).flatten(1) @ u, y, atol=1e-5)
        True
    """
    check_tensor(x, "x", min_ndim=3)
    N = x.ndim - 2
    if isinstance(padding, str):
        raise ValueError(f"padding must be an int or a tuple for unfold_transpose, got {padding!r}")
    spec = ConvSpec.make(N, kernel_size, stride, padding, dilation)
    output_padding = ntuple(output_padding, N, "output_padding", minimum=0)
    check_transpose_output(spec, output_padding, x.shape[2:])
    return compiled("unfold_transpose", N=N, output_padding=output_padding, **_freeze(spec))(x=x)


__all__ = ["conv", "conv_transpose", "unfold", "fold", "unfold_kernel", "unfold_transpose"]
