"""tnconv.curvature.KFAC on its own: exactness where KFAC is exact, per-group factors, accumulation, state, errors."""

import pytest
import torch
from torch import nn

import tnconv
from tnconv.curvature import KFAC, Capture, find_layers
from tnconv.curvature.loss import hessian_sqrt
from tnconv.testing.models import curvature_cnn

DT = torch.float64


def close(a, b, tol=1e-10):
    err = ((a - b).abs().max() / b.abs().max().clamp_min(1e-300)).item()
    assert err < tol, f"relative error {err:.2e}"


def exact_ggn(net, loss_func, x, y):
    """``Jᵀ H J`` over all parameters by torch.func, ``[D, D]``."""
    params = dict(net.named_parameters())

    def f(p):
        return torch.func.functional_call(net, p, (x,))

    out = f(params)
    jac = torch.func.jacrev(f)(params)
    J = torch.cat([j.reshape(*out.shape, -1) for j in jac.values()], dim=-1)  # [B, C, D]
    S = hessian_sqrt(out, loss_func)  # [V, B, C]
    JS = torch.einsum("vbc,bcd->vbd", S, J)
    return torch.einsum("vbd,vbe->de", JS, JS)


@pytest.mark.parametrize("separate", [True, False])
@pytest.mark.parametrize("loss_func", [nn.MSELoss(), nn.CrossEntropyLoss(reduction="sum")])
def test_one_sample_kfac_is_the_exact_ggn_block_of_an_mlp(loss_func, separate):
    """For B = 1 and linear layers, G ⊗ A is exactly the layer's GGN block (jointly: weight, bias and their cross terms)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).to(DT)
    x = torch.randn(1, 3, dtype=DT)
    y = torch.randn(1, 3, dtype=DT) if isinstance(loss_func, nn.MSELoss) else torch.tensor([2])
    kfac = KFAC(net, loss_func, fisher_type="type-2", separate_weight_and_bias=separate)
    kfac.update(x, y)
    dense, ggn = kfac.to_dense(), exact_ggn(net, loss_func, x, y)
    sizes = [p.numel() for p in net.parameters()]
    layers = [(0, sizes[0] + sizes[1]), (sizes[0] + sizes[1], sum(sizes))]
    for lo, hi in layers:
        if separate:
            mid = lo + sizes[0 if lo == 0 else 2]
            close(dense[lo:mid, lo:mid], ggn[lo:mid, lo:mid])
            close(dense[mid:hi, mid:hi], ggn[mid:hi, mid:hi])
            assert dense[lo:mid, mid:hi].abs().max() == 0
        else:
            close(dense[lo:hi, lo:hi], ggn[lo:hi, lo:hi])
    assert dense[:layers[0][1], layers[0][1]:].abs().max() == 0


def _per_group_reference(layer, x, grads, approx):
    """Factors of group g from the functional ops on group g's slice of the input and output gradients (groups=1)."""
    G = layer.groups
    h = layer.hyper(x, torch.empty((x.shape[0], layer.out_features) + grads.shape[3:], device="meta"))
    C, m = x.shape[1] // G, layer.out_features // G
    O = grads[0, 0, 0].numel()
    As, Gs = [], []
    for g in range(G):
        xg = x[:, g * C:(g + 1) * C]
        kw = dict(kernel_size=h["kernel_size"], stride=h["stride"], padding=h["padding"], dilation=h["dilation"])
        if layer.transposed:
            fn = tnconv.functional.kfc_transpose if approx == "expand" else tnconv.functional.kfac_reduce_transpose
            A = fn(xg, output_padding=h["output_padding"], **kw)[0]
        else:
            fn = tnconv.functional.kfc if approx == "expand" else tnconv.functional.kfac_reduce
            A = fn(xg, **kw)[0]
        As.append(A / O if approx == "expand" else A)
        gg = grads[:, :, g * m:(g + 1) * m].flatten(0, 1).flatten(2)  # [V·B, m, O]
        Gs.append(torch.einsum("nio,njo->ij", gg, gg) if approx == "expand" else
                  torch.einsum("ni,nj->ij", gg.sum(-1), gg.sum(-1)))
    return torch.stack(As), torch.stack(Gs)


@pytest.mark.parametrize("approx", ["expand", "reduce"])
@pytest.mark.parametrize("N, transpose", [(1, False), (2, True), (3, False), (3, True)])
def test_per_group_factors_are_each_groups_own(N, transpose, approx):
    torch.manual_seed(0)
    conv = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)[N - 1] if transpose else \
        (nn.Conv1d, nn.Conv2d, nn.Conv3d)[N - 1]
    kwargs = dict(stride=2, padding=1, output_padding=1) if transpose else dict(stride=1, padding=2, dilation=2)
    net = nn.Sequential(conv(6, 9, 3, groups=3, **kwargs), nn.Sigmoid(), nn.Flatten()).to(DT)
    x = torch.randn(3, 6, *[4] * N, dtype=DT)
    D = net(x).shape[1]
    net.append(nn.Linear(D, 3).to(DT))
    kfac = KFAC(net, nn.CrossEntropyLoss(), params=[net[0].weight, net[0].bias], approx=approx, fisher_type="type-2",
                grouped="per-group")
    kfac.update(x, torch.tensor([0, 1, 2]))
    layer = kfac.layers[0]
    with Capture(find_layers(net)) as cap:
        out = net(x)
        grads = cap.backward(out, hessian_sqrt(out, nn.CrossEntropyLoss()))["0"]
    A_ref, G_ref = _per_group_reference(layer, x, grads, approx)
    A, G = kfac.factors["0.weight"]
    close(A, A_ref)
    close(G, G_ref)
    # the dense block: per group kron(G_g, A_g) at that group's weight entries, zero across groups
    w = net[0].weight
    index = layer.weight_matrix(torch.arange(w.numel()).view(w.shape))  # [G, m, d] -> flat weight positions
    ref = torch.zeros(w.numel(), w.numel(), dtype=DT)
    for g in range(3):
        pos = index[g].reshape(-1)
        ref[pos.unsqueeze(1), pos.unsqueeze(0)] = torch.kron(G_ref[g], A_ref[g])
    close(kfac.to_dense()[:w.numel(), :w.numel()], ref)


def test_per_group_and_shared_agree_without_groups():
    torch.manual_seed(0)
    net = curvature_cnn().to(DT)
    x, y = torch.randn(4, 2, 8, 8, dtype=DT), torch.randint(4, (4,))
    dense = []
    for grouped in ("shared", "per-group"):
        kfac = KFAC(net, nn.CrossEntropyLoss(), fisher_type="type-2", grouped=grouped)
        kfac.update(x, y)
        dense.append(kfac.to_dense())
    close(dense[0], dense[1], 1e-14)


@pytest.mark.parametrize("fisher_type", ["type-2", "empirical", "forward-only"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("approx", ["expand", "reduce"])
def test_batches_weigh_by_their_size(approx, reduction, fisher_type):
    """Two updates on 3 and 5 samples give the factors of one update on the 8 (the loss over all data seen)."""
    torch.manual_seed(0)
    net = curvature_cnn(groups=2).to(DT)
    loss = nn.CrossEntropyLoss(reduction=reduction)
    x, y = torch.randn(8, 2, 8, 8, dtype=DT), torch.randint(4, (8,))
    two, one = (KFAC(net, loss, approx=approx, fisher_type=fisher_type) for _ in range(2))
    two.update(x[:3], y[:3])
    two.update(x[3:], y[3:])
    one.update(x, y)
    assert two.num_data == one.num_data == 8
    for name, (A, G) in one.factors.items():
        close(two.factors[name][0], A)
        close(two.factors[name][1], G)
    two.reset()
    with pytest.raises(RuntimeError, match="no factors yet"):
        two.factors


def test_ema_mixes_batch_factors():
    torch.manual_seed(0)
    net = curvature_cnn().to(DT)
    loss = nn.MSELoss(reduction="sum")
    batches = [(torch.randn(B, 2, 8, 8, dtype=DT), torch.randn(B, 4, dtype=DT)) for B in (3, 5)]
    ema = KFAC(net, loss, fisher_type="empirical", ema=0.9)
    single = []
    for x, y in batches:
        ema.update(x, y)
        k = KFAC(net, loss, fisher_type="empirical")
        k.update(x, y)
        single.append(k.factors)
    for name, (A, G) in ema.factors.items():
        close(A, 0.9 * single[0][name][0] + 0.1 * single[1][name][0])
        close(G, 0.9 * single[0][name][1] + 0.1 * single[1][name][1])


def test_vector_formats_and_strategies_agree():
    torch.manual_seed(0)
    net = curvature_cnn(transpose=True, groups=2).to(DT)
    x, y = torch.randn(3, 2, 8, 8, dtype=DT), torch.randint(4, (3,))
    loop = KFAC(net, nn.CrossEntropyLoss(), fisher_type="type-2", strategy="loop", separate_weight_and_bias=False)
    vmap = KFAC(net, nn.CrossEntropyLoss(), fisher_type="type-2", strategy="vmap", separate_weight_and_bias=False)
    loop.update(x, y)
    vmap.update(x, y)
    for name, (A, G) in loop.factors.items():
        close(vmap.factors[name][1], G, 1e-13)
    V = torch.randn(sum(p.numel() for p in loop.params), 2, dtype=DT)
    flat = loop @ V
    parts = [v.reshape(*p.shape, 2) for v, p in zip(V.split([p.numel() for p in loop.params]), loop.params)]
    listed = loop @ parts
    assert isinstance(listed, list) and [t.shape for t in listed] == [(*p.shape, 2) for p in loop.params]
    close(torch.cat([t.reshape(-1, 2) for t in listed]), flat, 1e-14)
    close(loop @ V[:, 0], flat[:, 0], 1e-14)
    inverse = loop.inverse(0.1)
    close(inverse @ (flat + 0.1 * V), V, 1e-9)


def test_state_dict_round_trip_and_mismatch():
    torch.manual_seed(0)
    net = curvature_cnn().to(DT)
    kfac = KFAC(net, nn.CrossEntropyLoss(), fisher_type="mc", mc_samples=2)
    kfac.update(torch.randn(3, 2, 8, 8, dtype=DT), torch.randint(4, (3,)))
    state = kfac.state_dict()
    other = KFAC(net, nn.CrossEntropyLoss(), fisher_type="mc", mc_samples=2)
    other.load_state_dict(state)
    assert torch.equal(other.to_dense(), kfac.to_dense())
    x = torch.randn(2, 2, 8, 8, dtype=DT)
    kfac.update(x)
    other.update(x)  # the generator state travels too: the same labels are drawn
    assert torch.equal(other.to_dense(), kfac.to_dense())
    with pytest.raises(ValueError, match=r"state comes from a KFAC with other settings: approx='expand' \(here 'reduce'\)"):
        KFAC(net, nn.CrossEntropyLoss(), approx="reduce", fisher_type="mc", mc_samples=2).load_state_dict(state)


def test_forward_only_and_bias_only_layers():
    torch.manual_seed(0)
    net = curvature_cnn().to(DT)
    kfac = KFAC(net, nn.MSELoss(), params=[net[0].bias, net[8].weight], fisher_type="forward-only")
    kfac.update(torch.randn(3, 2, 8, 8, dtype=DT))
    A, G = kfac.factors["0.bias"]
    assert torch.equal(A, torch.ones(1, 1, 1, dtype=DT)) and torch.equal(G, torch.eye(6, dtype=DT).unsqueeze(0))
    assert all(p.grad is None for p in net.parameters())


def test_no_grad_context_and_frozen_first_layer():
    net = curvature_cnn().to(DT)
    net[0].requires_grad_(False)
    kfac = KFAC(net, nn.CrossEntropyLoss(), fisher_type="type-2")
    with torch.no_grad():
        kfac.update(torch.randn(2, 2, 8, 8, dtype=DT))
    assert "0.weight" not in kfac.factors and "2.weight" in kfac.factors


def test_bad_arguments_name_themselves():
    net = curvature_cnn()
    loss = nn.CrossEntropyLoss()
    cases = [
        (dict(approx="full"), "approx must be one of"),
        (dict(convention="asdl"), "convention must be one of"),
        (dict(fisher_type="exact"), "fisher_type must be one of"),
        (dict(fisher_type="type-2", mc_samples=2), "mc_samples must be 1 for fisher_type='type-2'"),
        (dict(grouped="mean"), "grouped must be one of"),
        (dict(convention="backpack", approx="reduce"), "approx must be 'expand' with convention='backpack'"),
        (dict(ema=1.0), r"ema must be None or a float in \[0, 1\)"),
        (dict(strategy="jacrev"), "strategy must be one of"),
        (dict(params=[torch.zeros(2)]), "params holds tensors that are not parameters of model"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            KFAC(net, loss, **kwargs)
    with pytest.raises(ValueError, match="loss_func must have reduction"):
        KFAC(net, nn.CrossEntropyLoss(reduction="none"))
    with pytest.raises(ValueError, match="loss_func must be a torch.nn.MSELoss"):
        KFAC(net, nn.functional.cross_entropy)
    with pytest.raises(ValueError, match="model has no supported layer"):
        KFAC(nn.Sequential(nn.ReLU()), loss)
    normed = nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2))
    with pytest.raises(ValueError, match=r"params holds 2 parameter.*1.weight \(LayerNorm\), 1.bias \(LayerNorm\)"):
        KFAC(normed, loss, params=list(normed.parameters()))
    kfac = KFAC(net, loss, fisher_type="type-2")
    kfac.update(torch.randn(2, 2, 8, 8), torch.tensor([0, 1]))
    for damping, message in [(0, "damping must be a positive float"), (-1e-3, "damping must be a positive float"),
                             (float("nan"), "damping must be a positive float"),
                             ((1e-3, 0), r"damping\[1\] must be a positive float"),
                             ((1e-3, 1e-3, 1e-3), "damping must be a positive float or a pair")]:
        with pytest.raises(ValueError, match=message):
            kfac.inverse(damping)
    with pytest.raises(ValueError, match="damping must be a single float with pi_correction=True"):
        kfac.inverse((1e-3, 1e-3), pi_correction=True)
    with pytest.raises(ValueError, match=r"vector must be a list of 9 tensors"):
        kfac @ [torch.zeros(1)]
    with pytest.raises(ValueError, match=r"vector must be .* \[D, K\] with D = 572"):
        kfac @ torch.zeros(5)
    with pytest.raises(ValueError, match=r"vector\[1\] must have the shape of params\[1\]"):
        kfac @ [torch.zeros_like(p) if i != 1 else torch.zeros(2) for i, p in enumerate(kfac.params)]
    with pytest.raises(ValueError, match=r"model\(inputs\) must return a \[B, C\] tensor"):
        KFAC(nn.Conv1d(1, 1, 1), nn.MSELoss()).update(torch.randn(2, 1, 3))
    with pytest.raises(ValueError, match="targets must have shape"):
        KFAC(net, loss, fisher_type="empirical").update(torch.randn(2, 2, 8, 8), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="targets must be a tensor"):
        KFAC(net, loss, fisher_type="empirical").update(torch.randn(2, 2, 8, 8))


@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("form", ["expand", "reduce", "sum"])
def test_joint_input_factor_appends_a_constant_input(form, transpose):
    """``[[Ω, m], [mᵀ, c]]`` is the input factor of patches extended by a 1, per group, in each form."""
    from tnconv.curvature.factors import input_factor

    torch.manual_seed(0)
    module = (nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2) if transpose else
              nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2)).to(DT)
    layer = find_layers(module)[0]
    x = torch.randn(3, 4, 5, 5, dtype=DT)
    y = module(x)
    A = input_factor(layer, x, y.shape, form, joint=True)
    O = y[0, 0].numel()
    h = layer.hyper(x, y)
    for g in range(2):
        xg = x[:, 2 * g:2 * g + 2]
        if transpose:
            u = tnconv.functional.unfold_transpose(xg, 3, 2, 1, h["output_padding"])
        else:
            u = torch.nn.functional.unfold(xg, 3, padding=1, stride=2)
        u = torch.cat([u, u.new_ones(3, 1, u.shape[-1])], dim=1)  # [B, d + 1, O]
        if form == "reduce":
            m = u.mean(-1)
            ref = m.T @ m / 3
        else:
            ref = torch.einsum("bio,bjo->ij", u, u) / (3 * (O if form == "expand" else 1))
        close(A[g], ref)


@pytest.mark.parametrize("form", ["expand", "reduce", "sum"])
@pytest.mark.parametrize("spatial, conv", [
    ((1, 1), dict(kernel_size=3, padding=1)),  # ResNet's last layers at 32x32: only the centre tap is live
    ((2, 2), dict(kernel_size=3, stride=2, padding=1)),  # the first tap only ever sees padding
    ((1, 3), dict(kernel_size=(5, 3), padding=(2, 1), dilation=(1, 1))),
    ((2, 5), dict(kernel_size=3, padding=3, dilation=2, stride=(3, 1))),  # live taps 0 and 2 only: not contiguous
    ((1, 1), dict(kernel_size=3, padding="same")),
    ((3, 3), dict(kernel_size=3, padding=1)),  # nothing to crop
])
def test_dead_kernel_taps_are_cropped_exactly(spatial, conv, form):
    """Input factors computed on the live taps only and scattered equal the full computation, joint bias included."""
    from tnconv.curvature.factors import _live_kernel, input_factor

    torch.manual_seed(0)
    module = nn.Conv2d(4, 6, groups=2, **conv).to(DT)
    layer = find_layers(module)[0]
    x = torch.randn(3, 4, *spatial, dtype=DT)
    y = module(x)
    h = layer.hyper()
    fn = tnconv.functional.kfac_reduce if form == "reduce" else tnconv.functional.kfc
    full = fn(x, **h) / (y[0, 0].numel() if form == "expand" else 1)
    close(input_factor(layer, x, y.shape, form), full, 1e-13)
    joint = input_factor(layer, x, y.shape, form, joint=True)
    close(joint[:, :-1, :-1], full, 1e-13)
    u = torch.nn.functional.unfold(x, module.kernel_size, module.dilation, module.padding if conv.get("padding") !=
                                   "same" else 1, module.stride)
    patch = u.view(3, 2, -1, u.shape[-1]).sum((0, 3)) / (3 * (1 if form == "sum" else u.shape[-1]))
    close(joint[:, :-1, -1], patch, 1e-13)
    crop = _live_kernel(tuple(spatial), tuple(module.kernel_size), tuple(module.stride), module.padding,
                        tuple(module.dilation))
    assert (crop is None) == (spatial in ((3, 3), (2, 5)))


@pytest.mark.parametrize("ema", [None, 0.8])
def test_live_taps_changing_between_batches(ema):
    """Inputs of 1x1 (centre tap live), then 3x3 (all live), then 1x1 again: the running factor goes dense, exactly."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2)).to(DT)
    batches = [torch.randn(B, 2, s, s, dtype=DT) for B, s in ((3, 1), (2, 3), (4, 1))]
    kfac = KFAC(net, nn.MSELoss(), fisher_type="type-2", ema=ema)
    singles = []
    for x in batches:
        kfac.update(x)
        single = KFAC(net, nn.MSELoss(), fisher_type="type-2")
        single.update(x)
        singles.append(single.factors["0.weight"][0])
    if ema is None:
        ref = sum(B * A for B, A in zip((3, 2, 4), singles)) / 9
    else:
        ref = (ema * (ema * singles[0] + (1 - ema) * singles[1]) + (1 - ema) * singles[2])
    close(kfac.factors["0.weight"][0], ref, 1e-13)
