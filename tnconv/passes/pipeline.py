"""Named passes and the pipeline that runs them, recording the network between passes."""

from __future__ import annotations

from typing import Callable, Dict

from ..ir import check

#: name -> pass function ``network -> network``.
PASSES: Dict[str, Callable] = {}

#: The passes ``compile(..., passes="default")`` runs, in order.
DEFAULT_PIPELINE = ("fuse_deltas", "drop_ones")


def register(name: str):
    """Decorator adding a pass to :data:`PASSES` under ``name``."""
    def decorate(fn):
        PASSES[name] = fn
        return fn
    return decorate


def get_pass(name):
    if callable(name):
        return getattr(name, "__name__", repr(name)), name
    if name not in PASSES:
        raise ValueError(f"unknown pass {name!r}; the passes are {sorted(PASSES)}")
    return name, PASSES[name]


def run_pipeline(tn, passes="default", record=False, debug=False):
    """Run ``passes`` on ``tn``; returns the result and ``[(name, text, dot)]`` if ``record``.

    The record starts with ``("input", ...)``. With ``debug`` the invariant
    checker runs after every pass, and a failure names the pass and those
    that ran before it.
    """
    if passes == "default":
        passes = DEFAULT_PIPELINE
    elif passes is None:
        passes = ()
    elif isinstance(passes, str) or not hasattr(passes, "__iter__"):
        raise TypeError(f"passes must be 'default', None or a list of pass names, got {passes!r}")
    steps = [get_pass(p) for p in passes]
    trace = [("input", tn.to_text(), tn.to_dot())] if record else []
    done = []
    for name, fn in steps:
        try:
            tn = fn(tn)
            if debug:
                check(tn)
        except Exception as error:
            raise type(error)(f"pass {name!r} failed (after {done or 'no passes'}): {error}") from error
        done.append(name)
        if record:
            trace.append((name, tn.to_text(), tn.to_dot()))
    return tn, trace
