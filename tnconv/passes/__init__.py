"""Passes: pure functions from networks to networks, and the pipeline running them.

Whole-graph edits (cutting a tensor out, adding a batch leg, wiring in a
vector) are plain functions; local rewrites are registered under a name so
that ``compile(..., passes=[...])`` and the pipeline can find them.
"""

from .batching import batch
from .compose import contract, rename_apart
from .crs import crs, presample
from .cut import differentiate
from .deltas import drop_ones, fuse_deltas
from .patterns import pattern_pairs
from .pipeline import DEFAULT_PIPELINE, PASSES, PassError, get_pass, register, run_pipeline
from .products import jvp, vjp
from .trace import Trace, text_diff
from .rewrites import dense, downsample, simplify, squeeze_trivial, swap_kernel_output

__all__ = ["differentiate", "crs", "presample", "contract", "rename_apart", "vjp", "jvp", "batch", "fuse_deltas", "drop_ones", "pattern_pairs",
           "squeeze_trivial", "dense", "downsample", "simplify", "swap_kernel_output",
           "PASSES", "DEFAULT_PIPELINE", "PassError", "register", "get_pass", "run_pipeline", "Trace", "text_diff"]
