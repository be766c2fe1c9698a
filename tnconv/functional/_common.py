"""Helpers shared by the functional operations: the compiled-diagram cache and checks."""

from __future__ import annotations

from functools import lru_cache

import torch

from .. import diagrams
from .._args import ConvSpec, check_same, check_size, check_tensor, ntuple
from ..autotune.switch import autotune_enabled
from ..compiler import compile as _compile
from ..ir import output_size

#: Backend used by the functional API.
BACKEND = "cotengra"


def compiled(op: str, **hyper):
    """The compiled network of ``diagrams.<op>(**hyper)`` (cached), autotuned if :func:`tnconv.set_autotune` says so.

    One compiled network per setting of the switch: flipping it never drops the other's plans.
    """
    return _compiled(op, autotune_enabled(), **hyper)


@lru_cache(maxsize=512)
def _compiled(op: str, autotune: bool, **hyper):
    return _compile(getattr(diagrams, op)(**hyper), backend=BACKEND, autotune=autotune)


def _freeze(spec: ConvSpec) -> dict:
    return dict(kernel_size=spec.kernel_size, stride=spec.stride, padding=spec.padding, dilation=spec.dilation)


def _check_output(spec: ConvSpec, spatial, name="x") -> tuple:
    sizes = []
    for d, I in enumerate(spatial):
        (pl, pr), K, S, D = spec.padding[d], spec.kernel_size[d], spec.stride[d], spec.dilation[d]
        O = output_size(I, K, S, pl, pr, D)
        if O < 1:
            raise ValueError(f"kernel_size {spec.kernel_size} with dilation {spec.dilation} is larger than the padded "
                             f"input of {name} along spatial dimension {d} (size {I}, padding ({pl}, {pr})): "
                             f"the output size would be {O}")
        sizes.append(O)
    return tuple(sizes)


def check_transpose_output(spec: ConvSpec, output_padding, spatial) -> None:
    """A transpose convolution's ``output_padding`` is below stride or dilation and its output is not empty."""
    for op, s, d in zip(output_padding, spec.stride, spec.dilation):
        if op >= max(s, d):
            raise ValueError(f"output_padding must be smaller than either stride or dilation, got "
                             f"output_padding={output_padding}, stride={spec.stride}, dilation={spec.dilation}")
    for d, I in enumerate(spatial):
        K, S, (pl, pr), D = spec.kernel_size[d], spec.stride[d], spec.padding[d], spec.dilation[d]
        if (I - 1) * S - pl - pr + D * (K - 1) + output_padding[d] + 1 < 1:
            raise ValueError(f"padding {spec.padding} is too large: the transpose convolution's output would be "
                             f"empty along spatial dimension {d}")


def _batched(x, weight_ndim, name="x", weight_name="weight"):
    """Allow PyTorch's unbatched input ``[C, *I]``; returns (batched x, squeeze?)."""
    if x.ndim == weight_ndim - 1:
        return x.unsqueeze(0), True
    if x.ndim != weight_ndim:
        raise ValueError(f"{name} must be [B, C, *I] ({weight_ndim} dimensions) or unbatched [C, *I] ({weight_ndim - 1}) "
                         f"to match {weight_name} with {weight_ndim} dimensions ({weight_ndim - 2} spatial), "
                         f"got shape {tuple(x.shape)}")
    return x, False


def spatial_dims(N, *hyper):
    """The number of spatial dimensions of an operation no weight fixes it for.

    ``N`` if given, else the length of the longest tuple among the hyper-parameters
    ``hyper`` (``kernel_size``, ``stride``, ...; a 1-tuple stands for every dimension,
    as in PyTorch); ``None`` when every one is an int or a string, and only the
    input's rank is left to tell (see :func:`read_layout`).
    """
    if N is not None:
        if isinstance(N, bool) or not isinstance(N, int) or N < 1:
            raise ValueError(f"N must be an int >= 1 (the number of spatial dimensions), got {N!r}")
        return N
    longest = 0
    for value in hyper:
        if isinstance(value, (tuple, list)) and len(value) > longest:
            longest = len(value)
    return longest or None


#: Layouts by the number of dimensions before the spatial ones.
LAYOUTS = {1: "unbatched [{c}, *{s}]", 2: "[B, {c}, *{s}]", 3: "[V, B, {c}, *{s}]"}


def read_layout(x, N, name="x", lead=(1, 2), channels="C", spatial="I", hint="pass N") -> int:
    """How many of ``x``'s dimensions precede the ``N`` spatial ones: 1 (unbatched), 2 (batched) or 3 (``[V, B, ...]``).

    ``lead`` lists the layouts the operation accepts. With one layout, ``N`` may be
    ``None`` (every hyper-parameter an int) and the rank fixes it. With several,
    ``N`` must be known: a rank alone never fixes it, since every rank fits two
    layouts (``[B, C, I1, I2]`` is a batch of 2-d inputs or one 3-d input, and one
    missing or extra leading dimension turns either into the other), so that is a
    ValueError listing the readings, never a guess.
    """
    rank = x.ndim
    if N is None and len(lead) == 1 and rank > lead[0]:
        return lead[0]
    if N is None:
        readings = sorted((l for l in lead if rank - l >= 1), key=(2, 3, 1).index)  # the batched reading first
        if not readings:
            raise ValueError(f"{name} must be {_layouts(lead, channels, spatial)} with at least one spatial dimension, "
                             f"got shape {tuple(x.shape)}")
        options = ", or ".join(f"{LAYOUTS[l].format(c=channels, s=spatial)} with N={rank - l}" for l in readings)
        raise ValueError(f"{name} has shape {tuple(x.shape)}, which reads as {options}; the number N of spatial "
                         f"dimensions is not given and a rank alone does not fix it: {hint}")
    if rank - N not in lead:
        raise ValueError(f"{name} must be {_layouts(lead, channels, spatial, N)} for N={N} spatial dimensions, "
                         f"got shape {tuple(x.shape)}")
    return rank - N


def _layouts(lead, channels, spatial, N=None) -> str:
    return " or ".join(LAYOUTS[l].format(c=channels, s=spatial) + (f" (rank {N + l})" if N else "") for l in lead)


def transpose_output_padding(spec: ConvSpec, output_padding, output_size, spatial, unbatched=False):
    """``output_padding`` of a transpose convolution, from ``output_size`` when given, by PyTorch's rule.

    ``output_size`` is the spatial size of the result, or its full shape (with batch
    and channels, or channels only for an unbatched input), as
    ``torch.nn.ConvTranspose*d.forward`` takes it; each entry must lie between the
    size with ``output_padding = 0`` and that plus ``stride - 1``.
    """
    N = spec.N
    output_padding = ntuple(output_padding, N, "output_padding", minimum=0)
    if output_size is None:
        return output_padding
    if any(output_padding):
        raise ValueError(f"output_size={output_size!r} sets output_padding; pass one of them, got also "
                         f"output_padding={output_padding}")
    size = check_size(output_size, "output_size")
    lead = 1 if unbatched else 2
    if len(size) == N + lead:
        size = size[lead:]
    if len(size) != N:
        raise ValueError(f"output_size must have {N} or {N + lead} entries for a {N}-d transpose convolution of a "
                         f"{N + lead}-d input, got {len(size)}: {output_size!r}")
    smallest, largest = [], []
    for d, I in enumerate(spatial):
        K, S, (pl, pr), D = spec.kernel_size[d], spec.stride[d], spec.padding[d], spec.dilation[d]
        smallest.append((I - 1) * S - pl - pr + D * (K - 1) + 1)
        largest.append(smallest[-1] + S - 1)
    if any(not lo <= n <= hi for n, lo, hi in zip(size, smallest, largest)):
        raise ValueError(f"requested an output size of {list(size)}, but valid sizes range from {smallest} to {largest} "
                         f"(for an input of {list(spatial)})")
    return tuple(n - lo for n, lo in zip(size, smallest))


def _check_groups(groups):
    if isinstance(groups, bool) or not isinstance(groups, int):
        raise TypeError(f"groups must be an int, got {groups!r}")
    if groups < 1:
        raise ValueError(f"groups must be >= 1, got {groups}")


def _check_bias(bias, channels, x):
    if bias is None:
        return
    check_tensor(bias, "bias", ndim=1)
    check_same(x, "x", bias, "bias")
    if bias.shape[0] != channels:
        raise ValueError(f"bias must have shape ({channels},), got {tuple(bias.shape)}")


def conv_geometry(x_shape, weight_shape, stride, padding, dilation, groups, x_name="x", weight_name="weight"):
    """Validate a convolution's shapes and hyper-parameters; return ``(N, spec, output spatial size)``.

    ``x_shape`` is ``[B, C_in, *I]`` and ``weight_shape`` ``[C_out, C_in/groups, *K]``.
    Arguments made of plain ints and strings are validated once per value (a cache
    keyed on them; ``True`` and ``1.0`` are not plain, so they still get their errors).
    """
    args = (tuple(x_shape), tuple(weight_shape), stride, padding, dilation, groups, x_name, weight_name)
    if all(_plain(a) for a in args) and not torch.compiler.is_compiling():  # dynamo traces no lru_cache
        return _cached_geometry(*args)
    return _geometry(*args)


def _plain(value) -> bool:
    return type(value) in (int, str) or type(value) is tuple and all(_plain(v) for v in value)


@lru_cache(maxsize=1024)
def _cached_geometry(*args):
    return _geometry(*args)


def _geometry(x_shape, weight_shape, stride, padding, dilation, groups, x_name, weight_name):
    _check_groups(groups)
    if len(weight_shape) < 3:
        raise ValueError(f"{weight_name} must have at least 3 dimensions ([C_out, C_in/groups, *K]), got {tuple(weight_shape)}")
    if len(x_shape) != len(weight_shape):
        unbatched = (" (batched only: give one sample a batch dimension of size 1)"
                     if len(x_shape) == len(weight_shape) - 1 else "")
        raise ValueError(f"{x_name} must be [B, C_in, *I] with {len(weight_shape)} dimensions to match "
                         f"{weight_name} {tuple(weight_shape)}{unbatched}, got {tuple(x_shape)}")
    N = len(weight_shape) - 2
    C_in, C_out = x_shape[1], weight_shape[0]
    if C_out % groups:
        raise ValueError(f"groups={groups} must divide the output channels {weight_name}[0]={C_out}")
    if C_in % groups:
        raise ValueError(f"groups={groups} must divide the input channels {x_name}[1]={C_in}")
    if weight_shape[1] * groups != C_in:
        raise ValueError(f"{x_name} has {C_in} channels, but {weight_name} {tuple(weight_shape)} with groups={groups} "
                         f"expects {weight_shape[1] * groups}")
    spec = ConvSpec.make(N, tuple(weight_shape[2:]), stride, padding, dilation, groups)
    return N, spec, _check_output(spec, tuple(x_shape[2:]), x_name)


def check_grad_output(grad_output, expected, x, name="grad_output"):
    """``grad_output`` must be a tensor of shape ``expected`` like ``x``."""
    check_tensor(grad_output, name)
    check_same(x, "x" if name != "x" else "weight", grad_output, name)
    if tuple(grad_output.shape) != tuple(expected):
        raise ValueError(f"{name} must have the convolution's output shape {tuple(expected)}, got {tuple(grad_output.shape)}")


def check_sqrt_ggn(sqrt_ggn, batch: int, C_out: int, O: tuple, like) -> None:
    """``sqrt_ggn`` must be ``[V, B, C_out, *O]`` (any ``V``) and like ``like`` (dtype, device)."""
    check_tensor(sqrt_ggn, "sqrt_ggn")
    if sqrt_ggn.ndim != len(O) + 3:
        raise ValueError(f"sqrt_ggn must have shape [V, B, C_out, *O] = [V, {batch}, {C_out}, "
                         f"{', '.join(map(str, O))}], got {tuple(sqrt_ggn.shape)}")
    check_grad_output(sqrt_ggn, (sqrt_ggn.shape[0], batch, C_out) + tuple(O), like, "sqrt_ggn")
