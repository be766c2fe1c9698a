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

import torch

from .. import functional as F
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
        if not joint:
            return A
        patch = rows.sum((0, 1)).unsqueeze(0)
        return _append_bias(A, patch, B, O, form)
    groups = layer.groups
    hyper = layer.hyper()
    if layer.transposed:
        hyper["output_padding"] = layer.hyper(x, torch.empty(output_shape, device="meta"))["output_padding"]
    if shared and groups > 1:
        x, groups = _group_mean(x, groups), 1
    O = math.prod(output_shape[2:])
    kw = dict(hyper, groups=groups)
    if layer.transposed:
        fn = F.kfac_reduce_transpose if form == "reduce" else F.kfc_transpose
    else:
        kw.pop("output_padding", None)
        fn = F.kfac_reduce if form == "reduce" else F.kfc
    A = fn(x, **kw)
    if form == "expand":
        A = A / O
    if not joint:
        return A
    return _append_bias(A, _patch_sum(layer, x, hyper, output_shape, groups), B, O, form)


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
    return fn(g, groups=groups)


__all__ = ["input_factor", "gradient_factor", "INPUT_FORMS", "OUTPUT_FORMS"]
