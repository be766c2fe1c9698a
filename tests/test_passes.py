"""Passes: golden text before/after, values against autograd, purity, errors, pipeline."""

import pathlib

import pytest
import torch
from torch.func import jacrev, vmap

import tnconv
from tnconv import Index, NetworkSum, Tensor, TensorNetwork, diagrams, passes
from tnconv import testing as T

DT = torch.float64
GOLDEN = pathlib.Path(__file__).parent / "golden"


def quadratic():
    """``y[b] = Σ_a x[a] M[a, b] x[b]``: ``x`` occurs twice."""
    a, b = Index("a", 3), Index("b", 3)
    return TensorNetwork((Tensor("x", ((a,),)), Tensor("M", ((a,), (b,))), Tensor("x", ((b,),))), ((b,),), name="quad")


def diagonal_delta():
    """A delta between two legs of one tensor: fusing it would need a diagonal."""
    i, j = Index("i", 3), Index("j", 3)
    return TensorNetwork((Tensor("A", ((i,), (j,))), Tensor("d", ((i,), (j,)), "delta")), (), name="trace")


def lonely_delta():
    """A delta whose legs touch nothing else: it sums to its size."""
    i, j, k = Index("i", 3), Index("j", 3), Index("k", 2)
    return TensorNetwork((Tensor("A", ((k,),)), Tensor("d", ((i,), (j,)), "delta")), ((k,),), name="lonely")


CASES = {
    "differentiate_w": lambda: passes.differentiate(diagrams.conv(N=1, kernel_size=2, stride=2), "w"),
    "differentiate_x": lambda: passes.differentiate(diagrams.conv(N=1, kernel_size=2, stride=2), "x"),
    "differentiate_b": lambda: passes.differentiate(diagrams.conv(N=1, kernel_size=2, bias=True), "b"),
    "differentiate_product_rule": lambda: passes.differentiate(quadratic(), "x"),
    "vjp_w_unfused": lambda: passes.vjp(diagrams.conv(N=1, kernel_size=2, stride=2), "w", "v", fuse=False),
    "vjp_w": lambda: passes.vjp(diagrams.conv(N=1, kernel_size=2, stride=2), "w", "v"),
    "jvp_x": lambda: passes.jvp(diagrams.conv(N=1, kernel_size=2, stride=2), "x", "dx"),
    "batch_sum": lambda: passes.batch(diagrams.conv(N=1, kernel_size=2, batch=False, bias=True), "n", "B", ["x"]),
    "fuse_deltas_keeps_diagonal": lambda: passes.fuse_deltas(diagonal_delta()),
    "fuse_deltas_lonely": lambda: passes.fuse_deltas(lonely_delta()),
    "drop_ones": lambda: passes.drop_ones(passes.vjp(diagrams.conv(N=1, kernel_size=2, bias=True), "b", "v")),
    "rename_apart": lambda: passes.rename_apart(diagrams.unfold(N=1, kernel_size=2), keep=["n"]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden_text(name, request):
    """Each pass's output, exactly. Regenerate a file by deleting it and running with --update-golden."""
    text = CASES[name]().to_text() + "\n"
    path = GOLDEN / f"{name}.txt"
    if not path.exists():
        path.write_text(text)
        pytest.fail(f"wrote missing golden file {path}; review and commit it")
    assert text == path.read_text()
    assert TensorNetwork.from_text(text) == CASES[name]()


def test_golden_inputs_are_shown_too():
    """Before-texts of the golden cases: the conv diagram the passes start from."""
    text = diagrams.conv(N=1, kernel_size=2, stride=2).to_text() + "\n"
    assert text == (GOLDEN / "conv1d_input.txt").read_text()


def compiled(tn):
    return tnconv.compile(tn)


@pytest.mark.parametrize("seed", range(4))
def test_jacobians_match_autograd(seed):
    import random

    c = T.random_config(random.Random(seed), N=1 + seed % 3, max_size=5)
    c.batch = 2
    x, w = torch.randn(*c.x_size, dtype=DT), torch.randn(*c.weight_size, dtype=DT)
    spec = dict(N=c.N, kernel_size=c.kernel_size, **c.kwargs())
    tn = diagrams.conv(**spec, input_size=c.input_size)

    def f(x, w):
        return T.conv(x, w, **c.kwargs())

    jw = compiled(passes.differentiate(tn, "w"))(x=x, C_out=c.out_channels)
    jx = compiled(passes.differentiate(tn, "x"))(w=w, B=c.batch)
    torch.testing.assert_close(jw, jacrev(f, argnums=1)(x, w))
    torch.testing.assert_close(jx, jacrev(f, argnums=0)(x, w))


def test_second_derivative_by_cutting_twice():
    c = T.ConvConfig(1, 2, 2, 2, (5,), (2,), (2,), 1, (1,), 1)
    x, w = torch.randn(*c.x_size, dtype=DT), torch.randn(*c.weight_size, dtype=DT)
    tn = diagrams.conv(N=1, kernel_size=2, stride=2, padding=1, input_size=(5,))
    mixed = passes.differentiate(passes.differentiate(tn, "w"), "x")
    assert mixed.inputs == ()
    ours = tnconv.compile(mixed)(B=2, C_in=2, C_out=2, dtype=DT)
    ref = jacrev(jacrev(lambda x, w: T.conv(x, w, stride=2, padding=1), argnums=1), argnums=0)(x, w)
    torch.testing.assert_close(ours, ref)


def test_product_rule_matches_autograd():
    x, m = torch.randn(3, dtype=DT), torch.randn(3, 3, dtype=DT)
    d = passes.differentiate(quadratic(), "x")
    assert isinstance(d, NetworkSum) and len(d.terms) == 2
    ref = torch.autograd.functional.jacobian(lambda x: (x @ m) * x, x)
    ours = tnconv.compile(d)(M=m, x=x)
    torch.testing.assert_close(ours, ref)


def test_vjp_and_jvp_and_batch_values():
    x, w = torch.randn(3, 2, 7, dtype=DT), torch.randn(4, 2, 3, dtype=DT)
    y = torch.nn.functional.conv1d(x, w, stride=2)
    v = torch.randn_like(y)
    tn = diagrams.conv(N=1, kernel_size=3, stride=2)
    torch.testing.assert_close(compiled(passes.vjp(tn, "w", "v"))(x=x, v=v),
                               torch.nn.grad.conv1d_weight(x, w.shape, v, stride=2))
    torch.testing.assert_close(compiled(passes.jvp(tn, "x", "dx"))(w=w, dx=x), y)
    ws = torch.randn(5, *w.shape, dtype=DT)
    batched = passes.batch(tn, "m", "M", ["w"])
    ref = vmap(lambda w: torch.nn.functional.conv1d(x, w, stride=2))(ws)
    torch.testing.assert_close(compiled(batched)(x=x, w=ws), ref)


def test_fused_and_unfused_vjp_agree():
    x, v = torch.randn(2, 3, 6, dtype=DT), torch.randn(2, 4, 4, dtype=DT)
    tn = diagrams.conv(N=1, kernel_size=3, groups=1)
    a = tnconv.compile(passes.vjp(tn, "w", "v", fuse=False), passes=None)(x=x, v=v)
    b = tnconv.compile(passes.vjp(tn, "w", "v"), passes=None)(x=x, v=v)
    torch.testing.assert_close(a, b)


def test_lonely_delta_contributes_its_size():
    a = torch.randn(2, dtype=DT)
    torch.testing.assert_close(tnconv.compile(lonely_delta(), passes=None)(A=a), 3 * a)
    torch.testing.assert_close(tnconv.compile(lonely_delta())(A=a), 3 * a)


def test_passes_are_pure():
    tn = diagrams.conv(N=2, kernel_size=3, groups=2, bias=True)
    text = tn.to_text()
    for result in (passes.differentiate(tn, "w"), passes.vjp(tn, "x", "v"), passes.jvp(tn, "w", "t"),
                   passes.batch(tn, "m", 3, ["w"]), passes.fuse_deltas(tn), passes.drop_ones(tn)):
        result.check()
    assert tn.to_text() == text


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda tn: passes.differentiate(tn, "z"), r"wrt='z'.*\['x', 'w'\]"),
        (lambda tn: passes.differentiate(tn, 3), "wrt"),
        (lambda tn: passes.vjp(tn, "w", "x"), "vector"),
        (lambda tn: passes.jvp(tn, "w", "w"), "tangent"),
        (lambda tn: passes.batch(tn, "n", 3, ["x"]), "leg"),
        (lambda tn: passes.batch(tn, "m", 3, ["nope"]), "tensors"),
        (lambda tn: passes.batch(tn, "m m", 3, ["x"]), "leg"),
        (lambda tn: passes.differentiate("not a network", "x"), "wrt|tn"),
    ],
)
def test_bad_arguments(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call(diagrams.conv(N=1, kernel_size=3))


def test_pipeline_registry_and_errors():
    from tnconv.passes import PASSES, PassError, run_pipeline

    assert {"fuse_deltas", "drop_ones"} <= set(PASSES)
    with pytest.raises(ValueError, match="unknown pass 'nope'.*fuse_deltas"):
        tnconv.compile(diagrams.conv(N=1, kernel_size=3), passes=["nope"])

    def breaks(tn):
        return tn.replace(output=tn.output + ((Index("ghost", 2),),))

    with pytest.raises(PassError, match=r"pass 'breaks' failed \(after \['fuse_deltas'\]\)"):
        run_pipeline(diagrams.conv(N=1, kernel_size=3), ["fuse_deltas", breaks], debug=True)


def test_compile_trace_records_every_pass():
    f = tnconv.compile(passes.vjp(diagrams.conv(N=1, kernel_size=3), "w", fuse=False), trace=True)
    assert [name for name, _ in f.trace] == ["input", "fuse_deltas", "drop_ones", "simplify"]
    assert "delta" in f.trace[0][1] and "delta" not in f.trace[1][1]
    assert all(dot.startswith("graph") for _, dot in f.trace_dots)
    assert tnconv.compile(diagrams.conv(N=1, kernel_size=3)).trace is None
