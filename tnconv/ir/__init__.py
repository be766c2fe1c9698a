"""The graph IR: indices, tensor nodes, networks and their sums."""

from .check import InvalidNetwork, check
from .draw import render, to_dot, to_networkx
from .index import Index, as_size, size_symbol
from .network import NetworkSum, TensorNetwork
from .pattern import output_size, pattern_tensor
from .tensor import Tensor
from .text import TextError

__all__ = [
    "Index", "Tensor", "TensorNetwork", "NetworkSum", "InvalidNetwork", "TextError",
    "check", "size_symbol", "as_size", "output_size", "pattern_tensor", "to_dot", "to_networkx", "render",
]
