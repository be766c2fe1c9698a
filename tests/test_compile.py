"""tnconv.compile: backends agree, plan cache, cost, memory limit, call validation."""

import threading

import pytest
import torch

import tnconv
from tnconv import Index, Tensor, TensorNetwork, diagrams, passes
from tnconv.backends import BACKENDS

DT = torch.float64


def chain(n, size=2):
    """``A_0 A_1 ... A_{n-1}``: n + 1 distinct legs."""
    legs = [Index(f"l{k}", size) for k in range(n + 1)]
    tensors = tuple(Tensor(f"A{k}", ((legs[k],), (legs[k + 1],))) for k in range(n))
    return TensorNetwork(tensors, ((legs[0],), (legs[-1],)), name="chain")


@pytest.mark.parametrize("backend", BACKENDS)
def test_backends_agree_on_conv_family(backend):
    x, w = torch.randn(2, 4, 7, 6, dtype=DT), torch.randn(6, 2, 3, 2, dtype=DT)
    b = torch.randn(6, dtype=DT)
    f = tnconv.compile(diagrams.conv(N=2, kernel_size=(3, 2), stride=2, padding=1, groups=2, bias=True), backend=backend)
    torch.testing.assert_close(f(x=x, w=w, b=b), torch.nn.functional.conv2d(x, w, b, stride=2, padding=1, groups=2))
    k = tnconv.compile(diagrams.kfc(N=2, kernel_size=2, groups=2), backend=backend)(x=x)
    k_ref = tnconv.compile(diagrams.kfc(N=2, kernel_size=2, groups=2), backend="torch")(x=x)
    torch.testing.assert_close(k, k_ref)


@pytest.mark.parametrize("backend", BACKENDS)
def test_more_than_52_legs(backend):
    tn = chain(60)
    mats = {f"A{k}": torch.randn(2, 2, dtype=DT) / 1.5 for k in range(60)}
    ours = tnconv.compile(tn, backend=backend)(**mats)
    torch.testing.assert_close(ours, torch.linalg.multi_dot([mats[f"A{k}"] for k in range(60)]))
    assert len(set(tnconv.compile(tn, backend=backend).equation)) > 52


@pytest.mark.parametrize("backend", BACKENDS)
def test_high_dimensional_conv_with_many_legs(backend):
    N = 18  # 3 + 3N = 57 legs
    x, w = torch.randn(1, 2, *(2,) * N, dtype=DT), torch.randn(1, 2, *(1,) * N, dtype=DT)
    y = tnconv.compile(diagrams.conv(N=N, kernel_size=1), backend=backend)(x=x, w=w)
    torch.testing.assert_close(y, torch.einsum("bc...,oc->bo...", x, w.reshape(1, 2)))


def test_plan_cache_hits_and_misses():
    f = tnconv.compile(diagrams.conv(N=1, kernel_size=3))
    x, w = torch.randn(2, 3, 8), torch.randn(4, 3, 3)
    f(x=x, w=w)
    f(x=x, w=w)
    assert (f.cache_misses, f.cache_hits) == (1, 1)
    f(x=torch.randn(2, 3, 9), w=w)
    f(x=x.double(), w=w.double())
    assert (f.cache_misses, f.cache_hits) == (3, 1)


def test_plan_cache_is_bounded(monkeypatch):
    from tnconv import compiler

    monkeypatch.setattr(compiler, "PLAN_CACHE_SIZE", 3)
    f = tnconv.compile(diagrams.conv(N=1, kernel_size=1))
    w = torch.randn(2, 2, 1)
    for size in range(1, 8):
        f(x=torch.randn(1, 2, size), w=w)
    assert len(f._cache) == 3


def test_cached_call_does_no_planning(monkeypatch):
    f = tnconv.compile(diagrams.conv(N=1, kernel_size=3))
    x, w = torch.randn(2, 3, 8), torch.randn(4, 3, 3)
    f(x=x, w=w)

    def fail(*args, **kwargs):
        raise AssertionError("planned again")

    monkeypatch.setattr(f, "_build", fail)
    monkeypatch.setattr(tnconv.compiler, "bind", fail)
    f(x=x, w=w)


def test_cache_is_thread_safe():
    f = tnconv.compile(diagrams.conv(N=1, kernel_size=2))
    w = torch.randn(3, 2, 2, dtype=DT)
    errors = []

    def work(size):
        try:
            for _ in range(5):
                x = torch.randn(2, 2, size, dtype=DT)
                torch.testing.assert_close(f(x=x, w=w), torch.nn.functional.conv1d(x, w))
        except Exception as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(3, 9)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_cost_and_equation():
    f = tnconv.compile(diagrams.conv(N=2, kernel_size=3))
    with pytest.raises(ValueError, match="cost"):
        f.cost()
    cost = f.cost(x=(8, 16, 32, 32), w=(16, 16, 3, 3))
    assert cost["flops"] > 0 and cost["largest_intermediate"] > 0
    f(x=torch.randn(2, 3, 8, 8), w=torch.randn(4, 3, 3, 3))
    assert f.cost()["flops"] > 0
    assert f.equation.count(",") == 3 and "->" in f.equation


def test_memory_limit_slices_and_keeps_the_result():
    tn = diagrams.kfc(N=2, kernel_size=3, padding=1)
    x = torch.randn(4, 8, 12, 12, dtype=DT)
    free = tnconv.compile(tn)
    limit = free.cost(x=tuple(x.shape))["largest_intermediate"] // 4
    sliced = tnconv.compile(tn, memory_limit=limit)
    assert sliced.cost(x=tuple(x.shape))["largest_intermediate"] <= limit
    torch.testing.assert_close(sliced(x=x), free(x=x))
    with pytest.raises(ValueError, match="memory_limit"):
        tnconv.compile(tn, memory_limit=0)


def test_call_validation():
    f = tnconv.compile(diagrams.conv(N=1, kernel_size=3))
    x, w = torch.randn(2, 3, 8), torch.randn(4, 3, 3)
    with pytest.raises(TypeError, match=r"missing the input tensors \['w'\]"):
        f(x=x)
    with pytest.raises(TypeError, match="unexpected argument 'y'"):
        f(x=x, w=w, y=x)
    with pytest.raises(TypeError, match="w must be a torch.Tensor"):
        f(x=x, w=[1, 2])
    with pytest.raises(TypeError, match="dtype"):
        f(x=x, w=w.double())
    with pytest.raises(ValueError, match=r"w has size 5 along dimension 1 \(c_in\), expected 3"):
        f(x=x, w=torch.randn(4, 5, 3))
    with pytest.raises(ValueError, match="w must have 3 dimensions"):
        f(x=x, w=torch.randn(4, 3))
    with pytest.raises(ValueError, match="backend"):
        tnconv.compile(diagrams.conv(N=1, kernel_size=3), backend="numpy")
    with pytest.raises(TypeError, match="tn"):
        tnconv.compile("conv")


def test_batch_size_zero():
    f = tnconv.compile(diagrams.conv(N=1, kernel_size=3))
    y = f(x=torch.randn(0, 3, 8), w=torch.randn(4, 3, 3))
    assert y.shape == (0, 4, 6)


def test_unfixed_sizes_are_named():
    jac = tnconv.compile(passes.differentiate(diagrams.conv(N=1, kernel_size=3), "w"))
    with pytest.raises(ValueError, match=r"C_out.*keyword"):
        jac(x=torch.randn(2, 3, 8))
    assert jac(x=torch.randn(2, 3, 8), C_out=2).shape == (2, 2, 6, 2, 3, 3)


def test_scaling_in_place_never_writes_into_an_input():
    # the plan of a lone permuted input may return a view of it; only fresh results are scaled in place
    tn = tnconv.TensorNetwork.from_text(
        "network t\n  index a = A\n  index b = B\n  tensor x : input (a) (b)\n  output (b) (a)\n  scale 2\nend\n")
    x = torch.randn(3, 4)
    before = x.clone()
    for backend in ("cotengra", "opt_einsum", "torch"):
        torch.testing.assert_close(tnconv.compile(tn, backend=backend)(x=x), 2 * before.T)
        torch.testing.assert_close(x, before)
    total = tnconv.compile(tnconv.NetworkSum((tn, tn)))(x=x)  # accumulating into a fresh sum, not into x
    torch.testing.assert_close(total, 4 * before.T)
    torch.testing.assert_close(x, before)


def test_a_broadcast_result_is_handed_out_writable():
    # the bias term lowers to a stride-0 view; alone it must still come back as a tensor one can write into
    term = tnconv.diagrams.conv(N=1, kernel_size=3, bias=True).terms[1]
    b = torch.randn(4)
    before = b.clone()
    result = tnconv.compile(term)(b=b, B=2, I1=7)
    torch.testing.assert_close(result, before.view(1, 4, 1).expand(2, 4, 5))
    result.add_(1.0)  # a stride-0 view would refuse this
    torch.testing.assert_close(b, before)
