"""Transpose convolution layers: drop-in replacements for ``torch.nn.ConvTranspose1d/2d/3d``.

As for the convolutions, the layers subclass PyTorch's (arguments, parameters,
initialization, ``state_dict`` and ``output_size`` in ``forward`` are PyTorch's);
the transpose convolution is :func:`tnconv.ops.conv_transpose`: the compiled
:func:`~tnconv.diagrams.conv_transpose` diagram, with the VJP and JVP diagrams
derived from it by the passes.
"""

from __future__ import annotations

import torch

from ..ops.convolution_transpose import conv_transpose


class _TNConvTransposeMixin:
    """The forward pass of the transpose convolution layers, through :func:`tnconv.ops.conv_transpose`."""

    def forward(self, input, output_size=None):
        if self.padding_mode != "zeros":
            raise ValueError(f"Only 'zeros' padding mode is supported for {type(self).__name__}, "
                             f"got padding_mode={self.padding_mode!r}")
        N = len(self.kernel_size)
        output_padding = self._output_padding(input, output_size, self.stride, self.padding, self.kernel_size, N,
                                              self.dilation)
        return conv_transpose(input, self.weight, self.bias, self.stride, self.padding, output_padding, self.groups,
                              self.dilation)

    def _get_name(self):
        return "tnconv." + type(self).__name__


class ConvTranspose1d(_TNConvTransposeMixin, torch.nn.ConvTranspose1d):
    """``torch.nn.ConvTranspose1d`` computed by tnconv (same arguments, parameters and state_dict).

    Example:
        >>> layer = ConvTranspose1d(4, 3, 3, stride=2, output_padding=1)
        >>> layer(torch.randn(2, 4, 5)).shape
        torch.Size([2, 3, 12])
    """


class ConvTranspose2d(_TNConvTransposeMixin, torch.nn.ConvTranspose2d):
    """``torch.nn.ConvTranspose2d`` computed by tnconv (same arguments, parameters and state_dict).

    Example:
        >>> ref = torch.nn.ConvTranspose2d(4, 3, 3, stride=2)
        >>> layer = ConvTranspose2d(4, 3, 3, stride=2)
        >>> _ = layer.load_state_dict(ref.state_dict())
        >>> x = torch.randn(2, 4, 5, 5)
        >>> torch.allclose(layer(x, output_size=(12, 12)), ref(x, output_size=(12, 12)), atol=1e-5)
        True
    """


class ConvTranspose3d(_TNConvTransposeMixin, torch.nn.ConvTranspose3d):
    """``torch.nn.ConvTranspose3d`` computed by tnconv (same arguments, parameters and state_dict).

    Example:
        >>> ConvTranspose3d(2, 4, 2, stride=2)(torch.randn(1, 2, 3, 3, 3)).shape
        torch.Size([1, 4, 6, 6, 6])
    """


__all__ = ["ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d"]
