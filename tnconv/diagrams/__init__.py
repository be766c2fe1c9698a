"""Diagram builders: one function per operation, each returns a network."""

from .forward import conv, conv_transpose, fold, unfold, unfold_kernel, unfold_transpose

__all__ = ["conv", "conv_transpose", "unfold", "fold", "unfold_kernel", "unfold_transpose"]
