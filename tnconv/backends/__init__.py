"""Lowering of a network's contraction to PyTorch, one module per backend.

A backend is a function ``plan(inputs, output, size_dict, memory_limit) ->
Plan`` where ``inputs`` are tuples of leg names. Letters exist only here.
"""

from __future__ import annotations

from importlib import import_module

from .base import Plan

BACKENDS = ("cotengra", "opt_einsum", "torch")


def get_backend(name: str):
    """The ``plan`` function of the backend called ``name``.

    Raises:
        ValueError: ``name`` is not one of :data:`BACKENDS`.
    """
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    return import_module(f".{name}", __name__).plan


__all__ = ["BACKENDS", "Plan", "get_backend"]
