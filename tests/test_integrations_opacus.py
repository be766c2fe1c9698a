"""tnconv.integrations.opacus: tnconv's samplers inside Opacus' PrivacyEngine give Opacus' own numbers, float64.

Skipped without Opacus (``pip install -e ".[opacus]"``).
"""

import copy
import warnings

import pytest
import torch
from torch import nn

import tnconv
from tnconv.integrations import opacus as tnconv_opacus

opacus = pytest.importorskip("opacus")

DT = torch.float64


@pytest.fixture(autouse=True)
def _restore():
    yield
    tnconv_opacus.unregister()


def cnn():
    """Stride, padding, dilation, groups, a 1x1 convolution, 1d and 3d convolutions and a linear head."""
    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = nn.Conv2d(3, 6, 3, stride=2, padding=1)
            self.c2 = nn.Conv2d(6, 6, 3, padding=2, dilation=2, groups=3)
            self.c3 = nn.Conv2d(6, 4, 1)
            self.c4 = nn.Conv1d(4, 4, 3, padding=1, bias=False)
            self.c5 = nn.Conv3d(1, 2, 2)
            self.head = nn.Linear(4 * 16 + 2 * 27, 3)

        def forward(self, x):
            h = torch.tanh(self.c3(torch.relu(self.c2(torch.relu(self.c1(x))))))  # [B, 4, 4, 4]
            a = self.c4(h.flatten(2))  # [B, 4, 16]
            b = self.c5(h.unsqueeze(1))  # the channels as depth: [B, 1, 4, 4, 4] -> [B, 2, 3, 3, 3]
            return self.head(torch.cat([a.flatten(1), b.flatten(1)], 1))

    return Net().to(DT)


def loader(n=12, batch=4):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, 8, 8, dtype=DT, generator=gen)
    y = torch.randint(3, (n,), generator=gen)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch)


def dp_sgd(model, mode="hooks", steps=3):
    """A few DP-SGD steps: Opacus' PrivacyEngine, fixed noise generator, no Poisson sampling."""
    engine = opacus.PrivacyEngine()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    criterion = nn.CrossEntropyLoss()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        made = engine.make_private(module=model, optimizer=optimizer, data_loader=loader(), noise_multiplier=0.3,
                                   max_grad_norm=0.5, poisson_sampling=False, criterion=criterion,
                                   noise_generator=torch.Generator().manual_seed(7), grad_sample_mode=mode)
        if mode == "ghost":
            private, optimizer, criterion, data = made
        else:
            private, optimizer, data = made
        for step, (x, y) in enumerate(data):
            if step == steps:
                break
            optimizer.zero_grad()
            criterion(private(x), y).backward()
            optimizer.step()
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("mode", ["hooks", "ghost"])
def test_dp_sgd_steps_equal_with_tnconv_and_opacus_samplers(mode, monkeypatch):
    start = cnn()
    theirs = dp_sgd(copy.deepcopy(start), mode)
    calls = []
    spy = tnconv_opacus.per_layer.weight_sq_norms if mode == "ghost" else tnconv_opacus.per_layer.weight_grad_batch
    name = spy.__name__
    monkeypatch.setattr(tnconv_opacus.per_layer, name, lambda *a: calls.append(a[0].kind) or spy(*a))
    with tnconv_opacus.registered():
        ours = dp_sgd(copy.deepcopy(start), mode)
    assert len(calls) == 3 * 5  # every convolution of every step went through tnconv
    moved = False
    for a, b, p in zip(ours, theirs, start.parameters()):
        assert (a - b).abs().max() <= 1e-10 * b.abs().max()
        moved |= bool((a - p).abs().max() > 1e-3)
    assert moved


def test_samplers_equal_opacus_own_on_every_convolution_feature():
    """Opacus' own conv sampler as the reference, per layer, incl. asymmetric 'same' padding and padding_mode."""
    from opacus.grad_sample.conv import compute_conv_grad_sample

    gen = torch.Generator().manual_seed(3)
    layers = [nn.Conv1d(4, 6, 4, padding="same", dilation=3, groups=2), nn.Conv2d(3, 4, (3, 2), stride=(2, 1)),
              nn.Conv3d(2, 4, 2, padding=1, groups=2, bias=False), tnconv.nn.Conv2d(2, 3, 3, padding=1)]
    for conv in layers:
        conv = conv.to(DT)
        N = conv.weight.ndim - 2
        x = torch.randn(3, conv.in_channels, *[6] * N, dtype=DT, generator=gen)
        g = torch.randn_like(conv(x))
        ours = tnconv_opacus.grad_sampler(conv, [x], g)
        reference = nn.Conv2d if isinstance(conv, tnconv.nn.Conv2d) else type(conv)
        with torch.no_grad():  # Opacus' sampler dispatches on type(layer): give it PyTorch's own class
            plain = reference(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                              padding=conv.padding, dilation=conv.dilation, groups=conv.groups,
                              bias=conv.bias is not None).to(DT)
            plain.load_state_dict(conv.state_dict())
        theirs = compute_conv_grad_sample(plain, [x], g)
        assert set(ours) == set(conv.parameters())
        for p, q in zip(conv.parameters(), plain.parameters()):
            torch.testing.assert_close(ours[p], theirs[q])
        norms = tnconv_opacus.norm_sampler(conv, [x], g)
        for p, q in zip(conv.parameters(), plain.parameters()):
            torch.testing.assert_close(norms[p], theirs[q].flatten(1).norm(dim=1))


def test_padding_mode_and_transpose_convolutions_against_autograd():
    """Opacus' own sampler ignores padding_mode (it pads with zeros); tnconv's pads as the layer does. Transpose
    convolutions: Opacus has no sampler, tnconv's equals autograd per sample."""
    gen = torch.Generator().manual_seed(4)
    for conv in (nn.Conv2d(2, 3, 3, padding=1, padding_mode="reflect"),
                 nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2)):
        conv = conv.to(DT)
        x = torch.randn(3, conv.in_channels, 5, 5, dtype=DT, generator=gen)
        g = torch.randn_like(conv(x))
        ours = tnconv_opacus.grad_sampler(conv, [x], g)
        for p in conv.parameters():
            ref = torch.stack([torch.autograd.grad(conv(x[b:b + 1]), p, g[b:b + 1])[0] for b in range(3)])
            torch.testing.assert_close(ours[p], ref)


def test_register_restores_opacus_own_and_rejects_bad_arguments():
    registry = opacus.GradSampleModule.GRAD_SAMPLERS
    norms = opacus.grad_sample.GradSampleModuleFastGradientClipping.NORM_SAMPLERS
    before, before_norms = dict(registry), dict(norms)
    tnconv_opacus.register(transpose=True)
    tnconv_opacus.register(transpose=True)  # no stacking: registering twice restores once
    assert tnconv_opacus.is_registered()
    assert registry[nn.Conv2d] is tnconv_opacus.grad_sampler and registry[tnconv.nn.Conv3d] is tnconv_opacus.grad_sampler
    assert registry[nn.ConvTranspose1d] is tnconv_opacus.grad_sampler and norms[nn.Conv1d] is tnconv_opacus.norm_sampler
    assert registry[tnconv.nn.ConvTranspose2d] is tnconv_opacus.grad_sampler
    tnconv_opacus.unregister()
    assert not tnconv_opacus.is_registered() and registry == before and norms == before_norms
    with pytest.raises(RuntimeError):
        with tnconv_opacus.registered(norms=False):
            assert registry[nn.Conv1d] is tnconv_opacus.grad_sampler and nn.Conv1d not in norms
            raise RuntimeError
    assert registry == before
    with pytest.raises(TypeError, match="norms must be a bool"):
        tnconv_opacus.register(norms="yes")
    assert not tnconv_opacus.is_registered()
