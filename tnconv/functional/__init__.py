"""``torch.nn.functional``-style operations, each a compiled diagram.

Every function takes PyTorch's arguments in PyTorch's order, works for any
number ``N >= 1`` of spatial dimensions (inferred from the tensors), validates
its arguments before contracting anything, and compiles its diagram once per
hyper-parameters; the compiled network caches one plan per shape.
"""

from .forward import conv, conv_transpose, fold, unfold, unfold_kernel, unfold_transpose

__all__ = ["conv", "conv_transpose", "unfold", "fold", "unfold_kernel", "unfold_transpose"]
