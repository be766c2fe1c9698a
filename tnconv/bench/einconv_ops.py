"""The benchmarked operations run with einconv, the package of the paper tnconv builds on (optional).

einconv 0.1.0 (Dangel, "Convolutions and More as Einsum", NeurIPS 2024;
``pip install einconv==0.1.0``) turns each operation into an einsum: its
``einconv.expressions.convNd_<op>.einsum_expression(..., simplify=True)``
builds the index-pattern tensors, applies its simplifications (dense and
down-sampling convolutions) and returns ``(equation, operands, shape)``;
``torch.einsum(equation, *operands).reshape(shape)`` gives the result. That is
what einconv's own functionals (``einconv.functionals.convNd``) do on every
call, with no cache, so the callables here time the whole call: building the
expression *and* contracting it.

Conventions agree with tnconv's and the standard references without any
rescaling: einconv's KFC is ``1/B Σ_b [[X_b]] [[X_b]]ᵀ`` and its KFAC-reduce
``1/(B·O²) Σ_b ([[X_b]] 1)([[X_b]] 1)ᵀ``, both of shape ``[G, C_in/G·K,
C_in/G·K]`` with rows ordered (channel, kernel position) like ``unfold``'s.
One detail: einconv builds the factors' scale ``1/B`` resp. ``1/(B·O²)`` as a
float32 tensor before casting it to the input's dtype, so in float64 its
factors agree with the references only to float32 precision (relative error
about 1e-8); in the benchmark's float32 that is moot.

einconv takes the padding as an int, a tuple of ints (symmetric in each
dimension) or ``'same'``/``'valid'``; a layer whose padding is none of these
raises :class:`Unsupported`, which the benchmark records as a skip with the
reason, not as an error.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Callable, List

import torch

from .layers import Layer
from .ops import OPS, data

#: The modules einconv needs (einops is its one dependency besides torch).
MODULES = ("einconv", "einops")

#: The einconv version the benchmark was written against.
VERSION = "0.1.0"

#: How to install it without touching the installed torch.
INSTALL = (f"python -m pip install einops && python -m pip install --no-deps einconv=={VERSION}  "
           "(or: python -m pip install 'tnconv[einconv]')")

#: tnconv's operation name -> einconv's expression module.
EXPRESSIONS = {
    "forward": "convNd_forward",
    "input_vjp": "convNd_input_vjp",
    "weight_vjp": "convNd_weight_vjp",
    "kfc": "convNd_kfc",
    "kfac_reduce": "convNd_kfac_reduce",
}


class Unsupported(Exception):
    """A layer einconv cannot express; the message says why."""


def missing() -> List[str]:
    """The modules of :data:`MODULES` that are not installed."""
    return [name for name in MODULES if importlib.util.find_spec(name) is None]


def version() -> str:
    """The installed einconv's version ('' if unknown)."""
    try:
        from importlib.metadata import version as _version

        return _version("einconv")
    except Exception:  # not installed as a distribution, e.g. on the path only
        return ""


def padding(layer: Layer):
    """The layer's padding as einconv takes it, or :class:`Unsupported` with the reason.

    Example:
        >>> from tnconv.bench.layers import NETS
        >>> padding(NETS["inception_v3"][19])
        (0, 3)
    """
    p, N = layer.padding, len(layer.input_size)
    if isinstance(p, str):
        if p in ("same", "valid"):
            return p
        raise Unsupported(f"padding {p!r}: einconv takes only 'same' and 'valid' as strings")
    if isinstance(p, int) and not isinstance(p, bool) and p >= 0:
        return p
    if (isinstance(p, tuple) and len(p) == N
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in p)):
        return p
    raise Unsupported(f"padding {p!r}: einconv takes one non-negative int per dimension (symmetric), "
                      f"an int or 'same'/'valid'")


def make(layer: Layer, op: str, dtype=torch.float32, seed: int = 0) -> Callable[[], torch.Tensor]:
    """An argument-free callable computing ``op`` on ``layer`` with einconv, on :func:`~.ops.data`'s values.

    Each call builds einconv's simplified einsum expression and contracts
    it with ``torch.einsum``, reshaped to the operation's output shape, as
    einconv's functionals do; both parts are in the timed call. Raises
    :class:`Unsupported` if einconv cannot express the layer, and
    ``ImportError`` if einconv is not installed.
    """
    if op not in OPS:
        raise ValueError(f"unknown operation {op!r}; choose from {list(OPS)}")
    pad = padding(layer)
    expression = importlib.import_module(f"einconv.expressions.{EXPRESSIONS[op]}").einsum_expression
    x, w, g = data(layer, op, dtype, seed)
    hyper = dict(stride=layer.stride, padding=pad, dilation=layer.dilation, groups=layer.groups)
    if op == "forward":
        def build():
            return expression(x, w, simplify=True, **hyper)
    elif op == "input_vjp":
        def build():
            return expression(w, g, layer.input_size, simplify=True, **hyper)
    elif op == "weight_vjp":
        def build():
            return expression(x, g, layer.kernel_size, simplify=True, **hyper)
    else:  # kfc, kfac_reduce
        def build():
            return expression(x, layer.kernel_size, simplify=True, **hyper)

    def run() -> torch.Tensor:
        equation, operands, shape = build()
        return torch.einsum(equation, *operands).reshape(shape)

    return run


__all__ = ["MODULES", "VERSION", "INSTALL", "EXPRESSIONS", "Unsupported", "missing", "version", "padding", "make"]
