"""Autotuning: every candidate lowering gives the plain contraction's result, verdicts are honoured and cached."""

import json
import subprocess
import sys
import threading
import warnings

import pytest
import torch
from hypothesis import given, settings

import tnconv
from tnconv import diagrams
from tnconv.autotune import cache as cache_module
from tnconv.autotune import measure, switch
from tnconv.lowering import choose, gram
from tnconv.testing.strategies import conv_configs, st

DT = torch.float64


@pytest.fixture(autouse=True)
def _fresh_cache(tmp_path, monkeypatch):
    """Each test has its own cache folder, and leaves the process-wide switch as it found it."""
    monkeypatch.setenv(cache_module.ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(switch.ENV, raising=False)
    before = switch._state["enabled"]
    yield
    switch._state["enabled"] = before


class Force:
    """A tuner that runs ``label`` wherever a term offers it (the cost model's choice elsewhere)
    and records every term's candidate labels."""

    def __init__(self, label=None):
        self.label = label
        self.offered = []

    def choose(self, found, operands, scale):
        self.offered.append([c.label for c in found])
        return next((c for c in found if c.label == self.label), None) or choose(found)


def _labels(f, inputs):
    recorder = Force()
    f._build(inputs, tuner=recorder)
    return sorted({label for term in recorder.offered for label in term})


class Collect(Force):
    """A tuner that keeps every term's candidates, operands and scale (the cost model's choice runs)."""

    def __init__(self):
        super().__init__()
        self.terms = []

    def choose(self, found, operands, scale):
        self.terms.append((found, operands, scale))
        return super().choose(found, operands, scale)


def _check_every_candidate(tn, inputs, name=""):
    """Every candidate of every term against the plain contraction; returns the labels seen."""
    reference = tnconv.compile(tn, lowering=())(**inputs)
    f = tnconv.compile(tn)
    collect = Collect()
    f._build(inputs, tuner=collect)
    labels = sorted({c.label for found, _, _ in collect.terms for c in found})
    if len(collect.terms) != 1:  # a sum of terms: force each label through the compiler
        for label in labels:
            result = f._build(inputs, tuner=Force(label))(inputs)
            torch.testing.assert_close(result, reference, msg=lambda m: f"{name} {label}: {m}")
        return labels
    ((found, operands, scale),) = collect.terms
    for c in found:  # each plan once, on its operands: no planning per label
        result = c.plan(*operands(c)).reshape(reference.shape) * scale
        torch.testing.assert_close(result, reference, msg=lambda m: f"{name} {c.label}: {m}")
        if c.plan.with_scale is not None and scale != 1:
            scaled = c.plan.with_scale(scale)(*operands(c)).reshape(reference.shape)
            torch.testing.assert_close(scaled, reference, msg=lambda m: f"{name} {c.label} (scale folded): {m}")
    return labels


def _hyper(c):
    return dict(N=c.N, kernel_size=c.kernel_size, stride=c.stride, padding=c.padding, dilation=c.dilation,
                groups=c.groups)


def _operations(c):
    x = torch.randn(c.x_size, dtype=DT)
    w = torch.randn(c.weight_size, dtype=DT)
    y = torch.randn((c.batch, c.out_channels) + c.output_size(), dtype=DT)
    h = _hyper(c)
    return [
        ("conv", diagrams.conv(**h), dict(x=x, w=w)),
        ("weight_vjp", diagrams.weight_vjp(**h), dict(x=x, grad_output=y)),
        ("input_vjp", diagrams.input_vjp(**h, input_size=c.input_size), dict(w=w, grad_output=y)),
        ("kfc", diagrams.kfc(**h), dict(x=x)),
        ("kfac_reduce", diagrams.kfac_reduce(**h), dict(x=x)),
    ]


@settings(deadline=None)
@given(conv_configs(N=st.integers(1, 3), max_size=7))
def test_every_candidate_matches_the_plain_contraction(c):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(gram, "BLOCKS", (8, 40))  # small blocks, so the blocked Gram products run on small sizes
        for name, tn, inputs in _operations(c):
            _check_every_candidate(tn, inputs, f"{name} {c}")


@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("kernel, stride", [(1, 1), (2, 2), (3, 3)])
def test_pointwise_and_dense_candidates(monkeypatch, groups, kernel, stride):
    # 1x1 and dense (K = S) layers have no pattern left: their candidates are matrix products
    monkeypatch.setattr(gram, "BLOCKS", (16, 64))
    x = torch.randn(3, 4, 6, 9, dtype=DT)
    w = torch.randn(6, 4 // groups, kernel, kernel, dtype=DT)
    O = (6 // stride, 9 // stride)
    g = torch.randn((3, 6) + O, dtype=DT)
    h = dict(N=2, kernel_size=kernel, stride=stride, groups=groups)
    cases = [(diagrams.conv(**h), dict(x=x, w=w)), (diagrams.weight_vjp(**h), dict(x=x, grad_output=g)),
             (diagrams.input_vjp(**h, input_size=(6, 9)), dict(w=w, grad_output=g)),
             (diagrams.kfc(**h), dict(x=x)), (diagrams.kfac_reduce(**h), dict(x=x))]
    seen = set()
    for tn, inputs in cases:
        seen.update(_check_every_candidate(tn, inputs, tn.name))
    assert {"plain/torch", "plain/opt_einsum"} <= seen and {"matmul", "views/matmul"} & seen, seen
    if kernel == 1:
        assert {"matmul/broadcast", "matmul/batched-sum", "matmul/loop", "gram"} <= seen, seen


@pytest.mark.parametrize("N, kernel, stride, padding, dilation", [
    (2, 3, 1, 1, 1), (2, (1, 7), 1, (0, 3), 1), (2, 7, 2, 3, 1), (1, 3, 2, 0, 2), (3, 2, 1, 0, 1)])
def test_kronecker_factor_candidates_on_larger_inputs(monkeypatch, N, kernel, stride, padding, dilation):
    # sizes where the Gram product splits into blocks and the window sums have a periodic middle
    monkeypatch.setattr(gram, "BLOCKS", (64, 512))
    size = {1: (40,), 2: (17, 19), 3: (7, 8, 9)}[N]
    x = torch.randn((2, 4) + size, dtype=DT)
    h = dict(N=N, kernel_size=kernel, stride=stride, padding=padding, dilation=dilation)
    kfc = _check_every_candidate(diagrams.kfc(**h), dict(x=x), "kfc")
    reduce = _check_every_candidate(diagrams.kfac_reduce(**h), dict(x=x), "kfac_reduce")
    assert any(label.startswith("views/blocks-") for label in kfc) and "views/triangle-2" in kfc, kfc
    assert "views/window-sums" in reduce, reduce


def _conv(N=2):
    return diagrams.conv(N=N, kernel_size=3, padding=1)


def _conv_inputs(dtype=DT, **kw):
    return dict(x=torch.randn(2, 3, 8, 8, dtype=dtype, **kw), w=torch.randn(4, 3, 3, 3, dtype=dtype, **kw))


def _count_timing(monkeypatch):
    calls = []
    real = measure.fastest

    def counting(runs, device):
        calls.append(sorted(runs))
        return real(runs, device)

    monkeypatch.setattr("tnconv.autotune.tuner.fastest", counting)
    return calls


def test_autotune_times_once_and_persists_the_verdict(monkeypatch):
    calls = _count_timing(monkeypatch)
    inputs = _conv_inputs()
    f = tnconv.compile(_conv(), autotune=True)
    result = f(**inputs)
    torch.testing.assert_close(result, torch.nn.functional.conv2d(inputs["x"], inputs["w"], padding=1))
    assert len(calls) == 1 and {"native", "plain", "plain/torch"} <= set(calls[0])
    f(**inputs)
    assert len(calls) == 1  # the plan is cached
    (entry,) = tnconv.autotune_cache().entries().values()
    assert entry["choice"] == list(f.lowerings) and entry["fields"]["name"] == f.network.name
    assert set(entry["ms"][0]) == set(calls[0])
    # a new compiled network (as in a later process) takes the verdict from disk, without timing
    g = tnconv.compile(_conv(), autotune=True)
    g(**inputs)
    assert len(calls) == 1 and g.lowerings == f.lowerings


def test_the_cached_choice_is_honoured(monkeypatch):
    calls = _count_timing(monkeypatch)
    inputs = _conv_inputs()
    f = tnconv.compile(_conv(), autotune=True)
    f(**inputs)
    cache = tnconv.autotune_cache()
    ((key, entry),) = cache.entries().items()
    for label in ("plain/opt_einsum", "views", "native"):  # rewrite the verdict by hand: each is run as stored
        cache.put(key, dict(entry, choice=[label]))
        g = tnconv.compile(_conv(), autotune=True)
        torch.testing.assert_close(g(**inputs), f(**inputs))
        assert g.lowerings == (label,)
    assert len(calls) == 1
    cache.put(key, dict(entry, choice=["no-such-lowering"]))  # a verdict naming no candidate is measured anew
    tnconv.compile(_conv(), autotune=True)(**inputs)
    assert len(calls) == 2


@pytest.mark.parametrize("change", ["shape", "dtype", "threads", "network", "backend"])
def test_the_cache_is_keyed_by_what_the_verdict_depends_on(monkeypatch, change):
    calls = _count_timing(monkeypatch)
    tnconv.compile(_conv(), autotune=True)(**_conv_inputs())
    inputs, tn, options = _conv_inputs(), _conv(), {}
    threads = torch.get_num_threads()
    if change == "shape":
        inputs["x"] = torch.randn(3, 3, 8, 8, dtype=DT)
    elif change == "dtype":
        inputs = _conv_inputs(torch.float32)
    elif change == "threads":
        torch.set_num_threads(threads + 1)
    elif change == "network":
        tn = diagrams.conv(N=2, kernel_size=3, padding=1, stride=2)
    else:
        options = dict(backend="opt_einsum")
    try:
        tnconv.compile(tn, autotune=True, **options)(**inputs)
    finally:
        torch.set_num_threads(threads)
    assert len(calls) == 2 and len(tnconv.autotune_cache()) == 2


@pytest.mark.parametrize("content", ["{not json", '{"format": 99, "entries": {}}', "[1, 2]", '{"format": 1, "entries": 3}'])
def test_a_corrupted_cache_warns_and_is_replaced(content):
    path = tnconv.autotune_cache().path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)
    inputs = _conv_inputs()
    with pytest.warns(RuntimeWarning, match="autotune cache"):
        result = tnconv.compile(_conv(), autotune=True)(**inputs)
    torch.testing.assert_close(result, torch.nn.functional.conv2d(inputs["x"], inputs["w"], padding=1))
    data = json.loads(path.read_text())  # the verdict replaced the broken file
    assert data["format"] == cache_module.FORMAT and len(data["entries"]) == 1


def test_an_unwritable_cache_folder_only_warns(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv(cache_module.ENV, str(blocker / "cache"))  # a folder inside a file cannot be made
    with pytest.warns(RuntimeWarning, match="cannot be written"):
        tnconv.compile(_conv(), autotune=True)(**_conv_inputs())


def test_cache_folder_choice(tmp_path, monkeypatch):
    monkeypatch.setenv(cache_module.ENV, str(tmp_path / "given"))
    assert cache_module.cache_dir() == tmp_path / "given"
    monkeypatch.delenv(cache_module.ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setitem(sys.modules, "platformdirs", None)  # not installed
    assert cache_module.cache_dir() == tmp_path / "xdg" / "tnconv"


def test_autotune_cache_shows_and_clears():
    tnconv.compile(_conv(), autotune=True)(**_conv_inputs())
    cache = tnconv.autotune_cache()
    text = repr(cache)
    assert "1 plan(s)" in text and "conv2d" in text and "x=(2, 3, 8, 8)" in text and "threads=" in text
    cache.clear()
    assert len(cache) == 0 and not cache.path.exists()
    cache.clear()  # clearing an empty cache is fine


def test_concurrent_writers_lose_no_entry_and_never_corrupt_the_file(tmp_path):
    path = tmp_path / "shared" / "autotune.json"

    def writer(n):
        for k in range(15):
            cache_module.AutotuneCache(path).put(f"{n}-{k}", {"choice": ["plain"]})

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # and from other processes (the module needs only the standard library)
    script = (f"import importlib.util, sys; spec = importlib.util.spec_from_file_location('c', {cache_module.__file__!r}); "
              f"c = importlib.util.module_from_spec(spec); spec.loader.exec_module(c); "
              f"[c.AutotuneCache(__import__('pathlib').Path({str(path)!r})).put(sys.argv[1] + str(k), "
              f"{{'choice': ['x']}}) for k in range(15)]")
    procs = [subprocess.Popen([sys.executable, "-c", script, f"p{n}-"]) for n in range(3)]
    assert all(p.wait(timeout=60) == 0 for p in procs)
    entries = json.loads(path.read_text())["entries"]
    assert len(entries) == 6 * 15 + 3 * 15
    assert not list(path.parent.glob("*.tmp"))


def _no_timing(monkeypatch):
    def fail(runs, device):
        raise AssertionError("candidates were timed")

    monkeypatch.setattr("tnconv.autotune.tuner.fastest", fail)


def test_meta_tensors_fall_back_to_the_cost_model(monkeypatch):
    _no_timing(monkeypatch)
    inputs = {k: v.to("meta") for k, v in _conv_inputs().items()}
    f = tnconv.compile(_conv(), autotune=True)
    assert f(**inputs).shape == (2, 4, 8, 8)
    assert f.lowerings == ("native",) and len(tnconv.autotune_cache()) == 0


def test_torch_func_transforms_fall_back_to_the_cost_model(monkeypatch):
    _no_timing(monkeypatch)
    inputs = _conv_inputs()
    f = tnconv.compile(_conv(), autotune=True)
    grad = torch.func.grad(lambda w: f(x=inputs["x"], w=w).square().sum())(inputs["w"])
    expected = torch.func.grad(lambda w: torch.nn.functional.conv2d(inputs["x"], w, padding=1).square().sum())(inputs["w"])
    torch.testing.assert_close(grad, expected)
    g = tnconv.compile(diagrams.kfc(N=2, kernel_size=3), autotune=True)
    batched = torch.func.vmap(lambda x: g(x=x))(torch.randn(3, 2, 3, 6, 6, dtype=DT))
    assert batched.shape == (3, 1, 27, 27) and len(tnconv.autotune_cache()) == 0


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning")
def test_dispatch_modes_and_tracing_fall_back_to_the_cost_model(monkeypatch):
    from torch.utils.flop_counter import FlopCounterMode

    _no_timing(monkeypatch)
    with FlopCounterMode(display=False) as counter:
        tnconv.compile(_conv(), autotune=True)(**_conv_inputs())
    assert counter.get_total_flops() > 0  # only the chosen plan ran: nothing was timed under the mode
    traced = torch.jit.trace(lambda x, w: tnconv.compile(_conv(), autotune=True)(x=x, w=w), tuple(_conv_inputs().values()),
                             check_trace=False)
    assert traced(*_conv_inputs().values()).shape == (2, 4, 8, 8)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert measure.untimeable([torch.ones(1)]) == "inside torch.compile's tracing"


def test_fake_tensors_fall_back_to_the_cost_model(monkeypatch):
    from torch._subclasses.fake_tensor import FakeTensorMode

    _no_timing(monkeypatch)
    with FakeTensorMode() as mode:
        inputs = {k: mode.from_tensor(v) for k, v in _conv_inputs().items()}
        assert measure.untimeable(inputs.values()) is not None
        assert tnconv.compile(_conv(), autotune=True)(**inputs).shape == (2, 4, 8, 8)
    assert len(tnconv.autotune_cache()) == 0


def test_inputs_that_require_grad_are_timed_without_recording_history(monkeypatch):
    seen = []
    real = measure.fastest

    def watching(runs, device):
        seen.append(torch.is_grad_enabled())
        return real(runs, device)

    monkeypatch.setattr("tnconv.autotune.tuner.fastest", watching)
    inputs = _conv_inputs(requires_grad=True)
    f = tnconv.compile(_conv(), autotune=True)
    result = f(**inputs)
    assert seen == [False] and result.grad_fn is not None
    result.square().sum().backward()
    x, w = (t.detach().requires_grad_() for t in inputs.values())
    torch.nn.functional.conv2d(x, w, padding=1).square().sum().backward()
    torch.testing.assert_close(inputs["w"].grad, w.grad)
    torch.testing.assert_close(inputs["x"].grad, x.grad)
    # every candidate keeps gradients, the blocked Gram products included
    monkeypatch.setattr(gram, "BLOCKS", (8,))
    x = torch.randn(2, 1, 5, 4, dtype=DT, requires_grad=True)
    g = tnconv.compile(diagrams.kfc(N=2, kernel_size=3, padding=1))
    for label in _labels(g, dict(x=x)):
        plan = g._build(dict(x=x), tuner=Force(label))  # planned once; gradcheck only calls it
        assert torch.autograd.gradcheck(lambda x: plan(dict(x=x)), (x,)), label
    h = tnconv.compile(diagrams.weight_vjp(N=1, kernel_size=1))  # the in-place accumulating products
    y = torch.randn(3, 2, 4, dtype=DT, requires_grad=True)
    x = torch.randn(3, 3, 4, dtype=DT, requires_grad=True)
    for label in _labels(h, dict(x=x, grad_output=y)):
        plan = h._build(dict(x=x, grad_output=y), tuner=Force(label))
        assert torch.autograd.gradcheck(lambda x, y: plan(dict(x=x, grad_output=y)), (x, y)), label


def test_a_failing_candidate_is_skipped_with_a_warning():
    def broken():
        raise RuntimeError("out of memory")

    with pytest.warns(RuntimeWarning, match="'bad' failed"):
        label, ms = measure.fastest({"bad": broken, "good": lambda: None}, torch.device("cpu"))
    assert label == "good" and set(ms) == {"good"}


def test_process_wide_switch_and_environment(monkeypatch):
    calls = _count_timing(monkeypatch)
    inputs = _conv_inputs()
    f = tnconv.compile(_conv())  # follows the switch
    switch._state["enabled"] = None
    assert not tnconv.autotune_enabled()
    f(**inputs)
    assert calls == []
    monkeypatch.setenv(switch.ENV, "1")
    assert tnconv.autotune_enabled()
    tnconv.set_autotune(False)  # an explicit call overrides the environment
    assert not tnconv.autotune_enabled()
    tnconv.set_autotune(True)  # the follower's plans are dropped: the next call tunes
    f(**inputs)
    assert len(calls) == 1 and f.cache_misses == 2
    tnconv.set_autotune(True)  # no change, nothing dropped
    f(**inputs)
    assert f.cache_misses == 2
    explicit = tnconv.compile(_conv(), autotune=False)
    explicit(**inputs)
    assert len(calls) == 1  # autotune=False ignores the switch
    # the functional API keeps one compiled network per setting
    x = torch.randn(2, 3, 9, 9)
    tnconv.functional.kfc(x, (3, 3))
    assert len(calls) == 2
    tnconv.set_autotune(False)
    tnconv.functional.kfc(x, (3, 3))
    assert len(calls) == 2
    with pytest.raises(TypeError, match="enabled must be a bool"):
        tnconv.set_autotune("yes")
    with pytest.raises(TypeError, match="autotune must be"):
        tnconv.compile(_conv(), autotune="on")


def test_selections_are_drawn_privately_for_timing(monkeypatch):
    # a CRS weight VJP draws its selection at call time; timing must not consume the caller's random stream
    tn = tnconv.passes.crs(diagrams.weight_vjp(N=1, kernel_size=3), "i1", 0.5)
    x, g = torch.randn(2, 3, 10, dtype=DT), torch.randn(2, 4, 8, dtype=DT)
    tuned = tnconv.compile(tn, autotune=True)
    plain = tnconv.compile(tn, autotune=False)
    a = tuned(x=x, grad_output=g, generator=torch.Generator().manual_seed(3))
    b = plain(x=x, grad_output=g, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("padding, dilation", [(1, 1), (0, 2), (((2, 0), (1, 1))), (2, 1)])
def test_native_variants_flip_and_transpose_the_kernels(padding, dilation):
    # stride 1: the input VJP as a forward convolution with the flipped kernel; the weight VJP with the output
    # gradient as kernel (any stride)
    h = dict(N=2, kernel_size=3, padding=padding, dilation=dilation)
    x, w = torch.randn(2, 4, 9, 8, dtype=DT), torch.randn(5, 4, 3, 3, dtype=DT)
    g = torch.randn(tnconv.compile(diagrams.conv(**h))(x=x, w=w).shape, dtype=DT)
    flipped = _check_every_candidate(diagrams.input_vjp(**h, input_size=(9, 8)), dict(w=w, grad_output=g), "input_vjp")
    assert "native/flipped" in flipped
    for stride in (1, 2):
        hs = dict(h, stride=stride)
        gs = torch.randn(tnconv.compile(diagrams.conv(**hs))(x=x, w=w).shape, dtype=DT)
        transposed = _check_every_candidate(diagrams.weight_vjp(**hs), dict(x=x, grad_output=gs), "weight_vjp")
        assert "native/transposed" in transposed


@pytest.mark.parametrize("I, K, S, P, D", [(9, 1, 2, 0, 1), (9, 1, 3, 2, 1), (10, 3, 2, 1, 1), (12, 1, 2, 1, 1),
                                           (1, 1, 3, 2, 1), (20, 3, 1, 1, 1), (23, 2, 3, 1, 2), (16, 5, 1, 2, 1)])
def test_window_sums_are_the_pattern_summed_over_o(I, K, S, P, D):
    from tnconv.ir import Index, Tensor
    from tnconv.ir.pattern import pattern_sum
    from tnconv.lowering.reduce import window_sums

    def pattern(name, I, O, K, S, P, D):
        return Tensor(name, (Index("i" + name, I), Index("o" + name, O), Index("k" + name, K)), kind="pattern",
                      attrs=(("stride", S), ("pad_left", P), ("pad_right", 0), ("dilation", D)))

    O = (I + 2 * P - D * (K - 1) - 1) // S + 1
    for J, K2, S2, P2 in [(8, 1, 2, 0), (7, 3, 1, 1), (11, 2, 2, 0)]:  # with a second patterned axis
        O2 = (J + 2 * P2 - (K2 - 1) - 1) // S2 + 1
        x = torch.randn(2, 3, I, J, dtype=DT)
        fn = window_sums(("n", "c", "ia", "ib"), [pattern("a", I, O, K, S, P, D), pattern("b", J, O2, K2, S2, P2, 1)],
                         {"ia": I, "oa": O, "ka": K, "ib": J, "ob": O2, "kb": K2})
        expected = torch.einsum("ncij,ik,jl->nckl", x, pattern_sum(I, O, K, S, P, D, dtype=DT),
                                pattern_sum(J, O2, K2, S2, P2, 1, dtype=DT))
        torch.testing.assert_close(fn(x), expected)
