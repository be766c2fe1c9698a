"""Builders of the forward-family diagrams: convolution, unfold, fold and their transposes.

Each returns a :class:`~tnconv.ir.TensorNetwork` (a :class:`~tnconv.ir.NetworkSum`
with a bias). Sizes not fixed by the arguments are size symbols (``B``,
``C_in``, ``C_out``, ``I1``...) bound from the tensors when evaluated.
"""

from __future__ import annotations

from .._args import ConvSpec, ntuple
from ..ir import Index, NetworkSum, Tensor, TensorNetwork, size_symbol
from ._legs import channel_legs, group_leg, spatial, transpose_spatial


def _batch():
    return Index("n", size_symbol("B"))


def conv(N, kernel_size, stride=1, padding=0, dilation=1, groups=1, bias=False, input_size=None, batch=True) -> TensorNetwork | NetworkSum:
    """Diagram of an N-d convolution ``y = conv(x, w) (+ b)``.

    Inputs ``x`` ``[B, C_in, *I]``, ``w`` ``[C_out, C_in/G, *K]`` and, with
    ``bias=True``, ``b`` ``[C_out]``; output ``[B, C_out, *O]``. The spatial
    input size ``I`` is bound from ``x`` unless ``input_size`` fixes it (the
    input VJP needs that: several ``I`` give the same ``O``). With
    ``batch=False`` the diagram has no batch leg (``x`` is ``[C_in, *I]``);
    the batched diagram is that one after :func:`tnconv.passes.batch`.

    Example:
        >>> tn = conv(N=2, kernel_size=3, padding=1)
        >>> tn.inputs
        ('x', 'w')
        >>> tn.output_shape
        (B, C_out, I1, I2)
    """
    spec = ConvSpec.make(N, kernel_size, stride, padding, dilation, groups)
    G = spec.groups
    cin, cout = channel_legs("c_in", "C_in", G), channel_legs("c_out", "C_out", G)
    if input_size is not None:
        input_size = ntuple(input_size, spec.N, "input_size")
    dims = [spatial(spec, d, input_size) for d in range(spec.N)]
    x = Tensor("x", (cin,) + tuple((i,) for i, _, _, _ in dims))
    w = Tensor("w", (cout, (cin[-1],)) + tuple((k,) for _, _, k, _ in dims))
    output = (cout,) + tuple((o,) for _, o, _, _ in dims)
    tn = TensorNetwork((x,) + tuple(p for *_, p in dims) + (w,), output, name=f"conv{spec.N}d")
    return _finish(tn, bias, cout, output, [o for _, o, _, _ in dims], batch)


def _output_padding(output_padding, spec):
    output_padding = ntuple(output_padding, spec.N, "output_padding", minimum=0)
    for op, s, d in zip(output_padding, spec.stride, spec.dilation):
        if op >= max(s, d):
            raise ValueError(f"output_padding must be smaller than either stride or dilation, got "
                             f"output_padding={output_padding}, stride={spec.stride}, dilation={spec.dilation}")
    return output_padding


def _finish(tn, bias, cout, output, spatial_out, batched):
    """Add the bias term (broadcast with vectors of ones) and the batch leg."""
    if bias:
        ones = tuple(Tensor(f"ones_{o.name}", ((o,),), "constant", (("value", 1),)) for o in spatial_out)
        tn = NetworkSum((tn, TensorNetwork((Tensor("b", (cout,)),) + ones, output, name=f"{tn.name}_bias")), tn.name)
    if batched:
        from ..passes.batching import batch

        tn = batch(tn, "n", "B", ["x"])
    return tn


def conv_transpose(N, kernel_size, stride=1, padding=0, output_padding=0, dilation=1, groups=1, bias=False, batch=True):
    """Diagram of an N-d transpose convolution (the input VJP of a convolution).

    Inputs ``x`` ``[B, C_in, *I]``, ``w`` ``[C_in, C_out/G, *K]`` (PyTorch's
    layout) and optionally ``b`` ``[C_out]``; output ``[B, C_out, *O]`` with
    ``O = (I - 1) S - 2P + D (K - 1) + output_padding + 1``.
    """
    if isinstance(padding, str):
        raise ValueError(f"padding must be an int or a tuple for a transpose convolution, got {padding!r}")
    spec = ConvSpec.make(N, kernel_size, stride, padding, dilation, groups)
    output_padding = _output_padding(output_padding, spec)
    G = spec.groups
    cin, cout = channel_legs("c_in", "C_in", G), channel_legs("c_out", "C_out", G)
    dims = [transpose_spatial(spec, d, output_padding) for d in range(spec.N)]
    x = Tensor("x", (cin,) + tuple((i,) for i, _, _, _ in dims))
    w = Tensor("w", (cin, (cout[-1],)) + tuple((k,) for _, _, k, _ in dims))
    output = (cout,) + tuple((o,) for _, o, _, _ in dims)
    tn = TensorNetwork((x,) + tuple(p for *_, p in dims) + (w,), output, name=f"conv_transpose{spec.N}d")
    return _finish(tn, bias, cout, output, [o for _, o, _, _ in dims], batch)


def unfold(N, kernel_size, dilation=1, padding=0, stride=1, groups=1, batch=True, input_size=None) -> TensorNetwork:
    """Diagram of im2col: ``x`` ``[B, C, *I]`` to ``[B, C*K1*..*KN, O1*..*ON]``.

    ``groups`` splits the channel leg into ``(g c)`` (same values, more
    structure for the Kronecker factors of grouped convolutions); with
    ``batch=False`` there is no batch leg.

    Example:
        >>> unfold(N=2, kernel_size=3).output_shape
        (B, 9*C, (I1 - 2)*(I2 - 2))
    """
    spec = ConvSpec.make(N, kernel_size, stride, padding, dilation, groups)
    c = channel_legs("c", "C", spec.groups)
    if input_size is not None:
        input_size = ntuple(input_size, spec.N, "input_size")
    dims = [spatial(spec, d, input_size) for d in range(spec.N)]
    x = Tensor("x", (c,) + tuple((i,) for i, _, _, _ in dims))
    output = (c + tuple(k for *_, k, _ in dims), tuple(o for _, o, _, _ in dims))
    tn = TensorNetwork((x,) + tuple(p for *_, p in dims), output, name=f"unfold{spec.N}d")
    return _finish(tn, False, None, output, (), batch)


def fold(N, output_size, kernel_size, dilation=1, padding=0, stride=1) -> TensorNetwork:
    """Diagram of col2im, the adjoint of :func:`unfold`: ``[B, C*K, L]`` to ``[B, C, *output_size]``."""
    spec = ConvSpec.make(N, kernel_size, stride, padding, dilation)
    output_size = ntuple(output_size, spec.N, "output_size")
    n, c = _batch(), Index("c", size_symbol("C"))
    dims = [spatial(spec, d, input_size=output_size) for d in range(spec.N)]
    x = Tensor("x", ((n,), (c,) + tuple(k for *_, k, _ in dims), tuple(o for _, o, _, _ in dims)))
    output = ((n,), (c,)) + tuple((i,) for i, _, _, _ in dims)
    return TensorNetwork((x,) + tuple(p for *_, p in dims), output, name=f"fold{spec.N}d")


def unfold_kernel(N, kernel_size, input_size, stride=1, padding=0, dilation=1, groups=1) -> TensorNetwork:
    """Diagram of the Toeplitz matrix ``A(w)`` ``[C_out*O, C_in*I]`` of a convolution.

    ``conv(x, w).flatten(1) == x.flatten(1) @ A(w).T``; with groups, ``A`` is
    block diagonal, which a delta between the two group legs expresses.
    """
    spec = ConvSpec.make(N, kernel_size, stride, padding, dilation, groups)
    input_size = ntuple(input_size, spec.N, "input_size")
    G = spec.groups
    cin, cout = channel_legs("c_in", "C_in", G), channel_legs("c_out", "C_out", G)
    dims = [spatial(spec, d, input_size=input_size) for d in range(spec.N)]
    w = Tensor("w", (cout, (cin[-1],)) + tuple((k,) for _, _, k, _ in dims))
    tensors = (w,) + tuple(p for *_, p in dims)
    rows = cout + tuple(o for _, o, _, _ in dims)
    if G > 1:
        g2 = Index("g_in", G)
        tensors += (Tensor("delta_g", (g2, cout[0]), "delta"),)
        cols = (g2, cin[-1]) + tuple(i for i, _, _, _ in dims)
    else:
        cols = cin + tuple(i for i, _, _, _ in dims)
    return TensorNetwork(tensors, (rows, cols), name=f"unfold_kernel{spec.N}d")


def unfold_transpose(N, kernel_size, stride=1, padding=0, output_padding=0, dilation=1, groups=1, batch=True) -> TensorNetwork:
    """Diagram of the unfolded input of a transpose convolution, ``[B, C*K, O]``.

    ``conv_transpose(x, w).flatten(2) == w.transpose(0, 1).flatten(1) @ unfold_transpose(x)``
    for ``groups=1``.
    """
    if isinstance(padding, str):
        raise ValueError(f"padding must be an int or a tuple for a transpose convolution, got {padding!r}")
    spec = ConvSpec.make(N, kernel_size, stride, padding, dilation, groups)
    output_padding = _output_padding(output_padding, spec)
    c = channel_legs("c", "C", groups)
    dims = [transpose_spatial(spec, d, output_padding) for d in range(spec.N)]
    x = Tensor("x", (c,) + tuple((i,) for i, _, _, _ in dims))
    output = (c + tuple(k for *_, k, _ in dims), tuple(o for _, o, _, _ in dims))
    tn = TensorNetwork((x,) + tuple(p for *_, p in dims), output, name=f"unfold_transpose{spec.N}d")
    return _finish(tn, False, None, output, (), batch)
