"""Every functional called on one configuration, with the layouts each argument may take.

:func:`functional_calls` and :func:`transpose_calls` turn a
:class:`~tnconv.testing.ConvConfig` into ready calls of every
:mod:`tnconv.functional` operation, each with a description of its arguments'
layouts; the rank sweep (``tests/test_layouts.py``) and the meta-device tests
run them.

Example:
    >>> import random
    >>> from tnconv.testing import random_config
    >>> calls = functional_calls(random_config(random.Random(0), N=2))
    >>> call = calls["conv"]
    >>> call.fn(*call.args, **call.kwargs).shape[:2] == (calls["conv"].args[0].shape[0], call.args[1].shape[0])
    True
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch

from .. import functional as F
from .references import ConvConfig

__all__ = ["Call", "functional_calls", "transpose_calls", "hyper_form", "FORMS"]

#: How hyper-parameters are given: tuples, ints with ``N``, ints only.
FORMS = ("tuple", "N", "ints")


class Call(NamedTuple):
    """One functional and its arguments.

    ``sweep`` maps an argument's position to its kind: ``"batched"`` (rank ``N + 2``
    only), ``"unbatched"`` (also one sample, rank ``N + 1``; ``squeeze``: the result
    loses its batch dimension then), ``"vectors"`` (that and ``[V, B, ...]``), ``"fixed"``
    (exactly its rank, ``sqrt_ggn``), ``"size"`` (a shape tuple, exactly its length).
    ``refused``: nothing fixes ``N`` for an operation with several layouts, so every
    call is a ValueError.
    """

    fn: Callable
    args: list
    kwargs: dict
    sweep: dict
    squeeze: bool = False
    refused: bool = False

    def __call__(self):
        return self.fn(*self.args, **self.kwargs)


def hyper_form(c: ConvConfig, form: str, transpose: bool = False):
    """``(kernel_size, hyper-parameters, {"N": N} or {}, N stated?)`` of the config ``c`` in the form ``form``.

    ``"tuple"``: tuples (they fix ``N``); ``"N"``: ints and the keyword ``N``;
    ``"ints"``: ints only, so nothing fixes ``N``. Tuples whenever the config's
    values differ between dimensions.

    Example:
        >>> from tnconv.testing import ConvConfig
        >>> c = ConvConfig(2, 1, 2, 2, (5, 5), (3, 3), (1, 1), 0, (1, 1), 1, (0, 0))
        >>> hyper_form(c, "N")
        (3, {'stride': 1, 'padding': 0, 'dilation': 1}, {'N': 2}, True)
    """
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


def functional_calls(c: ConvConfig, form: str = "tuple", dtype=torch.float64, V: int = 2) -> dict:
    """``name -> Call`` of every functional but the transpose family on the config ``c``.

    ``form`` is how the hyper-parameters of the operations no weight fixes ``N``
    for are given (:data:`FORMS`, see :func:`hyper_form`); ``V`` the number of
    vectors in ``sqrt_ggn``. The Jacobians and ``mixed_second_derivative`` are
    left out when they would be large.
    """
    def rand(*shape):
        return torch.randn(*shape, dtype=dtype)

    x, w = rand(*c.x_size), rand(*c.weight_size)
    g = rand(c.batch, c.out_channels, *c.output_size())
    s, W, X = rand(V, *g.shape), tuple(w.shape), tuple(x.shape)
    kw = c.kwargs()
    K, hyper, N_kw, stated = hyper_form(c, form)
    factor = dict(hyper, groups=c.groups, **N_kw)
    batched, one = {0: "batched", 2: "batched"}, {0: "unbatched"}
    keep = (1.0,) + (0.5,) * c.N
    calls = {
        "conv": Call(F.conv, [x, w, rand(c.out_channels)], kw, one, squeeze=True),
        "weight_vjp": Call(F.weight_vjp, [x, W, g], kw, {0: "batched", 1: "size", 2: "batched"}),
        "input_vjp": Call(F.input_vjp, [X, w, g], kw, {0: "size", 2: "batched"}),
        "weight_jvp": Call(F.weight_jvp, [x, w], kw, one, squeeze=True),
        "input_jvp": Call(F.input_jvp, [x, w], kw, one, squeeze=True),
        "per_sample_weight_grad": Call(F.per_sample_weight_grad, [x, W, g], kw, {0: "batched", 1: "size", 2: "batched"}),
        "per_sample_weight_grad_sq_norm": Call(F.per_sample_weight_grad_sq_norm, [x, W, g], kw,
                                               {0: "batched", 1: "size", 2: "batched"}),
        "ggn_diagonal": Call(F.ggn_diagonal, [x, W, s], kw, {0: "batched", 2: "fixed"}),
        "ggn_gram": Call(F.ggn_gram, [x, W, s], kw, {0: "batched", 2: "fixed"}),
        "hessian_diagonal_weight": Call(F.hessian_diagonal_weight, [x, W, g.abs()], kw, batched),
        "hessian_diagonal_input": Call(F.hessian_diagonal_input, [w, X, g.abs()], kw, {1: "size", 2: "batched"}),
        "ggn_diagonal_input": Call(F.ggn_diagonal_input, [w, X, s], kw, {1: "size", 2: "fixed"}),
        "kfc": Call(F.kfc, [x, K], factor, one, refused=not stated),
        "kfac_reduce": Call(F.kfac_reduce, [x, K], factor, one, refused=not stated),
        "unfold": Call(F.unfold, [x, K], dict(hyper, **N_kw), one, squeeze=True, refused=not stated),
        "kfc_output": Call(F.kfc_output, [g], dict(groups=c.groups, N=c.N), {0: "vectors"}),
        "kfac_reduce_output": Call(F.kfac_reduce_output, [g], dict(groups=c.groups, N=c.N), {0: "vectors"}),
        "sample_input": Call(_seeded_sample_input, [x, keep], dict(groups=c.groups), {0: "batched"}),
    }
    if c.batch * c.in_channels * max(c.output_size()) ** c.N <= 64 and c.N <= 2:
        calls["weight_jacobian"] = Call(F.weight_jacobian, [x, W], kw, {0: "batched"})
        calls["input_jacobian"] = Call(F.input_jacobian, [w, X], kw, {1: "size"})
    if c.batch == 1 and c.N == 1:
        calls["mixed_second_derivative"] = Call(F.mixed_second_derivative, [X, W], dict(kw, dtype=dtype),
                                                {0: "size", 1: "size"})
    # fold's N is not read from a rank: stated, or 2 as in PyTorch (so ints only where the config is 2-d)
    y = F.unfold(x, c.kernel_size, c.dilation, c.padding, c.stride)
    fold_K, fold_hyper, fold_N, _ = hyper_form(c, "tuple" if c.N != 2 and form == "ints" else form)
    calls["fold"] = Call(F.fold, [y, c.input_size, fold_K], dict(fold_hyper, **fold_N), one, squeeze=True)
    return calls


def _seeded_sample_input(x, crs_keep, **kwargs):
    """:func:`~tnconv.functional.sample_input` with a fresh seeded generator: the same draw at every call."""
    return F.sample_input(x, crs_keep, generator=torch.Generator(x.device if x.device.type != "meta" else "cpu")
                          .manual_seed(0), **kwargs)


def transpose_calls(c: ConvConfig, form: str = "tuple", dtype=torch.float64) -> dict:
    """``name -> Call`` of the transpose family on the config ``c`` (from :func:`~tnconv.testing.strategies.transpose_configs`).

    Example:
        >>> import random
        >>> from tnconv.testing import random_config
        >>> c = random_config(random.Random(1), N=1, allow_same=False)
        >>> sorted(transpose_calls(c))[:3]
        ['conv_transpose', 'ggn_diagonal_transpose', 'kfac_reduce_transpose']
    """
    def rand(*shape):
        return torch.randn(*shape, dtype=dtype)

    x = rand(c.batch, c.out_channels, *c.input_size)
    w = rand(c.out_channels, c.in_channels // c.groups, *c.kernel_size)
    xg = rand(c.batch, c.in_channels, *c.input_size)
    K, hyper, N_kw, stated = hyper_form(c, form, transpose=True)
    kw = dict(stride=c.stride, padding=c.padding, output_padding=c.output_padding, groups=c.groups, dilation=c.dilation)
    factor = dict(hyper, groups=c.groups, **N_kw)
    one = {0: "unbatched"}
    g = torch.randn_like(F.conv_transpose(x, w, **kw))
    W, derived = tuple(w.shape), {0: "batched", 1: "size", 2: "batched"}
    return {
        "conv_transpose": Call(F.conv_transpose, [x, w], kw, one, squeeze=True),
        "per_sample_weight_grad_transpose": Call(F.per_sample_weight_grad_transpose, [x, W, g], kw, derived),
        "per_sample_weight_grad_sq_norm_transpose": Call(F.per_sample_weight_grad_sq_norm_transpose, [x, W, g], kw,
                                                         derived),
        "ggn_diagonal_transpose": Call(F.ggn_diagonal_transpose, [x, W, torch.randn(2, *g.shape, dtype=dtype)], kw,
                                       {0: "batched", 2: "fixed"}),
        "unfold_transpose": Call(F.unfold_transpose, [x, K], dict(hyper, **N_kw), one, squeeze=True, refused=not stated),
        "kfc_transpose": Call(F.kfc_transpose, [xg, K], factor, one, refused=not stated),
        "kfac_reduce_transpose": Call(F.kfac_reduce_transpose, [xg, K], factor, one, refused=not stated),
    }
