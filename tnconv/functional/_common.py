"""Helpers shared by the functional operations: the compiled-diagram cache and checks."""

from __future__ import annotations

from functools import lru_cache

import torch

from .. import diagrams
from .._args import ConvSpec, check_same, check_tensor
from ..compiler import compile as _compile
from ..ir import output_size

#: Backend used by the functional API.
BACKEND = "cotengra"


@lru_cache(maxsize=512)
def compiled(op: str, **hyper):
    """The compiled network of ``diagrams.<op>(**hyper)`` (cached)."""
    return _compile(getattr(diagrams, op)(**hyper), backend=BACKEND)


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


def _batched(x, weight_ndim, name="x"):
    """Allow PyTorch's unbatched input ``[C, *I]``; returns (batched x, squeeze?)."""
    if x.ndim == weight_ndim - 1:
        return x.unsqueeze(0), True
    if x.ndim != weight_ndim:
        raise ValueError(f"{name} must have {weight_ndim} dimensions ([B, C, *spatial]) to match weight "
                         f"with {weight_ndim}, got shape {tuple(x.shape)}")
    return x, False


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
        raise ValueError(f"{x_name} must have {len(weight_shape)} dimensions ([B, C_in, *spatial]) to match "
                         f"{weight_name} {tuple(weight_shape)}, got {tuple(x_shape)}")
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
