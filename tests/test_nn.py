"""tnconv.nn layers: drop-in equality with torch.nn, gradients, torch.func composability."""

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck
from torch.func import grad, jacrev, vmap

import tnconv
from tnconv import nn as tnn

DT = torch.float64
PAIRS = [(tnn.Conv1d, torch.nn.Conv1d, (6,)), (tnn.Conv2d, torch.nn.Conv2d, (6, 5)), (tnn.Conv3d, torch.nn.Conv3d, (5, 4, 3))]
OPTIONS = [
    dict(kernel_size=3),
    dict(kernel_size=2, stride=2, padding=1, bias=False),
    dict(kernel_size=3, padding="same", dilation=2),
    dict(kernel_size=1, groups=2),
    dict(kernel_size=2, padding=1, padding_mode="reflect"),
    dict(kernel_size=3, padding=1, padding_mode="circular", groups=4),
]


@pytest.fixture(params=[True, False], ids=["kernel-pair", "tnconv-vjps"])
def native(request, monkeypatch):
    """Both ways a layer may run: PyTorch's kernel pair where the compiler lowers to it, and ConvFunction."""
    import tnconv.ops.convolution as convolution

    monkeypatch.setattr(convolution, "NATIVE_PAIR", request.param)
    return request.param


@pytest.mark.parametrize("ours, theirs, size", PAIRS)
@pytest.mark.parametrize("options", OPTIONS)
def test_layer_matches_torch_and_shares_state_dict(ours, theirs, size, options, native):
    ref = theirs(4, 8, dtype=DT, **options)
    layer = ours(4, 8, dtype=DT, **options)
    assert set(layer.state_dict()) == set(ref.state_dict())
    layer.load_state_dict(ref.state_dict())
    x = torch.randn(2, 4, *size, dtype=DT, requires_grad=True)
    y, y_ref = layer(x), ref(x)
    torch.testing.assert_close(y, y_ref)
    g = torch.randn_like(y)
    grads = torch.autograd.grad(y, [x] + list(layer.parameters()), g)
    grads_ref = torch.autograd.grad(y_ref, [x] + list(ref.parameters()), g)
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b)
    ref.load_state_dict(layer.state_dict())  # and back


def test_initialization_matches_torch():
    torch.manual_seed(3)
    a = torch.nn.Conv2d(3, 5, 3)
    torch.manual_seed(3)
    b = tnn.Conv2d(3, 5, 3)
    torch.testing.assert_close(a.weight, b.weight)
    torch.testing.assert_close(a.bias, b.bias)


@pytest.mark.parametrize("hyper", [(1, 0, 1, 1), (2, 1, 1, 2), (1, "same", 2, 1), (2, 0, 2, 2)])
def test_gradcheck_and_gradgradcheck(hyper):
    stride, padding, dilation, groups = hyper
    x = torch.randn(1, 2, 5, 6, dtype=DT, requires_grad=True)
    w = torch.randn(2, 2 // groups, 2, 3, dtype=DT, requires_grad=True)
    b = torch.randn(2, dtype=DT, requires_grad=True)

    def f(x, w, b):  # tnconv's own VJPs (native=False: not PyTorch's kernel pair)
        return tnn.conv(x, w, b, stride, padding, dilation, groups, native=False)

    assert gradcheck(f, (x, w, b))
    assert gradgradcheck(f, (x, w, b))


def test_gradcheck_1d_and_3d():
    for shape, wshape in (((2, 2, 7), (3, 2, 3)), ((1, 2, 4, 4, 3), (2, 2, 2, 2, 2))):
        x = torch.randn(*shape, dtype=DT, requires_grad=True)
        w = torch.randn(*wshape, dtype=DT, requires_grad=True)
        assert gradcheck(lambda x, w: tnn.conv(x, w, None, 2, 1, native=False), (x, w))


def test_torch_func_grad_vmap_jacrev():
    x = torch.randn(3, 2, 6, 5, dtype=DT)
    w = torch.randn(4, 2, 3, 3, dtype=DT)
    ref = torch.nn.functional.conv2d

    def loss(w, x):
        return tnn.conv(x, w, None, 1, 1).pow(2).sum()

    def loss_ref(w, x):
        return ref(x, w, None, 1, 1).pow(2).sum()

    torch.testing.assert_close(grad(loss)(w, x), grad(loss_ref)(w, x))
    per_sample = vmap(grad(loss), in_dims=(None, 0))(w, x[:, None])
    per_sample_ref = vmap(grad(loss_ref), in_dims=(None, 0))(w, x[:, None])
    torch.testing.assert_close(per_sample, per_sample_ref)
    jac = jacrev(lambda x: tnn.conv(x, w, None, 2, 1))(x[:1])
    jac_ref = jacrev(lambda x: ref(x, w, None, 2, 1))(x[:1])
    torch.testing.assert_close(jac, jac_ref)


def test_conv_nd_any_dimension_matches_reference():
    from tnconv import testing as T

    layer = tnn.ConvNd(2, 3, kernel_size=(2, 1, 2, 2), stride=(1, 2, 1, 1), padding=1, dtype=DT)
    x = torch.randn(2, 2, 4, 3, 3, 4, dtype=DT, requires_grad=True)
    y = layer(x)
    torch.testing.assert_close(y, T.conv(x, layer.weight, layer.bias, layer.stride, layer.padding, layer.dilation))
    y.sum().backward()
    assert layer.weight.grad.shape == layer.weight.shape


def test_conv_nd_validates_arguments():
    with pytest.raises(ValueError, match="N"):
        tnn.ConvNd(2, 3, kernel_size=3)
    with pytest.raises(ValueError, match="stride"):
        tnn.ConvNd(2, 3, kernel_size=(2, 2), stride=(1, 1, 1))
    with pytest.raises(ValueError, match="padding_mode"):
        tnn.ConvNd(2, 3, kernel_size=(2, 2, 2, 2), padding_mode="reflect")


def test_device_and_dtype_arguments():
    layer = tnn.Conv2d(2, 3, 3, device="cpu", dtype=torch.float64)
    assert layer.weight.dtype == torch.float64 and layer.weight.device.type == "cpu"
    assert "Conv2d" in repr(layer)


def test_convert_swaps_layers_and_keeps_parameters():
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.ReLU(), torch.nn.Sequential(torch.nn.Conv1d(2, 2, 1)))
    weight = net[0].weight
    x = torch.randn(2, 1, 6, 6)
    before = net[1](net[0](x))
    tnconv.nn.convert(net)
    assert isinstance(net[0], tnn.Conv2d) and isinstance(net[2][0], tnn.Conv1d)
    assert net[0].weight is weight
    torch.testing.assert_close(net[1](net[0](x)), before, atol=1e-5, rtol=1e-5)
