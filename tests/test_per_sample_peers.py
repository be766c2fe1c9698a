"""tnconv.curvature.PerSample against BackPACK's BatchGrad, BatchL2Grad and DiagGGNExact and Opacus' GradSampleModule,
in float64, within 1e-10, on small CNNs with stride, padding, dilation, groups, 1x1 and transpose convolutions and a
linear head. Skipped when the peers are not installed (``pip install -e ".[peers]"``).
"""

import warnings

import pytest
import torch
from torch import nn

from tnconv.curvature import PerSample
from tnconv.testing.models import curvature_cnn

DT = torch.float64
TOL = 1e-10
LOSSES = [nn.CrossEntropyLoss, nn.MSELoss]


def close(ours, theirs, tol=TOL):
    """Equal relative to the largest entry of the peer's value."""
    scale = theirs.abs().max().clamp_min(1e-300)
    err = ((ours - theirs).abs().max() / scale).item()
    assert err < tol, f"relative error {err:.2e}"


def batch(loss_cls, N, B=3, classes=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(B, 2, *[8] * N, dtype=DT, generator=gen)
    if loss_cls is nn.CrossEntropyLoss:
        return x, torch.randint(classes, (B,), generator=gen)
    return x, torch.randn(B, classes, dtype=DT, generator=gen)


CASES = [(loss_cls, reduction) for loss_cls in LOSSES for reduction in ("mean", "sum")]


@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("N", [1, 2, 3])
def test_per_sample_equals_backpack(N, groups):
    """BatchGrad, BatchL2Grad and DiagGGNExact, with a transpose convolution, in 1d-3d, MSE and CE, mean and sum."""
    pytest.importorskip("backpack")
    for loss_cls, reduction in CASES:
        check_against_backpack(N, groups, loss_cls, reduction)


def check_against_backpack(N, groups, loss_cls, reduction):
    import backpack as bp
    from backpack.extensions import BatchGrad, BatchL2Grad, DiagGGNExact

    torch.manual_seed(0)
    net = bp.extend(curvature_cnn(N=N, transpose=True, output_padding=0, groups=groups).to(DT))
    loss = bp.extend(loss_cls(reduction=reduction))
    x, y = batch(loss_cls, N)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # BackPACK's note on transposed kernels
        with bp.backpack(BatchGrad(), BatchL2Grad(), DiagGGNExact()):
            loss(net(x), y).backward()
        ours = PerSample(net, loss)(x, y, batch_l2=True, diag_ggn=True)
        norms_only = PerSample(net, loss)(x, y, grad_batch=False, batch_l2=True)
    grouped = {f"{name}.weight" for name, m in net.named_modules() if getattr(m, "groups", 1) > 1}
    for name, p in net.named_parameters():
        close(ours.grad_batch[name], p.grad_batch)
        close(ours.diag_ggn[name], p.diag_ggn_exact)
        # BackPACK 1.7.1's BatchL2Grad ignores groups (test below): compare with its own grad_batch there
        theirs = p.grad_batch.flatten(1).pow(2).sum(1) if name in grouped else p.batch_l2
        close(ours.batch_l2[name], theirs)
        close(norms_only.batch_l2[name], theirs)
    assert list(ours.grad_batch) == [name for name, _ in net.named_parameters()]


def test_backpack_batch_l2_ignores_groups():
    """BackPACK 1.7.1's BatchL2Grad of a grouped convolution is not the squared norm of its own BatchGrad (it sums
    the Gram formula over all channel pairs, across groups); tnconv's is, and equals autograd's per-sample norms."""
    bp = pytest.importorskip("backpack")
    from backpack.extensions import BatchGrad, BatchL2Grad

    torch.manual_seed(0)
    net = bp.extend(nn.Sequential(nn.Conv2d(4, 4, 3, groups=2), nn.Flatten(), nn.Linear(36, 2)).to(DT))
    loss = bp.extend(nn.MSELoss())
    x, y = torch.randn(3, 4, 5, 5, dtype=DT), torch.randn(3, 2, dtype=DT)
    with bp.backpack(BatchGrad(), BatchL2Grad()):
        loss(net(x), y).backward()
    w = net[0].weight
    per_sample = torch.stack([torch.autograd.grad(loss(net(x[b:b + 1]), y[b:b + 1]) / 3, w)[0] for b in range(3)])
    ours = PerSample(net, loss)(x, y, grad_batch=False, batch_l2=True).batch_l2["0.weight"]
    close(ours, per_sample.flatten(1).pow(2).sum(1))
    assert (w.batch_l2 - ours).abs().max() > 1e-2 * ours.abs().max()


@pytest.mark.parametrize("groups, transpose", [(1, False), (3, True)])
@pytest.mark.parametrize("N", [1, 2, 3])
def test_per_sample_equals_opacus(N, groups, transpose):
    """grad_sample of GradSampleModule(loss_reduction=reduction) (Opacus' own sampler for the convolutions and the
    linear layer; functorch for the transpose convolution, which Opacus has none for), MSE and CE, mean and sum."""
    pytest.importorskip("opacus")
    for loss_cls, reduction in CASES:
        check_against_opacus(N, groups, transpose, loss_cls, reduction)


def check_against_opacus(N, groups, transpose, loss_cls, reduction):
    import opacus

    torch.manual_seed(0)
    net = curvature_cnn(N=N, transpose=transpose, groups=groups, in_channels=3).to(DT)
    loss = loss_cls(reduction=reduction)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, *[8] * N, dtype=DT, generator=gen)
    y = torch.randint(4, (4,), generator=gen) if loss_cls is nn.CrossEntropyLoss else torch.randn(4, 4, dtype=DT,
                                                                                                 generator=gen)
    gsm = opacus.GradSampleModule(net, loss_reduction=reduction)
    try:
        loss(gsm(x), y).backward()
        theirs = {name: p.grad_sample for name, p in net.named_parameters()}
    finally:
        gsm._close()
    ours = PerSample(net, loss, convention="opacus")(x, y, batch_l2=True)
    assert ours.scale == (4 if reduction == "mean" else 1)
    for name, grad_sample in theirs.items():
        close(ours.grad_batch[name], grad_sample)
        close(ours.batch_l2[name], grad_sample.flatten(1).pow(2).sum(1))
