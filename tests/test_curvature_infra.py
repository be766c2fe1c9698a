"""tnconv.curvature's shared infrastructure: layer discovery, capture hooks, loss-Hessian factorizations."""

import gc
import math
import weakref

import pytest
import torch
from torch import nn

import tnconv
from tnconv.curvature import Capture, find_layers, supported_parameters
from tnconv.curvature import loss as L

DT = torch.float64


def zoo():
    """Every supported layer kind, an in-place activation after a convolution, and unsupported layers."""
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(inplace=True), nn.BatchNorm2d(4),
        tnconv.nn.Conv2d(4, 4, 3, stride=2, groups=2), nn.ReLU(),
        nn.ConvTranspose2d(4, 2, 3, stride=2, output_padding=1), nn.Flatten(1, 2),  # [B, 2*8, 8] as a 1-d signal
        nn.Conv1d(16, 3, 2, dilation=2), nn.Flatten(), nn.Linear(18, 5),
    ).to(DT)


# ----------------------------------------------------------------------------- layers


def test_find_layers_kinds_names_and_positions():
    net = zoo()
    with pytest.warns(UserWarning, match=r"2 trainable parameter\(s\).*2.weight \(BatchNorm2d\)"):
        layers = find_layers(net)
    assert [(l.name, l.kind, l.N, l.groups) for l in layers] == [
        ("0", "conv", 2, 1), ("3", "conv", 2, 2), ("5", "conv_transpose", 2, 1), ("7", "conv", 1, 1),
        ("9", "linear", 0, 1)]
    params = supported_parameters(net)
    assert [l.weight_index for l in layers] == [0, 2, 4, 6, 8] and [l.bias_index for l in layers] == [1, 3, 5, 7, 9]
    assert all(params[l.weight_index] is net.get_parameter(l.weight) for l in layers)
    # explicit params: order of params, not of modules; a layer with only its bias
    layers = find_layers(net, params=[net[9].weight, net[0].bias])
    assert [(l.name, l.weight, l.weight_index, l.bias, l.bias_index) for l in layers] == [
        ("0", None, None, "0.bias", 1), ("9", "9.weight", 0, None, None)]


def test_find_layers_rejects_bad_params_and_models():
    net = zoo()
    with pytest.raises(ValueError, match=r"params holds 2 parameter\(s\) of layers the curvature does not support.*"
                                         r"2.weight \(BatchNorm2d\), 2.bias \(BatchNorm2d\)"):
        find_layers(net, params=list(net.parameters()))
    with pytest.raises(ValueError, match=r"params holds tensors that are not parameters of model: position 1"):
        find_layers(net, params=[net[0].weight, torch.zeros(3)])
    with pytest.raises(ValueError, match="params must hold at least one"):
        find_layers(net, params=[])
    with pytest.raises(ValueError, match="params holds the same tensor twice"):
        find_layers(net, params=[net[0].weight, net[0].weight])
    with pytest.raises(TypeError, match="params must be a list"):
        find_layers(net, params=net[0].weight)
    with pytest.raises(ValueError, match=r"model has no supported layer.*BatchNorm1d, ReLU, Sequential"):
        find_layers(nn.Sequential(nn.ReLU(), nn.BatchNorm1d(3)))
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        find_layers(lambda x: x)
    shared = nn.Linear(3, 3)
    with pytest.raises(ValueError, match="shared by the layers"):
        tied = nn.Sequential(shared, nn.Linear(3, 3))
        tied[1].weight = shared.weight
        find_layers(tied, params=[shared.weight])
    with pytest.raises(ValueError, match="lazy"):
        find_layers(nn.Sequential(nn.LazyLinear(3)))


def test_no_warning_without_unsupported_trainable_parameters(recwarn):
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2, affine=False), nn.Flatten(), nn.Linear(2, 1))
    find_layers(net)
    frozen = zoo()
    frozen[2].requires_grad_(False)
    find_layers(frozen)
    assert not [w for w in recwarn if issubclass(w.category, UserWarning)]


@pytest.mark.parametrize("module, x", [
    (nn.Conv2d(4, 6, (3, 2), stride=(2, 1), padding=1, dilation=(1, 2), groups=2), (3, 4, 9, 8)),
    (nn.Conv1d(3, 4, 3, padding="same", padding_mode="reflect"), (2, 3, 7)),
    (nn.Conv3d(2, 2, 2, stride=2, padding=1, padding_mode="circular"), (2, 2, 4, 5, 4)),
    (nn.ConvTranspose1d(4, 6, 3, stride=2, padding=1, groups=2, dilation=2), (2, 4, 5)),
    (nn.ConvTranspose2d(2, 3, (3, 2), stride=(2, 3), padding=(1, 0), output_padding=(1, 2)), (2, 2, 4, 3)),
    (nn.Linear(5, 3), (4, 5)),
])
def test_weight_matrix_times_unfolded_input_is_the_layer(module, x):
    """The per-group weight matrix and the functional unfold of ``functional_input`` reproduce the layer's output."""
    module = module.to(DT)
    layer = find_layers(module)[0]
    x = torch.randn(x, dtype=DT)
    y = module(x) - (0 if module.bias is None else module.bias.view(-1, *[1] * (x.ndim - 2)))
    W = layer.weight_matrix(module.weight)  # [G, m, d]
    G, m, d = W.shape
    assert (G, m, d) == (layer.groups, layer.out_features // layer.groups, layer.patch_size)
    assert torch.equal(layer.weight_from_matrix(W), module.weight)
    xf = layer.functional_input(x)
    h = layer.hyper(x, y)
    if layer.kind == "linear":
        torch.testing.assert_close(torch.einsum("md,bd->bm", W[0], xf), y)
        return
    B, C = xf.shape[:2]
    for g in range(G):
        xg = xf[:, g * C // G:(g + 1) * C // G]
        if layer.transposed:
            u = tnconv.functional.unfold_transpose(xg, h["kernel_size"], h["stride"], h["padding"],
                                                   h["output_padding"], h["dilation"])
        else:
            u = tnconv.functional.unfold(xg, h["kernel_size"], h["dilation"], h["padding"], h["stride"])
        yg = torch.einsum("md,bdo->bmo", W[g], u)
        torch.testing.assert_close(yg, y[:, g * m:(g + 1) * m].flatten(2))


def test_transpose_output_padding_follows_the_call():
    module = nn.ConvTranspose2d(2, 3, 3, stride=3).to(DT)
    layer = find_layers(module)[0]
    x = torch.randn(1, 2, 4, 4, dtype=DT)
    y = module(x, output_size=(12, 14))
    assert layer.hyper(x, y)["output_padding"] == (0, 2) and layer.hyper()["output_padding"] == (0, 0)


# ----------------------------------------------------------------------------- capture


def _reference_output_grads(net, x, vectors):
    """``J_lᵀ v`` per layer by re-running the model with each layer's output made a leaf."""
    layers = find_layers(net, warn=False)
    grads = {}
    for layer in layers:
        store = {}

        def cut(module, args, out, store=store):
            store["z"] = out.detach().requires_grad_()
            return store["z"].clone()  # a later in-place op must not touch the leaf

        handle = layer.module.register_forward_hook(cut)
        out = net(x)
        handle.remove()
        rows = [torch.autograd.grad(out, store["z"], v, retain_graph=True, allow_unused=True)[0] for v in vectors]
        grads[layer.name] = torch.stack([torch.zeros_like(store["z"]) if r is None else r for r in rows])
    return grads


@pytest.mark.parametrize("strategy", ["loop", "vmap"])
def test_capture_backward_gives_output_gradients_through_inplace_ops(strategy):
    net = zoo().eval()
    x = torch.randn(3, 2, 8, 8, dtype=DT)
    vectors = torch.randn(4, 3, 5, dtype=DT)
    layers = find_layers(net, warn=False)
    with Capture(layers) as cap:
        out = net(x)
        grads = cap.backward(out, vectors, strategy=strategy)
        inputs = dict(cap.inputs)
    reference = _reference_output_grads(net, x, vectors)
    assert grads.keys() == reference.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], reference[name], rtol=1e-12, atol=1e-12)
    assert torch.equal(inputs["0"], x) and inputs["9"].shape == (3, 18)
    assert all(p.grad is None for p in net.parameters()), "no parameter gradient is computed"


def test_capture_callback_chunks_and_unused_layers():
    net = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2)).to(DT)
    branch = nn.Linear(3, 2).to(DT)
    layers = find_layers(nn.ModuleList([net, branch]))
    x = torch.randn(5, 3, dtype=DT)
    seen = []
    with Capture(layers) as cap:
        out = net(x)
        branch(x)  # runs, but the output does not depend on it
        cap.backward(out, torch.randn(3, 5, 2, dtype=DT), callback=lambda layer, g: seen.append((layer.name, g.shape)))
    # each pass hands every layer over once, in the order the backward pass reaches them
    for k in range(3):
        assert sorted(seen[3 * k:3 * k + 3]) == [("0.0", (1, 5, 4)), ("0.1", (1, 5, 2)), ("1", (1, 5, 2))]
    with Capture(layers) as cap:
        out = net(x)
        branch(x)
        grads = cap.backward(out, torch.randn(3, 5, 2, dtype=DT), strategy="vmap")
    assert torch.equal(grads["1"], torch.zeros(3, 5, 2, dtype=DT))


def test_capture_streaming_callback_gives_the_same_gradients():
    """With a callback each pass stops at the first layer; later layers' gradients come from their tensor hooks."""
    net = zoo().eval()
    x, vectors = torch.randn(3, 2, 8, 8, dtype=DT), torch.randn(4, 3, 5, dtype=DT)
    layers = find_layers(net, warn=False)
    got = {layer.name: [] for layer in layers}
    with Capture(layers) as cap:
        out = net(x)
        assert cap._first_layers(out, [l.name for l in layers]) == ["0"]
        cap.backward(out, vectors, callback=lambda layer, g: got[layer.name].append(g))
    reference = _reference_output_grads(net, x, vectors)
    for name, grads in got.items():
        torch.testing.assert_close(torch.cat(grads), reference[name], rtol=1e-12, atol=1e-12)


def test_first_layers_of_parallel_branches():
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.head = nn.Linear(3, 4), nn.Linear(2, 4), nn.Linear(4, 2)

        def forward(self, x):
            return self.head(self.a(x[:, :3]) + self.b(x[:, 3:]))

    net = Two().to(DT)
    layers = find_layers(net)
    with Capture(layers) as cap:
        out = net(torch.randn(5, 5, dtype=DT))
        assert sorted(cap._first_layers(out, [l.name for l in layers])) == ["a", "b"]
        got = {}
        cap.backward(out, torch.randn(2, 5, 2, dtype=DT), callback=lambda l, g: got.setdefault(l.name, []).append(g))
    assert {k: len(v) for k, v in got.items()} == {"a": 2, "b": 2, "head": 2}


def test_capture_records_grad_outputs_of_ordinary_backward():
    net = zoo().eval()
    x, v = torch.randn(3, 2, 8, 8, dtype=DT), torch.randn(2, 3, 5, dtype=DT)
    layers = find_layers(net, warn=False)
    with Capture(layers, keep_inputs=False, keep_grad_outputs=True) as cap:
        out = net(x)
        (out * v[0]).sum().backward(retain_graph=True)
        (out * v[1]).sum().backward()
        recorded = cap.grad_outputs
        assert cap.inputs == {}
    reference = _reference_output_grads(net, x, v)
    for name in reference:
        torch.testing.assert_close(recorded[name], reference[name], rtol=1e-12, atol=1e-12)
    assert net[0].weight.grad is not None


def test_capture_errors():
    net = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
    layers = find_layers(net)
    with pytest.raises(RuntimeError, match="ran twice"):
        with Capture(layers):
            net(net(torch.randn(2, 3)))
    with pytest.raises(RuntimeError, match=r"layers \['1'\] did not run"):
        with Capture(layers) as cap:
            out = net[0](torch.randn(2, 3))
            cap.backward(out, torch.randn(1, 2, 3))
    with pytest.raises(ValueError, match=r"vectors must have shape \[V, \*output.shape\] = \[V, 2, 3\]"):
        with Capture(layers) as cap:
            out = net(torch.randn(2, 3))
            cap.backward(out, torch.randn(2, 3))
    with pytest.raises(ValueError, match="strategy must be one of"):
        with Capture(layers) as cap:
            out = net(torch.randn(2, 3))
            cap.backward(out, torch.randn(1, 2, 3), strategy="jacrev")
    net.requires_grad_(False)
    with pytest.raises(RuntimeError, match="do not require grad"):
        with Capture(layers) as cap:
            out = net(torch.randn(2, 3))
            cap.backward(out, torch.randn(1, 2, 3))
    with pytest.raises(TypeError, match="layers must be"):
        Capture([net])


class _Holder:
    """A saved tensor wrapped so that a weak reference can tell whether the graph still holds it."""

    def __init__(self, t):
        self.t = t.detach()  # a saved output held with its history would be a cycle through C++ that gc cannot see


def test_capture_leaks_nothing_after_exit():
    net = zoo()
    layers = find_layers(net, warn=False)
    holders = []

    def pack(t):
        holders.append(_Holder(t))
        return holders[-1]

    cap = Capture(layers, keep_grad_outputs=True)
    with cap:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda h: h.t):
            out = net(torch.randn(2, 2, 8, 8, dtype=DT))
        cap.backward(out, torch.randn(2, 2, 5, dtype=DT), retain_graph=True)
        refs = [weakref.ref(h) for h in holders]
        kept = [weakref.ref(x) for x in cap.inputs.values()]
        holders.clear()
        del out
    gc.collect()
    assert refs and all(r() is None for r in refs), "the graph outlived the capture"
    assert all(r() is None for r in kept), "inputs outlived the capture"
    assert all(not m._forward_hooks for m in net.modules())
    assert cap.inputs == {} and cap.grad_outputs == {}


# ----------------------------------------------------------------------------- loss


LOSSES = [(cls, red) for cls in (nn.MSELoss, nn.CrossEntropyLoss, nn.BCEWithLogitsLoss) for red in ("mean", "sum")]


def _targets(cls, B, C, gen):
    if cls is nn.CrossEntropyLoss:
        return torch.randint(C, (B,), generator=gen)
    if cls is nn.BCEWithLogitsLoss:
        return torch.randint(2, (B, C), generator=gen).to(DT)
    return torch.randn(B, C, dtype=DT, generator=gen)


@pytest.mark.parametrize("cls, reduction", LOSSES)
def test_hessian_sqrt_is_the_loss_hessian_with_the_reduction(cls, reduction):
    gen = torch.Generator().manual_seed(1)
    B, C = 4, 3
    loss_func = cls(reduction=reduction)
    f = torch.randn(B, C, dtype=DT, generator=gen)
    y = _targets(cls, B, C, gen)
    H = torch.autograd.functional.hessian(lambda z: loss_func(z, y), f)  # [B, C, B, C]
    S = L.hessian_sqrt(f, loss_func)
    assert S.shape == (C, B, C)
    for b in range(B):
        torch.testing.assert_close(torch.einsum("vi,vj->ij", S[:, b], S[:, b]), H[b, :, b], rtol=1e-13, atol=1e-13)
    r = L.reduction_scale(loss_func, f)
    assert r == {"sum": 1.0, "mean": 1 / B if cls is nn.CrossEntropyLoss else 1 / (B * C)}[reduction]


@pytest.mark.parametrize("cls, reduction", LOSSES)
def test_empirical_sqrt_is_the_true_gradient_over_root_r(cls, reduction):
    gen = torch.Generator().manual_seed(2)
    loss_func = cls(reduction=reduction)
    f = torch.randn(5, 3, dtype=DT, generator=gen, requires_grad=True)
    y = _targets(cls, 5, 3, gen)
    g, = torch.autograd.grad(loss_func(f, y), f)
    S = L.empirical_sqrt(f, loss_func, y)
    torch.testing.assert_close(S[0], g / math.sqrt(L.reduction_scale(loss_func, f)), rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("cls, reduction", LOSSES)
def test_sampled_sqrt_is_unbiased_and_uses_the_sampled_labels_gradient(cls, reduction):
    gen = torch.Generator().manual_seed(3)
    loss_func = cls(reduction=reduction)
    f = torch.randn(2, 3, dtype=DT, generator=gen)
    S = L.sampled_sqrt(f, loss_func, 2000, torch.Generator().manual_seed(0))
    exact = L.hessian_sqrt(f, loss_func)
    F, H = torch.einsum("vbi,vbj->bij", S, S), torch.einsum("vbi,vbj->bij", exact, exact)
    assert (F - H).abs().max() < 0.08 * H.abs().max()
    # one sample: the gradient of ℓ at the label drawn from the same generator state
    one = L.sampled_sqrt(f, loss_func, 1, torch.Generator().manual_seed(7))
    labels = L.draw_labels(f, loss_func, torch.Generator().manual_seed(7))
    torch.testing.assert_close(one, L.empirical_sqrt(f, loss_func, labels))


def test_draw_labels_consume_the_generator_like_curvlinops():
    curvlinops = pytest.importorskip("curvlinops")
    for loss_func in (nn.MSELoss(), nn.CrossEntropyLoss(), nn.BCEWithLogitsLoss()):
        f = torch.randn(6, 4, dtype=DT)
        ours = [L.draw_labels(f, loss_func, g) for g in [torch.Generator().manual_seed(5)] for _ in range(3)]
        op = object.__new__(curvlinops.KFACLinearOperator)
        op._loss_func, op._generator = loss_func, torch.Generator().manual_seed(5)
        theirs = [op.draw_label(f) for _ in range(3)]
        for a, b in zip(ours, theirs):
            assert torch.equal(a, b)


def test_bad_losses_and_fisher_types():
    with pytest.raises(ValueError, match="loss_func must have reduction 'mean' or 'sum'.*'none'"):
        L.check_loss(nn.MSELoss(reduction="none"))
    with pytest.raises(ValueError, match="loss_func must be a torch.nn.MSELoss"):
        L.check_loss(nn.functional.mse_loss)
    with pytest.raises(ValueError, match="loss_func must be a torch.nn.MSELoss"):
        L.check_loss(nn.L1Loss())
    broken = nn.MSELoss()
    del broken.reduction
    with pytest.raises(ValueError, match="loss_func must have reduction"):
        L.check_loss(broken)
    with pytest.raises(ValueError, match="loss_func: CrossEntropyLoss with weight"):
        L.check_loss(nn.CrossEntropyLoss(label_smoothing=0.1))
    with pytest.raises(ValueError, match="loss_func: BCEWithLogitsLoss with weight or pos_weight"):
        L.check_loss(nn.BCEWithLogitsLoss(pos_weight=torch.ones(2)))
    with pytest.raises(ValueError, match="fisher_type must be one of"):
        L.check_fisher_type("exact")
    with pytest.raises(ValueError, match="mc_samples must be 1 for fisher_type='type-2'"):
        L.check_fisher_type("type-2", 3)
    with pytest.raises(ValueError, match="mc_samples must be a positive int"):
        L.sampled_sqrt(torch.zeros(2, 3), nn.MSELoss(), 0)
    with pytest.raises(ValueError, match=r"output \(the model's output\) must be a floating-point \[B, C\]"):
        L.hessian_sqrt(torch.zeros(2, 3, 4), nn.MSELoss())
    with pytest.raises(ValueError, match=r"targets must have shape \(2,\)"):
        L.empirical_sqrt(torch.zeros(2, 3), nn.CrossEntropyLoss(), torch.zeros(2, 3))
