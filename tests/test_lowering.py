"""Lowerings (native kernels, strided views) give the plain contraction's result, and are chosen."""

import pytest
import torch
from hypothesis import given, settings

import tnconv
from tnconv import diagrams
from tnconv.ir.pattern import pattern_empty
from tnconv.lowering import check_lowering, cost, native, views, without_broadcasts
from tnconv.testing.strategies import WIDE, conv_configs, st

DT = torch.float64


def _prod(values):
    out = 1
    for v in values:
        out *= v
    return out


def _hyper(c):
    return dict(N=c.N, kernel_size=c.kernel_size, stride=c.stride, padding=c.padding, dilation=c.dilation,
                groups=c.groups)


def _operations(c):
    """(name, network, inputs, expected lowering) of one configuration."""
    x = torch.randn(c.x_size, dtype=DT)
    w = torch.randn(c.weight_size, dtype=DT)
    y = torch.randn((c.batch, c.out_channels) + c.output_size(), dtype=DT)
    h = _hyper(c)
    small = c.N <= 3
    return [
        ("conv", diagrams.conv(**h), dict(x=x, w=w), "native" if small else "views"),
        ("weight_vjp", diagrams.weight_vjp(**h), dict(x=x, grad_output=y), "native" if small else "views"),
        ("input_vjp", diagrams.input_vjp(**h, input_size=c.input_size), dict(w=w, grad_output=y),
         "native" if small else None),
        ("per_sample", diagrams.per_sample_weight_grad(**h), dict(x=x, grad_output=y), "native" if small else "views"),
        ("kfc", diagrams.kfc(**h), dict(x=x), "views"),
        ("kfac_reduce", diagrams.kfac_reduce(**h), dict(x=x), None),
        ("unfold", diagrams.unfold(**h), dict(x=x), "views"),
    ]


def _check(c, lowering):
    for name, tn, inputs, expected in _operations(c):
        lowered = tnconv.compile(tn, lowering=lowering)
        result = lowered(**inputs)
        reference = tnconv.compile(tn, lowering=())(**inputs)
        torch.testing.assert_close(result, reference, msg=lambda m: f"{name} {c}: {m}")
        plans = [t.plan for t in lowered._last.terms if t.plan is not None]
        patterned = any(t.kind == "pattern" for term in lowered.network.terms for t in term.tensors)
        if expected == "native" and "native" in lowering and plans and patterned:
            # chosen by cost: native, unless a plan as cheap won (tiny sizes)
            (chosen,) = plans
            alone = tnconv.compile(tn, lowering=("native",))
            alone(**inputs)
            (native_plan,) = [t.plan for t in alone._last.terms if t.plan is not None]
            assert native.match(without_broadcasts(alone.network.terms[0])[0]) is not None, name  # whichever plan won
            assert cost(chosen) <= cost(native_plan), (name, chosen.equation, native_plan.equation)


@settings(deadline=None)
@given(conv_configs(N=st.integers(1, 3)))
def test_native_and_view_lowerings_match_the_plain_contraction(c):
    _check(c, ("native", "views"))


@settings(deadline=None)
@given(conv_configs(N=st.integers(1, 3)))
def test_view_lowering_alone_matches_the_plain_contraction(c):
    _check(c, ("views",))


@settings(deadline=None, max_examples=10)
@given(conv_configs(N=st.integers(4, 5), max_size=4, max_kernel=2, max_channels=2))
def test_lowerings_beyond_three_dimensions(c):
    _check(c, ("native", "views"))


@settings(deadline=None)
@given(conv_configs(N=st.integers(1, 5), **dict(WIDE, max_pixels=128, max_channels=2)))
def test_lowerings_of_wide_configurations(c):
    """Large kernels, dilations and strides, padding beyond the kernel's span (outputs that see no input)."""
    _check(c, ("native", "views"))


def test_native_template_roles():
    conv = native.match(tnconv.compile(diagrams.conv(N=2, kernel_size=3, groups=2)).network.terms[0])
    assert conv.output_role == "y" and conv.batch == ("n",) and len(conv.group) == 1
    vjp = native.match(tnconv.compile(diagrams.weight_vjp(N=1, kernel_size=3)).network.terms[0])
    assert vjp.output_role == "w"
    psg = native.match(tnconv.compile(diagrams.per_sample_weight_grad(N=1, kernel_size=3)).network.terms[0])
    assert psg.output_role == "w" and "n" in psg.group and psg.batch == ()
    assert native.match(tnconv.compile(diagrams.kfc(N=1, kernel_size=3)).network.terms[0]) is None


def test_views_skip_patterns_whose_input_leg_is_shared():
    term = tnconv.compile(diagrams.fold(N=1, kernel_size=3, output_size=8)).network.terms[0]
    assert views.find(term) == {}  # fold's input leg i is an output leg: no view


def test_lowering_keeps_gradients_and_respects_the_memory_limit():
    x = torch.randn(2, 3, 9, dtype=DT, requires_grad=True)
    w = torch.randn(4, 3, 3, dtype=DT, requires_grad=True)
    f = tnconv.compile(diagrams.conv(N=1, kernel_size=3, stride=2, padding=((1, 0),)))
    assert torch.autograd.gradcheck(lambda x, w: f(x=x, w=w), (x, w))
    g = tnconv.compile(diagrams.kfc(N=1, kernel_size=3), memory_limit=10)
    torch.testing.assert_close(g(x=x.detach()), tnconv.compile(diagrams.kfc(N=1, kernel_size=3), lowering=())(x=x.detach()))
    assert g.cost()["largest_intermediate"] <= 10


def test_bad_lowering_is_refused():
    with pytest.raises(ValueError, match="lowering"):
        tnconv.compile(diagrams.conv(N=1, kernel_size=3), lowering=("magic",))
    assert check_lowering("native") == ("native",)


@pytest.mark.parametrize("make", [diagrams.kfc, diagrams.kfac_reduce])
def test_kronecker_factors_become_one_matrix_product_of_a_view(make):
    # the view is made once for both copies of x, KFAC-reduce sums it over o first: no im2col copy
    tn = make(N=2, kernel_size=3, stride=2, padding=1, groups=2)
    x = torch.randn(3, 8, 11, 11, dtype=DT)
    f = tnconv.compile(tn)
    torch.testing.assert_close(f(x=x), tnconv.compile(tn, lowering=())(x=x))
    (plan,) = [t.plan for t in f._last.terms if t.plan is not None]
    assert plan.equation.startswith("views: gram"), plan.equation


@pytest.mark.parametrize("groups", [1, 2])
def test_pointwise_terms_run_as_native_1x1_convolutions(groups):
    # squeeze_trivial leaves no pattern in a 1x1 convolution; its k legs become ones on the output
    x, g = torch.randn(2, 4, 5, 3, dtype=DT), torch.randn(2, 6, 5, 3, dtype=DT)
    w = torch.randn(6, 4 // groups, 1, 1, dtype=DT)
    cases = [(diagrams.conv(N=2, kernel_size=1, groups=groups), dict(x=x, w=w), "native conv"),
             (diagrams.weight_vjp(N=2, kernel_size=1, groups=groups), dict(x=x, grad_output=g), "native conv_weight_vjp"),
             (diagrams.input_vjp(N=2, kernel_size=1, groups=groups, input_size=(5, 3)), dict(w=w, grad_output=g), "native conv")]
    expected = [torch.nn.functional.conv2d(x, w, groups=groups),
                torch.nn.grad.conv2d_weight(x, w.shape, g, groups=groups),
                torch.nn.grad.conv2d_input(x.shape, w, g, groups=groups)]
    for (tn, inputs, lowered), reference in zip(cases, expected):
        f = tnconv.compile(tn)
        result = f(**inputs)
        torch.testing.assert_close(result, reference)
        (plan,) = [t.plan for t in f._last.terms if t.plan is not None]
        assert plan.equation.startswith(lowered), plan.equation
        result.add_(1.0)  # writable: not a stride-0 view


def test_window_starting_further_left_than_the_input_is_long():
    # found by the thorough profile: one pixel, padding (2, 0), stride 3 -> the only window reads padding
    kw = dict(kernel_size=1, stride=3, padding=((2, 0),))
    x = torch.randn(1, 2, 1, dtype=DT)
    w = torch.randn(3, 2, 1, dtype=DT)
    cases = ((diagrams.unfold(N=1, **kw), dict(x=x)), (diagrams.conv(N=1, **kw), dict(x=x, w=w)),
             (diagrams.input_vjp(N=1, input_size=(1,), **kw), dict(w=w, grad_output=torch.randn(1, 3, 1, dtype=DT))))
    for lowering in (("native", "views"), ("views",)):
        for tn, inputs in cases:
            result = tnconv.compile(tn, lowering=lowering)(**inputs)
            torch.testing.assert_close(result, tnconv.compile(tn, lowering=())(**inputs))
            assert not result.any()


def test_pattern_sum_is_the_pattern_summed_over_its_output_leg():
    from tnconv.ir.pattern import pattern_sum, pattern_tensor

    for I, K, S, P, D in [(7, 3, 1, 1, 1), (9, 2, 3, 0, 2), (5, 4, 2, 3, 1), (1, 1, 3, 2, 1), (12, 3, 2, 5, 3)]:
        O = (I + 2 * P - D * (K - 1) - 1) // S + 1
        if O > 0:
            expected = pattern_tensor(I, O, K, S, P, D, dtype=DT).sum(1)
            torch.testing.assert_close(pattern_sum(I, O, K, S, P, D, dtype=DT), expected)


HALF_PRECISION_FAILURES = [  # (x shape, weight shape, stride, padding, dilation, groups) on which PyTorch's kernel
    # wrong by up to 1e32, bfloat16 (pytorch/pytorch#169688): the innermost output has one position and a stride > 1
    ((1, 3, 2, 3, 3), (6, 1, 1, 1, 3), (1, 1, 2), 0, 1, 3),
    ((1, 3, 5, 3, 3), (3, 3, 1, 1, 3), (1, 1, 2), 0, 1, 1),
    ((1, 9, 6, 2), (3, 3, 1, 2), (1, 3), 0, 1, 3),
    # NaN or garbage, bfloat16: an input shorter than the dilated kernel
    ((3, 2, 1, 2, 4), (4, 1, 2, 2, 2), 1, (1, 0, 0), 1, 2),
    ((2, 1, 1, 2, 4), (1, 1, 3, 3, 3), (2, 1, 2), (2, 3, 3), (2, 3, 1), 1),
    # segmentation faults now and then, float16 and bfloat16: every window of a dimension lies in the padding
    ((3, 2, 1, 5, 4), (4, 1, 2, 2, 3), (1, 2, 1), 1, (2, 1, 1), 2),
    ((2, 2, 1), (4, 1, 1), (2,), 1, (3,), 2),
    ((2, 2, 1, 1), (4, 1, 3, 1), (1, 2), (2, 3), (2, 2), 2),
    ((2, 4, 1, 5), (2, 2, 3, 3), (2, 1), (3, 1), (2, 2), 2),
]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_forward_where_pytorch_kernels_fail(dtype):
    # found by the thorough profile (one thread, as there): the native lowering runs such convolutions with the
    # padding explicit and the stride of a one-position output set to 1, where PyTorch's kernels are right
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for x_shape, w_shape, stride, padding, dilation, groups in HALF_PRECISION_FAILURES:
            kw = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
            for seed in range(3):
                torch.manual_seed(seed)
                x, w = torch.randn(x_shape).to(dtype), torch.randn(w_shape).to(dtype)
                ours = tnconv.functional.conv(x, w, **kw)
                reference = getattr(torch.nn.functional, f"conv{len(x_shape) - 2}d")(x.double(), w.double(), **kw)
                assert ours.dtype == dtype
                torch.testing.assert_close(ours.double(), reference, atol=0.1, rtol=0.02)
    finally:
        torch.set_num_threads(threads)
    assert pattern_empty(1, 2, 1, 2, 1, 3) and not pattern_empty(5, 3, 3, 1, 0, 1)
