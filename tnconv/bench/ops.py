"""The benchmarked operations, each as a pair: tnconv's and the standard PyTorch way.

The standard implementations are what a PyTorch user writes today:
``torch.nn.functional.conv2d`` and ``torch.nn.grad.conv2d_{input,weight}`` for
the convolution and its VJPs, and for the Kronecker factors the im2col
recipe of KFAC libraries -- ``torch.nn.functional.unfold``, then a matrix
product per channel group (KFC) or an average over output positions before
it (KFAC-reduce). ``unfold`` is 2d only, so the factors' references are too.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple

import torch

from .. import functional as tf
from .layers import Layer

#: Operation names, in the order tables and plots list them.
OPS = ("forward", "input_vjp", "weight_vjp", "kfc", "kfac_reduce")


def _unfold_groups(x, kernel_size, stride, padding, dilation, groups):
    """im2col of ``x`` split by channel group: ``[B, G, C_in/G·K, O]``."""
    u = torch.nn.functional.unfold(x, kernel_size, dilation=dilation, padding=padding, stride=stride)
    return u.reshape(x.shape[0], groups, u.shape[1] // groups, u.shape[2])


def standard_kfc(x, kernel_size, stride=1, padding=0, dilation=1, groups=1) -> torch.Tensor:
    """KFC the usual way: ``unfold``, then ``[[X]] [[X]]ᵀ / B`` per group, ``[G, C_in/G·K, C_in/G·K]``.

    Example:
        >>> x = torch.randn(2, 4, 6, 6, dtype=torch.float64)
        >>> torch.allclose(standard_kfc(x, 3, groups=2), tf.kfc(x, (3, 3), groups=2))
        True
    """
    u = _unfold_groups(x, kernel_size, stride, padding, dilation, groups)
    B, G, CK, O = u.shape
    # rows (b, o) of each group's matrix: the copy a permute-and-reshape makes is part of the recipe
    u = u.permute(1, 0, 3, 2).reshape(G, B * O, CK)
    return torch.bmm(u.transpose(1, 2), u) / B


def standard_kfac_reduce(x, kernel_size, stride=1, padding=0, dilation=1, groups=1) -> torch.Tensor:
    """KFAC-reduce the usual way: ``unfold``, average over output positions, outer product per group, ``/ B``.

    Example:
        >>> x = torch.randn(2, 4, 6, 6, dtype=torch.float64)
        >>> torch.allclose(standard_kfac_reduce(x, 3, groups=2), tf.kfac_reduce(x, (3, 3), groups=2))
        True
    """
    u = _unfold_groups(x, kernel_size, stride, padding, dilation, groups)
    m = u.mean(-1).transpose(0, 1)  # [G, B, C_in/G·K]
    return torch.bmm(m.transpose(1, 2), m) / x.shape[0]


def _torch_conv(N: int):
    return getattr(torch.nn.functional, f"conv{N}d")


def _torch_grad(N: int, what: str):
    return getattr(torch.nn.grad, f"conv{N}d_{what}")


def data(layer: Layer, op: str, dtype=torch.float32, seed: int = 0) -> Tuple[torch.Tensor, Optional[torch.Tensor],
                                                                               Optional[torch.Tensor]]:
    """``(x, w, g)``: the random input, weight and output gradient ``op`` takes on ``layer`` (None where unused).

    Every implementation gets these same values for the same ``seed``.

    Example:
        >>> from tnconv.bench.layers import NETS
        >>> x, w, g = data(NETS["2c2d"][0], "kfc")
        >>> tuple(x.shape), w, g
        ((128, 1, 28, 28), None, None)
    """
    if op not in OPS:
        raise ValueError(f"unknown operation {op!r}; choose from {list(OPS)}")
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(layer.x_size, generator=gen, dtype=dtype)
    if op in ("kfc", "kfac_reduce"):
        return x, None, None
    w = torch.randn(layer.weight_size, generator=gen, dtype=dtype)
    if op == "forward":
        return x, w, None
    g = torch.randn((layer.batch, layer.out_channels) + layer.output_size, generator=gen, dtype=dtype)
    return x, w, g


def make(layer: Layer, op: str, dtype=torch.float32, seed: int = 0) -> Tuple[Callable, Callable]:
    """``(tnconv, standard)``: two argument-free callables computing ``op`` on ``layer`` from the same random data.

    Example:
        >>> from tnconv.bench.layers import NETS
        >>> ours, theirs = make(NETS["2c2d"][0], "forward", torch.float64)
        >>> torch.allclose(ours(), theirs())
        True
    """
    x, w, g = data(layer, op, dtype, seed)
    N = len(layer.input_size)
    hyper = dict(stride=layer.stride, padding=layer.padding, dilation=layer.dilation, groups=layer.groups)
    if op in ("kfc", "kfac_reduce"):
        ours_fn, theirs_fn = (tf.kfc, standard_kfc) if op == "kfc" else (tf.kfac_reduce, standard_kfac_reduce)
        args = (layer.kernel_size, layer.stride, layer.padding, layer.dilation, layer.groups)
        return (lambda: ours_fn(x, *args)), (lambda: theirs_fn(x, *args))
    if op == "forward":
        conv = _torch_conv(N)
        return (lambda: tf.conv(x, w, **hyper)), (lambda: conv(x, w, **hyper))
    if op == "input_vjp":
        grad, size = _torch_grad(N, "input"), layer.x_size
        return (lambda: tf.input_vjp(size, w, g, **hyper)), (lambda: grad(size, w, g, **hyper))
    grad, size = _torch_grad(N, "weight"), layer.weight_size
    return (lambda: tf.weight_vjp(x, size, g, **hyper)), (lambda: grad(x, size, g, **hyper))


def make_tuned(layer: Layer, op: str, dtype=torch.float32, seed: int = 0) -> Callable:
    """tnconv's callable of :func:`make` with autotuning on for its calls (:func:`tnconv.autotune.autotuning`).

    The functional API keeps one compiled network per setting of the switch, so
    this and :func:`make`'s callable run side by side, each from its own plans.

    Example:
        >>> from tnconv.bench.layers import NETS
        >>> tuned = make_tuned(NETS["2c2d"][0], "forward", torch.float64)
        >>> torch.allclose(tuned(), make(NETS["2c2d"][0], "forward", torch.float64)[1]())
        True
    """
    return autotuned(make(layer, op, dtype, seed)[0])


def autotuned(fn: Callable) -> Callable:
    """``fn`` (a call of tnconv's functional API) run with autotuning on.

    The benchmark wraps tnconv's own callable, so that both run on the very same
    tensors: a copy of the data would start each call from a cold cache.

    Example:
        >>> x = torch.randn(2, 3, 8, 8)
        >>> torch.allclose(autotuned(lambda: tf.kfc(x, (3, 3)))(), tf.kfc(x, (3, 3)), atol=1e-5)
        True
    """
    from ..autotune import autotuning

    def tuned():
        with autotuning(True):
            return fn()

    return tuned


def floors(layer: Layer, op: str, dtype=torch.float32, seed: int = 0) -> Dict[str, Callable]:
    """The unavoidable work of ``op`` on ``layer`` besides PyTorch's kernel, as argument-free callables.

    Operands are prepared outside the calls, on :func:`data`'s values:

    * ``kfc``: ``{"gram": ...}``, the Gram product ``U Uᵀ`` per group of the
      already unfolded input ``U = [G, C_in/G·K, B·O]`` (one ``bmm``);
    * ``kfac_reduce``: ``{"gram": ...}``, the Gram product of the already
      reduced input (patches averaged over positions), ``[G, C_in/G·K, B]``;
    * forward and VJPs of a dense layer (``K = S``, a 1x1 convolution among
      them): ``{"matmul": ...}``, the one matrix product on the already
      unfolded operands (``[G, ·, B·O]``), and ``{"matmul/per-sample": ...}``
      (forward, input VJP), one product per sample in ``[B, C, O]`` layout;
      ``{}`` for other layers, whose floor is PyTorch's kernel alone.

    The floor of a row is the fastest of these and, for the forward and VJPs,
    PyTorch's kernel (the standard implementation).

    Example:
        >>> from tnconv.bench.layers import NETS
        >>> sorted(floors(NETS["resnext101"][1], "forward"))  # a 1x1 convolution
        ['matmul', 'matmul/per-sample']
        >>> sorted(floors(NETS["2c2d"][0], "forward")), sorted(floors(NETS["2c2d"][0], "kfc"))
        ([], ['gram'])
    """
    x, w, g = data(layer, op, dtype, seed)
    G, B = layer.groups, layer.batch
    args = (layer.kernel_size, layer.stride, layer.padding, layer.dilation, G)
    if op in ("kfc", "kfac_reduce"):
        u = _unfold_groups(x, *args)  # [B, G, C/G·K, O]
        if op == "kfac_reduce":
            u = u.mean(-1, keepdim=True)
        m = u.permute(1, 2, 0, 3).reshape(G, u.shape[2], -1).contiguous()
        return {"gram": lambda: torch.bmm(m, m.mT)}
    if layer.kind != "dense":
        return {}
    u = _unfold_groups(x, *args)  # a permutation of x: K = S, no padding
    O = u.shape[-1]
    flat = u.permute(1, 2, 0, 3).reshape(G, u.shape[2], B * O).contiguous()  # [G, C/G·K, B·O]
    wm = w.reshape(G, layer.out_channels // G, -1)  # [G, C_out/G, C/G·K]
    if op == "forward":
        return {"matmul": lambda: torch.bmm(wm, flat), "matmul/per-sample": lambda: torch.matmul(wm, u)}
    gg = g.reshape(B, G, layer.out_channels // G, O)
    gflat = gg.permute(1, 2, 0, 3).reshape(G, -1, B * O).contiguous()  # [G, C_out/G, B·O]
    if op == "input_vjp":
        wt = wm.mT.contiguous()
        return {"matmul": lambda: torch.bmm(wt, gflat), "matmul/per-sample": lambda: torch.matmul(wt, gg)}
    return {"matmul": lambda: torch.bmm(gflat, flat.mT)}


def read_floor(layer: Layer, op: str, dtype=torch.float32, seed: int = 0) -> Optional[Callable]:
    """For KFC and KFAC-reduce, one pass over the input ``x`` (its sum), else ``None``.

    The Gram floor of :func:`floors` starts from an input already unfolded or
    reduced; any implementation must first read ``x`` once, which on a layer with
    few channels and many pixels (a KFAC-reduce ``[G, C/G·K, B]`` Gram product of a
    few thousand elements) takes far longer than the product. The benchmark adds
    this time to the Gram floor for its ``tuned_read_floor_ratio``.

    Example:
        >>> from tnconv.bench.layers import NETS
        >>> read_floor(NETS["2c2d"][0], "kfac_reduce")().shape, read_floor(NETS["2c2d"][0], "forward")
        (torch.Size([]), None)
    """
    if op not in ("kfc", "kfac_reduce"):
        return None
    x = data(layer, op, dtype, seed)[0]
    return lambda: x.sum()


#: Operation name -> one-line description, for the README table and ``--help``.
DESCRIPTIONS: Dict[str, str] = {
    "forward": "tnconv.functional.conv vs torch.nn.functional.conv2d",
    "input_vjp": "tnconv.functional.input_vjp vs torch.nn.grad.conv2d_input",
    "weight_vjp": "tnconv.functional.weight_vjp vs torch.nn.grad.conv2d_weight",
    "kfc": "tnconv.functional.kfc vs unfold + per-group [[X]][[X]]ᵀ / B",
    "kfac_reduce": "tnconv.functional.kfac_reduce vs unfold, mean over positions, outer product / B",
}

__all__ = ["OPS", "DESCRIPTIONS", "data", "make", "make_tuned", "autotuned", "floors", "read_floor", "standard_kfc", "standard_kfac_reduce"]
