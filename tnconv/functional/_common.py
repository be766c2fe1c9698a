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
