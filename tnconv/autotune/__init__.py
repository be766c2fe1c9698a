"""Measured lowering choice: time every lowering of a term once, keep the fastest, remember it on disk.

The compiler (:mod:`tnconv.compiler`) asks :func:`tnconv.lowering.candidates`
for every execution of each term -- native kernel, views, the plain
contraction by each backend, a pointwise term as one ``bmm``, a Gram product
in blocks, window sums -- and, when autotuning is on (``compile(...,
autotune=True)``, :func:`set_autotune`, ``TNCONV_AUTOTUNE=1``), times them on
the call's tensors (:mod:`.measure`) and keeps the fastest per term, as
cuDNN's benchmark mode does. The verdicts go to a JSON file
(:mod:`.cache`, :func:`autotune_cache`) keyed by everything that could
change them, so a later process starts tuned. Where timing would mean
nothing (:func:`~.measure.untimeable`) a verdict already on disk is still
used, else the cost model decides.

Nothing below the compiler knows about time: the lowerings only report
FLOPs and elements written.
"""

from .cache import AutotuneCache, autotune_cache, cache_dir
from .measure import fastest, untimeable
from .switch import autotune_enabled, autotuning, set_autotune

__all__ = ["AutotuneCache", "autotune_cache", "cache_dir", "fastest", "untimeable", "autotune_enabled", "autotuning", "set_autotune"]
