"""``torch.nn``-style modules backed by tnconv.

The convolution layers are drop-in replacements for ``torch.nn.Conv*d``
(:mod:`tnconv.nn.conv`); :func:`convert` swaps them into an existing model.
:class:`Unfold` and :class:`Fold` are ``torch.nn.Unfold``/``Fold`` for any
number of spatial dimensions (:mod:`tnconv.nn.fold`).
"""

from .conv import Conv1d, Conv2d, Conv3d, ConvFunction, ConvNd, SampledConvFunction, conv, convert
from .fold import Fold, Unfold

__all__ = ["Conv1d", "Conv2d", "Conv3d", "ConvNd", "ConvFunction", "SampledConvFunction", "conv", "convert",
           "Unfold", "Fold"]
