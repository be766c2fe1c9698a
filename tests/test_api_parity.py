"""API parity with PyTorch's twins: Unfold/Fold modules, ``output_size`` of the transpose operations."""

import random
import re

import pytest
import torch

from tnconv import functional as F
from tnconv import nn as tnn
from tnconv import testing as T

DT = torch.float64
CONVT = {1: torch.nn.ConvTranspose1d, 2: torch.nn.ConvTranspose2d, 3: torch.nn.ConvTranspose3d}


def rand(*shape):
    return torch.randn(*shape, dtype=DT)


# -- Unfold / Fold ----------------------------------------------------------------------------------------------


def _unfold_args(c):
    padding = c.padding if c.padding != "valid" else 0
    return dict(kernel_size=c.kernel_size, dilation=c.dilation, padding=padding, stride=c.stride)


@pytest.mark.parametrize("seed", range(3))
def test_unfold_and_fold_modules_match_torch_in_2d(seed):
    rng = random.Random(seed)
    for _ in range(8):
        c = T.random_config(rng, 2, allow_same=False)
        kw = _unfold_args(c)
        ours, theirs = tnn.Unfold(**kw), torch.nn.Unfold(**kw)
        assert repr(ours) == repr(theirs)
        x = rand(*c.x_size)
        torch.testing.assert_close(ours(x), theirs(x))
        torch.testing.assert_close(ours(x[0]), theirs(x[0]))  # unbatched, as torch reads it
        y = theirs(x)
        fold, fold_ref = tnn.Fold(c.input_size, **kw), torch.nn.Fold(c.input_size, **kw)
        assert repr(fold) == repr(fold_ref)
        torch.testing.assert_close(fold(y), fold_ref(y))
        torch.testing.assert_close(fold(y[0]), fold_ref(y[0]))


def test_int_arguments_are_2d_as_in_torch():
    x = rand(2, 3, 6, 7)
    torch.testing.assert_close(tnn.Unfold(3, padding=1)(x), torch.nn.Unfold(3, padding=1)(x))
    torch.testing.assert_close(tnn.Unfold(3)(x[0]), torch.nn.Unfold(3)(x[0]))
    y = rand(12, 9)
    torch.testing.assert_close(tnn.Fold(4, 2)(y), torch.nn.Fold(4, 2)(y))


@pytest.mark.parametrize("N", [1, 3, 4])
def test_unfold_and_fold_modules_any_N(N):
    rng = random.Random(N)
    for _ in range(4):
        c = T.random_config(rng, N, max_size=5)
        kw = _unfold_args(c)
        x = rand(*c.x_size)
        u = tnn.Unfold(**kw)(x)
        torch.testing.assert_close(u, T.unfold(x, **kw))
        torch.testing.assert_close(tnn.Unfold(**kw)(x[0]), u[0])
        y = torch.randn_like(u)
        torch.testing.assert_close(tnn.Fold(c.input_size, **kw)(y), T.fold(y, c.input_size, **kw))


def test_module_N_keyword_and_repr():
    assert repr(tnn.Unfold(3, N=3)) == "Unfold(kernel_size=3, dilation=1, padding=0, stride=1, N=3)"
    assert repr(tnn.Unfold((3, 3, 3))) == "Unfold(kernel_size=(3, 3, 3), dilation=1, padding=0, stride=1)"
    assert repr(tnn.Fold(5, 2, N=1)) == "Fold(output_size=5, kernel_size=2, dilation=1, padding=0, stride=1, N=1)"
    x = rand(2, 3, 5, 5, 5)
    torch.testing.assert_close(tnn.Unfold(3, N=3)(x), F.unfold(x, (3, 3, 3)))
    assert tnn.Unfold(2, stride=2, N=1)(rand(2, 3, 8)).shape == (2, 6, 4)
    assert not list(tnn.Unfold(3).parameters()) and tnn.Fold(4, 2).state_dict() == {}


@pytest.mark.parametrize("make, match", [
    (lambda: tnn.Unfold(0), "kernel_size"),
    (lambda: tnn.Unfold((3, 3), stride=(1, 1, 1)), "kernel_size|stride"),
    (lambda: tnn.Unfold(3, N=0), "N"),
    (lambda: tnn.Fold((4, 4, 4), (2, 2)), "kernel_size"),
    (lambda: tnn.Fold(4, 2, padding=-1), "padding"),
])
def test_bad_module_arguments_fail_at_construction(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_module_rank_errors():
    with pytest.raises(ValueError, match=r"x must be .*for N=2 spatial dimensions, got shape \(1, 2, 3, 6, 6\)"):
        tnn.Unfold(3)(rand(1, 2, 3, 6, 6))  # as torch.nn.Unfold(3), 2-d: 5 dimensions are no layout


# -- output_size of the transpose operations --------------------------------------------------------------------


def _transpose_configs(N, count, seed):
    rng, out = random.Random(100 * N + seed), []
    while len(out) < count:
        c = T.random_config(rng, N, max_size=5, allow_same=False)
        c.padding = c.padding if c.padding != "valid" else 0
        pads = c.padding if isinstance(c.padding, tuple) else (c.padding,) * N
        sizes = [(I - 1) * s - 2 * p + d * (k - 1) + 1 for I, s, p, d, k in
                 zip(c.input_size, c.stride, pads, c.dilation, c.kernel_size)]
        if all(n >= 1 for n in sizes):
            out.append((c, sizes))
    return out


@pytest.mark.parametrize("N", [1, 2, 3])
def test_output_size_resolves_like_conv_transpose_forward(N):
    for c, smallest in _transpose_configs(N, 6, 0):
        layer = CONVT[N](c.out_channels, c.in_channels, c.kernel_size, c.stride, c.padding, groups=c.groups,
                         dilation=c.dilation, dtype=DT)
        x = rand(c.batch, c.out_channels, *c.input_size)
        rng = random.Random(sum(smallest))
        size = [n + rng.randint(0, s - 1) for n, s in zip(smallest, c.stride)]
        kw = dict(stride=c.stride, padding=c.padding, groups=c.groups, dilation=c.dilation)
        for given in (size, [c.batch, c.in_channels] + size, torch.Size(size)):
            expected = layer(x, output_size=given)
            torch.testing.assert_close(F.conv_transpose(x, layer.weight, layer.bias, output_size=given, **kw), expected)
        torch.testing.assert_close(F.conv_transpose(x[0], layer.weight, layer.bias, output_size=[c.in_channels] + size,
                                                    **kw), layer(x[0], output_size=size))
        # the factors and the unfolded input see the same output padding
        op = tuple(n - m for n, m in zip(size, smallest))
        hyper = dict(stride=c.stride, padding=c.padding, dilation=c.dilation)
        torch.testing.assert_close(F.unfold_transpose(x, c.kernel_size, output_size=size, **hyper),
                                   F.unfold_transpose(x, c.kernel_size, output_padding=op, **hyper))
        xg = rand(c.batch, c.in_channels, *c.input_size)
        for fn in (F.kfc_transpose, F.kfac_reduce_transpose):
            torch.testing.assert_close(fn(xg, c.kernel_size, output_size=size, groups=c.groups, **hyper),
                                       fn(xg, c.kernel_size, output_padding=op, groups=c.groups, **hyper))


def _torch_message(call):
    with pytest.raises(ValueError) as info:
        call()
    return str(info.value)


@pytest.mark.parametrize("size", [[9, 9], [11, 12], [8, 12], [1, 2, 3], [1, 2, 3, 4, 5]])
def test_output_size_errors_say_what_pytorch_says(size):
    layer = CONVT[2](4, 3, 3, stride=(2, 3), padding=1, dtype=DT)
    x = rand(2, 4, 5, 4)
    theirs = _torch_message(lambda: layer(x, output_size=size))
    for call in (lambda: F.conv_transpose(x, layer.weight, stride=(2, 3), padding=1, output_size=size),
                 lambda: F.unfold_transpose(x, (3, 3), stride=(2, 3), padding=1, output_size=size),
                 lambda: F.kfc_transpose(x, (3, 3), stride=(2, 3), padding=1, output_size=size)):
        ours = _torch_message(call)
        if "valid sizes" in theirs:
            assert re.search(r"valid sizes range from \[9, 10\] to \[10, 12\]", theirs)
            assert "valid sizes range from [9, 10] to [10, 12] (for an input of [5, 4])" in ours
            assert f"requested an output size of {size}" in ours
        else:
            assert "output_size must have 2 or 4 elements" in theirs and "output_size must have 2 or 4 entries" in ours


def test_output_size_and_output_padding_together_are_refused():
    x, w = rand(1, 2, 5), rand(2, 3, 3)
    with pytest.raises(ValueError, match="output_size=.*output_padding"):
        F.conv_transpose(x, w, stride=2, output_padding=1, output_size=(12,))
    with pytest.raises(TypeError, match="output_size"):
        F.conv_transpose(x, w, stride=2, output_size="12")
