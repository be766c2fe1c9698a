"""``torch.nn``-style modules backed by tnconv.

The convolution layers are drop-in replacements for ``torch.nn.Conv*d``
(:mod:`tnconv.nn.conv`); :func:`convert` swaps them into an existing model.
"""

from .conv import Conv1d, Conv2d, Conv3d, ConvFunction, ConvNd, SampledConvFunction, conv, convert

__all__ = ["Conv1d", "Conv2d", "Conv3d", "ConvNd", "ConvFunction", "SampledConvFunction", "conv", "convert"]
