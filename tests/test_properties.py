"""Property-based tests over the hyper-parameter space (hypothesis).

Each property draws small configurations and wide ones (``WIDE``: kernels up to 7,
dilation up to 21, stride up to 6, padding beyond the dilated kernel's span), in
N = 1..6 for the forward operations and 1..5 for the derived ones, against PyTorch
for N <= 3 and the slow references of ``tnconv.testing`` beyond.

CI runs the "ci" profile (25 examples per property); the on-demand profile
runs 10,000: ``HYPOTHESIS_PROFILE=thorough python -m pytest tests/test_properties.py``.
"""

import gc
import math
import weakref

import pytest
import torch
from hypothesis import assume, given, strategies as st

import tnconv
from tnconv import diagrams, passes
from tnconv import functional as F
from tnconv import testing as T
from tnconv.backends import BACKENDS
from tnconv.testing.strategies import WIDE, conv_configs, transpose_configs

DT = torch.float64
TORCH_CONV = {1: torch.nn.functional.conv1d, 2: torch.nn.functional.conv2d, 3: torch.nn.functional.conv3d}
ANY_N = st.integers(1, 5)
FORWARD_N, DERIVED_N = st.integers(1, 6), st.integers(1, 5)


def configs(N, max_size=5, **small):
    """Small configurations, or wide ones (``WIDE``) half of the time."""
    return st.one_of(conv_configs(N=N, max_size=max_size, **small), conv_configs(N=N, **dict(WIDE, **small)))


def transposes(N, max_size=5):
    return st.one_of(transpose_configs(N=N, max_size=max_size), transpose_configs(N=N, **WIDE))


def data(c, dtype=DT):
    x = torch.randn(*c.x_size, dtype=dtype)
    w = torch.randn(*c.weight_size, dtype=dtype)
    return x, w


@given(configs(FORWARD_N))
def test_conv_equals_reference(c):
    x, w = data(c)
    b = torch.randn(c.out_channels, dtype=DT)
    ref = TORCH_CONV[c.N] if c.N <= 3 and not isinstance(c.padding[0] if isinstance(c.padding, tuple) else 0, tuple) else T.conv
    torch.testing.assert_close(F.conv(x, w, b, **c.kwargs()), ref(x, w, b, **c.kwargs()))


@given(transposes(FORWARD_N))
def test_conv_transpose_is_the_input_vjp_of_conv(c):
    x = torch.randn(c.batch, c.out_channels, *c.input_size, dtype=DT)
    w = torch.randn(c.out_channels, c.in_channels // c.groups, *c.kernel_size, dtype=DT)
    kw = dict(stride=c.stride, padding=c.padding, dilation=c.dilation, groups=c.groups)
    y = F.conv_transpose(x, w, output_padding=c.output_padding, **kw)
    torch.testing.assert_close(y, T.conv_transpose(x, w, output_padding=c.output_padding, **kw))
    if all(op < s for op, s in zip(c.output_padding, c.stride)):  # else conv(y-sized input) has more outputs than x
        torch.testing.assert_close(F.input_vjp(y.shape, w, x, **kw), y)


@given(configs(FORWARD_N), st.data())
def test_fold_is_the_adjoint_of_unfold(c, draw):
    kw = dict(kernel_size=c.kernel_size, dilation=c.dilation, padding=c.padding, stride=c.stride)
    x = torch.randn(*c.x_size, dtype=DT)
    u = F.unfold(x, **kw)
    torch.testing.assert_close(u, T.unfold(x, **kw))
    y = torch.randn_like(u)
    torch.testing.assert_close((u * y).sum(), (x * F.fold(y, c.input_size, **kw)).sum())


@given(configs(st.integers(1, 3), max_pixels=64))
def test_unfold_kernel_times_input_is_conv(c):
    x, w = data(c)
    a = F.unfold_kernel(w, c.input_size, **c.kwargs())
    torch.testing.assert_close(x.flatten(1) @ a.T, T.conv(x, w, **c.kwargs()).flatten(1))


@given(configs(DERIVED_N, max_size=4))
def test_vjps_equal_autograd(c):
    x, w = data(c)
    x.requires_grad_(True)
    w.requires_grad_(True)
    y = T.conv(x, w, **c.kwargs())
    g = torch.randn_like(y)
    gx, gw = torch.autograd.grad(y, (x, w), g) if y.numel() else (torch.zeros_like(x), torch.zeros_like(w))
    torch.testing.assert_close(F.weight_vjp(x.detach(), w.shape, g, **c.kwargs()), gw)
    torch.testing.assert_close(F.input_vjp(x.shape, w.detach(), g, **c.kwargs()), gx)


@given(configs(DERIVED_N, max_size=4, max_batch=2))
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


def _float32_cases(c, x, w, g):
    """``name -> (ours, reference, absolute reference, reduction length)``: float32 results, float64 references."""
    kw = c.kwargs()
    K, O = math.prod(c.kernel_size), math.prod(c.output_size())
    x32, w32, g32 = x.float(), w.float(), g.float()
    x, w, g = x32.double(), w32.double(), g32.double()  # the references see the float32 inputs exactly

    def vjps(x, w, g):
        x, w = x.clone().requires_grad_(), w.clone().requires_grad_()
        return torch.autograd.grad(T.conv(x, w, **kw), (x, w), g)

    def factors(x):
        u = T.unfold(x, c.kernel_size, c.dilation, c.padding, c.stride)
        u = u.reshape(c.batch, c.groups, -1, u.shape[-1])
        m = u.mean(-1)
        return torch.einsum("bgio,bgjo->gij", u, u) / c.batch, torch.einsum("bgi,bgj->gij", m, m) / c.batch

    (gx, gw), (ax, aw) = vjps(x, w, g), vjps(x.abs(), w.abs(), g.abs())
    (kfc, red), (akfc, ared) = factors(x), factors(x.abs())
    fan_in, fan_out = c.in_channels // c.groups * K, c.out_channels // c.groups * K
    hyper = dict(stride=c.stride, padding=c.padding, dilation=c.dilation, groups=c.groups)
    return {
        "conv": (F.conv(x32, w32, **kw), T.conv(x, w, **kw), T.conv(x.abs(), w.abs(), **kw), fan_in),
        "input_vjp": (F.input_vjp(x.shape, w32, g32, **kw), gx, ax, fan_out),
        "weight_vjp": (F.weight_vjp(x32, w.shape, g32, **kw), gw, aw, c.batch * O),
        "kfc": (F.kfc(x32, c.kernel_size, **hyper), kfc, akfc, c.batch * O),
        "kfac_reduce": (F.kfac_reduce(x32, c.kernel_size, **hyper), red, ared, c.batch * O),
    }


@given(configs(DERIVED_N, max_size=5), st.sampled_from(["conv", "input_vjp", "weight_vjp", "kfc", "kfac_reduce"]))
def test_float32_errors_stay_within_the_reduction_lengths_bound(c, name):
    """Each float32 entry is within ``8 eps sqrt(L)`` of the float64 one, relative to the sum of the magnitudes of
    its ``L`` terms (the reference on absolute values): the error of a length-``L`` floating-point sum."""
    assume(c.batch >= 1)
    x, w = data(c)
    g = torch.randn(c.batch, c.out_channels, *c.output_size(), dtype=DT)
    ours, reference, magnitude, length = _float32_cases(c, x, w, g)[name]
    assert ours.dtype == torch.float32 and ours.shape == reference.shape
    bound = 8 * torch.finfo(torch.float32).eps * math.sqrt(max(length, 1)) * magnitude + torch.finfo(torch.float32).tiny
    error = (ours.double() - reference).abs()
    worst = (error / bound).max().item() if error.numel() else 0.0
    assert worst <= 1, f"{name}: error {worst:.2f}x the bound, reduction length {length}"


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


@given(configs(st.integers(1, 3)), st.sampled_from([torch.float16, torch.bfloat16, torch.float32]))
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
