"""Column-row-sampled weight gradients: keep a fraction of the input's channels and pixels.

:func:`sample_input` draws, per axis of the input (channels, then each spatial
axis), ``max(1, round(p·size))`` indices without replacement and returns the
sampled sub-tensor with the indices. :func:`sampled_weight_vjp` computes an
unbiased estimate of the weight gradient from that sub-tensor alone:

* spatial axes are summed in the weight VJP, so sampling them is CRS proper
  (:func:`tnconv.passes.crs`): the pattern's rows are restricted to the kept
  pixels and the sum is rescaled by ``I/M``;
* the channel axis is an *output* leg of the weight VJP: the columns of the
  gradient for unsampled channels are zero, the others rescaled by ``C/M``
  (per group), which is what channel-sampling methods do.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from .. import diagrams, passes
from .._args import ConvSpec, check_size, check_tensor
from ..compiler import MAX_ELEMENTS, compile as _compile
from ..passes.crs import keep_count
from ._common import BACKEND, _freeze, check_grad_output, conv_geometry, read_layout, spatial_dims


def check_keep(crs_keep, N: int):
    """``crs_keep`` as a tuple of ``1 + N`` floats in (0, 1]."""
    if isinstance(crs_keep, (int, float)) and not isinstance(crs_keep, bool):
        crs_keep = (float(crs_keep),) * (N + 1)
    if not isinstance(crs_keep, (tuple, list)) or any(isinstance(p, bool) or not isinstance(p, (int, float)) for p in crs_keep):
        raise TypeError(f"crs_keep must be a float or a tuple of {N + 1} floats (channels, then each spatial axis), "
                        f"got {crs_keep!r}")
    if len(crs_keep) != N + 1:
        raise ValueError(f"crs_keep must have {N + 1} entries (channels, then each spatial axis), got {crs_keep!r}")
    if any(not 0 < p <= 1 for p in crs_keep):
        raise ValueError(f"crs_keep entries must be in (0, 1], got {crs_keep!r}")
    return tuple(float(p) for p in crs_keep)


def _draw(size, keep, generator, device):
    """``keep`` of ``range(size)`` without replacement, sorted, drawn on the generator's device."""
    if device.type == "meta":  # shapes only: no generator can draw meta values
        return torch.arange(keep, device=device)
    index = torch.randperm(size, generator=generator, device=device if generator is None else generator.device)
    return index[:keep].sort().values.to(device)


def sample_input(x, crs_keep, groups=1, generator=None, *, N=None):
    """The sampled sub-tensor of ``x`` ``[B, C, *I]`` and the kept indices per axis.

    Channels are sampled within each group (the same count per group); the
    returned channel indices have shape ``[G, M_c]`` (within-group positions),
    the spatial ones ``[M_d]``. ``N`` (the number of spatial axes) is the length of
    a tuple ``crs_keep`` minus one, or ``N``, or else ``x.ndim - 2``; ``x`` is batched only.

    Example:
        >>> x = torch.randn(2, 4, 10, 10)
        >>> sub, idx = sample_input(x, (0.5, 0.6, 1.0), groups=2)
        >>> sub.shape, idx[0].shape
        (torch.Size([2, 2, 6, 10]), torch.Size([2, 1]))
    """
    check_tensor(x, "x")
    if N is None and isinstance(crs_keep, (tuple, list)) and len(crs_keep) >= 2:
        N = len(crs_keep) - 1
        if x.ndim != N + 2:
            raise ValueError(f"x must be [B, C, *I] with {N + 2} dimensions to match the {N + 1} entries of crs_keep "
                             f"(channels, then each spatial axis), got shape {tuple(x.shape)}")
    N = x.ndim - read_layout(x, spatial_dims(N), lead=(2,))
    if x.numel() > MAX_ELEMENTS:  # an expanded view can claim any size; the draws would not fit
        raise ValueError(f"x has {x.numel()} elements, more than MAX_ELEMENTS={MAX_ELEMENTS}; check its shape")
    crs_keep = check_keep(crs_keep, N)
    B, C = x.shape[:2]
    if isinstance(groups, bool) or not isinstance(groups, int):
        raise TypeError(f"groups must be an int, got {groups!r}")
    if groups < 1 or C % groups or groups > max(C, 1):
        raise ValueError(f"groups must be a positive divisor of the {C} input channels, got {groups}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    per_group = C // groups
    m_c = keep_count(per_group, crs_keep[0])
    channels = torch.stack([_draw(per_group, m_c, generator, x.device) for _ in range(groups)])
    flat = (channels + per_group * torch.arange(groups, device=x.device).view(-1, 1)).flatten()
    sub = x if m_c == per_group else x.index_select(1, flat)
    indices = [channels]
    for d, (size, p) in enumerate(zip(x.shape[2:], crs_keep[1:])):
        m = keep_count(size, p)
        idx = _draw(size, m, generator, x.device) if m < size else torch.arange(size, device=x.device)
        if m < size:
            sub = sub.index_select(2 + d, idx)
        indices.append(idx)
    return sub, indices


@lru_cache(maxsize=256)
def _network(N, kernel_size, stride, padding, dilation, groups, spatial):
    """The weight VJP with every sampled spatial leg CRS'd and ``x`` pre-sampled."""
    tn = diagrams.weight_vjp(N=N, kernel_size=kernel_size, stride=stride, padding=padding, dilation=dilation, groups=groups)
    for d, keep in enumerate(spatial):
        if keep < 1:
            tn = passes.crs(tn, f"i{d + 1}", keep)
    return _compile(passes.presample(tn, "x"), backend=BACKEND)


def _check_indices(x_sub, indices, input_size, groups):
    if isinstance(indices, torch.Tensor) or not isinstance(indices, (tuple, list)):
        raise TypeError(f"indices must be the list of index tensors from sample_input, got {type(indices).__name__}")
    if len(indices) != x_sub.ndim - 1:
        raise ValueError(f"indices must hold {x_sub.ndim - 1} tensors (channels, then each spatial axis), got {len(indices)}")
    for d, idx in enumerate(indices):
        if not isinstance(idx, torch.Tensor) or idx.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"indices[{d}] must be an integer tensor, got {idx!r:.60}")
        if idx.device != x_sub.device:
            raise ValueError(f"indices[{d}] is on device {idx.device} but x_sub is on device {x_sub.device}")
    channels = indices[0]
    if channels.ndim != 2 or channels.shape[0] != groups or channels.numel() != x_sub.shape[1]:
        raise ValueError(f"indices[0] must have shape [groups={groups}, kept channels per group] matching "
                         f"x_sub's {x_sub.shape[1]} channels, got {tuple(channels.shape)}")
    for d, idx in enumerate(indices[1:]):
        if idx.ndim != 1 or idx.numel() != x_sub.shape[2 + d]:
            raise ValueError(f"indices[{d + 1}] must be 1-d with x_sub.shape[{d + 2}]={x_sub.shape[2 + d]} entries, "
                             f"got shape {tuple(idx.shape)}")
    for d, (idx, size) in enumerate(zip(indices, (input_size[1] // groups,) + tuple(input_size[2:]))):
        # values are checked where reading them costs no device synchronisation (and meta has none);
        # elsewhere the one-hot scatter's own bounds check fails on a bad index
        if idx.device.type == "cpu" and idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= size):
            raise ValueError(f"indices[{d}] must lie in [0, {size}), got values from {int(idx.min())} to {int(idx.max())}")
    if x_sub.shape[0] != input_size[0]:
        raise ValueError(f"x_sub has batch size {x_sub.shape[0]} but input_size has {input_size[0]}")


def _one_hot(idx, size, dtype):
    """``[size, M]`` with a one in row ``idx[m]`` of column ``m``; a comparison, so ``vmap`` batches it."""
    return (torch.arange(size, device=idx.device).unsqueeze(1) == idx.unsqueeze(0)).to(dtype)


def sampled_weight_vjp(x_sub, indices, input_size, weight_size, grad_output, stride=1, padding=0, dilation=1, groups=1):
    """Unbiased estimate of the weight gradient from a sampled input (see :func:`sample_input`).

    Args:
        x_sub, indices: from :func:`sample_input`.
        input_size: the full input's shape ``[B, C_in, *I]``.
        weight_size: ``[C_out, C_in/groups, *K]``.
        grad_output: ``[B, C_out, *O]``.

    Example:
        >>> x, g = torch.randn(8, 3, 12), torch.randn(8, 4, 10)
        >>> sub, idx = sample_input(x, (1.0, 0.5))
        >>> sampled_weight_vjp(sub, idx, x.shape, (4, 3, 3), g).shape
        torch.Size([4, 3, 3])
    """
    input_size = check_size(input_size, "input_size")
    weight_size = check_size(weight_size, "weight_size")
    N, spec, O = conv_geometry(input_size, weight_size, stride, padding, dilation, groups,
                               x_name="input_size", weight_name="weight_size")
    check_tensor(x_sub, "x_sub", ndim=N + 2)
    _check_indices(x_sub, indices, input_size, groups)
    check_grad_output(grad_output, (input_size[0], weight_size[0]) + O, x_sub)
    return estimate_weight_vjp(x_sub, indices, input_size, weight_size, grad_output, stride, padding, dilation, groups)


def estimate_weight_vjp(x_sub, indices, input_size, weight_size, grad_output, stride=1, padding=0, dilation=1, groups=1):
    """:func:`sampled_weight_vjp` without checking its arguments.

    Nothing here reads the indices' values in Python, so it runs under ``torch.func.vmap``
    with indices that differ per vmapped call (``randomness="different"``).

    Example:
        >>> x, g = torch.randn(8, 3, 12), torch.randn(8, 4, 10)
        >>> sub, idx = sample_input(x, (0.5, 1.0))
        >>> estimate_weight_vjp(sub, idx, x.shape, (4, 3, 3), g).shape
        torch.Size([4, 3, 3])
    """
    N = len(input_size) - 2
    spec = ConvSpec.make(N, tuple(weight_size[2:]), stride, padding, dilation, groups)
    channels, spatial_idx = indices[0], indices[1:]
    keeps = tuple(idx.shape[-1] / size for idx, size in zip(spatial_idx, input_size[2:]))
    fn = _network(N, spec.kernel_size, spec.stride, spec.padding, spec.dilation, groups, keeps)
    selections = {f"crs_i{d + 1}": _one_hot(idx, size, x_sub.dtype)
                  for d, (idx, size, keep) in enumerate(zip(spatial_idx, input_size[2:], keeps)) if keep < 1}
    grad = fn(x=x_sub, grad_output=grad_output, **selections)  # [C_out, M_c, *K]
    per_group, m_c = weight_size[1], channels.shape[-1]
    if m_c == per_group:
        return grad
    out_per_group = weight_size[0] // groups
    full = grad.new_zeros(groups, out_per_group, per_group, grad[0, 0].numel())
    index = channels.view(groups, 1, m_c, 1).expand(groups, out_per_group, m_c, full.shape[-1])
    return full.scatter(2, index, grad.reshape(groups, out_per_group, m_c, -1) * (per_group / m_c)).view(weight_size)


__all__ = ["sample_input", "sampled_weight_vjp"]
