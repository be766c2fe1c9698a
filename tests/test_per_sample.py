"""Per-sample gradients of transpose convolutions, per-sample squared norms, the transpose GGN diagonal and the
square lowering, against torch.func / autograd (and the slow references for N = 4), float64."""

import random

import pytest
import torch
from torch.func import grad, vmap

import tnconv
from tnconv import diagrams
from tnconv import functional as F
from tnconv import testing as T
from tnconv.lowering import square

DT = torch.float64
TORCH_CONV = {1: torch.nn.functional.conv1d, 2: torch.nn.functional.conv2d, 3: torch.nn.functional.conv3d}
TORCH_CONVT = {1: torch.nn.functional.conv_transpose1d, 2: torch.nn.functional.conv_transpose2d,
               3: torch.nn.functional.conv_transpose3d}


def configs(N, count, seed, **kw):
    rng = random.Random(5100 + 100 * N + seed)
    return [T.random_config(rng, N, **kw) for _ in range(count)]


def transpose_configs(N, count, seed, max_size=5):
    """Valid transpose convolutions: ints or tuples as padding, non-empty outputs."""
    out = []
    for c in configs(N, 4 * count, seed, allow_same=False, max_size=max_size):
        c.padding = 0 if c.padding == "valid" else c.padding
        pads = c.padding if isinstance(c.padding, tuple) else (c.padding,) * N
        if all((I - 1) * s - 2 * p + d * (k - 1) + op + 1 >= 1 for I, s, p, d, k, op in
               zip(c.input_size, c.stride, pads, c.dilation, c.kernel_size, c.output_padding)):
            out.append(c)
    return out[:count]


def transpose_problem(c):
    """``x [B, C_in, *I]``, the transpose weight ``[C_in, C_out/G, *K]``, ``g`` of the output's shape, kwargs."""
    x = torch.randn(c.batch, c.in_channels, *c.input_size, dtype=DT)
    w = torch.randn(c.in_channels, c.out_channels // c.groups, *c.kernel_size, dtype=DT)
    kw = dict(stride=c.stride, padding=c.padding, output_padding=c.output_padding, groups=c.groups,
              dilation=c.dilation)
    y = T.conv_transpose(x, w, **kw)
    return x, w, torch.randn_like(y), kw


def per_sample_transpose_reference(x, w, g, kw):
    """``∂<g_b, conv_transpose(x_b, W)>/∂W``; for N <= 3 by torch.func on PyTorch's transpose convolution, else by
    the adjoint: ``<g, conv_transpose(x, W)> = <conv(g, W), x>`` with the slow reference convolution."""
    N = x.ndim - 2
    if N in TORCH_CONVT:
        def loss(w, xb, gb):
            return (TORCH_CONVT[N](xb[None], w, **kw)[0] * gb).sum()
    else:
        conv_kw = dict(stride=kw["stride"], padding=kw["padding"], dilation=kw["dilation"], groups=kw["groups"])

        def loss(w, xb, gb):
            y = T.conv(gb[None], w, **conv_kw)[0]
            return (y[(slice(None),) + tuple(slice(0, I) for I in xb.shape[1:])] * xb).sum()
    return vmap(grad(loss), in_dims=(None, 0, 0))(w, x, g)


def per_sample_reference(x, w, g, c):
    asymmetric = isinstance(c.padding, tuple) and isinstance(c.padding[0], tuple)  # PyTorch takes no (left, right)
    conv = T.conv if asymmetric else TORCH_CONV.get(c.N, T.conv)

    def loss(w, xb, gb):
        return (conv(xb[None], w, **c.kwargs())[0] * gb).sum()

    return vmap(grad(loss), in_dims=(None, 0, 0))(w, x, g)


@pytest.mark.parametrize("N", [1, 2, 3, 4])
def test_per_sample_weight_grad_transpose_matches_torch_func(N):
    cases = transpose_configs(N, 8 if N < 4 else 3, 1, max_size=5 if N < 4 else 3)
    assert len(cases) >= 3
    for c in cases:
        x, w, g, kw = transpose_problem(c)
        ours = F.per_sample_weight_grad_transpose(x, w.shape, g, **kw)
        ref = per_sample_transpose_reference(x, w, g, kw)
        torch.testing.assert_close(ours, ref, msg=lambda m: f"{c}: {m}")
        sq = F.per_sample_weight_grad_sq_norm_transpose(x, w.shape, g, **kw)
        torch.testing.assert_close(sq, ref.flatten(1).pow(2).sum(1), msg=lambda m: f"{c}: {m}")


@pytest.mark.parametrize("N", [1, 2, 3, 4])
def test_per_sample_weight_grad_sq_norm_matches_torch_func(N):
    for c in configs(N, 10 if N < 4 else 3, 2, asymmetric=True, max_size=7 if N < 4 else 4):
        x, w = torch.randn(*c.x_size, dtype=DT), torch.randn(*c.weight_size, dtype=DT)
        g = torch.randn(c.batch, c.out_channels, *c.output_size(), dtype=DT)
        ref = per_sample_reference(x, w, g, c).flatten(1).pow(2).sum(1)
        torch.testing.assert_close(F.per_sample_weight_grad_sq_norm(x, w.shape, g, **c.kwargs()), ref,
                                   msg=lambda m: f"{c}: {m}")


@pytest.mark.parametrize("N", [1, 2, 3])
def test_ggn_diagonal_transpose_matches_per_sample_vjps(N):
    for c in transpose_configs(N, 5, 3):
        x, w, g, kw = transpose_problem(c)
        s = torch.randn(3, *g.shape, dtype=DT)
        vjps = torch.stack([per_sample_transpose_reference(x, w, s[v], kw) for v in range(3)])  # [V, B, *W]
        torch.testing.assert_close(F.ggn_diagonal_transpose(x, w.shape, s, **kw), vjps.pow(2).sum((0, 1)),
                                   msg=lambda m: f"{c}: {m}")


def test_squared_norm_takes_the_gram_route_when_positions_are_few_and_materializes_otherwise():
    """Deep layer (512 channels, 4x4 pixels): the [O, O] Gram route, no [B, 512, 512, 3, 3] gradient; early layer
    (3 channels, 16x16 pixels): the per-sample gradient once (a PyTorch kernel), squared."""
    f = tnconv.compile(diagrams.per_sample_weight_grad_sq_norm(N=2, kernel_size=3, padding=1))
    x, g = torch.randn(2, 512, 4, 4), torch.randn(2, 512, 4, 4)
    f(x=x, grad_output=g)
    deep = f._last.terms[0].plan
    assert not deep.equation.startswith("square") and deep.largest_intermediate < 512 * 512
    x, g = torch.randn(2, 3, 16, 16), torch.randn(2, 64, 16, 16)
    f(x=x, grad_output=g)
    assert f._last.terms[0].plan.equation.startswith("square: native")
    for x, g in ((torch.randn(2, 8, 4, 4, dtype=DT), torch.randn(2, 8, 4, 4, dtype=DT)),
                 (torch.randn(2, 3, 16, 16, dtype=DT), torch.randn(2, 64, 16, 16, dtype=DT))):
        ref = F.per_sample_weight_grad(x, (g.shape[1], x.shape[1], 3, 3), g, padding=1).flatten(1).pow(2).sum(1)
        torch.testing.assert_close(f(x=x, grad_output=g), ref)
        torch.testing.assert_close(tnconv.compile(f.source, lowering=())(x=x, grad_output=g), ref)


def test_square_lowering_finds_only_hadamard_squares():
    net = tnconv.compile(diagrams.ggn_diagonal(N=1, kernel_size=3)).network.terms[0]
    found = square.find(net)
    assert found is not None and {l.name for l in found.shared} >= {l.name for l in net.output_legs} | {"n", "v"}
    for tn in (diagrams.kfc(N=1, kernel_size=3), diagrams.per_sample_weight_grad(N=1, kernel_size=3),
               diagrams.ggn_gram(N=1, kernel_size=3)):  # a Gram matrix shares legs a square would sum: not one
        assert square.find(tnconv.compile(tn).network.terms[0]) is None
    # the GGN diagonal by the square lowering equals the plain contraction
    x, s = torch.randn(3, 2, 7, dtype=DT), torch.randn(2, 3, 4, 5, dtype=DT)
    torch.testing.assert_close(F.ggn_diagonal(x, (4, 2, 3), s),
                               tnconv.compile(diagrams.ggn_diagonal(N=1, kernel_size=3), lowering=())(x=x, sqrt_ggn=s))


def test_squared_norm_under_torch_func():
    """Inside vmap the half's result is a wrapped tensor: squared out of place, still right."""
    x, g = torch.randn(4, 2, 3, 6, dtype=DT), torch.randn(4, 2, 5, 4, dtype=DT)
    out = vmap(lambda x, g: F.per_sample_weight_grad_sq_norm(x, (5, 3, 3), g))(x, g)
    ref = torch.stack([F.per_sample_weight_grad_sq_norm(x[i], (5, 3, 3), g[i]) for i in range(4)])
    torch.testing.assert_close(out, ref)


@pytest.mark.parametrize("call, match", [
    (lambda x, g: F.per_sample_weight_grad_transpose(x, (4, 3, 3, 3), g, stride=2), "weight_size|x has"),
    (lambda x, g: F.per_sample_weight_grad_transpose(x, (6, 3, 3), g), "weight_size"),
    (lambda x, g: F.per_sample_weight_grad_transpose(x, (6, 3, 3, 3), g, output_padding=1), "output_padding"),
    (lambda x, g: F.per_sample_weight_grad_transpose(x, (6, 3, 3, 3), g, padding="same"), "padding"),
    (lambda x, g: F.per_sample_weight_grad_transpose(x, (6, 3, 3, 3), g[:, :2]), "grad_output"),
    (lambda x, g: F.per_sample_weight_grad_transpose(x, (6, 3, 3, 3), g, groups=4), "groups"),
    (lambda x, g: F.per_sample_weight_grad_sq_norm_transpose(x, (6, 3, 3, 3), g.float()), "grad_output"),
    (lambda x, g: F.per_sample_weight_grad_sq_norm(x, (3, 6, 3, 3), g[:, :3, :3, :3]), "grad_output"),
    (lambda x, g: F.per_sample_weight_grad_sq_norm(x, (3, 5, 3, 3), g), "weight_size|x has"),
    (lambda x, g: F.per_sample_weight_grad_sq_norm(x, (3, 6, 3), g), "weight_size"),
    (lambda x, g: F.ggn_diagonal_transpose(x, (6, 3, 3, 3), g), "sqrt_ggn"),
    (lambda x, g: F.ggn_diagonal_transpose(x, (6, 3, 3, 3), g[None, :, :2]), "sqrt_ggn"),
    (lambda x, g: F.ggn_diagonal_transpose(x, (6, 3, 3, 3), g[None], dilation=0), "dilation"),
])
def test_bad_input_names_the_argument(call, match):
    x, g = torch.randn(2, 6, 4, 4, dtype=DT), torch.randn(2, 3, 6, 6, dtype=DT)
    with pytest.raises((ValueError, TypeError), match=match):
        call(x, g)


def test_new_networks_round_trip_text():
    for build in (diagrams.per_sample_weight_grad_transpose, diagrams.per_sample_weight_grad_sq_norm_transpose,
                  diagrams.ggn_diagonal_transpose):
        tn = build(N=2, kernel_size=(3, 2), stride=2, output_padding=1, groups=2)
        assert tnconv.TensorNetwork.from_text(tn.to_text()) == tn
    tn = diagrams.per_sample_weight_grad_sq_norm(N=2, kernel_size=(3, 2), stride=2, groups=2)
    assert tnconv.TensorNetwork.from_text(tn.to_text()) == tn
