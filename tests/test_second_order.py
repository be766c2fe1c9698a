"""Second-order diagonals, Jacobians and output factors against autograd references, float64."""

import random

import pytest
import torch
from torch.func import jacfwd, jacrev, vmap

from tnconv import diagrams
from tnconv import functional as F
from tnconv import testing as T

DT = torch.float64


def configs(N, count, seed, **kw):
    rng = random.Random(4000 + 100 * N + seed)
    return [T.random_config(rng, N, max_size=6, **kw) for _ in range(count)]


def per_sample_jacobians(x, w, c, argnum):
    def single(xb, w):
        return T.conv(xb[None], w, **c.kwargs())[0]

    return vmap(jacrev(single, argnums=argnum), in_dims=(0, None))(x, w)  # [B, *out, *arg]


@pytest.mark.parametrize("N", [1, 2, 3])
def test_hessian_diagonals_match_squared_jacobians(N):
    for c in configs(N, 5, 1, asymmetric=True):
        x, w = torch.randn(*c.x_size, dtype=DT), torch.randn(*c.weight_size, dtype=DT)
        out = (c.batch, c.out_channels) + c.output_size()
        h = torch.rand(*out, dtype=DT)
        nout = len(out) - 1
        jw = per_sample_jacobians(x, w, c, 1).flatten(1, nout).flatten(2)  # [B, out, W]
        ref_w = torch.einsum("bo,bow->w", h.flatten(1), jw**2).reshape(w.shape)
        torch.testing.assert_close(F.hessian_diagonal_weight(x, w.shape, h, **c.kwargs()), ref_w, msg=lambda m: f"{c}: {m}")
        jx = per_sample_jacobians(x, w, c, 0).flatten(1, nout).flatten(2)  # [B, out, X]
        ref_x = torch.einsum("bo,box->bx", h.flatten(1), jx**2).reshape(x.shape)
        torch.testing.assert_close(F.hessian_diagonal_input(w, x.shape, h, **c.kwargs()), ref_x, msg=lambda m: f"{c}: {m}")


@pytest.mark.parametrize("N", [1, 2, 3])
def test_ggn_diagonal_input(N):
    for c in configs(N, 4, 2):
        x, w = torch.randn(*c.x_size, dtype=DT), torch.randn(*c.weight_size, dtype=DT)
        s = torch.randn(3, c.batch, c.out_channels, *c.output_size(), dtype=DT)
        jx = per_sample_jacobians(x, w, c, 0).flatten(1, N + 1).flatten(2)  # [B, out, X]
        vjps = torch.einsum("vbo,box->vbx", s.flatten(2), jx)
        torch.testing.assert_close(F.ggn_diagonal_input(w, x.shape, s, **c.kwargs()), (vjps**2).sum(0).reshape(x.shape))


@pytest.mark.parametrize("N", [1, 2])
def test_full_jacobians_and_mixed_second_derivative(N):
    for c in configs(N, 3, 3):
        x, w = torch.randn(*c.x_size, dtype=DT), torch.randn(*c.weight_size, dtype=DT)

        def f(x, w):
            return T.conv(x, w, **c.kwargs())

        torch.testing.assert_close(F.input_jacobian(w, x.shape, **c.kwargs()),
                                   torch.autograd.functional.jacobian(lambda x: f(x, w), x))
        torch.testing.assert_close(F.weight_jacobian(x, w.shape, **c.kwargs()), jacrev(f, argnums=1)(x, w))
        mixed = F.mixed_second_derivative(x.shape, w.shape, **c.kwargs(), dtype=DT)
        torch.testing.assert_close(mixed, jacfwd(jacrev(f, argnums=1), argnums=0)(x, w))


@pytest.mark.parametrize("groups", [1, 2])
def test_output_factors(groups):
    g = torch.randn(3, 4, 5, 2, dtype=DT)
    gg = g.reshape(3, groups, 4 // groups, -1)
    expand = torch.einsum("bgio,bgjo->gij", gg, gg)
    s = gg.sum(-1)
    reduce = torch.einsum("bgi,bgj->gij", s, s)
    torch.testing.assert_close(F.kfc_output(g, groups, N=2), expand)
    torch.testing.assert_close(F.kfac_reduce_output(g, groups, N=2), reduce)


def test_squared_jacobian_diagrams_use_the_squared_weight():
    """After pattern pairing a single pattern per dimension remains, with w twice on the same legs."""
    tn = diagrams.hessian_diagonal_input(N=2, kernel_size=3, input_size=(6, 6))
    ws = [t for t in tn.tensors if t.name == "w"]
    assert len(ws) == 2 and ws[0].axes == ws[1].axes
    assert sum(t.kind == "pattern" for t in tn.tensors) == 2


@pytest.mark.parametrize("call, match", [
    (lambda: F.hessian_diagonal_weight(torch.randn(2, 3, 8), (4, 3, 3), torch.rand(2, 4, 5)), "output_diag"),
    (lambda: F.hessian_diagonal_input(torch.randn(4, 3, 3), (2, 3), torch.rand(2, 4, 6)), "input_size"),
    (lambda: F.ggn_diagonal_input(torch.randn(4, 3, 3), (2, 3, 8), torch.rand(2, 4, 6)), "sqrt_ggn"),
    (lambda: F.kfc_output(torch.randn(2, 5, 3), groups=2, N=1), "groups"),
    (lambda: F.kfc_output(torch.randn(2, 5, 3)), "N"),
    (lambda: F.mixed_second_derivative((1, 2, 3), (1, 1, 2)), "channels"),
    (lambda: F.weight_jacobian(torch.randn(1, 1, 3), (2, 1, 5)), "kernel_size"),
])
def test_bad_input(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()
