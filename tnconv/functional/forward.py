"""Forward-family operations: convolution, transpose convolution, unfold, fold.

Every function takes PyTorch's arguments in PyTorch's order, works for any
number ``N >= 1`` of spatial dimensions (from the weight, a shape argument, a
tuple hyper-parameter or the keyword ``N``; a rank alone never decides it where
two layouts share that rank), validates the ranks and everything else before
contracting anything, and compiles its diagram once per hyper-parameters; the
compiled network caches one plan per shape.
"""

from __future__ import annotations

import torch

from .._args import ConvSpec, check_same, check_tensor, ntuple
from ._common import (_batched, _check_bias, _check_groups, _check_output, _freeze, check_transpose_output, compiled,
                      conv_geometry, read_layout, spatial_dims, transpose_output_padding)
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


def conv_transpose(x, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1,
                   output_size=None) -> torch.Tensor:
    """N-d transpose convolution, same as ``torch.nn.functional.conv_transpose{1,2,3}d``.

    Args:
        x: ``[B, C_in, *I]`` (or unbatched ``[C_in, *I]``).
        weight: ``[C_in, C_out/groups, *K]``.
        bias: optional ``[C_out]``.
        output_padding: extra size on one side of the output, smaller than stride or dilation.
        output_size: the result's spatial size (or full shape), as ``torch.nn.ConvTranspose*d``'s
            ``forward`` takes it; sets ``output_padding`` by PyTorch's rule.

    Example:
        >>> x, w = torch.randn(2, 4, 5), torch.randn(4, 3, 3)
        >>> torch.allclose(conv_transpose(x, w, stride=2), torch.nn.functional.conv_transpose1d(x, w, stride=2), atol=1e-5)
        True
        >>> conv_transpose(x, w, stride=2, output_size=(12,)).shape
        torch.Size([2, 3, 12])
    """
    hyper = (stride, padding, output_padding, groups, dilation)
    if output_size is not None:  # part of the signature (a list keeps the call off the fast path)
        hyper += (output_size,)
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
    output_padding = transpose_output_padding(spec, output_padding, output_size, x.shape[2:], squeeze)
    check_transpose_output(spec, output_padding, x.shape[2:])
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


def unfold(x, kernel_size, dilation=1, padding=0, stride=1, *, N=None) -> torch.Tensor:
    """im2col for any N, same as ``torch.nn.functional.unfold`` for N = 2.

    The number ``N`` of spatial dimensions is the length of any tuple among the
    hyper-parameters, or ``N``. With every hyper-parameter an int, ``x``'s rank
    must fix it: a 4-d ``x`` is a batch of 2-d inputs or one 3-d input, so it
    needs ``N`` (``N=2`` reads it as ``torch.nn.functional.unfold`` does).

    Args:
        x: ``[B, C, *I]`` or unbatched ``[C, *I]``.
        N: the number of spatial dimensions, where the hyper-parameters leave it open.

    Returns:
        ``[B, C*K1*..*KN, O1*..*ON]`` (``[C*K1*..*KN, O1*..*ON]`` for an unbatched ``x``).

    Example:
        >>> x = torch.randn(2, 3, 6, 7)
        >>> torch.allclose(unfold(x, 3, padding=1, N=2), torch.nn.functional.unfold(x, 3, padding=1))
        True
        >>> unfold(x[0], (3, 3)).shape
        torch.Size([27, 20])
    """
    check_tensor(x, "x")
    N = spatial_dims(N, kernel_size, dilation, padding, stride)
    lead = read_layout(x, N, hint="pass N or kernel_size as a tuple")
    x = x.unsqueeze(0) if lead == 1 else x
    N = x.ndim - 2
    spec = ConvSpec.make(N, kernel_size, stride, padding, dilation)
    _check_output(spec, x.shape[2:])
    u = compiled("unfold", N=N, **_freeze(spec))(x=x)
    return u.squeeze(0) if lead == 1 else u


def fold(x, output_size, kernel_size, dilation=1, padding=0, stride=1, *, N=None) -> torch.Tensor:
    """col2im for any N, same as ``torch.nn.functional.fold`` for N = 2.

    ``N`` is given, or the length of the first tuple among ``output_size``,
    ``kernel_size``, ``dilation``, ``padding``, ``stride``, or 2 if all are ints
    (as ``torch.nn.functional.fold``).

    Args:
        x: ``[B, C*K1*..*KN, O1*..*ON]`` or unbatched ``[C*K1*..*KN, O1*..*ON]``.
        output_size: spatial size of the result.

    Returns:
        ``[B, C, *output_size]`` (``[C, *output_size]`` for an unbatched ``x``).

    Example:
        >>> x = torch.randn(2, 3 * 4, 9)
        >>> torch.allclose(fold(x, (4, 4), 2), torch.nn.functional.fold(x, (4, 4), 2), atol=1e-6)
        True
        >>> fold(x, 10, 2, N=1).shape
        torch.Size([2, 6, 10])
    """
    check_tensor(x, "x")
    if x.ndim not in (2, 3):
        raise ValueError(f"x must be [B, C*K, L] (3 dimensions) or unbatched [C*K, L] (2), got shape {tuple(x.shape)}")
    unbatched = x.ndim == 2
    x = x.unsqueeze(0) if unbatched else x
    N = spatial_dims(N, output_size, kernel_size, dilation, padding, stride) or 2
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
        raise ValueError(f"x.shape[{1 - unbatched}]={x.shape[1]} must be divisible by the kernel's {K} entries "
                         f"(kernel_size={spec.kernel_size})")
    if x.shape[2] != L:
        raise ValueError(f"x.shape[{2 - unbatched}]={x.shape[2]} must equal the number of blocks {L} for "
                         f"output_size={output_size}")
    y = compiled("fold", N=N, output_size=output_size, **_freeze(spec))(x=x)
    return y.squeeze(0) if unbatched else y


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


def unfold_transpose(x, kernel_size, stride=1, padding=0, output_padding=0, dilation=1, *, output_size=None,
                     N=None) -> torch.Tensor:
    """Unfolded input of a transpose convolution, ``[B, C*K1*..*KN, O1*..*ON]``.

    ``conv_transpose(x, W).flatten(2) == W.transpose(0, 1).flatten(1) @ unfold_transpose(x, ...)``
    for ``groups=1``, where ``O`` is the transpose convolution's output size.
    ``N`` is read as in :func:`unfold`; ``output_size`` as in :func:`conv_transpose`.

    Example:
        >>> x, w = torch.randn(2, 3, 5), torch.randn(3, 4, 2)
        >>> u = unfold_transpose(x, (2,), stride=2)
        >>> y = torch.nn.functional.conv_transpose1d(x, w, stride=2)
        >>> torch.allclose(w.transpose(0, 1).flatten(1) @ u, y, atol=1e-5)
        True
    """
    check_tensor(x, "x")
    N = spatial_dims(N, kernel_size, stride, padding, output_padding, dilation)
    lead = read_layout(x, N, hint="pass N or kernel_size as a tuple")
    x = x.unsqueeze(0) if lead == 1 else x
    N = x.ndim - 2
    if isinstance(padding, str):
        raise ValueError(f"padding must be an int or a tuple for unfold_transpose, got {padding!r}")
    spec = ConvSpec.make(N, kernel_size, stride, padding, dilation)
    output_padding = transpose_output_padding(spec, output_padding, output_size, x.shape[2:], lead == 1)
    check_transpose_output(spec, output_padding, x.shape[2:])
    u = compiled("unfold_transpose", N=N, output_padding=output_padding, **_freeze(spec))(x=x)
    return u.squeeze(0) if lead == 1 else u


__all__ = ["conv", "conv_transpose", "unfold", "fold", "unfold_kernel", "unfold_transpose"]
