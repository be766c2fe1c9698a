"""tnconv layers as PyTorch 2 citizens: torch.compile, autocast, forward-mode AD, vmap of CRS, pickling,
and PyTorch's kernel pair chosen by the compiler."""

import copy
import pickle
import shutil

import pytest
import torch
from torch.func import functional_call, hessian, jacfwd, jacrev, jvp, vmap

import tnconv
import tnconv.ops.convolution as opsconv
from tnconv import functional as F
from tnconv import nn as tnn
from tnconv.testing import models

DT = torch.float64


def _count(monkeypatch, module, name, calls=None):
    """Record the calls of ``module.name`` in ``calls`` (still calling it); returns ``calls``."""
    calls = [] if calls is None else calls
    original = getattr(module, name)

    def counted(*args, **kwargs):
        calls.append(name)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


# -- torch.compile ---------------------------------------------------------------------------------------------
def _train_step(model, x, call=None):
    model.zero_grad(set_to_none=True)
    y = (model if call is None else call)(x)
    y.square().sum().backward()
    return y.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def _close(a, b, atol, normwise):
    if normwise:  # a relative error of the whole tensor: elements cancelling in a sum (BatchNorm's) lose digits
        assert ((a - b).norm() / b.norm()).item() < atol
    else:
        torch.testing.assert_close(a, b, atol=atol, rtol=atol)


def _check_compiled(build, shape, backend, atol, normwise=False):
    torch.manual_seed(0)
    plain = build().train().to(DT)  # float64: what differs is tnconv, not float32 rounding in another order
    for module in plain.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0  # compiled and eager dropout draw differently
    x = torch.randn(*shape, dtype=DT)
    converted = tnconv.nn.convert(copy.deepcopy(plain))
    torch._dynamo.reset()
    explained_plain = torch._dynamo.explain(plain)(x)
    torch._dynamo.reset()
    explained = torch._dynamo.explain(converted)(x)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == explained_plain.graph_count == 1
    torch._dynamo.reset()
    compiled = torch.compile(converted, fullgraph=True, backend=backend)
    y_ref, grads_ref = _train_step(copy.deepcopy(plain), x)
    for _ in range(2):  # the second call runs the cached graph
        y, grads = _train_step(converted, x, compiled)
        _close(y, y_ref, atol, normwise)
        if normwise:  # the gradient as one vector: a bias before BatchNorm has a zero gradient, all rounding
            _close(torch.cat([grads[n].flatten() for n in grads_ref]), torch.cat([g.flatten() for g in grads_ref.values()]),
                   atol, normwise)
        else:
            for name, g in grads_ref.items():
                _close(grads[name], g, atol, normwise)
    torch._dynamo.reset()


def test_compile_fullgraph_cnn3d_aot_eager():
    """The CI representative: a converted 3-d CNN in one graph, forward and backward through the custom operators."""
    _check_compiled(models.cnn3d, (2, 1, 8, 8, 8), "aot_eager", 1e-10)


BACKENDS = ["eager", "aot_eager", pytest.param("inductor", marks=pytest.mark.skipif(
    not (shutil.which("gcc") or shutil.which("cc")), reason="inductor needs a C compiler"))]


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("build, shape", [(models.resnet18, (2, 3, 32, 32)), (models.mobilenet_v2, (2, 3, 32, 32)),
                                          (models.cnn3d, (2, 1, 16, 16, 16))], ids=["resnet18", "mobilenet_v2", "cnn3d"])
def test_compile_fullgraph_models(build, shape, backend):
    # inductor reorders the plain layers' sums too (BatchNorm's): compared as whole tensors
    _check_compiled(build, shape, backend, 1e-8, normwise=backend == "inductor")


@pytest.mark.slow
def test_compile_has_no_recompiles_beyond_the_plain_models():
    from torch._dynamo.utils import counters

    frames = {}
    for convert in (False, True):
        torch.manual_seed(0)
        model = models.resnet18(num_classes=10)
        model = tnconv.nn.convert(model) if convert else model
        torch._dynamo.reset()
        counters.clear()
        compiled = torch.compile(model, backend="eager")
        for batch in (2, 2, 3):
            compiled(torch.randn(batch, 3, 32, 32))
        frames[convert] = counters["stats"]["unique_graphs"]
    assert frames[True] == frames[False]
    torch._dynamo.reset()


def test_compile_layers_beyond_pytorch_kernels_and_crs():
    """N = 4 runs the plain contraction inside the operator; a CRS layer runs eagerly between graphs."""
    torch.manual_seed(0)
    layer = tnn.ConvNd(2, 3, kernel_size=(2, 1, 2, 2), stride=(1, 2, 1, 1), padding=1, dtype=DT)
    x = torch.randn(2, 2, 3, 4, 3, 3, dtype=DT, requires_grad=True)
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    y, y_ref = compiled(x), layer(x)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(torch.autograd.grad(y.sum(), x)[0], torch.autograd.grad(y_ref.sum(), x)[0])
    torch._dynamo.reset()
    crs = torch.nn.Sequential(tnn.Conv2d(2, 3, 3, crs_keep=(1.0, 0.5, 0.5), generator=torch.Generator().manual_seed(0)),
                              torch.nn.ReLU())
    x = torch.randn(2, 2, 8, 8)
    with pytest.raises(Exception, match="column-row sampling draws from a torch.Generator"):
        torch.compile(crs, fullgraph=True, backend="eager")(x)
    torch._dynamo.reset()
    torch.testing.assert_close(torch.compile(crs, backend="eager")(x), crs(x))
    torch._dynamo.reset()


def test_compile_with_dynamic_shapes_is_one_graph_for_every_size():
    torch.manual_seed(0)
    model = tnconv.nn.convert(torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3, padding=1, stride=2), torch.nn.ReLU(),
                                                  torch.nn.ConvTranspose2d(3, 2, 2, stride=2)))
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(model, dynamic=True, fullgraph=True, backend="aot_eager")
    for size in (8, 9, 12):
        x = torch.randn(3, 2, size, size, requires_grad=True)
        y = compiled(x)
        torch.testing.assert_close(y, model(x))
        torch.testing.assert_close(torch.autograd.grad(y.sum(), x)[0], torch.autograd.grad(model(x).sum(), x)[0])
    assert counters["stats"]["unique_graphs"] == 1
    torch._dynamo.reset()


def test_export_keeps_the_custom_operators():
    model = tnconv.nn.convert(torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3, padding=1), torch.nn.ReLU(),
                                                  torch.nn.ConvTranspose2d(3, 2, 2, stride=2))).eval()
    x = torch.randn(2, 2, 6, 6)
    exported = torch.export.export(model, (x,))
    targets = {str(node.target) for node in exported.graph.nodes}
    assert {"tnconv.conv.default", "tnconv.conv_transpose.default"} <= targets
    torch.testing.assert_close(exported.module()(x), model(x))
    torch._dynamo.reset()


def test_compiled_layer_refuses_bad_input_with_the_message_of_eager_mode():
    layer = tnn.Conv2d(3, 4, 3)
    compiled = torch.compile(layer, fullgraph=True, backend="eager")
    with pytest.raises(Exception, match="x has 2 channels"):
        compiled(torch.randn(1, 2, 8, 8))
    with pytest.raises(Exception, match="dtype"):
        compiled(torch.randn(1, 3, 8, 8, dtype=DT))
    torch._dynamo.reset()


# -- autocast --------------------------------------------------------------------------------------------------
def _autocast_step(model, x, call=None):
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = (model if call is None else call)(x)
    y.float().square().mean().backward()
    return y, {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize("compiled", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_autocast_bfloat16_matches_the_plain_model(compiled):
    torch.manual_seed(0)
    plain = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv2d(8, 8, 3, stride=2, groups=2), torch.nn.ReLU(),
                                torch.nn.ConvTranspose2d(8, 4, 2, stride=2), torch.nn.Flatten(), torch.nn.Linear(4 * 14 * 14, 3))
    converted = tnconv.nn.convert(copy.deepcopy(plain))
    x = torch.randn(4, 3, 16, 16)
    y_ref, g_ref = _autocast_step(plain, x)
    call = torch.compile(converted, fullgraph=True, backend="aot_eager") if compiled else converted
    for _ in range(2):  # the first call decides per shape, the second runs what was decided
        y, g = _autocast_step(converted, x, call)
        assert y.dtype == y_ref.dtype == torch.bfloat16
        torch.testing.assert_close(y.float(), y_ref.float(), atol=3e-2, rtol=3e-2)
        for name, grad in g_ref.items():
            assert g[name].dtype == grad.dtype == torch.float32  # the parameters' dtype, as in PyTorch
            torch.testing.assert_close(g[name], grad, atol=3e-2, rtol=3e-2)
    torch._dynamo.reset()


def test_autocast_backward_runs_in_the_forward_dtype(monkeypatch):
    monkeypatch.setattr(opsconv, "NATIVE_PAIR", False)  # tnconv's VJPs (the kernel pair is PyTorch's autocast)
    calls = []
    original = F.weight_vjp

    def spy(x, weight_size, grad_output, *args):
        calls.append((x.dtype, grad_output.dtype))
        return original(x, weight_size, grad_output, *args)

    monkeypatch.setattr(F, "weight_vjp", spy)
    layer = tnn.Conv2d(3, 4, 3)
    x = torch.randn(2, 3, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(layer.weight.new_ones(1) * x)
    y.float().sum().backward()
    assert calls == [(torch.bfloat16, torch.bfloat16)]
    assert layer.weight.grad.dtype == torch.float32


# -- forward-mode AD -------------------------------------------------------------------------------------------
LAYERS = [
    (tnn.Conv1d, torch.nn.Conv1d, dict(kernel_size=3, stride=2, padding=1), (2, 4, 9)),
    (tnn.Conv2d, torch.nn.Conv2d, dict(kernel_size=(3, 2), dilation=(1, 2), groups=2), (2, 4, 7, 8)),
    (tnn.Conv2d, torch.nn.Conv2d, dict(kernel_size=3, padding="same", bias=False), (4, 6, 5)),  # unbatched
    (tnn.Conv3d, torch.nn.Conv3d, dict(kernel_size=2, stride=(1, 2, 1)), (1, 4, 4, 5, 3)),
    (tnn.ConvTranspose2d, torch.nn.ConvTranspose2d, dict(kernel_size=3, stride=2, output_padding=1, groups=2), (2, 4, 4, 3)),
]


def _pair(ours, theirs, options):
    ref = theirs(4, 4, dtype=DT, **options)
    layer = ours(4, 4, dtype=DT, **options)
    layer.load_state_dict(ref.state_dict())
    return layer, ref


@pytest.mark.parametrize("ours, theirs, options, shape", LAYERS)
def test_jvp_and_jacfwd_match_the_plain_layer(ours, theirs, options, shape, monkeypatch):
    import tnconv.ops.library as library

    layer, ref = _pair(ours, theirs, options)
    params = {n: p.detach() for n, p in layer.named_parameters()}
    x = torch.randn(*shape, dtype=DT)
    tangents = {n: torch.randn_like(p) for n, p in params.items()}
    tx = torch.randn_like(x)
    jvps = []
    for module, name in ((F, "input_jvp"), (F, "weight_jvp"), (library, "transpose_jvp")):
        _count(monkeypatch, module, name, jvps)

    def f(module):
        return lambda p, x: functional_call(module, p, (x,))

    out, t_out = jvp(f(layer), (params, x), (tangents, tx))
    out_ref, t_ref = jvp(f(ref), (params, x), (tangents, tx))
    torch.testing.assert_close(out, out_ref)
    torch.testing.assert_close(t_out, t_ref)
    assert jvps  # the derived JVP diagrams ran
    torch.testing.assert_close(jacfwd(f(layer), argnums=1)(params, x), jacfwd(f(ref), argnums=1)(params, x))
    for name in params:  # one tangent at a time: the weight's, the bias's alone
        jac = jacfwd(lambda p: f(layer)(dict(params, **{name: p}), x))(params[name])
        torch.testing.assert_close(jac, jacfwd(lambda p: f(ref)(dict(params, **{name: p}), x))(params[name]))


def test_forward_ad_dual_tensors_and_hessian_by_forward_over_reverse():
    import torch.autograd.forward_ad as fwAD

    layer, ref = _pair(tnn.Conv2d, torch.nn.Conv2d, dict(kernel_size=3, padding=1, stride=2))
    x, t = torch.randn(2, 4, 6, 6, dtype=DT), torch.randn(2, 4, 6, 6, dtype=DT)
    with fwAD.dual_level():
        y = fwAD.unpack_dual(layer(fwAD.make_dual(x, t))).tangent
        y_ref = fwAD.unpack_dual(ref(fwAD.make_dual(x, t))).tangent
    torch.testing.assert_close(y, y_ref)

    def loss(module):  # a non-quadratic loss of the weight: its Hessian has the layer's second derivatives
        return lambda w: functional_call(module, {"weight": w, "bias": module.bias.detach()}, (x[:1],)).tanh().sum()

    w = layer.weight.detach()
    torch.testing.assert_close(jacfwd(jacrev(loss(layer)))(w), jacfwd(jacrev(loss(ref)))(w))
    torch.testing.assert_close(hessian(loss(layer))(w), hessian(loss(ref))(w))


# -- vmap of column-row sampling ----------------------------------------------------------------------------------
def _per_sample_grads(randomness, seed, keep=(0.5, 0.6, 1.0)):
    torch.manual_seed(1)
    x = torch.randn(6, 4, 8, 8, dtype=DT)
    w = torch.randn(3, 4, 3, 3, dtype=DT)
    generator = torch.Generator().manual_seed(seed)

    def loss(w, x):
        return tnn.conv(x[None], w, None, 1, 1, crs_keep=keep, generator=generator).square().sum()

    return vmap(torch.func.grad(loss), in_dims=(None, 0), randomness=randomness)(w, x), x, w, loss


def test_vmap_of_crs_same_randomness_is_one_draw_for_all_samples():
    grads, x, w, loss = _per_sample_grads("same", seed=3)
    for b in range(x.shape[0]):  # each sample with the generator in the state vmap drew from
        generator = torch.Generator().manual_seed(3)
        single = torch.func.grad(lambda w: tnn.conv(x[b:b + 1], w, None, 1, 1, crs_keep=(0.5, 0.6, 1.0),
                                                    generator=generator).square().sum())(w)
        torch.testing.assert_close(grads[b], single)


def test_vmap_of_crs_different_randomness_draws_per_sample():
    grads, x, w, _ = _per_sample_grads("different", seed=3, keep=(0.5, 1.0, 1.0))
    kept = (grads != 0).any(dim=(1, 3, 4))  # [B, C_in]: the channels each sample kept
    assert (kept.sum(1) == 2).all()  # half of the 4 channels, rescaled, per sample
    assert len({tuple(k.tolist()) for k in kept}) > 1  # not one draw for all
    exact = vmap(torch.func.grad(lambda w, x: torch.nn.functional.conv2d(x[None], w, None, 1, 1).square().sum()),
                 in_dims=(None, 0))(w, x)
    torch.testing.assert_close(grads[kept[:, None, :, None, None].expand_as(grads)] / 2,
                               exact[kept[:, None, :, None, None].expand_as(exact)])


def test_vmap_of_crs_in_error_mode_refuses_like_dropout():
    with pytest.raises(RuntimeError, match="randomness"):
        _per_sample_grads("error", seed=0)


# -- pickling ----------------------------------------------------------------------------------------------------
class _Holder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.kfc = tnconv.compile(tnconv.diagrams.kfc(N=2, kernel_size=3))
        self.conv = tnn.Conv2d(3, 4, 3, crs_keep=(1.0, 0.5, 0.5), generator=torch.Generator().manual_seed(0))

    def forward(self, x):
        return self.conv(x), self.kfc(x=x)


@pytest.mark.parametrize("clone", [copy.deepcopy, lambda m: pickle.loads(pickle.dumps(m))], ids=["deepcopy", "pickle"])
def test_compiled_and_modules_holding_one_copy_and_pickle(clone):
    holder = _Holder()
    x = torch.randn(2, 3, 8, 8)
    y, k = holder(x)
    y.sum().backward()  # plans cached, generator advanced
    copied = clone(holder)
    assert copied.kfc._cache == {} and copied.kfc._lock is not holder.kfc._lock
    y2, k2 = copied(x)
    torch.testing.assert_close(y2, y)
    torch.testing.assert_close(k2, k)
    assert copied.kfc.cache_misses == 1
    sampled = tnconv.compile(tnconv.passes.crs(tnconv.diagrams.weight_vjp(N=1, kernel_size=3), "i1", 0.5,
                                               torch.Generator().manual_seed(2)))
    g = torch.randn(2, 4, 6)
    first = sampled(x=x[..., 0], grad_output=g)
    torch.testing.assert_close(clone(sampled)(x=x[..., 0], grad_output=g), sampled(x=x[..., 0], grad_output=g))
    assert first.shape == (4, 3, 3)


def test_converted_model_copies_and_pickles():
    torch.manual_seed(0)
    model = tnconv.nn.convert(models.cnn3d())
    x = torch.randn(2, 1, 8, 8, 8)
    y = model.eval()(x)
    for copied in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        torch.testing.assert_close(copied(x), y)
        assert isinstance(copied[0], tnn.Conv3d)


# -- PyTorch's kernel pair, as the compiler decides ------------------------------------------------------------------
def test_kernel_pair_runs_only_where_the_compiler_lowers_forward_and_both_vjps_to_it(monkeypatch):
    x, w = torch.randn(2, 3, 8, 8), torch.randn(4, 3, 3, 3)
    assert opsconv.native_convolution(x, w, None, 2, 1, 1, 1) == ((2, 2), (1, 1), (1, 1))
    assert opsconv.native_convolution(x, w, torch.randn(4), 1, "same", 2, 1) == ((1, 1), (2, 2), (2, 2))
    assert opsconv.native_convolution(x, w, None, 1, ((1, 0), (0, 1)), 1, 1) is None  # asymmetric padding
    assert opsconv.native_convolution(x.double(), w.double(), None, 1, 0, 1, 1) is not None
    x5, w5 = torch.randn(1, 2, 3, 3, 3, 3), torch.randn(2, 2, 2, 2, 2, 2)
    assert opsconv.native_convolution(x5, w5, None, 1, 0, 1, 1) is None  # N = 4: no PyTorch kernel
    f = tnconv.functional._common.compiled("weight_vjp", N=2, groups=1, kernel_size=(3, 3), stride=(1, 1),
                                           padding=((0, 0), (0, 0)), dilation=(1, 1))
    monkeypatch.setattr(f, "lowering", ())  # the weight VJP would be the plain contraction: no kernel pair
    monkeypatch.setattr(f, "_cache", type(f._cache)())
    assert opsconv.native_convolution(torch.randn(1, 3, 9, 9), w, None, 1, 0, 1, 1) is None


def test_operators_layers_and_functionals_share_compiled_networks():
    x, w, b = torch.randn(2, 3, 8, 8), torch.randn(4, 3, 3, 3), torch.randn(4)
    layer = tnn.Conv2d(3, 4, 3, stride=(2, 1), padding=(0, 1)).requires_grad_(True)
    F.conv(x, w, b, (2, 1), (0, 1))
    F.input_vjp(x.shape, w, torch.randn(2, 4, 3, 8), (2, 1), (0, 1))
    F.weight_vjp(x, w.shape, torch.randn(2, 4, 3, 8), (2, 1), (0, 1))
    before = tnconv.functional._common._compiled.cache_info().misses
    layer(x.requires_grad_()).sum().backward()
    torch.ops.tnconv.conv(x, w, b, [2, 1], [0, 0, 1, 1], [1, 1], 1)
    assert tnconv.functional._common._compiled.cache_info().misses == before


@pytest.mark.parametrize("native", [True, False])
def test_layer_paths_agree_and_each_is_taken(native, monkeypatch):
    monkeypatch.setattr(opsconv, "NATIVE_PAIR", native)
    functions = _count(monkeypatch, opsconv, "_apply_conv")
    layer, ref = _pair(tnn.Conv2d, torch.nn.Conv2d, dict(kernel_size=3, padding=1, stride=2, groups=2))
    x = torch.randn(2, 4, 7, 7, dtype=DT, requires_grad=True)
    for _ in range(2):
        y, y_ref = layer(x), ref(x)
        torch.testing.assert_close(y, y_ref)
        g = torch.randn_like(y)
        for a, b in zip(torch.autograd.grad(y, (x, layer.weight, layer.bias), g),
                        torch.autograd.grad(y_ref, (x, ref.weight, ref.bias), g)):
            torch.testing.assert_close(a, b)
    assert len(functions) == (0 if native else 2)


def test_repeated_calls_still_refuse_bad_arguments():
    x, w = torch.randn(2, 3, 8, 8), torch.randn(4, 3, 3, 3)
    F.conv(x, w, None, 1, 1)
    tnn.conv(x, w, None, 1, 1)
    for fn in (F.conv, tnn.conv):
        with pytest.raises(TypeError, match="stride"):
            fn(x, w, None, True, 1)
        with pytest.raises(TypeError, match="padding"):
            fn(x, w, None, 1, 1.0)
        with pytest.raises(TypeError, match="dtype"):
            fn(x, w.double(), None, 1, 1)
        with pytest.raises(ValueError, match="channels"):
            fn(x[:, :2], w, None, 1, 1)
