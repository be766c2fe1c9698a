"""``torch.nn``-style modules backed by tnconv.

The convolution layers are drop-in replacements for ``torch.nn.Conv*d``
(:mod:`tnconv.nn.conv`) and ``torch.nn.ConvTranspose*d``
(:mod:`tnconv.nn.conv_transpose`); :func:`convert` swaps them into an existing
model (:mod:`tnconv.nn.convert`). :class:`Unfold` and :class:`Fold` are
``torch.nn.Unfold``/``Fold`` for any number of spatial dimensions (:mod:`tnconv.nn.fold`).
"""

from .conv import Conv1d, Conv2d, Conv3d, ConvFunction, ConvNd, SampledConvFunction, conv
from .conv_transpose import ConvTranspose1d, ConvTranspose2d, ConvTranspose3d
from .convert import convert
from .fold import Fold, Unfold

__all__ = ["Conv1d", "Conv2d", "Conv3d", "ConvNd", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d",
           "ConvFunction", "SampledConvFunction", "conv", "convert", "Unfold", "Fold"]
