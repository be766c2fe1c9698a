"""Validation and normalization of convolution hyper-parameters.

Every public entry point funnels its arguments through here so that a bad
call fails before any contraction, with the argument's name in the message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import torch


def ntuple(value, n: int, name: str, minimum: int = 1) -> Tuple[int, ...]:
    """``value`` as a tuple of ``n`` ints, each at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, tuple, list, torch.Size)):
        raise TypeError(f"{name} must be an int or a tuple of {n} ints, got {value!r}")
    values = (value,) * n if isinstance(value, int) else tuple(value)
    if len(values) == 1 and n > 1:
        values = values * n
    if len(values) != n:
        raise ValueError(f"{name} must have {n} entries (one per spatial dimension), got {len(values)}: {value!r}")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"{name} must contain ints, got {value!r}")
        if v < minimum:
            raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return values


def padding_pairs(padding, n: int, kernel_size, dilation, stride, name: str = "padding"):
    """Per-dimension ``(left, right)`` padding from PyTorch's forms.

    ``padding`` is an int, a tuple of ints, ``'valid'``, ``'same'`` (odd
    remainder on the right, as PyTorch does), or a tuple of ``(left, right)``
    pairs for asymmetric padding.
    """
    if isinstance(padding, str):
        if padding == "valid":
            return ((0, 0),) * n
        if padding == "same":
            if any(s != 1 for s in stride):
                raise ValueError(f"{name}='same' is not supported for strided convolutions (stride={tuple(stride)})")
            pairs = []
            for k, d in zip(kernel_size, dilation):
                total = d * (k - 1)
                pairs.append((total // 2, total - total // 2))
            return tuple(pairs)
        raise ValueError(f"{name} must be an int, a tuple, 'same' or 'valid', got {padding!r}")
    if isinstance(padding, (tuple, list)) and padding and all(isinstance(p, (tuple, list)) for p in padding):
        if len(padding) != n:
            raise ValueError(f"{name} must have {n} (left, right) pairs, got {padding!r}")
        pairs = tuple(ntuple(tuple(p), 2, name, minimum=0) for p in padding)
        return pairs
    return tuple((p, p) for p in ntuple(padding, n, name, minimum=0))


@dataclass(frozen=True)
class ConvSpec:
    """Hyper-parameters of an N-d convolution, normalized per dimension."""

    kernel_size: Tuple[int, ...]
    stride: Tuple[int, ...]
    padding: Tuple[Tuple[int, int], ...]
    dilation: Tuple[int, ...]
    groups: int = 1

    @property
    def N(self) -> int:
        return len(self.kernel_size)

    @classmethod
    def make(cls, N, kernel_size, stride=1, padding=0, dilation=1, groups=1) -> "ConvSpec":
        if isinstance(N, bool) or not isinstance(N, int) or N < 1:
            raise ValueError(f"N must be an int >= 1, got {N!r}")
        kernel_size = ntuple(kernel_size, N, "kernel_size")
        stride = ntuple(stride, N, "stride")
        dilation = ntuple(dilation, N, "dilation")
        if isinstance(groups, bool) or not isinstance(groups, int):
            raise TypeError(f"groups must be an int, got {groups!r}")
        if groups < 1:
            raise ValueError(f"groups must be >= 1, got {groups}")
        pads = padding_pairs(padding, N, kernel_size, dilation, stride)
        return cls(kernel_size, stride, pads, dilation, groups)


def check_tensor(value, name: str, ndim: int | None = None, min_ndim: int | None = None) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if ndim is not None and value.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(value.shape)}")
    if min_ndim is not None and value.ndim < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dimensions, got shape {tuple(value.shape)}")
    if not (value.is_floating_point() or value.is_complex()):
        raise TypeError(f"{name} must have a floating-point dtype, got {value.dtype}")
    return value


def check_same(reference: torch.Tensor, ref_name: str, value: torch.Tensor, name: str) -> None:
    if value.dtype != reference.dtype:
        raise TypeError(f"{name} has dtype {value.dtype} but {ref_name} has {reference.dtype}")
    if value.device != reference.device:
        raise ValueError(f"{name} is on device {value.device} but {ref_name} is on device {reference.device}")


def check_size(value, name: str, length: int | None = None) -> Tuple[int, ...]:
    """A shape argument such as ``weight_size``: a sequence of positive ints."""
    if isinstance(value, torch.Tensor) or isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
        raise TypeError(f"{name} must be a tuple of ints, got {value!r}")
    size = tuple(value)
    if any(isinstance(s, bool) or not isinstance(s, int) for s in size):
        raise TypeError(f"{name} must contain ints, got {value!r}")
    if any(s < 1 for s in size):
        raise ValueError(f"{name} must contain positive sizes, got {value!r}")
    if length is not None and len(size) != length:
        raise ValueError(f"{name} must have {length} entries, got {len(size)}: {value!r}")
    return size
