"""Ranks and layouts of every functional: the right result for each accepted layout, a ValueError for anything else.

The rank sweep gives each functional's data arguments (and shape arguments) every
rank from 1 to ``N + 3`` -- one sample of a batch, extra leading dimensions -- and
checks that the call either returns exactly what the layout it is documented to
accept means, or raises a ValueError; never a result of another shape or value.
"""

import pytest
import torch
from hypothesis import assume, given, strategies as st

from tnconv import functional as F
from tnconv import testing as T
from tnconv.testing.strategies import conv_configs, transpose_configs

DT = torch.float64
TORCH_CONV = {1: torch.nn.functional.conv1d, 2: torch.nn.functional.conv2d, 3: torch.nn.functional.conv3d}


def rand(*shape):
    return torch.randn(*shape, dtype=DT)


# -- the two misreads the issue reported ------------------------------------------------------------------------


def test_kfc_of_an_unbatched_2d_input_is_not_read_as_a_1d_batch():
    x = rand(3, 6, 6)  # one 2-d sample [C_in, H, W], as conv takes it; or 3 samples of a 1-d input
    with pytest.raises(ValueError, match=r"\(3, 6, 6\).*\[B, C_in, \*I\] with N=1.*unbatched \[C_in, \*I\] with N=2"):
        F.kfc(x, 3)
    u = torch.nn.functional.unfold(x[None], 3)[0]  # [27, 16]
    for factor in (F.kfc(x, 3, N=2), F.kfc(x, (3, 3))):
        assert factor.shape == (1, 27, 27)
        torch.testing.assert_close(factor[0], u @ u.T)
    assert F.kfc(x, 3, N=1).shape == (1, 18, 18)  # the other reading, when asked for


def test_kfc_output_of_vectors_is_not_read_as_a_3d_output():
    g = rand(3, 4, 4, 5, 5)  # [V, B, C_out, O1, O2], as ggn_diagonal takes it; or [B, C_out, O1, O2, O3]
    with pytest.raises(ValueError, match=r"\[B, C_out, \*O\] with N=3, or \[V, B, C_out, \*O\] with N=2"):
        F.kfc_output(g)
    with pytest.raises(ValueError, match="N"):
        F.kfac_reduce_output(g)
    flat = g.reshape(12, 4, 25)
    torch.testing.assert_close(F.kfc_output(g, N=2)[0], torch.einsum("bio,bjo->ij", flat, flat))
    s = flat.sum(-1)
    torch.testing.assert_close(F.kfac_reduce_output(g, N=2)[0], s.T @ s)
    torch.testing.assert_close(F.kfc_output(g, N=2), F.kfc_output(g.flatten(0, 1), N=2))
    torch.testing.assert_close(F.kfc_output(g[0, 0], N=2), F.kfc_output(g[0, :1], N=2))  # one sample


def test_same_call_with_b_equal_c_out_is_refused_too():
    # the issue: when B == C_out even the misread's shape looked right
    with pytest.raises(ValueError, match="N"):
        F.kfc_output(rand(2, 4, 4, 3, 3))


# -- unbatched exactly where PyTorch's twin takes it --------------------------------------------------------------


@pytest.mark.parametrize("N", [1, 2, 3])
def test_unbatched_inputs_match_torch(N):
    x, w, b = rand(3, *(5,) * N), rand(4, 3, *(2,) * N), rand(4)
    torch.testing.assert_close(F.conv(x, w, b, stride=2, padding=1), TORCH_CONV[N](x, w, b, stride=2, padding=1))
    wt = rand(3, 2, *(3,) * N)
    convt = getattr(torch.nn.functional, f"conv_transpose{N}d")
    torch.testing.assert_close(F.conv_transpose(x, wt, stride=2), convt(x, wt, stride=2))
    _, jvp = torch.func.jvp(lambda w: TORCH_CONV[N](x, w), (w,), (w,))
    torch.testing.assert_close(F.weight_jvp(x, w), jvp)
    torch.testing.assert_close(F.input_jvp(x, w), TORCH_CONV[N](x, w))


def test_unbatched_unfold_and_fold_match_torch():
    x = rand(3, 6, 7)
    torch.testing.assert_close(F.unfold(x, 3, padding=1, N=2), torch.nn.functional.unfold(x, 3, padding=1))
    torch.testing.assert_close(F.unfold(x, (3, 2), stride=2), torch.nn.functional.unfold(x, (3, 2), stride=2))
    y = rand(12, 9)
    torch.testing.assert_close(F.fold(y, (4, 4), 2), torch.nn.functional.fold(y, (4, 4), 2))


def test_batched_only_functions_refuse_one_sample_naming_x():
    x, w, g = rand(3, 8), rand(4, 3, 3), rand(4, 6)
    with pytest.raises(RuntimeError):  # PyTorch's twin refuses an unbatched input too
        torch.nn.grad.conv1d_weight(x, w.shape, g)
    with pytest.raises(ValueError, match=r"x must be \[B, C_in, \*I\] with 3 dimensions.*batched only.*\(3, 8\)"):
        F.weight_vjp(x, w.shape, g)
    with pytest.raises(ValueError, match=r"input_size must be \[B, C_in, \*I\] with 3 dimensions"):
        F.input_vjp((3, 8), w, g)


def test_layout_errors_name_the_argument_the_shape_and_the_layouts():
    with pytest.raises(ValueError, match=r"x must be \[B, C, \*I\] \(4 dimensions\) or unbatched \[C, \*I\] \(3\).*\(2, 3\)"):
        F.conv(rand(2, 3), rand(4, 3, 2, 2))
    with pytest.raises(ValueError, match=r"x must be unbatched \[C_in, \*I\] \(rank 3\) or \[B, C_in, \*I\] \(rank 4\) "
                                         r"for N=2 spatial dimensions, got shape \(1, 2, 3, 6, 6\)"):
        F.kfc(rand(1, 2, 3, 6, 6), (3, 3))
    with pytest.raises(ValueError, match=r"grad_output must be .*\[V, B, C_out, \*O\] \(rank 5\) for N=2"):
        F.kfac_reduce_output(rand(1, 1, 2, 3, 6, 6), N=2)
    with pytest.raises(ValueError, match=r"x must be \[B, C\*K, L\] \(3 dimensions\) or unbatched"):
        F.fold(rand(1, 2, 12, 9), (4, 4), 2)


def test_N_keyword_is_checked():
    x = rand(2, 3, 6, 6)
    with pytest.raises(ValueError, match="N must be an int >= 1"):
        F.kfc(x, 3, N=0)
    with pytest.raises(ValueError, match="kernel_size must have 3 entries"):
        F.kfc(x, (3, 3), N=3)
    with pytest.raises(ValueError, match="N"):
        F.unfold(x, 3)  # a batch of 2-d inputs or one 3-d input
    torch.testing.assert_close(F.unfold(x, 3, N=2), F.unfold(x, (3, 3)))
    torch.testing.assert_close(F.unfold(x, 3, N=3), F.unfold(x[None], (3, 3, 3))[0])
    # a 1-tuple stands for every dimension, as in PyTorch, once another tuple fixes N
    torch.testing.assert_close(F.kfc(x, (3, 3), stride=(2,)), F.kfc(x, (3, 3), stride=2))


# -- the rank sweep ---------------------------------------------------------------------------------------------


def _hyper(c, form, transpose=False):
    """``(kernel_size, hyper-parameters, {"N": N} or {}, N stated?)``: tuples (``form="tuple"``), ints with
    ``N`` (``"N"``) or ints only (``"ints"``); tuples whenever the config's values differ between dimensions."""
    padding = c.padding
    kw = dict(stride=c.stride, padding=padding, dilation=c.dilation)
    if transpose:
        kw["output_padding"] = c.output_padding
    uniform = all(len(set(v)) == 1 for v in kw.values() if isinstance(v, tuple) and not isinstance(v[0], tuple)) and \
        len(set(c.kernel_size)) == 1 and not (isinstance(padding, tuple) and isinstance(padding[0], tuple))
    if form == "tuple" or not uniform:
        return c.kernel_size, kw, {}, True
    ints = {k: (v[0] if isinstance(v, tuple) else v) for k, v in kw.items()}
    return c.kernel_size[0], ints, ({"N": c.N} if form == "N" else {}), form == "N"


def _data(c):
    x, w = rand(*c.x_size), rand(*c.weight_size)
    out = (c.batch, c.out_channels) + c.output_size()
    return x, w, rand(*out)


def make_calls(c, form, V=2):
    """``name -> (fn, args, kwargs, sweep, squeeze, refused)`` for the config ``c``.

    ``sweep`` maps an argument's position to its kind: ``"batched"`` (rank ``N + 2``
    only), ``"unbatched"`` (also one sample, rank ``N + 1``; ``squeeze``: the result
    loses its batch dimension then), ``"vectors"`` (that and ``[V, B, ...]``), ``"fixed"``
    (exactly its rank, ``sqrt_ggn``), ``"size"`` (a shape tuple, exactly its length).
    ``refused``: nothing fixes ``N`` for an operation with several layouts, so every rank is a ValueError.
    """
    x, w, g = _data(c)
    conv_kw = c.kwargs()
    K, hyper, N_kw, stated = _hyper(c, form)
    s = rand(V, *g.shape)
    calls = {
        "conv": (F.conv, [x, w, rand(c.out_channels)], conv_kw, {0: "unbatched"}, True, False),
        "weight_vjp": (F.weight_vjp, [x, tuple(w.shape), g], conv_kw, {0: "batched", 1: "size", 2: "batched"}, False, False),
        "input_vjp": (F.input_vjp, [tuple(x.shape), w, g], conv_kw, {0: "size", 2: "batched"}, False, False),
        "weight_jvp": (F.weight_jvp, [x, w], conv_kw, {0: "unbatched"}, True, False),
        "input_jvp": (F.input_jvp, [x, w], conv_kw, {0: "unbatched"}, True, False),
        "per_sample_weight_grad": (F.per_sample_weight_grad, [x, tuple(w.shape), g], conv_kw,
                                   {0: "batched", 1: "size", 2: "batched"}, False, False),
        "ggn_diagonal": (F.ggn_diagonal, [x, tuple(w.shape), s], conv_kw, {0: "batched", 2: "fixed"}, False, False),
        "ggn_gram": (F.ggn_gram, [x, tuple(w.shape), s], conv_kw, {0: "batched", 2: "fixed"}, False, False),
        "hessian_diagonal_weight": (F.hessian_diagonal_weight, [x, tuple(w.shape), g.abs()], conv_kw,
                                    {0: "batched", 2: "batched"}, False, False),
        "hessian_diagonal_input": (F.hessian_diagonal_input, [w, tuple(x.shape), g.abs()], conv_kw,
                                   {1: "size", 2: "batched"}, False, False),
        "ggn_diagonal_input": (F.ggn_diagonal_input, [w, tuple(x.shape), s], conv_kw, {1: "size", 2: "fixed"}, False,
                               False),
        "kfc": (F.kfc, [x, K], dict(hyper, groups=c.groups, **N_kw), {0: "unbatched"}, False, not stated),
        "kfac_reduce": (F.kfac_reduce, [x, K], dict(hyper, groups=c.groups, **N_kw), {0: "unbatched"}, False,
                        not stated),
        "unfold": (F.unfold, [x, K], dict(hyper, **N_kw), {0: "unbatched"}, True, not stated),
        "kfc_output": (F.kfc_output, [g], dict(groups=c.groups, N=c.N), {0: "vectors"}, False, False),
        "kfac_reduce_output": (F.kfac_reduce_output, [g], dict(groups=c.groups, N=c.N), {0: "vectors"}, False, False),
        "sample_input": (lambda x, keep, **kw: F.sample_input(x, keep, generator=torch.Generator().manual_seed(0), **kw),
                         [x, (1.0,) + (0.5,) * c.N], dict(groups=c.groups), {0: "batched"}, False, False),
    }
    if c.batch * c.in_channels * max(c.output_size()) ** c.N <= 64 and c.N <= 2:
        calls["weight_jacobian"] = (F.weight_jacobian, [x, tuple(w.shape)], conv_kw, {0: "batched"}, False, False)
        calls["input_jacobian"] = (F.input_jacobian, [w, tuple(x.shape)], conv_kw, {1: "size"}, False, False)
    if c.batch == 1 and c.N == 1:
        calls["mixed_second_derivative"] = (F.mixed_second_derivative, [tuple(x.shape), tuple(w.shape)],
                                            dict(conv_kw, dtype=DT), {0: "size", 1: "size"}, False, False)
    # fold's N is not read from a rank: stated, or 2 as in PyTorch (so ints only where the config is 2-d)
    y = F.unfold(x, c.kernel_size, c.dilation, c.padding, c.stride)
    fold_K, fold_hyper, fold_N, _ = _hyper(c, "tuple" if c.N != 2 and form == "ints" else form)
    calls["fold"] = (F.fold, [y, c.input_size, fold_K], dict(fold_hyper, **fold_N), {0: "unbatched"}, True, False)
    return calls


def make_transpose_calls(c, form):
    x = rand(c.batch, c.out_channels, *c.input_size)
    w = rand(c.out_channels, c.in_channels // c.groups, *c.kernel_size)
    K, hyper, N_kw, stated = _hyper(c, form, transpose=True)
    convt_kw = dict(stride=c.stride, padding=c.padding, output_padding=c.output_padding, groups=c.groups,
                    dilation=c.dilation)
    xg = rand(c.batch, c.in_channels, *c.input_size)
    return {
        "conv_transpose": (F.conv_transpose, [x, w], convt_kw, {0: "unbatched"}, True, False),
        "unfold_transpose": (F.unfold_transpose, [x, K], dict(hyper, **N_kw), {0: "unbatched"}, True, not stated),
        "kfc_transpose": (F.kfc_transpose, [xg, K], dict(hyper, groups=c.groups, **N_kw), {0: "unbatched"}, False,
                          not stated),
        "kfac_reduce_transpose": (F.kfac_reduce_transpose, [xg, K], dict(hyper, groups=c.groups, **N_kw),
                                  {0: "unbatched"}, False, not stated),
    }


def _ranked(value, rank):
    """``value`` with ``rank`` dimensions (entries for a shape): leading ones dropped (first sample) or added (size 1)."""
    if isinstance(value, tuple):
        return value[len(value) - rank:] if rank <= len(value) else (1,) * (rank - len(value)) + value
    if rank <= value.ndim:
        return value[(0,) * (value.ndim - rank)]
    return value[(None,) * (rank - value.ndim)]


def _expected(fn, args, kwargs, position, kind, rank, squeeze, refused):
    """What ``fn`` must return with argument ``position`` at ``rank``: a tensor, or ``ValueError``."""
    value = args[position]
    full = len(value) if isinstance(value, tuple) else value.ndim
    if refused:  # several layouts and nothing fixes N: every rank is refused
        return ValueError
    if rank == full:
        return fn(*args, **kwargs)
    if kind in ("unbatched", "vectors") and rank == full - 1:
        one = list(args)
        one[position] = value[:1]
        result = fn(*one, **kwargs)
        return result.squeeze(0) if squeeze else result
    if kind == "vectors" and rank == full + 1:
        return fn(*args, **kwargs)
    return ValueError


def _check(fn, args, kwargs, position, kind, rank, squeeze, refused):
    expected = _expected(fn, args, kwargs, position, kind, rank, squeeze, refused)
    call = list(args)
    call[position] = _ranked(args[position], rank)
    if expected is ValueError:
        with pytest.raises(ValueError):
            fn(*call, **kwargs)
        return
    result = fn(*call, **kwargs)
    if isinstance(expected, tuple):  # sample_input: (sub-tensor, indices)
        torch.testing.assert_close(result[0], expected[0])
        return
    assert result.shape == expected.shape
    torch.testing.assert_close(result, expected)


def _sweep(calls, names, N):
    for name in names:
        if name not in calls:
            continue
        fn, args, kwargs, sweep, squeeze, refused = calls[name]
        for position, kind in sweep.items():
            for rank in range(1, N + 4):
                _check(fn, args, kwargs, position, kind, rank, squeeze, refused)


FORMS = st.sampled_from(["tuple", "N", "ints"])
NAMES = ["conv", "weight_vjp", "input_vjp", "weight_jvp", "input_jvp", "per_sample_weight_grad", "ggn_diagonal",
         "ggn_gram", "hessian_diagonal_weight", "hessian_diagonal_input", "ggn_diagonal_input", "kfc", "kfac_reduce",
         "unfold", "fold", "kfc_output", "kfac_reduce_output", "sample_input", "weight_jacobian", "input_jacobian",
         "mixed_second_derivative"]
TRANSPOSE_NAMES = ["conv_transpose", "unfold_transpose", "kfc_transpose", "kfac_reduce_transpose"]


def test_the_sweep_covers_every_functional():
    covered = set(NAMES) | set(TRANSPOSE_NAMES)
    # sampled_weight_vjp needs sample_input's indices; its ranks are checked in test_sampled_weight_vjp_ranks,
    # unfold_kernel takes no data tensor (weight fixes N; input_size is spatial, a 1-tuple standing for every dimension)
    assert set(F.__all__) - covered == {"sampled_weight_vjp", "unfold_kernel"}


@pytest.mark.parametrize("names", [NAMES[:6], NAMES[6:11], NAMES[11:]], ids=["forward-autodiff", "second-order", "x-only"])
@given(c=conv_configs(N=st.integers(1, 3), max_size=4, max_channels=2, max_batch=2), form=FORMS)
def test_every_rank_gives_the_documented_result_or_a_value_error(names, c, form):
    assume(c.batch >= 1)
    _sweep(make_calls(c, form), names, c.N)


@given(c=transpose_configs(N=st.integers(1, 3), max_size=4), form=FORMS)
def test_every_rank_of_the_transpose_operations(c, form):
    assume(c.batch >= 1)
    _sweep(make_transpose_calls(c, form), TRANSPOSE_NAMES, c.N)


def test_sampled_weight_vjp_ranks():
    x, g = rand(2, 3, 8), rand(2, 4, 6)
    sub, idx = F.sample_input(x, (1.0, 0.5))
    ok = F.sampled_weight_vjp(sub, idx, x.shape, (4, 3, 3), g)
    assert ok.shape == (4, 3, 3)
    for bad in (lambda: F.sampled_weight_vjp(sub[0], idx, x.shape, (4, 3, 3), g),
                lambda: F.sampled_weight_vjp(sub[None], idx, x.shape, (4, 3, 3), g),
                lambda: F.sampled_weight_vjp(sub, idx, x.shape[1:], (4, 3, 3), g),
                lambda: F.sampled_weight_vjp(sub, idx, x.shape, (4, 3, 3), g[0]),
                lambda: F.sampled_weight_vjp(sub, idx, x.shape, (4, 3, 3), g[None])):
        with pytest.raises(ValueError):
            bad()


def test_references_of_the_swept_batched_calls():
    """The sweep compares other ranks with the batched call; here the batched calls meet their references."""
    c = T.random_config(__import__("random").Random(5), 2, max_size=6)
    x, w, g = _data(c)
    torch.testing.assert_close(F.conv(x, w, **c.kwargs()), T.conv(x, w, **c.kwargs()))
    u = T.unfold(x, c.kernel_size, c.dilation, c.padding, c.stride)
    torch.testing.assert_close(F.unfold(x, c.kernel_size, c.dilation, c.padding, c.stride), u)
    ug = u.reshape(c.batch, c.groups, -1, u.shape[-1])
    torch.testing.assert_close(F.kfc(x, c.kernel_size, groups=c.groups, **{k: v for k, v in c.kwargs().items()
                                                                          if k != "groups"}),
                               torch.einsum("bgio,bgjo->gij", ug, ug) / c.batch)
