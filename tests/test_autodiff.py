"""Derived VJPs, JVPs and per-sample gradients against torch.nn.grad / torch.func, float64."""

import random

import pytest
import torch
from torch.func import grad, jvp, vmap

from tnconv import functional as F
from tnconv import testing as T

DT = torch.float64
TORCH_CONV = {1: torch.nn.functional.conv1d, 2: torch.nn.functional.conv2d, 3: torch.nn.functional.conv3d}
GRAD_WEIGHT = {1: torch.nn.grad.conv1d_weight, 2: torch.nn.grad.conv2d_weight, 3: torch.nn.grad.conv3d_weight}
GRAD_INPUT = {1: torch.nn.grad.conv1d_input, 2: torch.nn.grad.conv2d_input, 3: torch.nn.grad.conv3d_input}


def configs(N, count, seed, **kw):
    rng = random.Random(7000 + 100 * N + seed)
    return [T.random_config(rng, N, **kw) for _ in range(count)]


def reference_conv(N):
    return TORCH_CONV[N] if N in TORCH_CONV else T.conv


def problem(c):
    x, w = torch.randn(*c.x_size, dtype=DT), torch.randn(*c.weight_size, dtype=DT)
    g = torch.randn(c.batch, c.out_channels, *c.output_size(), dtype=DT)
    return x, w, g


@pytest.mark.parametrize("N", [1, 2, 3])
@pytest.mark.parametrize("seed", range(3))
def test_weight_and_input_vjp_match_torch_nn_grad(N, seed):
    for c in configs(N, 10, seed, allow_same=False):
        x, w, g = problem(c)
        c.padding = 0 if c.padding == "valid" else c.padding  # torch.nn.grad takes no padding strings
        kw = c.kwargs()
        torch.testing.assert_close(F.weight_vjp(x, w.shape, g, **kw), GRAD_WEIGHT[N](x, w.shape, g, **kw), msg=lambda m: f"{c}: {m}")
        torch.testing.assert_close(F.input_vjp(x.shape, w, g, **kw), GRAD_INPUT[N](x.shape, w, g, **kw), msg=lambda m: f"{c}: {m}")


@pytest.mark.parametrize("N", [1, 2, 3, 4])
def test_vjps_match_autograd_with_same_and_asymmetric_padding(N):
    for c in configs(N, 6 if N < 4 else 3, 9, asymmetric=True, max_size=7 if N < 4 else 4):
        x, w, g = problem(c)
        x.requires_grad_(True)
        w.requires_grad_(True)
        y = T.conv(x, w, **c.kwargs())
        gx, gw = torch.autograd.grad(y, (x, w), g)
        torch.testing.assert_close(F.weight_vjp(x.detach(), w.shape, g, **c.kwargs()), gw, msg=lambda m: f"{c}: {m}")
        torch.testing.assert_close(F.input_vjp(x.shape, w.detach(), g, **c.kwargs()), gx, msg=lambda m: f"{c}: {m}")


@pytest.mark.parametrize("N", [1, 2, 3, 4, 5])
def test_vjps_with_wide_hyper_parameters(N):
    """Kernels up to 7, dilation up to 21, stride up to 6, padding beyond the dilated kernel; N = 4, 5 against autograd
    of the slow reference."""
    for c in configs(N, 5 if N <= 3 else 2, 21, asymmetric=True, max_size=16, wide=True):
        x, w, g = problem(c)
        x.requires_grad_(True)
        w.requires_grad_(True)
        gx, gw = torch.autograd.grad(T.conv(x, w, **c.kwargs()), (x, w), g)
        torch.testing.assert_close(F.weight_vjp(x.detach(), w.shape, g, **c.kwargs()), gw, msg=lambda m: f"{c}: {m}")
        torch.testing.assert_close(F.input_vjp(x.shape, w.detach(), g, **c.kwargs()), gx, msg=lambda m: f"{c}: {m}")
        per = F.per_sample_weight_grad(x.detach(), w.shape, g, **c.kwargs())
        torch.testing.assert_close(per.sum(0), gw, msg=lambda m: f"{c}: {m}")


@pytest.mark.parametrize("N", [1, 2, 3])
def test_jvps_match_torch_func(N):
    for c in configs(N, 8, 3):
        x, w, _ = problem(c)
        tx, tw = torch.randn_like(x), torch.randn_like(w)
        conv = reference_conv(N)
        _, ref_w = jvp(lambda w: conv(x, w, **c.kwargs()), (w,), (tw,))
        _, ref_x = jvp(lambda x: conv(x, w, **c.kwargs()), (x,), (tx,))
        torch.testing.assert_close(F.weight_jvp(x, tw, **c.kwargs()), ref_w)
        torch.testing.assert_close(F.input_jvp(tx, w, **c.kwargs()), ref_x)


@pytest.mark.parametrize("N", [1, 2, 3])
def test_per_sample_weight_grad_matches_vmap_of_grad(N):
    for c in configs(N, 6, 4):
        x, w, g = problem(c)
        conv = reference_conv(N)

        def loss(w, xb, gb):
            return (conv(xb[None], w, **c.kwargs())[0] * gb).sum()

        ref = vmap(grad(loss), in_dims=(None, 0, 0))(w, x, g)
        ours = F.per_sample_weight_grad(x, w.shape, g, **c.kwargs())
        assert ours.shape == (c.batch,) + tuple(w.shape)
        torch.testing.assert_close(ours, ref)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda x, w, g: F.weight_vjp(x, w.shape, g[:, :2]), "grad_output"),
        (lambda x, w, g: F.weight_vjp(x, (4, 5, 3, 3), g), "weight_size"),
        (lambda x, w, g: F.weight_vjp(x, (4, 3, 3), g), "weight_size"),
        (lambda x, w, g: F.input_vjp(x.shape, w, g[..., :-1]), "grad_output"),
        (lambda x, w, g: F.input_vjp((2, 3, 8), w, g), "input_size"),
        (lambda x, w, g: F.input_vjp(x.shape, w, g, stride=0), "stride"),
        (lambda x, w, g: F.weight_vjp(x, w.shape, g.float()), "grad_output"),
        (lambda x, w, g: F.per_sample_weight_grad(x, w.shape, g, groups=2), "groups"),
        (lambda x, w, g: F.weight_jvp(x, w[:, :2]), "weight_tangent|x has"),
        (lambda x, w, g: F.input_jvp(x, "w"), "weight"),
        (lambda x, w, g: F.weight_vjp(x, w.shape, g, padding="same", stride=2), "padding"),
    ],
)
def test_bad_input_names_the_argument(call, match):
    x, w = torch.randn(2, 3, 8, 8, dtype=DT), torch.randn(4, 3, 3, 3, dtype=DT)
    g = torch.randn(2, 4, 6, 6, dtype=DT)
    with pytest.raises((ValueError, TypeError), match=match):
        call(x, w, g)
