"""tnconv.curvature.PerSample against torch.func and autograd in float64: per-sample gradients (both conventions),
their squared norms, the exact GGN diagonal, ``.grad`` from the same backward pass, and bad arguments."""

import warnings

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, jacrev, vmap

import tnconv
from tnconv.curvature import PerSample, hessian_sqrt

DT = torch.float64


class SharedLinear(nn.Module):
    """A linear layer on ``[B, S, d]``: its weight is shared over the ``S`` positions."""

    def __init__(self, d, m):
        super().__init__()
        self.linear = nn.Linear(d, m)

    def forward(self, x):  # [B, C, H, W] -> [B, H*W, C] -> [B, H*W, m] -> [B, H*W*m]
        return self.linear(x.flatten(2).transpose(1, 2)).flatten(1)


def zoo(N=2):
    """Every covered layer kind and feature: circular padding, in-place ReLU, a grouped dilated tnconv layer, a
    strided (tnconv's in 2d) transpose convolution with output_padding, a bias-free 1x1 convolution, a weight-shared and a plain linear
    layer."""
    conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[N]
    tconv = {1: nn.ConvTranspose1d, 2: tnconv.nn.ConvTranspose2d, 3: nn.ConvTranspose3d}[N]
    ours = {1: tnconv.nn.Conv1d, 2: tnconv.nn.Conv2d, 3: tnconv.nn.Conv3d}[N]
    return nn.Sequential(
        conv(2, 6, 3, stride=2, padding=1, padding_mode="circular"), nn.ReLU(inplace=True),
        ours(6, 6, 3, padding=2, dilation=2, groups=3), nn.Sigmoid(),
        tconv(6, 4, 3, stride=2, padding=1, output_padding=1, groups=2), nn.Tanh(),
        conv(4, 3, 1, stride=2, bias=False), SharedLinear(3, 2), nn.ReLU(),
        nn.Linear(2 * 4 ** N, 4),
    ).to(DT)


def data(N, loss_func, B=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(B, 2, *[8] * N, dtype=DT, generator=gen)
    if isinstance(loss_func, nn.CrossEntropyLoss):
        return x, torch.randint(4, (B,), generator=gen)
    return x, torch.randn(B, 4, dtype=DT, generator=gen)


def reference_grad_batch(net, loss_func, x, y):
    """BackPACK's scaling from torch.func: ``r ∇ℓ_b`` = the single-sample loss's gradient, divided by ``B`` for a mean."""
    params = dict(net.named_parameters())

    def single(p, xb, yb):
        return loss_func(functional_call(net, p, (xb[None],)), yb[None])

    per = vmap(grad(single), in_dims=(None, 0, 0))(params, x, y)
    return {k: v / (x.shape[0] if loss_func.reduction == "mean" else 1) for k, v in per.items()}


def reference_diag_ggn(net, loss_func, x, y):
    """``diag(Jᵀ ∇²L J)`` with the output Jacobian from torch.func and the loss Hessian by autograd."""
    params = {k: v.detach() for k, v in net.named_parameters()}
    out = functional_call(net, params, (x,))
    J = jacrev(lambda p: functional_call(net, p, (x,)))(params)  # name -> [B, C, *p.shape]
    H = torch.autograd.functional.hessian(lambda f: loss_func(f, y), out.detach())  # [B, C, B, C]
    return {k: torch.einsum("bc...,bcde,de...->...", j, H, j) for k, j in J.items()}


@pytest.mark.parametrize("N", [1, 2, 3])
@pytest.mark.parametrize("loss_cls, reduction", [(nn.CrossEntropyLoss, "mean"), (nn.MSELoss, "sum"),
                                                 (nn.MSELoss, "mean"), (nn.BCEWithLogitsLoss, "mean")])
def test_per_sample_quantities_match_torch_func(N, loss_cls, reduction):
    torch.manual_seed(0)
    net, loss_func = zoo(N), loss_cls(reduction=reduction)
    x, y = data(N, loss_func)
    if loss_cls is nn.BCEWithLogitsLoss:
        y = y.sigmoid()
    ref = reference_grad_batch(net, loss_func, x, y)
    res = PerSample(net, loss_func)(x, y, batch_l2=True, diag_ggn=N < 3)
    assert list(res.grad_batch) == list(ref) == list(res.batch_l2)
    norms = PerSample(net, loss_func)(x, y, grad_batch=False, batch_l2=True)
    for name, value in ref.items():
        torch.testing.assert_close(res.grad_batch[name], value, msg=name)
        torch.testing.assert_close(res.batch_l2[name], value.flatten(1).pow(2).sum(1), msg=name)
        torch.testing.assert_close(norms.batch_l2[name], value.flatten(1).pow(2).sum(1), msg=name)
    torch.testing.assert_close(res.sq_norms(), sum(v.flatten(1).pow(2).sum(1) for v in ref.values()))
    opacus = PerSample(net, loss_func, convention="opacus")(x, y)
    c = x.shape[0] if reduction == "mean" else 1
    assert opacus.scale == c
    for name, value in ref.items():
        torch.testing.assert_close(opacus.grad_batch[name], c * value, msg=name)
    if N < 3:
        for name, value in reference_diag_ggn(net, loss_func, x, y).items():
            torch.testing.assert_close(res.diag_ggn[name], value, msg=name)


def test_gradient_from_the_same_backward_pass_and_vmap_strategy():
    torch.manual_seed(0)
    net, loss_func = zoo(2), nn.CrossEntropyLoss()
    x, y = data(2, loss_func)
    plain = PerSample(net, loss_func)(x, y, batch_l2=True, diag_ggn=True)
    net.zero_grad()
    with_grad = PerSample(net, loss_func, strategy="vmap")(x, y, batch_l2=True, diag_ggn=True, grad=True)
    expected = torch.autograd.grad(loss_func(net(x), y), list(net.parameters()))
    for (name, p), g in zip(net.named_parameters(), expected):
        torch.testing.assert_close(p.grad, g)
        torch.testing.assert_close(with_grad.grad_batch[name].sum(0), g)
        for attr in ("grad_batch", "batch_l2", "diag_ggn"):
            torch.testing.assert_close(getattr(with_grad, attr)[name], getattr(plain, attr)[name])
    torch.testing.assert_close(with_grad.loss, plain.loss)
    # only .grad: nothing else is computed; no .grad without grad=True
    net.zero_grad(set_to_none=True)
    only = PerSample(net, loss_func)(x, y, grad_batch=False, grad=True)
    assert only.grad_batch == only.batch_l2 == only.diag_ggn == {} and net[0].weight.grad is not None
    net.zero_grad(set_to_none=True)
    PerSample(net, loss_func)(x, y)
    assert all(p.grad is None for p in net.parameters())


def test_subset_of_params_layers_the_loss_ignores_and_diag_ggn_of_one_sample():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).to(DT)
    loss_func = nn.MSELoss(reduction="sum")
    x, y = torch.randn(1, 3, dtype=DT), torch.randn(1, 2, dtype=DT)
    res = PerSample(net, loss_func, params=[net[2].weight, net[0].bias])(x, y, diag_ggn=True)
    assert list(res.grad_batch) == ["2.weight", "0.bias"] and list(res.diag_ggn) == ["2.weight", "0.bias"]
    # one sample: the GGN diagonal is the sum of squares of (J^T S) over the loss Hessian's square root's columns
    S = hessian_sqrt(net(x), loss_func)  # [C, 1, C]
    out = net(x)
    jac = torch.autograd.grad(out, net[2].weight, S, is_grads_batched=True)[0]
    torch.testing.assert_close(res.diag_ggn["2.weight"], jac.pow(2).sum(0))
    # a layer after the output (its parameters do not reach the loss) gets zeros
    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.unused = nn.Linear(3, 2), nn.Linear(3, 2)

        def forward(self, x):
            self.unused(x)
            return self.body(x)

    head = Head().to(DT)
    res = PerSample(head, loss_func)(torch.randn(2, 3, dtype=DT), torch.randn(2, 2, dtype=DT), batch_l2=True,
                                     grad=True)
    assert res.grad_batch["unused.weight"].abs().max() == 0 and res.batch_l2["unused.bias"].abs().max() == 0


def test_bad_arguments_name_themselves():
    net, loss_func = zoo(1), nn.CrossEntropyLoss()
    x, y = data(1, loss_func)
    with pytest.raises(ValueError, match="convention must be one of"):
        PerSample(net, loss_func, convention="jax")
    with pytest.raises(ValueError, match="strategy must be one of"):
        PerSample(net, loss_func, strategy="fast")
    with pytest.raises(ValueError, match="loss_func must have reduction"):
        PerSample(net, nn.CrossEntropyLoss(reduction="none"))
    with pytest.raises(ValueError, match="loss_func must be a torch.nn.MSELoss"):
        PerSample(net, nn.L1Loss())
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        PerSample(lambda x: x, loss_func)
    with pytest.raises(ValueError, match="model has no supported layer"):
        PerSample(nn.Sequential(nn.ReLU()), loss_func)
    with pytest.raises(ValueError, match="params holds tensors that are not parameters of model"):
        PerSample(net, loss_func, params=[torch.zeros(2, requires_grad=True)])
    normed = nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2)).to(DT)
    with pytest.raises(ValueError, match=r"params holds 1 parameter\(s\) of layers the curvature does not support"):
        PerSample(normed, loss_func, params=[normed[0].weight, normed[1].weight])
    ps = PerSample(net, loss_func)
    with pytest.raises(ValueError, match="nothing to compute"):
        ps(x, y, grad_batch=False)
    with pytest.raises(TypeError, match="batch_l2 must be a bool"):
        ps(x, y, batch_l2="yes")
    with pytest.raises(ValueError, match=r"model\(inputs\) must return a \[B, C\] tensor"):
        PerSample(nn.Sequential(nn.Conv1d(2, 4, 3)).to(DT), loss_func)(x, y)
    with pytest.raises(ValueError, match="sq_norms needs batch_l2"):
        ps(x, y).sq_norms()


def test_batchnorm_in_training_mode_is_flagged():
    net = nn.Sequential(nn.Conv1d(2, 3, 3), nn.BatchNorm1d(3), nn.Flatten(), nn.Linear(18, 4)).to(DT)
    x, y = data(1, nn.CrossEntropyLoss())
    with pytest.warns(UserWarning, match=r"BatchNorm layers in training mode \(1\)"):
        PerSample(net, nn.CrossEntropyLoss(), params=[net[0].weight])(x, y)
    net[1].eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        PerSample(net, nn.CrossEntropyLoss(), params=[net[0].weight])(x, y)


def test_kernel_taps_that_only_see_padding():
    """A 3x3 convolution on a 1x1 input and a dilated one on 2x2 use their centre taps only: the others are computed
    as exact zeros (cropped convolutions, padded back), the rest equals torch.func."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 4, 3, stride=2, padding=1), nn.ReLU(),   # 3x3 -> 2x2
                        nn.Conv2d(4, 4, 3, padding=3, dilation=3), nn.Tanh(),  # on 2x2: only the centre tap is live
                        nn.Conv2d(4, 3, 2, stride=2), nn.ReLU(),  # 2x2 -> 1x1
                        nn.Conv2d(3, 5, 3, padding=1, groups=1), nn.Flatten(), nn.Linear(5, 4)).to(DT)
    loss_func = nn.CrossEntropyLoss()
    x, y = torch.randn(3, 2, 3, 3, dtype=DT), torch.tensor([0, 3, 1])
    ref = reference_grad_batch(net, loss_func, x, y)
    res = PerSample(net, loss_func)(x, y, batch_l2=True, diag_ggn=True)
    norms = PerSample(net, loss_func)(x, y, grad_batch=False, batch_l2=True)
    for name, value in ref.items():
        torch.testing.assert_close(res.grad_batch[name], value, msg=name)
        torch.testing.assert_close(norms.batch_l2[name], value.flatten(1).pow(2).sum(1), msg=name)
    for name, value in reference_diag_ggn(net, loss_func, x, y).items():
        torch.testing.assert_close(res.diag_ggn[name], value, msg=name)
    assert res.grad_batch["6.weight"][..., 0, :].abs().max() == 0 and res.grad_batch["6.weight"][..., 1, 1].abs().max() > 0
    assert res.grad_batch["2.weight"][..., 0, 0].abs().max() == 0 and res.diag_ggn["2.weight"][..., 2, 2].abs().max() == 0
