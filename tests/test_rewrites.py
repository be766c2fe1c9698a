"""Structure-aware rewrites: golden text, and the value of every rewritten network unchanged."""

import pathlib

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import tnconv
from tnconv import diagrams, passes
from tnconv.ir import TensorNetwork

GOLDEN = pathlib.Path(__file__).parent / "golden"
DT = torch.float64

CASES = {
    "rewrite_dense": lambda: passes.dense(diagrams.conv(N=1, kernel_size=2, stride=2, input_size=8)),
    "rewrite_downsample": lambda: passes.downsample(diagrams.conv(N=1, kernel_size=1, stride=2, input_size=8)),
    "rewrite_trivial": lambda: passes.squeeze_trivial(diagrams.conv(N=1, kernel_size=1, input_size=5)),
    "rewrite_mixed_dense": lambda: passes.simplify(diagrams.conv(N=2, kernel_size=(3, 2), stride=(1, 2), input_size=(6, 6))),
    "rewrite_kfac_reduce_dense": lambda: passes.simplify(diagrams.kfac_reduce(N=1, kernel_size=4, stride=4, input_size=8)),
    "rewrite_input_vjp_dense": lambda: passes.dense(diagrams.input_vjp(N=1, kernel_size=2, stride=2, input_size=(8,))),
    "rewrite_swap_kernel_output": lambda: passes.swap_kernel_output(diagrams.conv(N=1, kernel_size=3, stride=2, input_size=9)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden_text(name):
    text = CASES[name]().to_text() + "\n"
    path = GOLDEN / f"{name}.txt"
    if not path.exists():
        path.write_text(text)
        pytest.fail(f"wrote missing golden file {path}; review and commit it")
    assert text == path.read_text()
    assert TensorNetwork.from_text(text) == CASES[name]()


def test_rewrites_remove_the_patterns_they_promise():
    kinds = lambda tn: sorted(t.kind for term in tn.terms for t in term.tensors)  # noqa: E731
    assert kinds(CASES["rewrite_dense"]()) == ["input", "input"]
    assert kinds(CASES["rewrite_trivial"]()) == ["input", "input"]
    assert kinds(CASES["rewrite_mixed_dense"]()).count("pattern") == 1
    assert kinds(CASES["rewrite_input_vjp_dense"]()) == ["input", "input"]  # the output is reshaped
    # symbolic sizes: I = O K is not provable, nothing changes
    symbolic = diagrams.conv(N=1, kernel_size=2, stride=2)
    assert passes.simplify(symbolic) == symbolic
    # padding, dilation or overlap: not dense
    for kw in (dict(kernel_size=2, stride=2, padding=1), dict(kernel_size=2, stride=1), dict(kernel_size=2, stride=2, dilation=2)):
        tn = diagrams.conv(N=1, input_size=8, **kw)
        assert passes.simplify(tn) == tn


@st.composite
def structured(draw):
    """Per dimension one of: dense (K = S), down-sampling (S > K), trivial (K = S = 1), general."""
    N = draw(st.integers(1, 3))
    kernel, stride, padding, size = [], [], [], []
    for _ in range(N):
        kind = draw(st.sampled_from(["dense", "down", "trivial", "general"]))
        K = 1 if kind == "trivial" else draw(st.integers(1, 3))
        S = {"dense": K, "down": K + draw(st.integers(1, 2)), "trivial": 1, "general": draw(st.integers(1, 2))}[kind]
        O = draw(st.integers(1, 3))
        kernel.append(K)
        stride.append(S)
        padding.append(0 if kind != "general" else draw(st.integers(0, 1)))
        size.append(O * S if kind != "general" else max(K, O + K))
    groups = draw(st.integers(1, 2))
    return dict(N=N, kernel_size=tuple(kernel), stride=tuple(stride), padding=tuple(padding), groups=groups,
                input_size=tuple(size)), draw(st.integers(1, 2)), groups * draw(st.integers(1, 2)), groups


def _networks(hyper, input_size):
    h = {k: v for k, v in hyper.items() if k != "input_size"}
    return {
        "conv": diagrams.conv(**hyper),
        "weight_vjp": passes.vjp(diagrams.conv(**hyper), "w", "grad_output"),
        "kfc": diagrams.kfc(**h, input_size=input_size),
        "kfac_reduce": diagrams.kfac_reduce(**h, input_size=input_size),
        "unfold": diagrams.unfold(**h, input_size=input_size),
        "input_vjp": diagrams.input_vjp(**h, input_size=input_size),  # the rewrites reshape its output
    }


@settings(deadline=None, max_examples=40)
@given(structured())
def test_rewrites_preserve_values(case):
    hyper, batch, channels, groups = case
    x = torch.randn((batch, channels) + hyper["input_size"], dtype=DT)
    w = torch.randn((2 * groups, channels // groups) + hyper["kernel_size"], dtype=DT)
    y = tnconv.compile(diagrams.conv(**hyper))(x=x, w=w)
    inputs = dict(x=x, w=w, grad_output=torch.randn_like(y))
    for name, tn in _networks(hyper, hyper["input_size"]).items():
        given_inputs = {k: v for k, v in inputs.items() if k in tn.inputs}
        # no pipeline: the default one would rewrite the reference too
        reference = tnconv.compile(tn, passes=None, lowering=())(**given_inputs)
        for rewrite in (passes.simplify, passes.dense, passes.downsample, passes.squeeze_trivial, passes.swap_kernel_output):
            rewritten = rewrite(tn)
            result = tnconv.compile(rewritten, passes=None, lowering=())(**given_inputs)
            torch.testing.assert_close(result, reference, msg=lambda m: f"{rewrite.__name__} of {name}: {m}")


def test_simplify_runs_in_a_pipeline_and_by_name():
    tn = diagrams.conv(N=1, kernel_size=2, stride=2, input_size=8)
    f = tnconv.compile(tn, passes=["simplify"], trace=True)
    assert [name for name, _ in f.trace] == ["input", "simplify"]
    x, w = torch.randn(2, 3, 8, dtype=DT), torch.randn(4, 3, 2, dtype=DT)
    torch.testing.assert_close(f(x=x, w=w), torch.nn.functional.conv1d(x, w, stride=2))
