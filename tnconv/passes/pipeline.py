"""Named passes and the pipeline that runs them, recording the network between passes."""

from __future__ import annotations

import os
from typing import Callable, Dict

from ..ir import check
from .trace import Trace

#: name -> pass function ``network -> network``.
PASSES: Dict[str, Callable] = {}

#: The passes ``compile(..., passes="default")`` runs, in order.
DEFAULT_PIPELINE = ("fuse_deltas", "drop_ones", "simplify")


class PassError(RuntimeError):
    """A pass raised or produced a network that breaks an invariant."""


def register(name: str):
    """Decorator adding a pass to :data:`PASSES` under ``name``."""
    def decorate(fn):
        PASSES[name] = fn
        return fn
    return decorate


def get_pass(name):
    """``(name, function)`` of a registered pass name or a callable; an unknown name lists the valid ones."""
    if callable(name):
        return getattr(name, "__name__", repr(name)), name
    if name not in PASSES:
        raise ValueError(f"unknown pass {name!r}; the passes are {sorted(PASSES)}")
    return name, PASSES[name]


def debug_enabled(debug=None) -> bool:
    """``debug`` if given, else whether the environment sets ``TNCONV_DEBUG=1``."""
    if debug is not None:
        return bool(debug)
    return os.environ.get("TNCONV_DEBUG", "") not in ("", "0")


def run_pipeline(tn, passes="default", record=False, debug=None):
    """Run ``passes`` on ``tn``; returns the result and, if ``record``, a :class:`~tnconv.passes.trace.Trace`.

    Passes that need arguments (``differentiate``, ``vjp``, ``batch``...) are
    applied by calling them; the pipeline runs the argument-free rewrites of
    :data:`PASSES`. The record starts with ``("input", ...)`` and holds the
    network after every pass (``Trace.diff()`` shows what each one changed);
    without ``record`` it is an empty list. In debug mode (``debug=True`` or
    ``TNCONV_DEBUG=1``) the invariant checker runs before the first pass and
    after every pass; any failure names the pass and those that ran before it.

    Example:
        >>> from tnconv import diagrams, passes
        >>> tn = passes.vjp(diagrams.conv(N=1, kernel_size=3), "w", fuse=False)
        >>> out, trace = run_pipeline(tn, ["fuse_deltas"], record=True)
        >>> [name for name, _ in trace], trace.changed
        (['input', 'fuse_deltas'], ['fuse_deltas'])
    """
    debug = debug_enabled(debug)
    if passes == "default":
        passes = DEFAULT_PIPELINE
    elif passes is None:
        passes = ()
    elif isinstance(passes, str) or not hasattr(passes, "__iter__"):
        raise TypeError(f"passes must be 'default', None or a list of pass names, got {passes!r}")
    steps = [get_pass(p) for p in passes]
    if debug:
        check(tn)
    trace = Trace([("input", tn)]) if record else []
    done = []
    for name, fn in steps:
        try:
            tn = fn(tn)
            if debug:
                check(tn)
        except Exception as error:
            raise PassError(f"pass {name!r} failed (after {done or 'no passes'}): {error}") from error
        done.append(name)
        if record:
            trace.append_network(name, tn)
    return tn, trace
