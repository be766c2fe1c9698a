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
from tnconv.testing.calls import FORMS, functional_calls, transpose_calls
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


@pytest.mark.parametrize("N", [1, 2, 3])
def test_layers_take_an_unbatched_input_like_torch(N):
    from tnconv import nn as tnn

    ours = getattr(tnn, f"Conv{N}d")(3, 4, 2, stride=2, padding=1, dtype=DT)
    theirs = getattr(torch.nn, f"Conv{N}d")(3, 4, 2, stride=2, padding=1, dtype=DT)
    theirs.load_state_dict(ours.state_dict())
    x = rand(3, *(5,) * N).requires_grad_()
    y, y_ref = ours(x), theirs(x)
    torch.testing.assert_close(y, y_ref)
    g = torch.randn_like(y)
    for a, b in zip(torch.autograd.grad(y, [x, ours.weight, ours.bias], g),
                    torch.autograd.grad(y_ref, [x, theirs.weight, theirs.bias], g)):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="x must be"):
        ours(x[None, None])


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


NAMES = ["conv", "weight_vjp", "input_vjp", "weight_jvp", "input_jvp", "per_sample_weight_grad",
         "per_sample_weight_grad_sq_norm", "ggn_diagonal",
         "ggn_gram", "hessian_diagonal_weight", "hessian_diagonal_input", "ggn_diagonal_input", "kfc", "kfac_reduce",
         "unfold", "fold", "kfc_output", "kfac_reduce_output", "sample_input", "weight_jacobian", "input_jacobian",
         "mixed_second_derivative"]
TRANSPOSE_NAMES = ["conv_transpose", "unfold_transpose", "kfc_transpose", "kfac_reduce_transpose",
                   "per_sample_weight_grad_transpose", "per_sample_weight_grad_sq_norm_transpose",
                   "ggn_diagonal_transpose"]


def test_the_sweep_covers_every_functional():
    covered = set(NAMES) | set(TRANSPOSE_NAMES)
    # sampled_weight_vjp needs sample_input's indices; its ranks are checked in test_sampled_weight_vjp_ranks,
    # unfold_kernel takes no data tensor (weight fixes N; input_size is spatial, a 1-tuple standing for every dimension)
    assert set(F.__all__) - covered == {"sampled_weight_vjp", "unfold_kernel"}


@pytest.mark.parametrize("names", [NAMES[:7], NAMES[7:12], NAMES[12:]], ids=["forward-autodiff", "second-order", "x-only"])
@given(c=conv_configs(N=st.integers(1, 3), max_size=4, max_channels=2, max_batch=2), form=st.sampled_from(FORMS))
def test_every_rank_gives_the_documented_result_or_a_value_error(names, c, form):
    assume(c.batch >= 1)
    _sweep(functional_calls(c, form), names, c.N)


@given(c=transpose_configs(N=st.integers(1, 3), max_size=4), form=st.sampled_from(FORMS))
def test_every_rank_of_the_transpose_operations(c, form):
    assume(c.batch >= 1)
    _sweep(transpose_calls(c, form), TRANSPOSE_NAMES, c.N)


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
    x, w = rand(*c.x_size), rand(*c.weight_size)
    torch.testing.assert_close(F.conv(x, w, **c.kwargs()), T.conv(x, w, **c.kwargs()))
    u = T.unfold(x, c.kernel_size, c.dilation, c.padding, c.stride)
    torch.testing.assert_close(F.unfold(x, c.kernel_size, c.dilation, c.padding, c.stride), u)
    ug = u.reshape(c.batch, c.groups, -1, u.shape[-1])
    torch.testing.assert_close(F.kfc(x, c.kernel_size, groups=c.groups, **{k: v for k, v in c.kwargs().items()
                                                                          if k != "groups"}),
                               torch.einsum("bgio,bgjo->gij", ug, ug) / c.batch)
