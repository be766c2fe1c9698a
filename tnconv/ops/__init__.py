"""PyTorch-facing operators: custom operators for ``torch.compile`` and the layers' autograd functions.

* :mod:`tnconv.ops.library` registers ``torch.ops.tnconv.*``: each runs a compiled
  diagram, with a fake implementation, an autograd rule from the derived VJP
  diagrams and an autocast rule. :mod:`tnconv.functional` dispatches to them
  under ``torch.compile``.
* :mod:`tnconv.ops.convolution` and :mod:`tnconv.ops.convolution_transpose` hold what the
  layers of :mod:`tnconv.nn` call in eager mode: ``torch.autograd.Function`` s
  with derived backward, JVP and vmap rules, and the choice of PyTorch's kernel
  pair where the compiler lowers a call's forward and VJPs to it.
"""

from . import library
from .convolution import ConvFunction, SampledConvFunction, conv, native_convolution, plain_autograd
from .convolution_transpose import ConvTransposeFunction, conv_transpose, native_convolution_transpose

__all__ = ["library", "ConvFunction", "SampledConvFunction", "ConvTransposeFunction", "conv", "conv_transpose",
           "native_convolution", "native_convolution_transpose", "plain_autograd"]
