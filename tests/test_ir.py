"""The IR: text round trip of every builder's network, the checker, drawings, values."""

import random

import pytest
import sympy

from tnconv import Index, NetworkSum, Tensor, TensorNetwork, diagrams, passes
from tnconv.ir import InvalidNetwork, TextError, check, size_symbol

BUILDERS = {
    "conv": lambda N, r: diagrams.conv(N=N, kernel_size=r.randint(1, 3), stride=r.randint(1, 2), padding=r.choice([0, 1, "valid"]),
                                       dilation=r.randint(1, 2), groups=r.choice([1, 2]), bias=r.random() < 0.5),
    "conv_same": lambda N, r: diagrams.conv(N=N, kernel_size=r.randint(1, 4), padding="same", dilation=r.randint(1, 2)),
    "conv_transpose": lambda N, r: diagrams.conv_transpose(N=N, kernel_size=3, stride=2, padding=1, output_padding=1,
                                                           groups=r.choice([1, 3]), bias=r.random() < 0.5),
    "unfold": lambda N, r: diagrams.unfold(N=N, kernel_size=2, stride=r.randint(1, 3), padding=((1, 0),) * N),
    "fold": lambda N, r: diagrams.fold(N=N, output_size=(6,) * N, kernel_size=2, stride=2),
    "unfold_kernel": lambda N, r: diagrams.unfold_kernel(N=N, kernel_size=2, input_size=(5,) * N, groups=r.choice([1, 2])),
    "unfold_transpose": lambda N, r: diagrams.unfold_transpose(N=N, kernel_size=2, stride=2, dilation=2, output_padding=1),
    "weight_vjp": lambda N, r: diagrams.weight_vjp(N=N, kernel_size=3, groups=2),
    "input_vjp": lambda N, r: diagrams.input_vjp(N=N, kernel_size=3, input_size=(7,) * N, stride=2),
    "weight_jvp": lambda N, r: diagrams.weight_jvp(N=N, kernel_size=3),
    "input_jvp": lambda N, r: diagrams.input_jvp(N=N, kernel_size=3),
    "conv_transpose_input_vjp": lambda N, r: diagrams.conv_transpose_input_vjp(N=N, kernel_size=3, stride=2, output_padding=1,
                                                                               groups=r.choice([1, 2])),
    "conv_transpose_weight_vjp": lambda N, r: diagrams.conv_transpose_weight_vjp(N=N, kernel_size=2, stride=2, padding=1),
    "conv_transpose_input_jvp": lambda N, r: diagrams.conv_transpose_input_jvp(N=N, kernel_size=3, dilation=2),
    "conv_transpose_weight_jvp": lambda N, r: diagrams.conv_transpose_weight_jvp(N=N, kernel_size=2, groups=2),
    "per_sample_weight_grad": lambda N, r: diagrams.per_sample_weight_grad(N=N, kernel_size=2, groups=2),
    "kfc": lambda N, r: diagrams.kfc(N=N, kernel_size=2, stride=2, groups=r.choice([1, 2])),
    "kfac_reduce": lambda N, r: diagrams.kfac_reduce(N=N, kernel_size=3, padding=1, stride=2),
    "kfc_transpose": lambda N, r: diagrams.kfc_transpose(N=N, kernel_size=3, stride=2),
    "kfac_reduce_transpose": lambda N, r: diagrams.kfac_reduce_transpose(N=N, kernel_size=2, stride=2, groups=2),
    "ggn_diagonal": lambda N, r: diagrams.ggn_diagonal(N=N, kernel_size=2),
    "ggn_gram": lambda N, r: diagrams.ggn_gram(N=N, kernel_size=2, stride=2),
    "hessian_diagonal_weight": lambda N, r: diagrams.hessian_diagonal_weight(N=N, kernel_size=2, stride=2, groups=2),
    "hessian_diagonal_input": lambda N, r: diagrams.hessian_diagonal_input(N=N, kernel_size=2, input_size=(5,) * N),
    "ggn_diagonal_input": lambda N, r: diagrams.ggn_diagonal_input(N=N, kernel_size=3, input_size=(5,) * N, groups=2),
    "input_jacobian": lambda N, r: diagrams.input_jacobian(N=N, kernel_size=2, input_size=(4,) * N),
    "weight_jacobian": lambda N, r: diagrams.weight_jacobian(N=N, kernel_size=2, dilation=2),
    "mixed_second_derivative": lambda N, r: diagrams.mixed_second_derivative(N=N, kernel_size=2, input_size=(3,) * N),
    "kfc_output": lambda N, r: diagrams.kfc_output(N=N, groups=r.choice([1, 2])),
    "kfac_reduce_output": lambda N, r: diagrams.kfac_reduce_output(N=N, groups=r.choice([1, 2])),
    "per_sample_weight_grad_transpose": lambda N, r: diagrams.per_sample_weight_grad_transpose(
        N=N, kernel_size=3, stride=2, output_padding=1, groups=r.choice([1, 2])),
    "per_sample_weight_grad_sq_norm": lambda N, r: diagrams.per_sample_weight_grad_sq_norm(N=N, kernel_size=2, groups=2),
    "per_sample_weight_grad_sq_norm_transpose": lambda N, r: diagrams.per_sample_weight_grad_sq_norm_transpose(
        N=N, kernel_size=2, stride=2),
    "ggn_diagonal_transpose": lambda N, r: diagrams.ggn_diagonal_transpose(N=N, kernel_size=3, groups=r.choice([1, 2])),
    "kfc_dx": lambda N, r: passes.differentiate(diagrams.kfc(N=N, kernel_size=2), "x"),
}


@pytest.mark.parametrize("name", sorted(BUILDERS))
@pytest.mark.parametrize("N", [1, 2, 3, 5])
def test_text_round_trip_of_every_builder(name, N):
    rng = random.Random(hash((name, N)) % 1000)
    for _ in range(3):
        tn = BUILDERS[name](N, rng)
        check(tn)
        text = tn.to_text()
        back = TensorNetwork.from_text(text)
        assert back == tn and hash(back) == hash(tn)
        assert back.to_text() == text


def test_every_public_builder_is_covered():
    public = {n for n in diagrams.__all__}
    covered = {n.split("_dx")[0] if n != "conv_same" else "conv" for n in BUILDERS}
    assert public <= covered


def test_drawings():
    tn = diagrams.conv(N=2, kernel_size=3, bias=True)
    dot = tn.to_dot()
    assert dot.startswith('graph "conv2d" {') and dot.count('subgraph "cluster_') == 2 and dot.rstrip().endswith("}")
    g = tn.to_networkx()
    # conv term: x, pi1, pi2, w + output; bias term: b, ones_o1, ones_o2, ones_n + output
    assert g.number_of_nodes() == 10
    legs = {data["leg"] for _, _, data in g.edges(data=True)}
    assert {"i1", "k1", "c_in", "o1", "n", "c_out"} <= legs


def test_render_dot_file(tmp_path):
    from tnconv.ir import render

    path = render(diagrams.unfold(N=1, kernel_size=2), str(tmp_path / "u.dot"))
    assert open(path).read().startswith("graph")
    with pytest.raises(ValueError, match="path"):
        render(diagrams.unfold(N=1, kernel_size=2), str(tmp_path / "u.jpg2"))


def test_networks_are_frozen_and_hashable():
    a = diagrams.conv(N=2, kernel_size=3)
    b = diagrams.conv(N=2, kernel_size=3)
    assert a == b and hash(a) == hash(b) and a is not b
    assert a != diagrams.conv(N=2, kernel_size=3, stride=2)
    with pytest.raises(AttributeError):
        a.tensors = ()


def test_sizes_are_sympy_expressions_of_size_symbols():
    tn = diagrams.conv(N=1, kernel_size=3, stride=2, padding=1)
    o = tn.legs["o1"].size
    assert o.free_symbols == {size_symbol("I1")}
    assert o.subs(size_symbol("I1"), 7) == 4  # PyTorch: (7 + 2 - 3) // 2 + 1
    assert tn.size_symbols == (size_symbol("B"), size_symbol("C_in"), size_symbol("C_out"), size_symbol("I1"))


def _bad(tensors, output, **kw):
    return TensorNetwork(tuple(tensors), output, **kw)


a3, a4, b3 = Index("a", 3), Index("a", 4), Index("b", 3)
MALFORMED = {
    "size mismatch": lambda: _bad([Tensor("A", (a3,)), Tensor("B", (a4,))], ()),
    "output leg on no tensor": lambda: _bad([Tensor("A", (a3,))], ((b3,),)),
    "output repeats": lambda: _bad([Tensor("A", (a3,))], ((a3,), (a3,))),
    "repeated leg": lambda: _bad([Tensor("A", ((a3,), (a3,)))], ()),
    "input shapes differ": lambda: _bad([Tensor("A", (a3,)), Tensor("A", ((a3,), (b3,)))], ()),
    "pattern attributes": lambda: _bad([Tensor("P", (Index("i", 5), Index("o", 3), Index("k", 3)), "pattern",
                                              (("stride", 1), ("dilation", 1)))], ()),
    "pattern output size": lambda: _bad([Tensor.pattern("P", Index("i", 5), Index("o", 4), Index("k", 3), stride=1,
                                                       pad_left=0, pad_right=0, dilation=1)], ()),
    "pattern negative padding": lambda: _bad([Tensor.pattern("P", Index("i", 5), Index("o", 1), Index("k", 3), stride=1,
                                                            pad_left=-1, pad_right=0, dilation=1)], ()),
    "delta sizes": lambda: _bad([Tensor("d", (a3, Index("c", 2)), "delta")], ()),
    "constant without value": lambda: _bad([Tensor("c", (a3,), "constant")], ()),
    "sum outputs differ": lambda: NetworkSum((_bad([Tensor("A", (a3,))], ((a3,),)), _bad([Tensor("B", (b3,))], ((b3,),)))),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_checker_rejects_malformed_networks(name):
    with pytest.raises(InvalidNetwork):
        check(MALFORMED[name]())


def test_ir_constructors_validate():
    with pytest.raises(ValueError, match="name"):
        Index("not valid", 3)
    with pytest.raises(ValueError, match="positive"):
        Index("a", 0)
    with pytest.raises(TypeError):
        Index("a", 2.5)
    with pytest.raises(ValueError, match="kind"):
        Tensor("A", (a3,), "weird")
    with pytest.raises(TypeError, match="legs"):
        Tensor("A", ("a",))


@pytest.mark.parametrize("text, match", [
    ("", "empty"),
    ("network x\n  output (a)\nend", "leg 'a'"),
    ("network x\n  index a = 3\n  tensor A : input (a)\n  output (a)\n", "no 'end'"),
    ("network x\n  index a = 3\n  bogus line\nend", "cannot read"),
    ("network x\n  index a = 3\n  tensor A : input (a)\nend", "no 'output'"),
])
def test_text_parser_errors(text, match):
    with pytest.raises(TextError, match=match):
        TensorNetwork.from_text(text)


def test_scale_round_trips():
    tn = diagrams.kfac_reduce(N=2, kernel_size=3, stride=2)
    assert isinstance(tn.scale, sympy.Expr) and tn.scale.free_symbols
    assert TensorNetwork.from_text(tn.to_text()).scale == tn.scale
