"""Kronecker factors and GGN quantities against unfold/autograd formulas computed here, float64."""

import random

import pytest
import torch
from torch.func import jacrev, vmap

import tnconv
from tnconv import diagrams, passes
from tnconv import functional as F
from tnconv import testing as T

DT = torch.float64
TORCH_CONVT = {1: torch.nn.functional.conv_transpose1d, 2: torch.nn.functional.conv_transpose2d,
               3: torch.nn.functional.conv_transpose3d}


def configs(N, count, seed, **kw):
    rng = random.Random(9000 + 100 * N + seed)
    return [T.random_config(rng, N, **kw) for _ in range(count)]


def grouped_patches(x, c):
    """[B, G, C/G*K, O] from the slow reference unfold."""
    u = T.unfold(x, c.kernel_size, c.dilation, c.padding, c.stride)
    return u.reshape(u.shape[0], c.groups, -1, u.shape[-1])


def kfc_reference(u):
    return torch.einsum("bgio,bgjo->gij", u, u) / u.shape[0]


def kfac_reduce_reference(u):
    m = u.mean(-1)
    return torch.einsum("bgi,bgj->gij", m, m) / u.shape[0]


@pytest.mark.parametrize("N", [1, 2, 3, 4])
def test_kfc_and_kfac_reduce_match_unfold_formulas(N):
    for c in configs(N, 10 if N < 4 else 3, 1, asymmetric=True, max_size=8 if N < 4 else 4):
        x = torch.randn(*c.x_size, dtype=DT)
        u = grouped_patches(x, c)
        kw = dict(stride=c.stride, padding=c.padding, dilation=c.dilation, groups=c.groups)
        torch.testing.assert_close(F.kfc(x, c.kernel_size, **kw), kfc_reference(u), msg=lambda m: f"{c}: {m}")
        torch.testing.assert_close(F.kfac_reduce(x, c.kernel_size, **kw), kfac_reduce_reference(u), msg=lambda m: f"{c}: {m}")


@pytest.mark.parametrize("N", [1, 2, 3, 4, 5])
def test_factors_with_wide_hyper_parameters(N):
    """Kernels up to 7, dilation up to 21, stride up to 6, padding beyond the dilated kernel (patches of zeros)."""
    for c in configs(N, 5 if N <= 3 else 2, 21, asymmetric=True, max_size=16, wide=True):
        x = torch.randn(*c.x_size, dtype=DT)
        u = grouped_patches(x, c)
        kw = dict(stride=c.stride, padding=c.padding, dilation=c.dilation, groups=c.groups)
        torch.testing.assert_close(F.kfc(x, c.kernel_size, **kw), kfc_reference(u), msg=lambda m: f"{c}: {m}")
        torch.testing.assert_close(F.kfac_reduce(x, c.kernel_size, **kw), kfac_reduce_reference(u), msg=lambda m: f"{c}: {m}")


def test_kfc_matches_torch_unfold_2d():
    x = torch.randn(4, 6, 9, 7, dtype=DT)
    u = torch.nn.functional.unfold(x, (3, 2), dilation=(1, 2), padding=1, stride=(2, 1))
    ours = F.kfc(x, (3, 2), stride=(2, 1), padding=1, dilation=(1, 2))
    torch.testing.assert_close(ours[0], torch.einsum("bio,bjo->ij", u, u) / 4)


def transpose_patches(x, c):
    """Unfolded input of a transpose convolution, from conv_transpose with one-hot weights."""
    C, K = x.shape[1], 1
    for k in c.kernel_size:
        K *= k
    eye = torch.eye(C * K, dtype=DT).reshape(C, *c.kernel_size, C * K).movedim(-1, 1)
    kw = dict(stride=c.stride, padding=c.padding, output_padding=c.output_padding, dilation=c.dilation)
    y = TORCH_CONVT[len(c.kernel_size)](x, eye, **kw)
    return y.reshape(x.shape[0], c.groups, C // c.groups * K, -1)


@pytest.mark.parametrize("N", [1, 2, 3])
def test_transpose_factors_match_one_hot_reference(N):
    count = 0
    for c in configs(N, 12, 2, allow_same=False, max_size=6):
        c.padding = 0 if c.padding == "valid" else c.padding
        pads = c.padding if isinstance(c.padding, tuple) else (c.padding,) * N
        if any((I - 1) * s - 2 * p + d * (k - 1) + op + 1 < 1 for I, s, p, d, k, op in
               zip(c.input_size, c.stride, pads, c.dilation, c.kernel_size, c.output_padding)):
            continue
        count += 1
        x = torch.randn(*c.x_size, dtype=DT)
        u = transpose_patches(x, c)
        kw = dict(stride=c.stride, padding=c.padding, output_padding=c.output_padding, groups=c.groups, dilation=c.dilation)
        torch.testing.assert_close(F.kfc_transpose(x, c.kernel_size, **kw), kfc_reference(u), msg=lambda m: f"{c}: {m}")
        torch.testing.assert_close(F.kfac_reduce_transpose(x, c.kernel_size, **kw), kfac_reduce_reference(u))
    assert count >= 5


def per_sample_vjps(x, w, s, c):
    def single(xb, w):
        return T.conv(xb[None], w, **c.kwargs())[0]

    jac = vmap(jacrev(single, argnums=1), in_dims=(0, None))(x, w)  # [B, *out, *w]
    out_dims = s.ndim - 2  # C_out and the spatial output dims
    return torch.einsum("vbo,bow->vbw", s.flatten(2), jac.flatten(1, out_dims).flatten(2))


@pytest.mark.parametrize("N", [1, 2, 3])
def test_ggn_diagonal_and_gram_match_per_sample_jacobians(N):
    for c in configs(N, 4, 3, max_size=6):
        x, w = torch.randn(*c.x_size, dtype=DT), torch.randn(*c.weight_size, dtype=DT)
        s = torch.randn(3, c.batch, c.out_channels, *c.output_size(), dtype=DT)
        v = per_sample_vjps(x, w, s, c)  # [V, B, W]
        diag = F.ggn_diagonal(x, w.shape, s, **c.kwargs())
        torch.testing.assert_close(diag, (v**2).sum((0, 1)).reshape(w.shape), msg=lambda m: f"{c}: {m}")
        flat = v.flatten(0, 1)
        torch.testing.assert_close(F.ggn_gram(x, w.shape, s, **c.kwargs()), flat @ flat.T)


def test_derivative_of_kfc_by_product_rule_matches_autograd():
    c = T.ConvConfig(2, 2, 4, 2, (5, 4), (2, 2), (2, 1), 1, (1, 1), 2)
    x = torch.randn(*c.x_size, dtype=DT)
    kw = dict(stride=c.stride, padding=c.padding, dilation=c.dilation, groups=c.groups)
    tn = diagrams.kfc(N=2, kernel_size=c.kernel_size, **kw)
    d = passes.differentiate(tn, "x")
    assert isinstance(d, tnconv.NetworkSum) and len(d.terms) == 2
    ours = tnconv.compile(d)(x=x)
    ref = torch.autograd.functional.jacobian(lambda x: kfc_reference(grouped_patches(x, c)), x)
    torch.testing.assert_close(ours, ref)


def test_curvature_networks_round_trip_text():
    for build in (diagrams.kfc, diagrams.kfac_reduce, diagrams.kfc_transpose, diagrams.kfac_reduce_transpose,
                  diagrams.ggn_diagonal, diagrams.ggn_gram):
        tn = build(N=2, kernel_size=(3, 2), stride=2, groups=2)
        assert tnconv.TensorNetwork.from_text(tn.to_text()) == tn


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda x: F.kfc(x, 3, groups=4, N=2), "groups"),
        (lambda x: F.kfc(x, (9, 9)), "kernel_size"),
        (lambda x: F.kfc(x[0, 0], (3, 3)), "x"),
        (lambda x: F.kfc(x, 3), "N"),  # a batch of 2-d inputs or one 3-d input: refused, never guessed
        (lambda x: F.kfac_reduce(x, (3, 3, 3, 3)), "x"),
        (lambda x: F.kfac_reduce(x, (3, 3), N=3), "kernel_size"),
        (lambda x: F.kfc_transpose(x, 3, output_padding=2, stride=2, N=2), "output_padding"),
        (lambda x: F.kfac_reduce_transpose(x, (3, 3), padding="same"), "padding"),
        (lambda x: F.ggn_diagonal(x, (4, 5, 3, 3), torch.randn(2, 2, 4, 6, 6, dtype=DT)), "weight_size"),
        (lambda x: F.ggn_diagonal(x, (4, 6, 3, 3), torch.randn(2, 2, 4, 6, 5, dtype=DT)), "sqrt_ggn"),
        (lambda x: F.ggn_gram(x, (4, 6, 3, 3), torch.randn(2, 4, 6, 6, dtype=DT)), "sqrt_ggn"),
    ],
)
def test_bad_input_names_the_argument(call, match):
    x = torch.randn(2, 6, 8, 8, dtype=DT)
    with pytest.raises((ValueError, TypeError), match=match):
        call(x)
