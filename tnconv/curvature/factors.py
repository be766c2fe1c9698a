"""One batch's Kronecker factors of one layer, in each convention, from :mod:`tnconv.functional`.

The forms (``docs/curvature.md`` tabulates them with their constants):

- input factor, per channel group, with ``[[X_b]]`` the unfolded input and ``O`` the
  number of output positions (for a linear layer on ``[B, *S, d]`` inputs the
  positions are ``S``; for ``[B, d]`` inputs ``O = 1``):

  - ``"expand"``  ``1/(B·O) Σ_b [[X_b]][[X_b]]ᵀ``          = ``kfc / O``         (curvlinops, expand)
  - ``"reduce"``  ``1/(B·O²) Σ_b ([[X_b]]1)([[X_b]]1)ᵀ``   = ``kfac_reduce``     (curvlinops, reduce)
  - ``"sum"``     ``1/B Σ_b [[X_b]][[X_b]]ᵀ``               = ``kfc``             (BackPACK's KFAC/KFLR)

- gradient factor, with ``g_vbo`` the backpropagated columns of the loss
  Hessian's square root at the layer's output:

  - ``"expand"``  ``Σ_{v,b,o} g g ᵀ``                   = ``kfc_output``
  - ``"reduce"``  ``Σ_{v,b} (Σ_o g)(Σ_o g)ᵀ``           = ``kfac_reduce_output``

With ``shared=True`` a grouped convolution gets curvlinops' single factor pair:
the input averaged over the channel groups and one gradient factor over all
output channels. Otherwise the factors are exact per group, ``[G, ·, ·]``.

With ``joint=True`` (weight and bias as one matrix ``[W | b]``) the input
factor gains a last row and column from a constant-1 input entry per position:
``[[Ω, m], [mᵀ, c]]`` with ``m`` the patch sum scaled like ``Ω`` (``1/(B·O)``;
``1/B`` for ``"sum"``) and ``c = 1`` (``O`` for ``"sum"``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional

import torch

from .. import functional as F
from .._args import padding_pairs
from ..ir import output_size
from .layers import Layer

INPUT_FORMS = ("expand", "reduce", "sum")
OUTPUT_FORMS = ("expand", "reduce")


def _group_mean(x: torch.Tensor, groups: int) -> torch.Tensor:
    """``[B, C, *I]`` averaged over the channel groups: ``[B, C/G, *I]``."""
    B, C = x.shape[:2]
    return x.reshape(B, groups, C // groups, *x.shape[2:]).mean(1)


def _patch_sum(layer: Layer, x: torch.Tensor, hyper: dict, output_shape, groups: int) -> torch.Tensor:
    """``Σ_b Σ_o [[X_b]]_o`` per group, ``[G, C_in/G·K]``: a weight VJP of all-ones output gradients."""
    B, C = x.shape[:2]
    O = tuple(output_shape[2:])
    conv = {k: hyper[k] for k in ("stride", "padding", "dilation")}
    if not layer.transposed:
        ones = x.new_ones((B, groups) + O)
        return F.weight_vjp(x, (groups, C // groups) + tuple(hyper["kernel_size"]), ones, groups=groups,
                            **conv).reshape(groups, -1)
    # a transpose convolution is the input VJP of a convolution: its weight VJP swaps the roles of x and grad_output
    ones = x.new_ones((B, groups) + O)
    sizes = [1 + (o + 2 * p - d * (k - 1) - 1) // s for o, k, s, p, d in
             zip(O, hyper["kernel_size"], hyper["stride"], hyper["padding"], hyper["dilation"])]
    pad = []
    for size, i in zip(reversed(sizes), reversed(x.shape[2:])):
        pad += [0, size - i]  # output_padding beyond the stride: positions no input entry reaches
    grad = torch.nn.functional.pad(x, pad) if any(pad) else x
    w = F.weight_vjp(ones, (C, 1) + tuple(hyper["kernel_size"]), grad, groups=groups, **conv)
    return w.reshape(groups, -1)


@lru_cache(maxsize=1024)
def _live_kernel(spatial: tuple, kernel_size: tuple, stride: tuple, padding, dilation: tuple):
    """The kernel taps that ever see the input: ``(cropped hyper-parameters, (start, stop) per axis)``, or ``None``.

    A tap ``k`` of an axis multiplies input ``k·D + o·S − P_l`` at output ``o``;
    when that index is padding for every output, the tap's rows and columns of
    the input factor are zero (a 3x3 convolution with padding 1 on a 1x1
    input: only the centre tap is live, so the factor of ResNet-18's last
    layers at 32x32 is a ``C x C`` block in a ``9C x 9C`` matrix). The cropped
    convolution has the same outputs; its factor is scattered into the zeros.
    """
    N = len(spatial)
    pairs = padding_pairs(padding, N, kernel_size, dilation, stride)
    kernel, pads, slices, cropped = [], [], [], False
    for I, K, S, (pl, pr), D in zip(spatial, kernel_size, stride, pairs, dilation):
        O = output_size(I, K, S, pl, pr, D)
        live = [k for k in range(K) if max(0, -(-(pl - k * D) // S)) <= min(O - 1, (I - 1 - k * D + pl) // S)]
        lo, hi = (live[0], live[-1]) if live else (0, K - 1)
        pl2, pr2 = pl - lo * D, pr - (K - 1 - hi) * D
        if (lo, hi) == (0, K - 1) or pl2 < 0 or pr2 < 0 or output_size(I, hi - lo + 1, S, pl2, pr2, D) != O:
            lo, hi, pl2, pr2 = 0, K - 1, pl, pr
        else:
            cropped = True
        kernel.append(hi - lo + 1)
        pads.append((pl2, pr2))
        slices.append((lo, hi + 1))  # (start, stop): slices are not hashable before Python 3.12
    if not cropped:
        return None
    return dict(kernel_size=tuple(kernel), padding=tuple(pads)), tuple(slices)


@dataclass(frozen=True, eq=False)
class Block:
    """A factor ``[G, n, n]`` given by its rows and columns ``index`` (the others are zero).

    ``index=None`` means all rows: ``values`` is the dense factor. ``key``
    identifies the index (equal keys, equal index), so that factors of one
    layer add up block by block while its live kernel taps stay the same.

    Example:
        >>> b = Block(torch.ones(1, 1, 1), (0,), 3, "k")
        >>> b.dense()[0]
        tensor([[1., 0., 0.],
                [0., 0., 0.],
                [0., 0., 0.]])
    """

    values: torch.Tensor
    index: Optional[tuple]
    size: int
    key: object = None

    def dense(self) -> torch.Tensor:
        """The full ``[G, n, n]`` factor."""
        if self.index is None:
            return self.values
        out = self.values.new_zeros(self.values.shape[0], self.size, self.size)
        out[:, self.index_tensor(self.values.device).unsqueeze(1), self.index_tensor(self.values.device)] = self.values
        return out

    def index_tensor(self, device) -> torch.Tensor:
        """``index`` as a ``LongTensor`` on ``device``."""
        return _index(self.index).to(device)


@lru_cache(maxsize=256)
def _index(index: tuple) -> torch.Tensor:
    return torch.tensor(index, dtype=torch.long)


@lru_cache(maxsize=256)
def _live_index(channels: int, kernel_size: tuple, slices: tuple, joint: bool) -> tuple:
    """Positions of the live taps' rows in the full patch ``(c, k1..kN)``, plus the bias's last row if ``joint``."""
    full = torch.arange(channels * math.prod(kernel_size)).view(channels, *kernel_size)
    index = full[(slice(None),) + tuple(slice(*r) for r in slices)].reshape(-1).tolist()
    n = full.numel()
    return tuple(index + [n] if joint else index), n + int(joint)


def _linear_rows(x: torch.Tensor) -> torch.Tensor:
    """A linear layer's input ``[B, *S, d]`` as ``[B, S, d]``."""
    return x.reshape(x.shape[0], -1, x.shape[-1])


def input_factor(layer: Layer, x: torch.Tensor, output_shape, form: str, shared: bool = False,
                 joint: bool = False) -> torch.Tensor:
    """The batch's input factor of ``layer``, ``[G, n, n]`` (``n = patch_size`` plus 1 if ``joint``).

    Args:
        layer: the layer.
        x: its input as :meth:`Layer.functional_input` returns it.
        output_shape: the shape of its output.
        form: ``"expand"``, ``"reduce"`` or ``"sum"`` (module docstring).
        shared: curvlinops' group-averaged factor for grouped convolutions (``G = 1``).
        joint: append the bias's constant input.

    Example:
        >>> from tnconv.curvature import find_layers
        >>> layer = find_layers(torch.nn.Conv2d(4, 6, 3, groups=2))[0]
        >>> x = torch.randn(5, 4, 7, 7)
        >>> input_factor(layer, x, (5, 6, 5, 5), "reduce").shape, input_factor(layer, x, (5, 6, 5, 5), "expand", True).shape
        (torch.Size([2, 18, 18]), torch.Size([1, 18, 18]))
    """
    return input_factor_block(layer, x, output_shape, form, shared, joint).dense()


def input_factor_block(layer: Layer, x: torch.Tensor, output_shape, form: str, shared: bool = False,
                       joint: bool = False) -> Block:
    """:func:`input_factor` as a :class:`Block`: only the rows of kernel taps that ever see the input.

    Example:
        >>> from tnconv.curvature import find_layers
        >>> layer = find_layers(torch.nn.Conv2d(4, 6, 3, padding=1))[0]
        >>> block = input_factor_block(layer, torch.randn(2, 4, 1, 1), (2, 6, 1, 1), "reduce")
        >>> tuple(block.values.shape), block.size       # the centre tap of each of the 4 channels
        ((1, 4, 4), 36)
    """
    if form not in INPUT_FORMS:
        raise ValueError(f"form must be one of {INPUT_FORMS}, got {form!r}")
    B = x.shape[0]
    if layer.kind == "linear":
        rows = _linear_rows(x)
        O = rows.shape[1]
        if form == "reduce":
            mean = rows.mean(1)
            A = (mean.T @ mean / B).unsqueeze(0)
        else:
            flat = rows.reshape(-1, rows.shape[-1])
            A = (flat.T @ flat / (B if form == "sum" else B * O)).unsqueeze(0)
        if joint:
            A = _append_bias(A, rows.sum((0, 1)).unsqueeze(0), B, O, form)
        return Block(A, None, A.shape[-1])
    groups = layer.groups
    hyper = layer.hyper()
    if layer.transposed:
        hyper["output_padding"] = layer.hyper(x, torch.empty(output_shape, device="meta"))["output_padding"]
    if shared and groups > 1:
        x, groups = _group_mean(x, groups), 1
    O = math.prod(output_shape[2:])
    kw = dict(hyper, groups=groups)
    crop = None
    if layer.transposed:
        fn = F.kfac_reduce_transpose if form == "reduce" else F.kfc_transpose
    else:
        fn = F.kfac_reduce if form == "reduce" else F.kfc
        crop = _live_kernel(tuple(x.shape[2:]), hyper["kernel_size"], hyper["stride"], hyper["padding"],
                            hyper["dilation"])
        if crop is not None:
            kw.update(crop[0])
            hyper = dict(hyper, **crop[0])
    A = fn(x, **kw)
    if form == "expand":
        A = A.div_(O)
    if joint:
        A = _append_bias(A, _patch_sum(layer, x, hyper, output_shape, groups), B, O, form)
    if crop is None:
        return Block(A, None, A.shape[-1])
    key = (x.shape[1] // groups, tuple(layer.module.kernel_size), crop[1], joint)
    index, size = _live_index(*key)
    return Block(A, index, size, key)


def _append_bias(A: torch.Tensor, patch_sum: torch.Tensor, B: int, O: int, form: str) -> torch.Tensor:
    """``[[A, m], [mᵀ, c]]`` per group (module docstring)."""
    G, n, _ = A.shape
    m = patch_sum / (B if form == "sum" else B * O)
    c = float(O) if form == "sum" else 1.0
    out = A.new_empty(G, n + 1, n + 1)
    out[:, :n, :n] = A
    out[:, :n, n] = m
    out[:, n, :n] = m
    out[:, n, n] = c
    return out


def gradient_factor(layer: Layer, grads: torch.Tensor, form: str, shared: bool = False) -> torch.Tensor:
    """The gradient factor of backpropagated vectors ``grads`` ``[V, B, C_out, *O]``, ``[G, m, m]``.

    Sums over the vectors, the batch (and for ``"expand"`` the positions); the
    caller scales (the vectors carry the loss's reduction already).

    Example:
        >>> from tnconv.curvature import find_layers
        >>> layer = find_layers(torch.nn.Conv1d(2, 4, 3, groups=2))[0]
        >>> gradient_factor(layer, torch.randn(3, 5, 4, 6), "expand").shape
        torch.Size([2, 2, 2])
    """
    if form not in OUTPUT_FORMS:
        raise ValueError(f"form must be one of {OUTPUT_FORMS}, got {form!r}")
    g = grads.flatten(0, 1)
    if layer.kind == "linear":
        rows = g.reshape(g.shape[0], -1, g.shape[-1])
        flat = rows.sum(1) if form == "reduce" else rows.reshape(-1, rows.shape[-1])
        return (flat.T @ flat).unsqueeze(0)
    groups = 1 if shared else layer.groups
    fn = F.kfac_reduce_output if form == "reduce" else F.kfc_output
    return fn(g, groups=groups, N=g.ndim - 2)


__all__ = ["input_factor", "input_factor_block", "Block", "gradient_factor", "INPUT_FORMS", "OUTPUT_FORMS"]
