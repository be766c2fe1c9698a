"""Forward-family functionals against PyTorch (N <= 3) and the slow references (any N), float64."""

import random

import pytest
import torch

from tnconv import functional as F
from tnconv import testing as T

TORCH_CONV = {1: torch.nn.functional.conv1d, 2: torch.nn.functional.conv2d, 3: torch.nn.functional.conv3d}
TORCH_CONVT = {1: torch.nn.functional.conv_transpose1d, 2: torch.nn.functional.conv_transpose2d,
               3: torch.nn.functional.conv_transpose3d}
DT = torch.float64


def configs(N, count, seed, **kw):
    rng = random.Random(1000 * N + seed)
    return [T.random_config(rng, N, **kw) for _ in range(count)]


def rand(*shape):
    return torch.randn(*shape, dtype=DT)


@pytest.mark.parametrize("N", [1, 2, 3])
@pytest.mark.parametrize("seed", range(4))
def test_conv_matches_torch(N, seed):
    for c in configs(N, 12, seed):
        x, w, b = rand(*c.x_size), rand(*c.weight_size), rand(c.out_channels)
        bias = b if seed % 2 else None
        torch.testing.assert_close(F.conv(x, w, bias, **c.kwargs()), TORCH_CONV[N](x, w, bias, **c.kwargs()),
                                   msg=lambda m: f"{c}: {m}")


@pytest.mark.parametrize("N", [1, 2, 3])
def test_conv_asymmetric_padding_matches_reference(N):
    for c in configs(N, 15, 7, asymmetric=True):
        x, w = rand(*c.x_size), rand(*c.weight_size)
        torch.testing.assert_close(F.conv(x, w, **c.kwargs()), T.conv(x, w, **c.kwargs()), msg=lambda m: f"{c}: {m}")


@pytest.mark.parametrize("N", [4, 5])
def test_conv_high_dimensional_matches_reference(N):
    for c in configs(N, 4, 3, max_size=5):
        x, w, b = rand(*c.x_size), rand(*c.weight_size), rand(c.out_channels)
        torch.testing.assert_close(F.conv(x, w, b, **c.kwargs()), T.conv(x, w, b, **c.kwargs()), msg=lambda m: f"{c}: {m}")


def _torch_padding(c):
    return not (isinstance(c.padding, tuple) and isinstance(c.padding[0], tuple))


def _wide_forward(N, count, seed):
    for c in configs(N, count, seed, max_size=24, asymmetric=True, wide=True):
        x, w, b = rand(*c.x_size), rand(*c.weight_size), rand(c.out_channels)
        reference = TORCH_CONV[N] if N <= 3 and _torch_padding(c) else T.conv
        torch.testing.assert_close(F.conv(x, w, b, **c.kwargs()), reference(x, w, b, **c.kwargs()),
                                   msg=lambda m: f"{c}: {m}")
        kw = dict(kernel_size=c.kernel_size, dilation=c.dilation, padding=c.padding, stride=c.stride)
        u = F.unfold(x, **kw)
        torch.testing.assert_close(u, T.unfold(x, **kw), msg=lambda m: f"{c}: {m}")
        y = torch.randn_like(u)
        torch.testing.assert_close(F.fold(y, c.input_size, **kw), T.fold(y, c.input_size, **kw), msg=lambda m: f"{c}: {m}")


@pytest.mark.parametrize("N", [1, 2, 3, 4, 5, 6])
def test_wide_hyper_parameters(N):
    """Kernels up to 7, dilation up to 21, stride up to 6, padding beyond the dilated kernel (outputs that see no input)."""
    _wide_forward(N, 6 if N <= 3 else 2, 21)


@pytest.mark.slow
@pytest.mark.parametrize("N", [1, 2, 3, 4, 5, 6])
def test_wide_hyper_parameters_exhaustively(N):
    _wide_forward(N, 60 if N <= 3 else 20, 22)


@pytest.mark.parametrize("N", [1, 2, 3])
def test_reference_conv_matches_torch(N):
    """The slow reference must itself be right, or the N >= 4 tests prove nothing."""
    for c in configs(N, 10, 11):
        x, w = rand(*c.x_size), rand(*c.weight_size)
        torch.testing.assert_close(T.conv(x, w, **c.kwargs()), TORCH_CONV[N](x, w, **c.kwargs()))


def test_conv_unbatched_and_batch_one():
    x, w = rand(3, 7, 6), rand(4, 3, 2, 2)
    torch.testing.assert_close(F.conv(x, w, padding=1), torch.nn.functional.conv2d(x, w, padding=1))
    torch.testing.assert_close(F.conv(x[None], w), torch.nn.functional.conv2d(x[None], w))


def _transpose_configs(N, count, seed):
    out = []
    for c in configs(N, count, seed, allow_same=False):
        c.padding = c.padding if c.padding != "valid" else 0
        pads = c.padding if isinstance(c.padding, tuple) else (c.padding,) * N
        # the transposed output must be non-empty
        if all((I - 1) * s - 2 * p + d * (k - 1) + op + 1 >= 1 for I, s, p, d, k, op in
               zip(c.input_size, c.stride, pads, c.dilation, c.kernel_size, c.output_padding)):
            out.append(c)
    return out


@pytest.mark.parametrize("N", [1, 2, 3])
@pytest.mark.parametrize("seed", range(3))
def test_conv_transpose_matches_torch(N, seed):
    for c in _transpose_configs(N, 12, seed):
        x = rand(c.batch, c.out_channels, *c.input_size)
        w = rand(c.out_channels, c.in_channels // c.groups, *c.kernel_size)
        b = rand(c.in_channels) if seed % 2 else None
        kw = dict(stride=c.stride, padding=c.padding, output_padding=c.output_padding, groups=c.groups, dilation=c.dilation)
        torch.testing.assert_close(F.conv_transpose(x, w, b, **kw), TORCH_CONVT[N](x, w, b, **kw), msg=lambda m: f"{c}: {m}")


@pytest.mark.parametrize("N", [1, 2, 3])
def test_conv_transpose_wide_hyper_parameters(N):
    rng = random.Random(3100 + N)
    done = 0
    while done < 6:
        c = T.random_config(rng, N, max_size=12, wide=True, allow_same=False)
        c.padding = c.padding if c.padding != "valid" else 0
        c.input_size = c.output_size()  # the transpose's input: a convolution's output, within the caps
        pads = c.padding if isinstance(c.padding, tuple) else (c.padding,) * N
        if any((I - 1) * s - 2 * p + d * (k - 1) + op + 1 < 1 for I, s, p, d, k, op in
               zip(c.input_size, c.stride, pads, c.dilation, c.kernel_size, c.output_padding)):
            continue
        done += 1
        x = rand(c.batch, c.out_channels, *c.input_size)
        w = rand(c.out_channels, c.in_channels // c.groups, *c.kernel_size)
        kw = dict(stride=c.stride, padding=c.padding, output_padding=c.output_padding, groups=c.groups, dilation=c.dilation)
        torch.testing.assert_close(F.conv_transpose(x, w, **kw), TORCH_CONVT[N](x, w, **kw), msg=lambda m: f"{c}: {m}")


@pytest.mark.parametrize("N", [4])
def test_conv_transpose_high_dimensional(N):
    for c in _transpose_configs(N, 4, 5):
        x = rand(c.batch, c.out_channels, *c.input_size)
        w = rand(c.out_channels, c.in_channels // c.groups, *c.kernel_size)
        kw = dict(stride=c.stride, padding=c.padding, output_padding=c.output_padding, groups=c.groups, dilation=c.dilation)
        torch.testing.assert_close(F.conv_transpose(x, w, **kw), T.conv_transpose(x, w, **kw))


@pytest.mark.parametrize("seed", range(3))
def test_unfold_fold_match_torch_2d(seed):
    for c in configs(2, 12, seed, allow_same=False):
        kw = dict(kernel_size=c.kernel_size, dilation=c.dilation, padding=c.padding if c.padding != "valid" else 0,
                  stride=c.stride)
        x = rand(*c.x_size)
        u = F.unfold(x, **kw)
        torch.testing.assert_close(u, torch.nn.functional.unfold(x, **kw))
        y = rand(*u.shape)
        torch.testing.assert_close(F.fold(y, c.input_size, **kw), torch.nn.functional.fold(y, c.input_size, **kw))


@pytest.mark.parametrize("N", [1, 3, 4])
def test_unfold_fold_any_dimension(N):
    for c in configs(N, 6, 2, max_size=6):
        kw = dict(kernel_size=c.kernel_size, dilation=c.dilation, padding=c.padding, stride=c.stride)
        x = rand(*c.x_size)
        u = F.unfold(x, **kw)
        torch.testing.assert_close(u, T.unfold(x, **kw))
        y = rand(*u.shape)
        folded = F.fold(y, c.input_size, **kw)
        torch.testing.assert_close(folded, T.fold(y, c.input_size, **kw))
        # fold is the adjoint of unfold
        torch.testing.assert_close((u * y).sum(), (x * folded).sum())


@pytest.mark.parametrize("N", [1, 2, 3])
def test_unfold_times_weight_is_conv(N):
    for c in configs(N, 8, 4):
        if c.groups != 1:
            continue
        x, w = rand(*c.x_size), rand(*c.weight_size)
        u = F.unfold(x, c.kernel_size, c.dilation, c.padding, c.stride)
        y = TORCH_CONV[N](x, w, **c.kwargs())
        torch.testing.assert_close(w.flatten(1) @ u, y.flatten(2))


@pytest.mark.parametrize("N", [1, 2, 3])
def test_unfold_kernel_is_toeplitz(N):
    for c in configs(N, 8, 5, max_size=6):
        x, w = rand(*c.x_size), rand(*c.weight_size)
        a = F.unfold_kernel(w, c.input_size, **c.kwargs())
        y = TORCH_CONV[N](x, w, **c.kwargs())
        assert a.shape == (y[0].numel(), x[0].numel())
        torch.testing.assert_close(x.flatten(1) @ a.T, y.flatten(1))


@pytest.mark.parametrize("N", [1, 2, 3])
def test_unfold_transpose(N):
    for c in _transpose_configs(N, 8, 6):
        x = rand(c.batch, c.out_channels, *c.input_size)
        w = rand(c.out_channels, c.in_channels, *c.kernel_size)
        kw = dict(stride=c.stride, padding=c.padding, output_padding=c.output_padding, dilation=c.dilation)
        u = F.unfold_transpose(x, c.kernel_size, **kw)
        y = TORCH_CONVT[N](x, w, **kw)
        torch.testing.assert_close(w.transpose(0, 1).flatten(1) @ u, y.flatten(2))


def test_dtype_follows_input():
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        x, w = torch.randn(2, 3, 6, dtype=dtype), torch.randn(4, 3, 3, dtype=dtype)
        assert F.conv(x, w).dtype == dtype


def test_non_contiguous_inputs():
    x = rand(3, 8, 7, 2).transpose(1, 3)  # [3, 2, 7, 8] non-contiguous
    w = rand(4, 3, 2, 2).transpose(0, 1)  # [3, 4, 2, 2] non-contiguous
    x = x.transpose(1, 2)  # [3, 7, 2, 8]
    assert not x.is_contiguous() and not w.is_contiguous()
    x = x[:, :4]
    w = w[:, :4]
    torch.testing.assert_close(F.conv(x, w), torch.nn.functional.conv2d(x, w))


def test_autograd_flows_through_functional_conv():
    x, w = rand(2, 2, 5).requires_grad_(), rand(3, 2, 2).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, w: F.conv(x, w, stride=2, padding=1), (x, w))


def test_no_grad_and_inference_mode():
    x, w = rand(2, 2, 5), rand(3, 2, 2)
    with torch.no_grad():
        a = F.conv(x, w)
    with torch.inference_mode():
        b = F.conv(x, w)
    torch.testing.assert_close(a, b)
