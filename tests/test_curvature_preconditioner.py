"""tnconv.curvature.KFACPreconditioner: .grad preconditioned in place, shared forward, schedules, any optimizer."""

import pytest
import torch
from torch import nn

from tnconv.curvature import KFAC, KFACPreconditioner
from tnconv.testing.models import curvature_cnn

DT = torch.float64


def net_and_batch(seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(curvature_cnn(), nn.BatchNorm1d(4)).to(DT)  # a BatchNorm: not covered, left alone
    x, y = torch.randn(6, 2, 8, 8, dtype=DT), torch.randint(4, (6,))
    return net, x, y


def plain_grads(net, x, y, loss_func):
    net.zero_grad()
    loss_func(net(x), y).backward()
    return [p.grad.clone() for p in net.parameters()]


@pytest.mark.parametrize("fisher_type", ["empirical", "type-2", "mc", "forward-only"])
def test_backward_gives_the_true_gradient_and_the_factors(fisher_type):
    net, x, y = net_and_batch()
    loss_func = nn.CrossEntropyLoss()
    reference = plain_grads(net, x, y, loss_func)
    net.zero_grad()
    pre = KFACPreconditioner(net, loss_func, params=list(net[0].parameters()), fisher_type=fisher_type, ema=None)
    loss = pre.backward(x, y)
    assert loss.shape == () and not loss.requires_grad
    for p, g in zip(net.parameters(), reference):
        torch.testing.assert_close(p.grad, g, rtol=1e-12, atol=1e-14)
    kfac = KFAC(net, loss_func, params=list(net[0].parameters()), approx="reduce", fisher_type=fisher_type)
    kfac.update(x, y)
    for name, (A, G) in kfac.factors.items():
        torch.testing.assert_close(pre.kfac.factors[name][0], A, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(pre.kfac.factors[name][1], G, rtol=1e-12, atol=1e-14)


def test_precondition_applies_the_damped_inverse_in_place_and_leaves_other_parameters():
    net, x, y = net_and_batch()
    covered = list(net[0].parameters())
    pre = KFACPreconditioner(net, nn.CrossEntropyLoss(), params=covered, damping=1e-2, pi_correction=True)
    pre.backward(x, y)
    before = [p.grad.clone() for p in net.parameters()]
    expected = pre.kfac.inverse(1e-2, pi_correction=True) @ before[:len(covered)]
    storage = [p.grad.data_ptr() for p in net.parameters()]
    pre.precondition()
    for p, e in zip(covered, expected):
        torch.testing.assert_close(p.grad, e, rtol=1e-12, atol=1e-14)
    assert [p.grad.data_ptr() for p in net.parameters()] == storage, "in place"
    for p, b in zip(list(net[1].parameters()), before[len(covered):]):
        assert torch.equal(p.grad, b)


def test_schedules():
    net, x, y = net_and_batch()
    pre = KFACPreconditioner(net[0], nn.CrossEntropyLoss(), update_every=3, inverse_every=2)
    inverses = []
    for _ in range(7):
        net.zero_grad()
        pre.backward(x, y)
        pre.precondition()
        inverses.append(pre.inverse)  # kept alive, so identities are not recycled
    assert pre.kfac.num_updates == 3  # calls 0, 3, 6
    fresh = [i for i in range(7) if i == 0 or inverses[i] is not inverses[i - 1]]
    assert fresh == [0, 2, 4, 6]


def test_precondition_before_any_update_leaves_gradients():
    net, x, y = net_and_batch()
    pre = KFACPreconditioner(net[0], nn.CrossEntropyLoss())
    g = plain_grads(net, x, y, nn.CrossEntropyLoss())
    pre.precondition()
    assert all(torch.equal(p.grad, r) for p, r in zip(net.parameters(), g))


@pytest.mark.parametrize("optimizer", [lambda p: torch.optim.SGD(p, lr=0.003),
                                       lambda p: torch.optim.Adam(p, lr=1e-2)], ids=["sgd", "adam"])
def test_trains_with_any_optimizer(optimizer):
    torch.manual_seed(0)
    net = curvature_cnn().to(DT)
    x = torch.randn(32, 2, 8, 8, dtype=DT)
    y = (x[:, 0, :4].sum((1, 2)) > 0).long() + 2 * (x[:, 1, :, :4].sum((1, 2)) > 0).long()
    pre = KFACPreconditioner(net, nn.CrossEntropyLoss(), damping=1e-3, inverse_every=5)
    opt = optimizer(net.parameters())
    losses = []
    for _ in range(30):
        opt.zero_grad()
        losses.append(pre.backward(x, y).item())
        pre.precondition()
        opt.step()
    assert losses[-1] < 0.5 * losses[0]


def test_diverged_factors_are_a_clear_error():
    net, x, y = net_and_batch()
    pre = KFACPreconditioner(net[0], nn.CrossEntropyLoss())
    pre.backward(x, y)
    pre.kfac._G["0"].fill_(float("nan"))
    pre.kfac._finished = None
    with pytest.raises(FloatingPointError, match="gradient factor of layer '0' is not finite"):
        pre.precondition()


def test_state_dict_and_bad_arguments():
    net, x, y = net_and_batch()
    pre = KFACPreconditioner(net[0], nn.CrossEntropyLoss(), fisher_type="type-2")
    pre.backward(x, y)
    pre.precondition()
    other = KFACPreconditioner(net[0], nn.CrossEntropyLoss(), fisher_type="type-2")
    other.load_state_dict(pre.state_dict())
    assert other.num_backward == 1 and other.num_precondition == 1
    torch.testing.assert_close(other.kfac.to_dense(), pre.kfac.to_dense())
    for kwargs, message in [(dict(update_every=0), "update_every must be a positive int"),
                            (dict(inverse_every=1.5), "inverse_every must be a positive int"),
                            (dict(damping=0.0), "damping must be a positive float"),
                            (dict(damping=(1e-3, 1e-3), pi_correction=True), "damping must be a positive float"),
                            (dict(approx="diag"), "approx must be one of"),
                            (dict(fisher_type="ggn"), "fisher_type must be one of")]:
        with pytest.raises(ValueError, match=message):
            KFACPreconditioner(net[0], nn.CrossEntropyLoss(), **kwargs)
