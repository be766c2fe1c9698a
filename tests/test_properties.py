"""Property-based tests over the hyper-parameter space (hypothesis).

CI runs the "ci" profile (25 examples per property); the on-demand profile
runs 10,000: ``HYPOTHESIS_PROFILE=thorough python -m pytest tests/test_properties.py``.
"""

import gc
import weakref

import pytest
import torch
from hypothesis import given, strategies as st

import tnconv
from tnconv import diagrams, passes
from tnconv import functional as F
from tnconv import testing as T
from tnconv.backends import BACKENDS
from tnconv.testing.strategies import conv_configs, transpose_configs

DT = torch.float64
TORCH_CONV = {1: torch.nn.functional.conv1d, 2: torch.nn.functional.conv2d, 3: torch.nn.functional.conv3d}
ANY_N = st.integers(1, 5)


def data(c, dtype=DT):
    x = torch.randn(*c.x_size, dtype=dtype)
    w = torch.randn(*c.weight_size, dtype=dtype)
    return x, w


@given(conv_configs(N=ANY_N, max_size=5))
def test_conv_equals_reference(c):
    x, w = data(c)
    b = torch.randn(c.out_channels, dtype=DT)
    ref = TORCH_CONV[c.N] if c.N <= 3 and not isinstance(c.padding[0] if isinstance(c.padding, tuple) else 0, tuple) else T.conv
    torch.testing.assert_close(F.conv(x, w, b, **c.kwargs()), ref(x, w, b, **c.kwargs()))


@given(transpose_configs(N=st.integers(1, 4)))
def test_conv_transpose_is_the_input_vjp_of_conv(c):
    x = torch.randn(c.batch, c.out_channels, *c.input_size, dtype=DT)
    w = torch.randn(c.out_channels, c.in_channels // c.groups, *c.kernel_size, dtype=DT)
    kw = dict(stride=c.stride, padding=c.padding, dilation=c.dilation, groups=c.groups)
    y = F.conv_transpose(x, w, output_padding=c.output_padding, **kw)
    torch.testing.assert_close(y, T.conv_transpose(x, w, output_padding=c.output_padding, **kw))
    if all(op < s for op, s in zip(c.output_padding, c.stride)):  # else conv(y-sized input) has more outputs than x
        torch.testing.assert_close(F.input_vjp(y.shape, w, x, **kw), y)


@given(conv_configs(N=ANY_N, max_size=5), st.data())
def test_fold_is_the_adjoint_of_unfold(c, draw):
    kw = dict(kernel_size=c.kernel_size, dilation=c.dilation, padding=c.padding, stride=c.stride)
    x = torch.randn(*c.x_size, dtype=DT)
    u = F.unfold(x, **kw)
    torch.testing.assert_close(u, T.unfold(x, **kw))
    y = torch.randn_like(u)
    torch.testing.assert_close((u * y).sum(), (x * F.fold(y, c.input_size, **kw)).sum())


@given(conv_configs(N=st.integers(1, 3), max_size=5))
def test_unfold_kernel_times_input_is_conv(c):
    x, w = data(c)
    a = F.unfold_kernel(w, c.input_size, **c.kwargs())
    torch.testing.assert_close(x.flatten(1) @ a.T, T.conv(x, w, **c.kwargs()).flatten(1))


@given(conv_configs(N=ANY_N, max_size=4))
def test_vjps_equal_autograd(c):
    x, w = data(c)
    x.requires_grad_(True)
    w.requires_grad_(True)
    y = T.conv(x, w, **c.kwargs())
    g = torch.randn_like(y)
    gx, gw = torch.autograd.grad(y, (x, w), g) if y.numel() else (torch.zeros_like(x), torch.zeros_like(w))
    torch.testing.assert_close(F.weight_vjp(x.detach(), w.shape, g, **c.kwargs()), gw)
    torch.testing.assert_close(F.input_vjp(x.shape, w.detach(), g, **c.kwargs()), gx)


@given(conv_configs(N=ANY_N, max_size=4, max_batch=2))
def test_kronecker_factors_equal_unfold_formulas(c):
    if c.batch == 0:
        return
    x = torch.randn(*c.x_size, dtype=DT)
    u = T.unfold(x, c.kernel_size, c.dilation, c.padding, c.stride)
    u = u.reshape(c.batch, c.groups, -1, u.shape[-1])
    kw = dict(stride=c.stride, padding=c.padding, dilation=c.dilation, groups=c.groups)
    torch.testing.assert_close(F.kfc(x, c.kernel_size, **kw), torch.einsum("bgio,bgjo->gij", u, u) / c.batch)
    m = u.mean(-1)
    torch.testing.assert_close(F.kfac_reduce(x, c.kernel_size, **kw), torch.einsum("bgi,bgj->gij", m, m) / c.batch)


NETWORKS = {
    "conv": lambda c: (diagrams.conv(N=c.N, kernel_size=c.kernel_size, **c.kwargs(), bias=True), ("x", "w", "b")),
    "weight_vjp": lambda c: (diagrams.weight_vjp(N=c.N, kernel_size=c.kernel_size, **c.kwargs()), ("x", "grad_output")),
    "kfc": lambda c: (diagrams.kfc(N=c.N, kernel_size=c.kernel_size, **c.kwargs()), ("x",)),
    "kfac_reduce": lambda c: (diagrams.kfac_reduce(N=c.N, kernel_size=c.kernel_size, **c.kwargs()), ("x",)),
    "per_sample": lambda c: (diagrams.per_sample_weight_grad(N=c.N, kernel_size=c.kernel_size, **c.kwargs()), ("x", "grad_output")),
    "hessian_w": lambda c: (diagrams.hessian_diagonal_weight(N=c.N, kernel_size=c.kernel_size, **c.kwargs()), ("x", "output_diag")),
}


def operands(c, names):
    out = (c.batch, c.out_channels) + c.output_size()
    shapes = {"x": c.x_size, "w": c.weight_size, "b": (c.out_channels,), "grad_output": out, "output_diag": out}
    return {n: torch.randn(*shapes[n], dtype=DT) for n in names}


@given(conv_configs(N=st.integers(1, 3), max_size=4), st.sampled_from(sorted(NETWORKS)))
def test_backends_and_passes_agree_and_text_round_trips(c, name):
    tn, names = NETWORKS[name](c)
    assert tnconv.TensorNetwork.from_text(tn.to_text()) == tn
    args = operands(c, names)
    reference = tnconv.compile(tn, backend="torch", passes=None)(**args)
    for backend in BACKENDS:
        torch.testing.assert_close(tnconv.compile(tn, backend=backend)(**args), reference)
    for name_ in passes.PASSES:
        torch.testing.assert_close(tnconv.compile(tn, passes=[name_])(**args), reference)


@given(conv_configs(N=st.integers(1, 3), max_size=5), st.sampled_from([torch.float16, torch.bfloat16, torch.float32]))
def test_low_precision_results_keep_their_dtype(c, dtype):
    x, w = data(c)
    ours = F.conv(x.to(dtype), w.to(dtype), **c.kwargs())
    assert ours.dtype == dtype
    eps = torch.finfo(dtype).eps
    scale = max(1.0, T.conv(x, w, **c.kwargs()).abs().max().item() if c.batch else 1.0)
    fan_in = (c.in_channels // c.groups) * max(1, torch.tensor(c.kernel_size).prod().item())
    reference = T.conv(x.to(dtype).double(), w.to(dtype).double(), **c.kwargs())
    torch.testing.assert_close(ours.double(), reference, atol=8 * eps * scale * fan_in**0.5, rtol=8 * eps)


def test_channels_last_and_non_contiguous_inputs():
    x = torch.randn(2, 4, 7, 6, dtype=DT).to(memory_format=torch.channels_last)
    w = torch.randn(6, 2, 3, 3, dtype=DT).to(memory_format=torch.channels_last)
    torch.testing.assert_close(F.conv(x, w, groups=2), torch.nn.functional.conv2d(x, w, groups=2))
    xt = torch.randn(2, 6, 7, 4, dtype=DT).permute(0, 3, 2, 1)
    torch.testing.assert_close(F.kfc(xt, (2, 2)), F.kfc(xt.contiguous(), (2, 2)))


def test_single_pixel_output_and_batch_edge_cases():
    for batch in (0, 1):
        x, w = torch.randn(batch, 2, 3, 3, dtype=DT), torch.randn(4, 2, 3, 3, dtype=DT)
        y = F.conv(x, w)
        assert y.shape == (batch, 4, 1, 1)
        torch.testing.assert_close(y, torch.nn.functional.conv2d(x, w))


def test_results_are_deterministic():
    x, w = torch.randn(3, 4, 9, 9), torch.randn(5, 4, 3, 3)
    assert torch.equal(F.conv(x, w, padding=1), F.conv(x, w, padding=1))
    assert torch.equal(F.kfc(x, (3, 3)), F.kfc(x, (3, 3)))


def test_calls_keep_no_tensors_alive():
    f = tnconv.compile(diagrams.conv(N=1, kernel_size=3))
    x, w = torch.randn(2, 3, 8), torch.randn(4, 3, 3)
    refs = [weakref.ref(x), weakref.ref(w)]
    y = f(x=x, w=w)
    del x, w, y
    gc.collect()
    assert all(r() is None for r in refs)


def test_inference_mode_and_no_grad():
    x, w = torch.randn(2, 3, 8), torch.randn(4, 3, 3)
    with torch.inference_mode():
        a = F.weight_vjp(x, w.shape, torch.randn(2, 4, 6))
    with torch.no_grad():
        b = F.kfac_reduce(x, (3,))
    assert a.shape == w.shape and b.shape == (1, 9, 9)
