"""tnconv.nn.convert (root, children, subclasses, strict) and the transpose convolution layers."""

import copy
import pickle

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

import tnconv
from tnconv import nn as tnn
from tnconv.nn.conv import _TNConvMixin
from tnconv.ops import convolution_transpose

DT = torch.float64


class Standardized(torch.nn.Conv2d):
    """A weight-standardized convolution: its own forward, through ``_conv_forward``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.eps = 1e-5

    def forward(self, x):
        w = self.weight
        w = (w - w.mean(dim=(1, 2, 3), keepdim=True)) / (w.std(dim=(1, 2, 3), keepdim=True) + self.eps)
        return self._conv_forward(x, w, self.bias)


class Tagged(torch.nn.ConvTranspose1d):
    """A subclass that only adds an attribute."""

    tag = "up"


class OwnConvolution(torch.nn.Conv1d):
    """A subclass computing its own convolution: tnconv cannot take it over."""

    def forward(self, x):
        return torch.nn.functional.conv1d(x, self.weight.flip(-1), self.bias)


def test_convert_a_bare_convolution_in_place():
    for conv, twin in ((torch.nn.Conv2d(3, 4, 3), tnn.Conv2d), (torch.nn.ConvTranspose3d(2, 3, 2), tnn.ConvTranspose3d)):
        weight = conv.weight
        x = torch.randn(1, conv.in_channels, *(5,) * (conv.weight.ndim - 2))
        before = conv(x)
        out = tnconv.nn.convert(conv)
        assert out is conv and type(conv) is twin and conv.weight is weight
        torch.testing.assert_close(conv(x), before, atol=1e-5, rtol=1e-5)
        assert repr(conv).startswith(f"tnconv.{twin.__name__}(")


def test_convert_children_keeps_modules_parameters_and_hooks():
    seen = []
    net = torch.nn.Sequential(torch.nn.Conv1d(2, 3, 3), torch.nn.ReLU(), torch.nn.Sequential(torch.nn.ConvTranspose1d(3, 2, 2)))
    inner = net[2][0]
    inner.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    params = list(net.parameters())
    x = torch.randn(2, 2, 8)
    before = net(x)
    tnconv.nn.convert(net)
    assert net[2][0] is inner and isinstance(inner, tnn.ConvTranspose1d) and list(net.parameters()) == params
    torch.testing.assert_close(net(x), before, atol=1e-5, rtol=1e-5)
    assert seen == [(2, 2, 7), (2, 2, 7)]
    assert "tnconv.Conv1d" in repr(net) and "tnconv.ConvTranspose1d" in repr(net)


def test_convert_subclasses_tnconv_can_take_over(monkeypatch):
    calls = []
    original = tnconv.ops.convolution._apply_conv
    monkeypatch.setattr(tnconv.ops.convolution, "NATIVE_PAIR", False)  # every call through ConvFunction
    monkeypatch.setattr(tnconv.ops.convolution, "_apply_conv", lambda *a: calls.append(1) or original(*a))
    torch.manual_seed(0)
    net = torch.nn.Sequential(Standardized(3, 4, 3, padding=1), Tagged(4, 2, 3, stride=2))
    x = torch.randn(2, 3, 6, 6)
    before = net[0](x)
    tnconv.nn.convert(net)
    assert isinstance(net[0], Standardized) and isinstance(net[0], _TNConvMixin) and net[0].eps == 1e-5
    assert isinstance(net[1], Tagged) and net[1].tag == "up"
    assert repr(net[0]).startswith("tnconv.Standardized(")
    torch.testing.assert_close(net[0](x), before, atol=1e-5, rtol=1e-5)
    assert calls
    y = net[1](torch.randn(2, 4, 5), output_size=(12,))
    assert y.shape == (2, 2, 12)
    for copied in (copy.deepcopy(net), pickle.loads(pickle.dumps(net))):
        assert type(copied[0]) is type(net[0]) and copied[0].weight is not net[0].weight
        torch.testing.assert_close(copied[0](x), net[0](x))


def test_convert_warns_about_subclasses_it_cannot_take_over():
    net = torch.nn.Sequential(OwnConvolution(2, 2, 3), torch.nn.Conv1d(2, 2, 1))
    with pytest.warns(UserWarning, match=r"0 \(OwnConvolution\)"):
        tnconv.nn.convert(net)
    assert type(net[0]) is OwnConvolution and type(net[1]) is tnn.Conv1d


def test_convert_strict_refuses_subclasses_naming_them():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1), torch.nn.Sequential(Standardized(3, 3, 1), OwnConvolution(3, 3, 1)))
    with pytest.raises(ValueError, match=r"1\.0 \(.*Standardized\), 1\.1 \(.*OwnConvolution\)"):
        tnconv.nn.convert(net, strict=True)
    assert type(net[0]) is torch.nn.Conv2d  # nothing converted
    with pytest.raises(ValueError, match=r"<root> \(.*Standardized\)"):
        tnconv.nn.convert(Standardized(1, 1, 1), strict=True)
    tnconv.nn.convert(torch.nn.Conv2d(1, 1, 1), strict=True)
    with pytest.raises(TypeError, match="strict"):
        tnconv.nn.convert(net, strict="yes")
    with pytest.raises(TypeError, match="module"):
        tnconv.nn.convert("model")


def test_convert_sets_and_updates_crs_of_convolutions_only():
    net = torch.nn.Sequential(torch.nn.Conv2d(2, 2, 3), torch.nn.ConvTranspose2d(2, 2, 3))
    tnconv.nn.convert(net, crs_keep=0.5)
    assert net[0].crs_keep == (0.5, 0.5, 0.5) and not hasattr(net[1], "crs_keep")
    tnconv.nn.convert(net)
    assert net[0].crs_keep is None


# -- transpose convolution layers ------------------------------------------------------------------------------
OPTIONS = [
    dict(kernel_size=3),
    dict(kernel_size=2, stride=2, padding=1, output_padding=1, bias=False),
    dict(kernel_size=3, stride=2, dilation=2, output_padding=1, groups=2),
]
PAIRS = [(tnn.ConvTranspose1d, torch.nn.ConvTranspose1d, (5,)), (tnn.ConvTranspose2d, torch.nn.ConvTranspose2d, (4, 5)),
         (tnn.ConvTranspose3d, torch.nn.ConvTranspose3d, (3, 4, 3))]


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("ours, theirs, size", PAIRS)
@pytest.mark.parametrize("options", OPTIONS)
def test_transpose_layers_match_torch(ours, theirs, size, options, native, monkeypatch):
    monkeypatch.setattr(convolution_transpose, "NATIVE_PAIR", native)
    ref = theirs(4, 6, dtype=DT, **options)
    layer = ours(4, 6, dtype=DT, **options)
    layer.load_state_dict(ref.state_dict())
    x = torch.randn(2, 4, *size, dtype=DT, requires_grad=True)
    for _ in range(2):  # the first call decides, the second runs the decision
        y, y_ref = layer(x), ref(x)
        torch.testing.assert_close(y, y_ref)
        g = torch.randn_like(y)
        for a, b in zip(torch.autograd.grad(y, [x] + list(layer.parameters()), g),
                        torch.autograd.grad(y_ref, [x] + list(ref.parameters()), g)):
            torch.testing.assert_close(a, b)
    unbatched = x[0].detach()
    torch.testing.assert_close(layer(unbatched), ref(unbatched))


def test_transpose_layer_output_size_and_padding_mode():
    layer = tnn.ConvTranspose2d(2, 3, 3, stride=2)
    assert layer(torch.randn(1, 2, 4, 4), output_size=(10, 10)).shape == (1, 3, 10, 10)
    layer.padding_mode = "reflect"
    with pytest.raises(ValueError, match="padding_mode"):
        layer(torch.randn(1, 2, 4, 4))


def test_transpose_gradcheck_and_gradgradcheck_of_the_derived_vjps():
    x = torch.randn(1, 4, 3, 4, dtype=DT, requires_grad=True)
    w = torch.randn(4, 1, 2, 3, dtype=DT, requires_grad=True)
    b = torch.randn(2, dtype=DT, requires_grad=True)

    def f(x, w, b):
        return convolution_transpose.conv_transpose(x, w, b, 2, (1, 0), (1, 0), 2, 1, native=False)

    assert gradcheck(f, (x, w, b))
    assert gradgradcheck(f, (x, w, b))
