"""Column-row sampling: unbiased, exact at keep 1, and saving only the sampled input."""

import math

import pytest
import torch

import tnconv
from tnconv import diagrams, passes
from tnconv import functional as F
from tnconv.nn import Conv1d, Conv2d, ConvNd, conv, convert

CASES = [  # (input shape, weight shape, hyper-parameters, crs_keep)
    ((3, 4, 9, 8), (6, 4, 3, 3), dict(padding=1), (1.0, 0.5, 0.5)),
    ((3, 4, 9, 8), (6, 4, 3, 3), dict(stride=2), (0.5, 1.0, 1.0)),
    ((2, 6, 10), (4, 3, 3), dict(groups=2, dilation=2, padding=2), (0.67, 0.4)),
    ((2, 4, 5, 6, 5), (2, 4, 2, 3, 2), dict(padding="same"), (0.75, 0.6, 1.0, 0.5)),
]


def _draws(x, w_shape, g, kwargs, keep, n):
    gen = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        sub, idx = F.sample_input(x, keep, kwargs.get("groups", 1), gen)
        out.append(F.sampled_weight_vjp(sub, idx, x.shape, w_shape, g, **kwargs))
    return torch.stack(out)


def _projection_z(samples, target, scale=1.0):
    """|z| of the mean of ``<sample, v>`` against ``<target, v>`` for v = target and two random directions.

    A scalar statistic per direction has far more power against a bias than
    any single entry; ``scale`` multiplies the samples (to check that power).
    """
    gen = torch.Generator().manual_seed(123)
    directions = [target] + [torch.randn(target.shape, generator=gen, dtype=target.dtype) for _ in range(2)]
    out = []
    for v in directions:
        proj = (samples * scale * v).flatten(1).sum(1)
        out.append(((proj.mean() - (target * v).sum()) / (proj.std() / math.sqrt(len(proj)))).abs().item())
    return max(out)


def _max_z(samples, target):
    """Largest |mean - target| in units of the mean's standard error (exact entries skipped)."""
    mean, sem = samples.mean(0), samples.std(0) / math.sqrt(samples.shape[0])
    random = sem > 1e-12 * (1 + target.abs())
    assert torch.equal(mean[~random], target[~random]) or torch.allclose(mean[~random], target[~random])
    return ((mean - target).abs()[random] / sem[random]).max().item()


@pytest.mark.parametrize("x_shape, w_shape, kwargs, keep", CASES)
def test_sampled_weight_gradient_is_unbiased(x_shape, w_shape, kwargs, keep):
    torch.manual_seed(1)
    x = torch.randn(x_shape, dtype=torch.float64)
    w = torch.randn(w_shape, dtype=torch.float64)
    g = torch.randn_like(F.conv(x, w, **kwargs))
    exact = F.weight_vjp(x, w_shape, g, **kwargs)
    samples = _draws(x, w_shape, g, kwargs, keep, 3000)
    # With ~100-300 entries, a 5.5-sigma deviation of any of them has probability < 1e-5,
    assert _max_z(samples, exact) < 5.5
    assert _projection_z(samples, exact) < 4.5
    # and the test has the power to see a 3% bias.
    assert _projection_z(samples, exact, scale=0.97) > 4.5


def test_compiled_crs_pass_is_unbiased():
    tn = passes.crs(diagrams.weight_vjp(N=1, kernel_size=3, padding=1), "i1", 0.5)
    f = tnconv.compile(tn)
    x, g = torch.randn(4, 2, 12, dtype=torch.float64), torch.randn(4, 3, 12, dtype=torch.float64)
    exact = F.weight_vjp(x, (3, 2, 3), g, padding=1)
    gen = torch.Generator().manual_seed(0)
    samples = torch.stack([f(x=x, grad_output=g, generator=gen) for _ in range(3000)])
    assert _max_z(samples, exact) < 5.5
    assert _projection_z(samples, exact) < 4.5
    assert _projection_z(samples, exact, scale=0.97) > 4.5


@pytest.mark.parametrize("x_shape, w_shape, kwargs, keep", CASES)
def test_keep_one_reproduces_the_exact_gradient_bit_for_bit(x_shape, w_shape, kwargs, keep):
    x = torch.randn(x_shape, dtype=torch.float64)
    w = torch.randn(w_shape, dtype=torch.float64)
    g = torch.randn_like(F.conv(x, w, **kwargs))
    ones = (1.0,) * len(keep)
    sub, idx = F.sample_input(x, ones, kwargs.get("groups", 1))
    assert torch.equal(F.sampled_weight_vjp(sub, idx, x.shape, w_shape, g, **kwargs),
                       F.weight_vjp(x, w_shape, g, **kwargs))
    grads = []
    for crs_keep in (None, ones):
        wp = w.clone().requires_grad_()
        conv(x, wp, None, crs_keep=crs_keep, **kwargs).backward(g)
        grads.append(wp.grad)
    assert torch.equal(*grads)


def test_layer_input_gradient_stays_exact_and_seed_reproduces():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 10, 10, dtype=torch.float64, requires_grad=True)
    exact = Conv2d(3, 5, 3, padding=1, dtype=torch.float64)
    grads = []
    for seed in (7, 7, 8):
        layer = Conv2d(3, 5, 3, padding=1, dtype=torch.float64, crs_keep=(0.5, 0.5, 0.5),
                       generator=torch.Generator().manual_seed(seed))
        layer.load_state_dict(exact.state_dict())
        y = layer(x)
        torch.testing.assert_close(y, exact(x))  # forward is exact
        (gx,) = torch.autograd.grad(y.square().sum(), x, retain_graph=True)
        (gx_ref,) = torch.autograd.grad(exact(x).square().sum(), x)
        torch.testing.assert_close(gx, gx_ref)  # input VJP is exact
        y.square().sum().backward()
        grads.append(layer.weight.grad)
    assert torch.equal(grads[0], grads[1]) and not torch.equal(grads[0], grads[2])


def _saved_bytes(fn):
    total = []

    def pack(t):
        total.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(total)


@pytest.mark.parametrize("keep", [(1.0, 0.5, 0.5), (0.25, 1.0, 1.0), (0.5, 0.25, 1.0), (0.8, 0.6, 0.6)])
def test_saved_bytes_shrink_with_the_keep_rates(keep):
    x = torch.randn(8, 16, 20, 20)
    weight = torch.randn(8, 16, 3, 3, requires_grad=True)
    exact = _saved_bytes(lambda: conv(x, weight))
    sampled = _saved_bytes(lambda: conv(x, weight, crs_keep=keep))
    kept = 8 * round(16 * keep[0]) * round(20 * keep[1]) * round(20 * keep[2])
    indices = 8 * (round(16 * keep[0]) + round(20 * keep[1]) + round(20 * keep[2]))
    w_bytes = weight.numel() * 4
    assert exact == x.numel() * 4 + w_bytes
    assert sampled == kept * 4 + w_bytes + indices


def test_convert_switches_every_convolution_to_crs():
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(),
                              torch.nn.Sequential(torch.nn.Conv2d(4, 4, 3, groups=2)))
    convert(net, crs_keep=(1.0, 0.5, 0.5))
    assert net[0].crs_keep == (1.0, 0.5, 0.5) and net[2][0].crs_keep == (1.0, 0.5, 0.5)
    assert "crs_keep" in repr(net)
    net(torch.randn(2, 1, 9, 9)).sum().backward()
    assert net[2][0].weight.grad.shape == (4, 2, 3, 3)


@pytest.mark.parametrize("bad, error", [((1.0, 0.0, 1.0), ValueError), ((1.0, 1.5, 1.0), ValueError),
                                        ((1.0, 0.5), ValueError), ("half", TypeError), ((1.0, True, 1.0), TypeError)])
def test_bad_crs_keep_is_refused_by_name(bad, error):
    with pytest.raises(error, match="crs_keep"):
        Conv2d(2, 3, 3, crs_keep=bad)
    with pytest.raises(error, match="crs_keep"):
        ConvNd(2, 3, (3, 3), crs_keep=bad)
    with pytest.raises(error, match="crs_keep"):
        conv(torch.randn(1, 2, 5, 5), torch.randn(3, 2, 3, 3), crs_keep=bad)
    with pytest.raises(error, match="crs_keep"):
        F.sample_input(torch.randn(1, 2, 5, 5), bad)
    with pytest.raises(error, match="crs_keep"):
        convert(torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3)), crs_keep=bad)


def test_crs_pass_refuses_output_legs_unknown_legs_and_bad_probabilities():
    tn = diagrams.weight_vjp(N=1, kernel_size=3)
    with pytest.raises(ValueError, match="output leg"):
        passes.crs(tn, tn.output_legs[0].name, 0.5)
    with pytest.raises(ValueError, match="not a leg"):
        passes.crs(tn, "nope", 0.5)
    with pytest.raises(ValueError, match="keep_prob"):
        passes.crs(tn, "i1", 0.0)
    with pytest.raises(TypeError, match="generator"):
        passes.crs(tn, "i1", 0.5, generator=3)
    assert passes.crs(tn, "i1", 1.0) is tn


def test_sampled_weight_vjp_checks_its_indices():
    x, g = torch.randn(2, 4, 10), torch.randn(2, 3, 8)
    sub, idx = F.sample_input(x, (0.5, 0.5))
    with pytest.raises(ValueError, match=r"indices\[1\]"):
        F.sampled_weight_vjp(sub, [idx[0], idx[1][:-1]], x.shape, (3, 4, 3), g)
    with pytest.raises(ValueError, match=r"indices\[1\] must lie"):
        F.sampled_weight_vjp(sub, [idx[0], idx[1] + 10], x.shape, (3, 4, 3), g)
    with pytest.raises(ValueError, match=r"indices\[0\]"):
        F.sampled_weight_vjp(sub, [idx[0].flatten(), idx[1]], x.shape, (3, 4, 3), g)
    with pytest.raises(ValueError, match="groups"):
        F.sample_input(x, (0.5, 0.5), groups=3)
    assert Conv1d(4, 3, 3, crs_keep=0.5).crs_keep == (0.5, 0.5)


def test_sample_input_refuses_what_the_thorough_fuzz_found():
    from tnconv.functional import sample_input

    with pytest.raises(ValueError, match="groups"):  # every count divides 0 channels: was a 10^12-step loop
        sample_input(torch.zeros(0, 0, 0, 0), (1.0, 1.0, 1.0), groups=10**12)
    with pytest.raises(ValueError, match="MAX_ELEMENTS"):  # an expanded view of 2^41 elements: randperm ran out of memory
        sample_input(torch.zeros(1, 1, 1, 1).expand(1, 2, 2**20, 2**20), (1.0, 0.5, 0.5))
