"""Second-order diagrams: Hessian and GGN diagonals, full Jacobians, output-gradient Kronecker factors.

Squared Jacobians are Hadamard products of a Jacobian diagram with a copy of
itself that shares all its open legs; :func:`~tnconv.passes.pattern_pairs`
then merges the two index patterns (two legs of Π fix the third), so the
square of an unfolded kernel becomes the unfolded kernel of the squared
weight, and the square of an unfolded input the unfolded squared input.
"""

from __future__ import annotations

from .. import passes
from .._args import ConvSpec
from ..ir import Tensor, TensorNetwork
from .forward import conv
from ._legs import channel_legs


def _weighted_square(jacobian, n_out: int, weights: str, name: str):
    """``Σ_out weights[out] · J[out, arg]²`` for a Jacobian whose first ``n_out`` axes are the output."""
    open_names = [leg.name for leg in jacobian.output_legs]
    copy = passes.rename_apart(jacobian, keep=open_names)
    h = TensorNetwork((Tensor(weights, jacobian.output[:n_out]),), jacobian.output[:n_out])
    return passes.pattern_pairs(passes.contract(jacobian, copy, h, output=jacobian.output[n_out:], name=name))


def hessian_diagonal_weight(N, kernel_size, stride=1, padding=0, dilation=1, groups=1):
    """``Σ_b Σ_o output_diag[b, c_out, o] (∂y[b, c_out, o]/∂w)²``: inputs ``x``, ``output_diag``; output ``w``-shaped.

    The diagonal of ``Jᵀ diag(h) J`` for the weight (Becker & LeCun, 1989;
    HesScale). After the pattern pairing the diagram reads
    ``Σ x[n, c_in, i]² Π[i, o, k] h[n, c_out, o]``: the square of the unfolded
    input is the unfolded squared input.

    Example:
        >>> print(hessian_diagonal_weight(N=1, kernel_size=3).to_text().count("tensor x"))
        2
    """
    jac = passes.differentiate(conv(N, kernel_size, stride, padding, dilation, groups), "w")
    return _weighted_square(jac, N + 2, "output_diag", f"hessian_diagonal_weight{N}d")


def hessian_diagonal_input(N, kernel_size, input_size, stride=1, padding=0, dilation=1, groups=1):
    """``Σ_{c_out, o} output_diag[b, c_out, o] (∂y[b, c_out, o]/∂x[b, c_in, i])²``: inputs ``w``, ``output_diag``.

    Output ``[B, C_in, *input_size]``, what Hessian-diagonal methods backpropagate
    to the previous layer. The pattern pairing turns ``(Σ_k Π W)²`` into
    ``Σ_k Π W²``: for fixed input and output position at most one kernel entry
    connects them.

    Example:
        >>> hessian_diagonal_input(N=1, kernel_size=3, input_size=(8,)).inputs
        ('w', 'output_diag')
    """
    tn = conv(N, kernel_size, stride, padding, dilation, groups, input_size=input_size, batch=False)
    single = _weighted_square(passes.differentiate(tn, "x"), N + 1, "output_diag", f"hessian_diagonal_input{N}d")
    return passes.batch(single, "n", "B", ["output_diag"])  # per sample: samples do not mix


def ggn_diagonal_input(N, kernel_size, input_size, stride=1, padding=0, dilation=1, groups=1):
    """``Σ_v (J_xᵀ s_v)²`` per sample: inputs ``w`` and ``sqrt_ggn`` ``[V, B, C_out, *O]``; output ``[B, C_in, *I]``.

    Example:
        >>> ggn_diagonal_input(N=1, kernel_size=3, input_size=(8,)).output_shape
        (B, C_in, 8)
    """
    tn = conv(N, kernel_size, stride, padding, dilation, groups, input_size=input_size)
    vjps = passes.batch(passes.vjp(tn, "x", "sqrt_ggn"), "v", "V", ["sqrt_ggn"])
    keep = {"v"} | {leg.name for leg in vjps.output_legs}
    copy = passes.rename_apart(vjps, keep=keep)
    return passes.contract(vjps, copy, output=vjps.output[1:], name=f"ggn_diagonal_input{N}d")


def input_jacobian(N, kernel_size, input_size, stride=1, padding=0, dilation=1, groups=1):
    """``∂y/∂x``: input ``w``; output ``[B, C_out, *O, B, C_in, *I]`` (a delta ties the batch legs)."""
    tn = conv(N, kernel_size, stride, padding, dilation, groups, input_size=input_size)
    return passes.differentiate(tn, "x").replace(name=f"input_jacobian{N}d")


def weight_jacobian(N, kernel_size, stride=1, padding=0, dilation=1, groups=1):
    """``∂y/∂w``: input ``x``; output ``[B, C_out, *O, C_out, C_in/G, *K]`` (a delta ties the output channels)."""
    tn = conv(N, kernel_size, stride, padding, dilation, groups)
    return passes.differentiate(tn, "w").replace(name=f"weight_jacobian{N}d")


def mixed_second_derivative(N, kernel_size, input_size, stride=1, padding=0, dilation=1, groups=1):
    """``∂²y/∂w∂x`` by cutting twice: no inputs; output ``[B, C_out, *O, C_out, C_in/G, *K, B, C_in, *I]``.

    Example:
        >>> mixed_second_derivative(N=1, kernel_size=2, input_size=(4,)).inputs
        ()
    """
    tn = conv(N, kernel_size, stride, padding, dilation, groups, input_size=input_size)
    return passes.differentiate(passes.differentiate(tn, "w"), "x").replace(name=f"mixed_second_derivative{N}d")


def _output_gradients(N, groups):
    """The identity network on ``grad_output`` ``[B, C_out, *O]`` with its channels split into groups."""
    from ..ir import Index, size_symbol

    n = Index("n", size_symbol("B"))
    c = channel_legs("c", "C_out", groups)
    spatial = tuple(Index(f"o{d + 1}", size_symbol(f"O{d + 1}")) for d in range(N))
    axes = ((n,), c) + tuple((o,) for o in spatial)
    return TensorNetwork((Tensor("grad_output", axes),), axes, name="grad_output")


def _output_factor(N, groups, reduce: bool, name: str):
    g = _output_gradients(N, groups)
    shared = ["n", "g"] + ([] if reduce else [f"o{d + 1}" for d in range(N)])
    copy = passes.rename_apart(g, keep=shared)
    group = (g.legs["g"],) if "g" in g.legs else ()
    return passes.contract(g, copy, output=(group, (g.legs["c"],), (copy.legs["c'"],)), name=name)


def kfc_output(N, groups=1):
    """KFAC-expand output factor ``Σ_b Σ_o g_bo g_boᵀ`` per group: input ``grad_output``; ``[G, C_out/G, C_out/G]``.

    Example:
        >>> kfc_output(N=2, groups=2).output_shape
        (2, C_out/2, C_out/2)
    """
    ConvSpec.make(N, 1, groups=groups)
    return _output_factor(N, groups, False, f"kfc_output{N}d")


def kfac_reduce_output(N, groups=1):
    """KFAC-reduce output factor ``Σ_b (Σ_o g_bo)(Σ_o g_bo)ᵀ`` per group: input ``grad_output``.

    Example:
        >>> kfac_reduce_output(N=1).inputs
        ('grad_output',)
    """
    ConvSpec.make(N, 1, groups=groups)
    return _output_factor(N, groups, True, f"kfac_reduce_output{N}d")
