"""The convolution layers: drop-in replacements for ``torch.nn.Conv1d/2d/3d`` (and any N) backed by tnconv.

The layers subclass PyTorch's, so constructor arguments, parameter names,
initialization and ``state_dict`` are PyTorch's own; only the convolution is
replaced, by :func:`tnconv.ops.conv`: the forward pass is the compiled
convolution diagram, the backward pass the VJP diagrams derived from it and
forward-mode AD the derived JVP diagrams, wired in through a
``torch.autograd.Function`` (``torch.func`` transforms compose with it) in
eager mode and through custom operators under ``torch.compile``.
"""

from __future__ import annotations

import torch
from torch.nn.modules.conv import _ConvNd
from torch.nn.modules.utils import _ntuple

from ..functional.sampled import check_keep
from ..ops.convolution import ConvFunction, SampledConvFunction, conv


class _TNConvMixin:
    """The convolution of the layers, with optional CRS in the backward pass.

    ``crs_keep``: ``None`` (exact) or keep probabilities ``(channels, *spatial)``
    in (0, 1]; ``generator``: the ``torch.Generator`` the samples come from.
    """

    crs_keep = None
    generator = None

    def _setup_crs(self, crs_keep, generator):
        if crs_keep is not None:
            crs_keep = check_keep(crs_keep, len(self.kernel_size))
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        self.crs_keep, self.generator = crs_keep, generator

    def _conv_forward(self, input, weight, bias):
        padding = self.padding
        if self.padding_mode != "zeros":
            input = torch.nn.functional.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            padding = 0
        return conv(input, weight, bias, self.stride, padding, self.dilation, self.groups, self.crs_keep, self.generator)

    def extra_repr(self):
        extra = super().extra_repr()
        return extra + (f", crs_keep={self.crs_keep}" if self.crs_keep is not None else "")

    def _get_name(self):
        return "tnconv." + type(self).__name__


def _with_crs(base):
    """``base.__init__`` plus the keyword-only ``crs_keep`` and ``generator``."""

    def __init__(self, *args, crs_keep=None, generator=None, **kwargs):
        base.__init__(self, *args, **kwargs)
        self._setup_crs(crs_keep, generator)

    return __init__


class Conv1d(_TNConvMixin, torch.nn.Conv1d):
    """``torch.nn.Conv1d`` computed by tnconv (same arguments, parameters and state_dict).

    Extra keyword arguments ``crs_keep`` and ``generator`` switch on column-row
    sampling in the backward pass (see :func:`conv`).

    Example:
        >>> layer = Conv1d(3, 4, 3, padding=1)
        >>> layer(torch.randn(2, 3, 8)).shape
        torch.Size([2, 4, 8])
    """

    __init__ = _with_crs(torch.nn.Conv1d)


class Conv2d(_TNConvMixin, torch.nn.Conv2d):
    """``torch.nn.Conv2d`` computed by tnconv (same arguments, parameters and state_dict).

    Extra keyword arguments ``crs_keep`` and ``generator`` switch on column-row
    sampling in the backward pass (see :func:`conv`).

    Example:
        >>> ref = torch.nn.Conv2d(3, 4, 3)
        >>> layer = Conv2d(3, 4, 3)
        >>> _ = layer.load_state_dict(ref.state_dict())
        >>> x = torch.randn(2, 3, 8, 8)
        >>> torch.allclose(layer(x), ref(x), atol=1e-5)
        True
    """

    __init__ = _with_crs(torch.nn.Conv2d)


class Conv3d(_TNConvMixin, torch.nn.Conv3d):
    """``torch.nn.Conv3d`` computed by tnconv (same arguments, parameters and state_dict).

    Extra keyword arguments ``crs_keep`` and ``generator`` switch on column-row
    sampling in the backward pass (see :func:`conv`).

    Example:
        >>> Conv3d(2, 4, 3)(torch.randn(1, 2, 5, 5, 5)).shape
        torch.Size([1, 4, 3, 3, 3])
    """

    __init__ = _with_crs(torch.nn.Conv3d)


class ConvNd(_TNConvMixin, _ConvNd):
    """An N-d convolution layer for any ``N >= 1``, with ``torch.nn.Conv*d``'s arguments.

    ``N`` is given explicitly or inferred from a tuple ``kernel_size``. The
    parameters ``weight`` ``[C_out, C_in/groups, *K]`` and ``bias`` are
    initialized like PyTorch's convolutions. ``padding_mode`` other than
    ``'zeros'`` is supported for ``N <= 3`` (where ``torch.nn.functional.pad``
    supports it).

    Example:
        >>> layer = ConvNd(2, 3, kernel_size=(2, 2, 2, 2))
        >>> layer(torch.randn(1, 2, 4, 4, 4, 4)).shape
        torch.Size([1, 3, 3, 3, 3, 3])
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1, bias=True,
                 padding_mode="zeros", device=None, dtype=None, N=None, crs_keep=None, generator=None):
        if N is None:
            if not isinstance(kernel_size, (tuple, list)):
                raise ValueError("N must be given when kernel_size is an int")
            N = len(kernel_size)
        if isinstance(N, bool) or not isinstance(N, int) or N < 1:
            raise ValueError(f"N must be an int >= 1, got {N!r}")
        if padding_mode != "zeros" and N > 3:
            raise ValueError(f"padding_mode={padding_mode!r} is only supported for N <= 3, got N={N}")
        as_tuple = _ntuple(N)
        for name, value in (("kernel_size", kernel_size), ("stride", stride), ("dilation", dilation)):
            if isinstance(value, (tuple, list)) and len(value) != N:
                raise ValueError(f"{name} must have {N} entries, got {value!r}")
        padding_ = padding if isinstance(padding, str) else as_tuple(padding)
        super().__init__(in_channels, out_channels, as_tuple(kernel_size), as_tuple(stride), padding_, as_tuple(dilation),
                         False, as_tuple(0), groups, bias, padding_mode, device=device, dtype=dtype)
        self.N = N
        self._setup_crs(crs_keep, generator)

    def forward(self, input):
        return self._conv_forward(input, self.weight, self.bias)


__all__ = ["Conv1d", "Conv2d", "Conv3d", "ConvNd", "ConvFunction", "SampledConvFunction", "conv"]
