"""Curvature diagrams: Kronecker factors (KFC, KFAC-reduce) and GGN quantities.

All are wired from existing diagrams with :mod:`tnconv.passes`: two copies
of the unfolded input (or of the per-sample weight VJP) joined along the legs
that are summed together.

Conventions (``[[X_b]]`` is sample ``b``'s unfolded input restricted to group
``g``, shape ``[C_in/G·K, O]``, ``K = K1·..·KN``, ``O = O1·..·ON``):

* KFC / KFAC-expand (Grosse & Martens, 2016): ``Ω = 1/B Σ_b [[X_b]] [[X_b]]ᵀ``.
  This averages over the batch and *sums* over the ``O`` shared positions,
  the normalization of BackPACK's KFAC input factor; libraries that also
  divide by ``O`` differ by that factor.
* KFAC-reduce (Eschenhagen, 2022): ``Ω̂ = 1/(B·O²) Σ_b ([[X_b]] 1)([[X_b]] 1)ᵀ``,
  the outer product of the *average* over positions, averaged over the batch.
  Multiply by ``O`` for the convention of an un-averaged sum of rows.

Both have shape ``[G, C_in/G·K, C_in/G·K]`` (``G = 1`` included).
"""

from __future__ import annotations

from .. import passes
from .._args import ConvSpec
from ..ir.index import product
from .forward import conv, unfold, unfold_transpose


def _factor(patches, spec, reduce: bool, name: str):
    """Join two copies of a batched, grouped patch network into a Kronecker factor."""
    N = spec.N
    o_names = [f"o{d + 1}" for d in range(N)]
    shared = ["n", "g"] + ([] if reduce else o_names)
    copy = passes.rename_apart(patches, keep=shared)
    legs, legs2 = patches.legs, copy.legs
    group = (legs["g"],) if "g" in legs else ()
    rows = tuple(legs[n] for n in ["c"] + [f"k{d + 1}" for d in range(N)])
    cols = tuple(legs2[n + "'"] for n in ["c"] + [f"k{d + 1}" for d in range(N)])
    B = legs["n"].size
    scale = 1 / B
    if reduce:
        O = product(legs[o].size for o in o_names)
        scale = scale / O**2
    return passes.contract(patches, copy, output=(group, rows, cols), scale=scale, name=name)


def kfc(N, kernel_size, stride=1, padding=0, dilation=1, groups=1, input_size=None):
    """KFC (KFAC-expand) input factor of a convolution: input ``x`` ``[B, C_in, *I]``.

    Output ``[G, C_in/G·K, C_in/G·K]``: ``1/B Σ_b [[X_b]] [[X_b]]ᵀ`` per group.

    Example:
        >>> kfc(N=2, kernel_size=3, groups=2).output_shape
        (2, 9*C/2, 9*C/2)
    """
    spec = ConvSpec.make(N, kernel_size, stride, padding, dilation, groups)
    patches = unfold(N, kernel_size, dilation, padding, stride, groups, input_size=input_size)
    return _factor(patches, spec, False, f"kfc{spec.N}d")


def kfac_reduce(N, kernel_size, stride=1, padding=0, dilation=1, groups=1, input_size=None):
    """KFAC-reduce input factor: ``1/(B·O²) Σ_b ([[X_b]] 1)([[X_b]] 1)ᵀ`` per group.

    Example:
        >>> kfac_reduce(N=1, kernel_size=3).scale
        1/(B*(I1 - 2)**2)
    """
    spec = ConvSpec.make(N, kernel_size, stride, padding, dilation, groups)
    patches = unfold(N, kernel_size, dilation, padding, stride, groups, input_size=input_size)
    return _factor(patches, spec, True, f"kfac_reduce{spec.N}d")


def kfc_transpose(N, kernel_size, stride=1, padding=0, output_padding=0, dilation=1, groups=1):
    """KFC input factor of a transpose convolution (its unfolded input in place of ``[[X]]``).

    Example:
        >>> kfc_transpose(N=1, kernel_size=2, stride=2).output_shape
        (1, 2*C, 2*C)
    """
    spec = ConvSpec.make(N, kernel_size, stride, padding, dilation, groups)
    patches = unfold_transpose(N, kernel_size, stride, padding, output_padding, dilation, groups)
    return _factor(patches, spec, False, f"kfc_transpose{spec.N}d")


def kfac_reduce_transpose(N, kernel_size, stride=1, padding=0, output_padding=0, dilation=1, groups=1):
    """KFAC-reduce input factor of a transpose convolution.

    Example:
        >>> kfac_reduce_transpose(N=1, kernel_size=2, stride=2).inputs
        ('x',)
    """
    spec = ConvSpec.make(N, kernel_size, stride, padding, dilation, groups)
    patches = unfold_transpose(N, kernel_size, stride, padding, output_padding, dilation, groups)
    return _factor(patches, spec, True, f"kfac_reduce_transpose{spec.N}d")


def _per_sample_vjps(N, kernel_size, stride, padding, dilation, groups):
    """``J_Wᵀ s_vb`` for every ``v`` and ``b``: output ``[V, B, C_out, C_in/G, *K]``."""
    single = passes.vjp(conv(N, kernel_size, stride, padding, dilation, groups, batch=False), "w", "sqrt_ggn")
    per_sample = passes.batch(single, "n", "B", ["x", "sqrt_ggn"])
    return passes.batch(per_sample, "v", "V", ["sqrt_ggn"])


def ggn_diagonal(N, kernel_size, stride=1, padding=0, dilation=1, groups=1):
    """GGN diagonal for the weight: ``Σ_v Σ_b (J_Wᵀ s_vb)²``, inputs ``x`` and ``sqrt_ggn`` ``[V, B, C_out, *O]``.

    Two copies of the per-sample VJP share the weight legs as open legs (a
    Hadamard product) and sum ``v`` and ``n`` together.

    Example:
        >>> ggn_diagonal(N=1, kernel_size=3).output_shape
        (C_out, C_in, 3)
    """
    vjps = _per_sample_vjps(N, kernel_size, stride, padding, dilation, groups)
    weight_axes = vjps.output[2:]
    keep = {"v", "n"} | {leg.name for axis in weight_axes for leg in axis}
    return passes.contract(vjps, passes.rename_apart(vjps, keep=keep), output=weight_axes, name=f"ggn_diagonal{N}d")


def ggn_gram(N, kernel_size, stride=1, padding=0, dilation=1, groups=1):
    """Gram matrix ``[V·B, V·B]`` of the vectors ``J_Wᵀ s_vb`` (flattened over the weight).

    Example:
        >>> ggn_gram(N=1, kernel_size=3).output_shape
        (B*V, B*V)
    """
    vjps = _per_sample_vjps(N, kernel_size, stride, padding, dilation, groups)
    keep = {leg.name for axis in vjps.output[2:] for leg in axis}
    copy = passes.rename_apart(vjps, keep=keep)
    rows = vjps.output[0] + vjps.output[1]
    cols = copy.output[0] + copy.output[1]
    return passes.contract(vjps, copy, output=(rows, cols), name=f"ggn_gram{N}d")
