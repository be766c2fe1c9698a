"""Device-agnostic proof: every functional and every tnconv.nn layer runs on ``meta`` tensors.

A ``meta`` tensor has a shape and no data, so a run on it shows that nothing binds
the compiler to the CPU: a dispatch mode records every operator and fails the
test if any of them sees or makes a tensor on another device (a constant built on
the CPU and moved, a random draw on the CPU's generator, a value read back to
Python) -- the things that would cost a copy or a synchronisation on a GPU.
"""

import random

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import tnconv
from tnconv import diagrams
from tnconv import nn as tnn
from tnconv.testing import ConvConfig, random_config
from tnconv.testing.calls import functional_calls, transpose_calls

META = torch.device("meta")


class OnlyMeta(TorchDispatchMode):
    """Records each operator that sees or makes a tensor off the meta device."""

    def __init__(self):
        super().__init__()
        self.offenders = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        devices = {t.device.type for t in tree_flatten((args, kwargs, out))[0] if isinstance(t, torch.Tensor)}
        if devices - {"meta"}:
            self.offenders.append(f"{func} on {sorted(devices)}")
        return out


def on_meta(value):
    if isinstance(value, torch.Tensor):
        return value.to(META)
    return value


def run_on_meta(fn, *args, **kwargs):
    """``fn`` on meta copies of the arguments, inside :class:`OnlyMeta`; the result and the offenders."""
    args = [on_meta(a) for a in args]
    kwargs = {k: on_meta(v) for k, v in kwargs.items()}
    mode = OnlyMeta()
    with mode:
        result = fn(*args, **kwargs)
    return result, mode.offenders


def same_shapes(result, expected):
    got, want = tree_flatten(result)[0], tree_flatten(expected)[0]
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert a.device == META and a.shape == b.shape and a.dtype == b.dtype


def transposable(c):
    """Whether ``c`` is a valid transpose convolution too (int padding, a non-empty output)."""
    if isinstance(c.padding, str) or isinstance(c.padding, tuple) and isinstance(c.padding[0], tuple):
        return False
    pads = c.padding if isinstance(c.padding, tuple) else (c.padding,) * c.N
    return all((I - 1) * s - 2 * p + d * (k - 1) + op >= 0 for I, s, p, d, k, op in
               zip(c.input_size, c.stride, pads, c.dilation, c.kernel_size, c.output_padding))


CONFIGS = [
    random_config(random.Random(seed), N, max_size=7, asymmetric=True) for seed, N in
    [(1, 1), (2, 1), (3, 2), (4, 2), (5, 2), (6, 3), (7, 3), (8, 4)]
] + [
    ConvConfig(2, 2, 4, 6, (6, 6), (1, 1), (1, 1), 0, (1, 1), 2, (0, 0)),  # 1x1: broadcast constants, pointwise template
    ConvConfig(2, 2, 3, 3, (7, 6), (3, 2), (3, 2), 1, (1, 1), 1, (0, 0)),  # down-sampling and dense patterns
    ConvConfig(1, 1, 2, 2, (2,), (3,), (1,), 6, (5,), 1, (0,)),  # padding beyond the dilated kernel
]


@pytest.mark.parametrize("c", CONFIGS, ids=lambda c: f"N{c.N}-k{c.kernel_size}-s{c.stride}-p{c.padding}-g{c.groups}")
def test_every_functional_runs_on_meta_without_touching_the_cpu(c):
    calls = dict(functional_calls(c, dtype=torch.float32))
    if transposable(c):
        calls.update(transpose_calls(c, dtype=torch.float32))
    for name, call in calls.items():
        expected = call()
        kwargs = dict(call.kwargs, device=META) if name == "mixed_second_derivative" else call.kwargs
        result, offenders = run_on_meta(call.fn, *call.args, **kwargs)
        assert not offenders, f"{name}: {offenders}"
        same_shapes(result, expected)


def test_sampled_weight_vjp_on_meta():
    x, g = torch.randn(4, 3, 12), torch.randn(4, 5, 10)
    sub, idx = tnconv.functional.sample_input(x, (0.5, 0.5))
    expected = tnconv.functional.sampled_weight_vjp(sub, idx, x.shape, (5, 3, 3), g)
    result, offenders = run_on_meta(tnconv.functional.sampled_weight_vjp, sub, [i.to(META) for i in idx], x.shape,
                                    (5, 3, 3), g)
    assert not offenders
    same_shapes(result, expected)


def test_compiled_crs_network_draws_on_meta():
    tn = tnconv.passes.crs(diagrams.weight_vjp(N=1, kernel_size=3), "i1", 0.5)
    f = tnconv.compile(tn)
    x, g = torch.randn(2, 3, 10), torch.randn(2, 4, 8)
    result, offenders = run_on_meta(lambda x, g: f(x=x, grad_output=g), x, g)
    assert not offenders and result.shape == (4, 3, 3) and result.device == META


LAYERS = [
    (tnn.Conv1d, dict(kernel_size=3, stride=2, padding=1), (2, 4, 9)),
    (tnn.Conv2d, dict(kernel_size=3, padding="same", groups=2), (2, 4, 7, 6)),
    (tnn.Conv2d, dict(kernel_size=2, padding=1, padding_mode="reflect"), (2, 4, 5, 5)),
    (tnn.Conv2d, dict(kernel_size=3, crs_keep=(1.0, 0.5, 0.5), generator=torch.Generator().manual_seed(0)), (2, 4, 8, 8)),
    (tnn.Conv3d, dict(kernel_size=(1, 2, 3), dilation=(1, 2, 1), bias=False), (2, 4, 5, 6, 7)),
    (tnn.ConvNd, dict(kernel_size=(2, 2, 2, 2), stride=2), (1, 4, 4, 5, 4, 4)),
    (tnn.ConvTranspose1d, dict(kernel_size=3, stride=2, output_padding=1), (2, 4, 5)),
    (tnn.ConvTranspose2d, dict(kernel_size=(2, 3), groups=2, padding=1), (2, 4, 5, 6)),
    (tnn.ConvTranspose3d, dict(kernel_size=2, dilation=2, bias=False), (2, 4, 3, 4, 2)),
]


@pytest.mark.parametrize("cls, options, shape", LAYERS, ids=[f"{l[0].__name__}-{i}" for i, l in enumerate(LAYERS)])
def test_layers_run_forward_and_backward_on_meta(cls, options, shape):
    torch.manual_seed(0)
    reference = cls(4, 6, **options)
    x = torch.randn(*shape, requires_grad=True)
    reference(x).sum().backward()

    mode = OnlyMeta()
    with mode:
        layer = cls(4, 6, device=META, **options)
        xm = torch.randn(*shape, device=META, requires_grad=True)
        y = layer(xm)
        y.sum().backward()
        unbatched = layer(xm[0]) if len(shape) <= 5 else None
    assert not mode.offenders, mode.offenders
    assert y.shape == reference(x).shape and xm.grad.shape == x.grad.shape
    assert layer.weight.grad.device == META and layer.weight.grad.shape == reference.weight.grad.shape
    if unbatched is not None:
        assert unbatched.shape == y.shape[1:]


def test_unfold_and_fold_modules_on_meta():
    mode = OnlyMeta()
    with mode:
        x = torch.randn(2, 3, 5, 6, 7, device=META)
        u = tnn.Unfold((2, 3, 2), padding=1)(x)
        y = tnn.Fold((5, 6, 7), (2, 3, 2), padding=1)(u)
    assert not mode.offenders
    assert y.shape == x.shape and u.shape == (2, 3 * 12, 6 * 6 * 8)


def test_a_converted_model_trains_one_step_on_meta():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 3, stride=2),
                              torch.nn.Flatten(), torch.nn.LazyLinear(2))
    net(torch.randn(1, 3, 9, 9))
    net = tnn.convert(net).to(META)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    mode = OnlyMeta()
    with mode:
        loss = net(torch.randn(4, 3, 9, 9, device=META)).square().mean()
        loss.backward()
        optimizer.step()
    assert not mode.offenders, mode.offenders
    assert all(p.grad is not None and p.grad.device == META for p in net.parameters())
