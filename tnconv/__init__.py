"""tnconv: convolutions as tensor networks, transformed by passes and compiled to PyTorch."""

from . import diagrams, functional, ir, nn, ops, passes
from .autotune import autotune_cache, autotune_enabled, set_autotune
from .compiler import Compiled, compile
from .ir import Index, NetworkSum, Tensor, TensorNetwork

__version__ = "0.1.0"
__all__ = ["functional", "nn", "ops", "compile", "Compiled", "set_autotune", "autotune_enabled", "autotune_cache", "passes", "Index", "Tensor", "TensorNetwork", "NetworkSum", "diagrams", "ir"]
