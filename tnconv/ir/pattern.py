"""The index pattern Π(I, K, S, P, D) of a convolution along one dimension.

``Π[i, o, k] = 1`` iff ``i == k*D + o*S - P_left`` (0-based). Padding is given
as separate left and right amounts because PyTorch's ``'same'`` puts the odd
remainder on the right.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import sympy
import torch

from .index import Size


def output_size(I: Size, K: int, S: int, pad_left: int, pad_right: int, D: int) -> Size:
    """Spatial output size ``1 + floor((I + P_l + P_r - D (K - 1) - 1) / S)``.

    Works on ints and on sympy expressions of the input size.

    Example:
        >>> output_size(5, 3, 2, 1, 1, 1)
        3
    """
    span = I + pad_left + pad_right - D * (K - 1) - 1
    if isinstance(span, int):
        return span // S + 1
    return sympy.floor(span / S) + 1


def transpose_input_size(I: Size, K: int, S: int, pad_left: int, pad_right: int, D: int, output_padding: int) -> Size:
    """Output size of a transpose convolution, the conv-input size whose output is ``I``."""
    return (I - 1) * S - pad_left - pad_right + D * (K - 1) + output_padding + 1


def pattern_empty(I: int, O: int, K: int, S: int, pad_left: int, D: int) -> bool:
    """Whether Π has no non-zero: every window ``(o, k)`` lies in the padding, so nothing it joins sees the input.

    Example:
        >>> pattern_empty(1, 2, 1, 2, 1, 1)  # one pixel, padding 1 on each side, stride 2: both windows miss it
        True
        >>> pattern_empty(5, 3, 3, 1, 0, 1)
        False
    """
    for k in range(K):
        first = k * D - pad_left  # the input index of window (0, k); window (o, k) reads first + o * S
        lowest = max(0, -(first // S))  # the first window of tap k inside the input's left edge
        if lowest < O and first + lowest * S < I:
            return False
    return True


_CACHE: OrderedDict = OrderedDict()
_CACHE_SIZE = 256
_LOCK = threading.Lock()


def pattern_tensor(I: int, O: int, K: int, S: int, pad_left: int, D: int, dtype=torch.float32, device="cpu") -> torch.Tensor:
    """Materialize Π as a ``[I, O, K]`` tensor of zeros and ones (cached).

    Example:
        >>> pattern_tensor(3, 1, 3, 1, 0, 1)[:, 0, :]
        tensor([[1., 0., 0.],
                [0., 1., 0.],
                [0., 0., 1.]])
    """
    key = (I, O, K, S, pad_left, D, dtype, torch.device(device))
    with _LOCK:
        cached = _CACHE.get(key)
        if cached is not None:
            _CACHE.move_to_end(key)
            return cached
    # a comparison, not nonzero + scatter: no data-dependent shapes, so it runs on any device
    # (meta included) without a host synchronisation
    i = torch.arange(I, device=device).view(I, 1, 1)
    hit = torch.arange(O, device=device).view(1, O, 1) * S + torch.arange(K, device=device).view(1, 1, K) * D - pad_left
    pattern = (i == hit).to(dtype)
    with _LOCK:
        _CACHE[key] = pattern
        if len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return pattern


def pattern_sum(I: int, O: int, K: int, S: int, pad_left: int, D: int, dtype=torch.float32, device="cpu") -> torch.Tensor:
    """``Σ_o Π[i, o, k]`` as an ``[I, K]`` tensor, without materializing Π (``O`` may be huge).

    Example:
        >>> bool((pattern_sum(6, 4, 3, 1, 0, 1) == pattern_tensor(6, 4, 3, 1, 0, 1).sum(1)).all())
        True
    """
    offset = torch.arange(I, device=device).view(I, 1) + pad_left - torch.arange(K, device=device).view(1, K) * D
    hit = (offset >= 0) & (offset % S == 0) & (offset // S < O)
    return hit.to(dtype)
