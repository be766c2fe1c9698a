"""The measurement loop and the ``tnconv bench`` command.

For every layer and operation it builds tnconv's and the standard callable
on the same random float32 data, and tnconv's with autotuning on the very
same tensors, checks once that they agree, warms them up (tnconv's first call
compiles and plans, the autotuned one's tunes; all then run from warm
caches), then times them and the floors (:func:`~.ops.floors`) interleaved in
balanced orders (:func:`~.timing.interleaved_medians`), so drifting machine
load and what each call leaves behind hit all alike, and takes the median of
each. The extra peak memory of one more call of each is measured last, under
the profiler (:mod:`.memory`), so profiling never slows a timed call. A
disagreement or an exception is an error row, never a silent pass. Several
thread counts run in one subprocess each.

With ``--einconv`` einconv (:mod:`.einconv_ops`) runs too, on the same data:
it is checked against the standard result with the same tolerance (a
disagreement or an exception is an error row too), warmed up, and timed in
the same interleaved loop; a layer einconv cannot express is skipped for
einconv only, with the reason in ``einconv_skipped``.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterable, List, Optional, Sequence

import torch

from .layers import NETS, Layer, select
from .memory import peak_memory
from .ops import DESCRIPTIONS, OPS, autotuned, floors, make, read_floor
from .timing import interleaved_medians

#: Largest accepted ``max |tnconv - standard| / max |standard|`` in float32.
TOLERANCE = 1e-4

#: Layers of a ``--quick`` run: one of each kind that occurs, all small.
QUICK_LAYERS = (
    "3c3d/conv1",
    "resnet18/layer2.0.downsample.0",
    "convnext_base/features.0.0",
    "inception_v3/Mixed_6b.branch7x7_2",
    "mobilenet_v2/features.1.conv.0.0",
)

#: Largest batch of a ``--quick`` run.
QUICK_BATCH = 2

#: Packages of the ``bench`` extra that the command needs.
EXTRAS = ("tqdm", "matplotlib")


@dataclasses.dataclass(frozen=True)
class Row:
    """One layer × operation: times in ms, extra peak memory in MB (10⁶ bytes), and the check's error.

    ``error`` is empty when both ran and agreed; otherwise it says what went
    wrong and the measurements are NaN. The ``einconv_*`` fields are NaN
    unless einconv was measured (``--einconv``); ``ratio_vs_einconv`` is
    tnconv / einconv, and ``einconv_skipped`` the reason einconv could not
    run the layer, if so. ``tuned_*`` are tnconv with autotuning
    (``tuned_ratio`` = tuned / standard, ``tuned_lowering`` the lowering it chose
    per term); ``floor_ms`` is the fastest of the floors (:func:`~.ops.floors`,
    and PyTorch's kernel for the forward and VJPs), ``floor_kind`` which one,
    ``floor_ratio`` = tnconv / floor and ``tuned_floor_ratio`` = tuned / floor;
    for KFC and KFAC-reduce, ``read_ms`` is one pass over the input
    (:func:`~.ops.read_floor`) and ``tuned_read_floor_ratio`` = tuned / (read + floor);
    ``threads`` the thread count of the run.
    """

    net: str
    layer: str
    kind: str
    op: str
    batch: int
    tnconv_ms: float
    standard_ms: float
    ratio: float
    tnconv_peak_mb: float
    standard_peak_mb: float
    max_rel_err: float
    error: str = ""
    einconv_ms: float = math.nan
    einconv_peak_mb: float = math.nan
    ratio_vs_einconv: float = math.nan
    einconv_max_rel_err: float = math.nan
    einconv_skipped: str = ""
    threads: int = 0
    tuned_ms: float = math.nan
    tuned_peak_mb: float = math.nan
    tuned_ratio: float = math.nan
    tuned_lowering: str = ""
    floor_ms: float = math.nan
    floor_kind: str = ""
    floor_ratio: float = math.nan
    tuned_floor_ratio: float = math.nan
    read_ms: float = math.nan
    tuned_read_floor_ratio: float = math.nan


def relative_error(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    """``max |ours - theirs| / max |theirs|`` (inf if the shapes differ).

    Example:
        >>> relative_error(torch.tensor([1.0, -4.0]), torch.tensor([1.0, -2.0]))
        1.0
    """
    if ours.shape != theirs.shape:
        return math.inf
    scale = theirs.abs().max().item() if theirs.numel() else 0.0
    return (ours - theirs).abs().max().item() / (scale or 1.0) if theirs.numel() else 0.0


def _error_row(layer: Layer, op: str, error: str, err: float = math.nan) -> Row:
    nan = math.nan
    return Row(layer.net, layer.name, layer.kind, op, layer.batch, nan, nan, nan, nan, nan, err, error,
               threads=torch.get_num_threads())


def _message(error: Exception) -> str:
    return f"{type(error).__name__}: {error}".splitlines()[0]


def measure(layer: Layer, op: str, repeats: int = 10, tolerance: float = TOLERANCE, einconv: bool = False,
            tuned: bool = True, floor: bool = True) -> Row:
    """Check, warm up, time interleaved and measure the peak memory of ``op`` on ``layer``.

    With ``tuned``, tnconv with autotuning runs too (its first call tunes, before
    any timing) and is checked like tnconv; with ``floor``, the floors
    (:func:`~.ops.floors`) are timed in the same loop. With ``einconv``,
    einconv's callable (:mod:`.einconv_ops`) is checked against the standard
    result and measured alongside.

    Example:
        >>> from tnconv.bench.layers import NETS
        >>> row = measure(NETS["2c2d"][0], "kfac_reduce", repeats=1)
        >>> row.error, row.ratio > 0, row.tuned_ratio > 0, row.floor_kind
        ('', True, True, 'gram')
    """
    from ..autotune import tuner

    ein, ein_err, skipped = None, math.nan, ""
    try:
        ours, theirs = make(layer, op)
        result = ours()  # tnconv's first call compiles and plans here
        reference = theirs()
        err = relative_error(result, reference)
        del result
        if not err <= tolerance:  # NaN fails too
            return _error_row(layer, op, f"mismatch: max|tnconv - standard|/max|standard| = {err:.2e} > {tolerance:.0e}", err)
        auto, label = None, ""
        if tuned:
            auto = autotuned(ours)  # the same tensors as tnconv's: a copy would start from a cold cache
            tuner.last = None
            tuned_err = relative_error(auto(), reference)  # the first call tunes
            key = _plan_key(layer, op)
            label = _LABELS[key] = ", ".join(tuner.last[1]) if tuner.last else _LABELS.get(key, "")
            if not tuned_err <= tolerance:
                return _error_row(layer, op, f"autotuned mismatch: max|tuned - standard|/max|standard| = "
                                             f"{tuned_err:.2e} > {tolerance:.0e} ({label})", err)
        if einconv:
            from . import einconv_ops

            try:
                ein = einconv_ops.make(layer, op)
                ein_err = relative_error(ein(), reference)
            except einconv_ops.Unsupported as reason:
                ein, skipped = None, str(reason)
            except Exception as error:
                return _error_row(layer, op, f"einconv: {_message(error)}", err)
            if ein is not None and not ein_err <= tolerance:
                row = _error_row(layer, op, f"einconv mismatch: max|einconv - standard|/max|standard| = "
                                            f"{ein_err:.2e} > {tolerance:.0e}", err)
                return dataclasses.replace(row, einconv_max_rel_err=ein_err)
        del reference
        bottoms = floors(layer, op) if floor else {}
        read = read_floor(layer, op) if floor else None
        fns = [ours, theirs] + ([auto] if auto is not None else []) + list(bottoms.values()) + \
            ([read] if read is not None else []) + ([ein] if ein is not None else [])
        for fn in fns:  # warm-up (tnconv: from the caches)
            fn()
        # which goes first rotates, and every call starts from caches the previous one did not warm
        median = dict(zip(fns, interleaved_medians(fns, repeats)))
        peaks = {fn: peak_memory(fn)[1] for fn in [ours, theirs, auto, ein] if fn is not None}
    except Exception as error:  # any failure of either implementation becomes the row's error
        return _error_row(layer, op, _message(error))
    t_ours, t_theirs = median[ours], median[theirs]
    extra = {}
    if ein is not None:
        t_ein = median[ein]
        extra = dict(einconv_ms=t_ein * 1e3, einconv_peak_mb=peaks[ein] / 1e6, ratio_vs_einconv=t_ours / t_ein)
    if auto is not None:
        extra.update(tuned_ms=median[auto] * 1e3, tuned_peak_mb=peaks[auto] / 1e6, tuned_ratio=median[auto] / t_theirs,
                     tuned_lowering=label)
    if floor:
        candidates = {name: median[fn] for name, fn in bottoms.items()}
        if op not in ("kfc", "kfac_reduce"):
            candidates["kernel"] = t_theirs  # PyTorch's own kernel is the standard implementation
        kind = min(candidates, key=candidates.get)
        extra.update(floor_ms=candidates[kind] * 1e3, floor_kind=kind, floor_ratio=t_ours / candidates[kind])
        if auto is not None:
            extra["tuned_floor_ratio"] = median[auto] / candidates[kind]
        if read is not None:
            extra["read_ms"] = median[read] * 1e3
            if auto is not None:
                extra["tuned_read_floor_ratio"] = median[auto] / (median[read] + candidates[kind])
    return Row(layer.net, layer.name, layer.kind, op, layer.batch, t_ours * 1e3, t_theirs * 1e3, t_ours / t_theirs,
               peaks[ours] / 1e6, peaks[theirs] / 1e6, err, einconv_max_rel_err=ein_err, einconv_skipped=skipped,
               threads=torch.get_num_threads(), **extra)


#: Lowerings the autotuner chose, by :func:`_plan_key`: a layer whose operation is the same as an earlier
#: one's reuses its plan (no tuning to report), so its label comes from here.
_LABELS: dict = {}


def _plan_key(layer: Layer, op: str) -> tuple:
    """What tnconv's plan for ``op`` on ``layer`` depends on (the Kronecker factors ignore the output channels)."""
    hyper = (layer.kernel_size, layer.stride, layer.padding, layer.dilation, layer.groups, layer.x_size)
    return (op,) + hyper + (() if op in ("kfc", "kfac_reduce") else (layer.weight_size,))


def benchmark(layers: Sequence[Layer], ops: Sequence[str] = OPS, repeats: int = 10, tolerance: float = TOLERANCE,
              progress: Optional[Callable[[Iterable], Iterable]] = None, einconv: bool = False, tuned: bool = True,
              floor: bool = True) -> List[Row]:
    """One :class:`Row` per layer × operation, layer by layer.

    ``progress`` wraps the iterable of ``(layer, op)`` pairs (e.g. ``tqdm``);
    ``einconv``, ``tuned`` and ``floor`` say what else to measure (see :func:`measure`).

    Example:
        >>> from tnconv.bench.layers import NETS
        >>> [row.op for row in benchmark(NETS["2c2d"][:1], ["forward", "kfc"], repeats=1)]
        ['forward', 'kfc']
    """
    unknown = [op for op in ops if op not in OPS]
    if unknown:
        raise ValueError(f"unknown operation(s) {unknown}; choose from {list(OPS)}")
    pairs = [(layer, op) for layer in layers for op in ops]
    rows = []
    for layer, op in (progress(pairs) if progress else pairs):
        rows.append(measure(layer, op, repeats, tolerance, einconv, tuned, floor))
    return rows


def quick_layers(layers: Sequence[Layer]) -> List[Layer]:
    """The :data:`QUICK_LAYERS` among ``layers`` (else the first of each net), batch at most :data:`QUICK_BATCH`."""
    chosen = [layer for layer in layers if layer.label in QUICK_LAYERS]
    if not chosen:
        firsts = {}
        for layer in layers:
            firsts.setdefault(layer.net, layer)
        chosen = list(firsts.values())
    return [dataclasses.replace(layer, batch=min(layer.batch, QUICK_BATCH)) for layer in chosen]


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The benchmark's options, shared by ``tnconv bench`` and ``benchmarks/run.py``."""
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run: {len(QUICK_LAYERS)} small layers, batch <= {QUICK_BATCH}, 2 repeats")
    parser.add_argument("--nets", nargs="+", metavar="NET", choices=list(NETS), help=f"nets to run (default all): {', '.join(NETS)}")
    parser.add_argument("--ops", nargs="+", metavar="OP", choices=list(OPS), help=f"operations (default all): {', '.join(OPS)}")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls of each implementation (default 10, quick 2)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], metavar="N",
                        help="thread counts (default 1 2); with more than one, each runs in a subprocess with "
                             "OMP_NUM_THREADS=N, else in this process with torch.set_num_threads(N)")
    parser.add_argument("--no-autotune", dest="autotune", action="store_false",
                        help="do not measure tnconv with autotuning (its columns stay empty)")
    parser.add_argument("--tolerance", type=float, default=TOLERANCE, help=f"largest relative error of the check (default {TOLERANCE:g})")
    parser.add_argument("--out", type=Path, default=None,
                        help="results folder (default benchmarks/results, quick benchmarks/results/quick)")
    parser.add_argument("--einconv", action="store_true",
                        help="time einconv 0.1.0 (the paper's package) too, interleaved with the other two; adds the "
                             "columns einconv_ms, einconv_peak_mb, ratio_vs_einconv and a tnconv / einconv table")
    return parser


def missing_extras() -> List[str]:
    """The packages of :data:`EXTRAS` that are not installed."""
    return [name for name in EXTRAS if importlib.util.find_spec(name) is None]


def run(args: argparse.Namespace) -> int:
    """Run the benchmark ``args`` describe, write the results, print the tables; 1 if any row is an error."""
    missing = missing_extras()
    if missing:
        print(f"tnconv bench needs {' and '.join(missing)} (the 'bench' extra): "
              f"python -m pip install 'tnconv[bench]'  (or: python -m pip install {' '.join(missing)})", file=sys.stderr)
        return 2
    if getattr(args, "einconv", False):
        from .einconv_ops import INSTALL, missing as missing_einconv

        absent = missing_einconv()
        if absent:
            print(f"--einconv needs {' and '.join(absent)}, not installed: {INSTALL}", file=sys.stderr)
            return 2
    if args.repeats is not None and args.repeats < 1:
        raise ValueError(f"--repeats must be >= 1, got {args.repeats}")
    counts = [args.threads] if isinstance(args.threads, int) else list(args.threads)
    if not counts or any(n < 1 for n in counts) or len(set(counts)) != len(counts):
        raise ValueError(f"--threads must be distinct counts >= 1, got {counts}")
    out = Path(args.out or ("benchmarks/results/quick" if args.quick else "benchmarks/results"))
    if len(counts) > 1:
        return _run_each(args, counts, out)
    # the autotuner's verdicts of this run, kept beside the results; each run tunes afresh
    from ..autotune.cache import ENV, FILENAME, AutotuneCache

    AutotuneCache(out / "autotune_cache" / FILENAME).clear()
    saved, threads = os.environ.get(ENV), torch.get_num_threads()
    os.environ[ENV] = str(out / "autotune_cache")
    torch.set_num_threads(counts[0])
    try:
        return _run(args, counts[0], out)
    finally:  # leave the caller's settings as they were
        torch.set_num_threads(threads)
        if saved is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = saved


def _forwarded(args: argparse.Namespace) -> List[str]:
    """``args`` as command-line options for a subprocess, but ``--threads`` and ``--out``."""
    argv = ["--quick"] if args.quick else []
    for name, value in (("--nets", args.nets), ("--ops", args.ops)):
        if value:
            argv += [name, *value]
    if args.repeats is not None:
        argv += ["--repeats", str(args.repeats)]
    argv += ["--tolerance", repr(args.tolerance)]
    if getattr(args, "einconv", False):
        argv.append("--einconv")
    if not getattr(args, "autotune", True):
        argv.append("--no-autotune")
    return argv


def _run_each(args: argparse.Namespace, counts: Sequence[int], out: Path) -> int:
    """One subprocess per thread count (``OMP_NUM_THREADS`` set before torch loads), then the joint results."""
    from .report import read_csv, write_results

    rows, code, start = [], 0, time.perf_counter()
    for n in counts:
        env = dict(os.environ, OMP_NUM_THREADS=str(n), MKL_NUM_THREADS=str(n))
        command = [sys.executable, "-m", "tnconv.bench.run", *_forwarded(args), "--threads", str(n),
                   "--out", str(out / f"threads{n}")]
        print(f"tnconv bench: {n} thread(s) in a subprocess: {' '.join(command[1:])}", flush=True)
        done = subprocess.run(command, env=env)
        if done.returncode not in (0, 1):
            print(f"tnconv bench: the {n}-thread run failed (exit code {done.returncode})", file=sys.stderr)
            return done.returncode
        code = max(code, done.returncode)
        rows += read_csv(out / f"threads{n}" / "results.csv")
    meta = dict(threads=list(counts), quick=args.quick, torch=torch.__version__,
                seconds=round(time.perf_counter() - start, 1))
    paths = write_results(rows, out, meta, plots=True, einconv=getattr(args, "einconv", False))
    print((out / "summary.md").read_text())
    print(f"{len(rows)} rows, wrote {', '.join(str(p) for p in paths)}")
    return code


def _run(args: argparse.Namespace, threads: int, out: Path) -> int:
    from tqdm import tqdm

    from .report import write_results

    layers = list(select(args.nets))
    if args.quick:
        layers = quick_layers(layers)
    repeats = args.repeats or (2 if args.quick else 10)
    ops = args.ops or list(OPS)
    einconv = getattr(args, "einconv", False)
    tuned = getattr(args, "autotune", True)
    print(f"tnconv bench: {len(layers)} layers x {len(ops)} operations, {repeats} interleaved repeats, "
          f"{threads} thread(s), float32{', autotuned too' if tuned else ''}{', with einconv' if einconv else ''} "
          f"-> {out}", flush=True)

    def progress(pairs):
        bar = tqdm(pairs, unit="op", dynamic_ncols=True)
        for layer, op in bar:
            bar.set_postfix_str(f"{layer.label} {op}", refresh=False)
            yield layer, op

    start = time.perf_counter()
    rows = benchmark(layers, ops, repeats, args.tolerance, progress, einconv, tuned)
    elapsed = time.perf_counter() - start
    meta = dict(layers=len(layers), ops=ops, repeats=repeats, threads=threads, quick=args.quick,
                torch=torch.__version__, seconds=round(elapsed, 1))
    if einconv:
        from .einconv_ops import version

        meta["einconv"] = version()
    paths = write_results(rows, out, meta, plots=True, einconv=einconv)
    print("\n" + (out / "summary.md").read_text())
    errors = [row for row in rows if row.error]
    for row in errors:
        print(f"ERROR {row.net}/{row.layer} {row.op}: {row.error}", file=sys.stderr)
    print(f"{len(rows)} rows in {elapsed:.0f} s, {len(errors)} error(s); wrote {', '.join(str(p) for p in paths)}")
    return 1 if errors else 0


def main(argv=None) -> int:
    """Entry point of ``python benchmarks/run.py``."""
    parser = add_arguments(argparse.ArgumentParser(prog="benchmarks/run.py", description=__doc__.splitlines()[0]))
    try:
        return run(parser.parse_args(argv))
    except ValueError as error:
        print(f"benchmarks/run.py: {error}", file=sys.stderr)
        return 2


__all__ = ["Row", "TOLERANCE", "QUICK_LAYERS", "measure", "benchmark", "quick_layers", "relative_error",
           "add_arguments", "run", "main", "DESCRIPTIONS"]


if __name__ == "__main__":  # python -m tnconv.bench.run: what each thread count's subprocess runs
    sys.exit(main())
