"""The main job, ``tnconv demo``: what tnconv is for, on layers of real CNNs.

Every operation family -- the forward convolution, both VJPs, the per-sample
gradient and the two Kronecker factors KFC and KFAC-reduce -- is checked
against PyTorch in float64 and timed against the standard PyTorch
implementation in float32 (the same pairs ``tnconv bench`` measures, from
:mod:`tnconv.bench`), interleaved, with the extra peak memory of one call of
each. A one-screen summary follows, then the derivation of KFAC-reduce for a
dense layer pass by pass (unified diffs of the text form) and, with graphviz,
drawings of every step and operation in a folder it names.

The data are random tensors of the layers' shapes: nothing is downloaded.
"""

from __future__ import annotations

import dataclasses
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Callable, Iterable, List, Optional, Tuple

import torch

#: The layers: (label in :data:`tnconv.bench.layers.NETS`, name, batch). Early layers of CIFAR and
#: ImageNet nets, where the Kronecker factors' im2col matrices are largest: a general convolution, a
#: strided stem, a 1x1 convolution, a dense stem (kernel = stride) and a strided depthwise one.
LAYERS = (
    ("3c3d/conv1", "3c3d conv1", 32),
    ("resnet18/conv1", "ResNet18 conv1", 4),
    ("inception_v3/Conv2d_3b_1x1", "Inception 3b 1x1", 8),
    ("convnext_base/features.0.0", "ConvNeXt stem", 8),
    ("mobilenet_v2/features.2.conv.1.0", "MobileNetV2 dw", 4),
)

#: ``--quick``: two layers at batch 1, one timed repeat (a smoke run of everything, for tests).
QUICK_LAYERS = ("3c3d/conv1", "convnext_base/features.0.0")

#: The operation families, in the order the summary lists them.
OPS = ("forward", "input_vjp", "weight_vjp", "per_sample_grad", "kfc", "kfac_reduce")
_NAMES = {"forward": "forward", "input_vjp": "input VJP", "weight_vjp": "weight VJP",
          "per_sample_grad": "per-sample gradient", "kfc": "KFC", "kfac_reduce": "KFAC-reduce"}
_HEADINGS = {"forward": ("", "forward"), "input_vjp": ("input", "VJP"), "weight_vjp": ("weight", "VJP"),
             "per_sample_grad": ("per-", "sample"), "kfc": ("", "KFC"), "kfac_reduce": ("KFAC-", "reduce")}
_COLUMN = 8  # width of a column of the summary

#: Largest accepted ``max |tnconv - PyTorch| / max |PyTorch|`` in float64.
TOLERANCE = 1e-10

#: The layer whose KFAC-reduce derivation is printed and drawn (dense: the rewrite has work to do).
DERIVED = "convnext_base/features.0.0"


@dataclasses.dataclass(frozen=True)
class Result:
    """One layer x operation: float64 error against PyTorch, float32 median times (ms) and extra peaks (bytes)."""

    layer: str
    op: str
    error: float
    tnconv_ms: float
    standard_ms: float
    tnconv_peak: int
    standard_peak: int

    @property
    def ratio(self) -> float:
        return self.tnconv_ms / self.standard_ms

    @property
    def memory_ratio(self) -> float:
        return self.tnconv_peak / self.standard_peak if self.standard_peak else float("nan")


def layers(quick: bool = False) -> List[Tuple[str, object]]:
    """``[(name, tnconv.bench.layers.Layer)]`` of the demo, batch set (``quick``: two layers at batch 1).

    Example:
        >>> [(name, layer.batch) for name, layer in layers(quick=True)]
        [('3c3d conv1', 1), ('ConvNeXt stem', 1)]
    """
    from .bench.layers import NETS

    by_label = {layer.label: layer for net in NETS.values() for layer in net}
    chosen = [(label, name, batch) for label, name, batch in LAYERS if not quick or label in QUICK_LAYERS]
    return [(name, dataclasses.replace(by_label[label], batch=1 if quick else batch)) for label, name, batch in chosen]


def _pair(layer, op, dtype) -> Tuple[Callable, Callable]:
    from .bench.ops import make
    from .bench.per_sample import make_per_sample

    return make_per_sample(layer, dtype) if op == "per_sample_grad" else make(layer, op, dtype)


def measure(name: str, layer, op: str, repeats: int) -> Result:
    """Check ``op`` on ``layer`` against PyTorch in float64, then time and profile both in float32.

    Example:
        >>> name, layer = layers(quick=True)[0]
        >>> r = measure(name, layer, "kfac_reduce", repeats=1)
        >>> r.error < TOLERANCE, r.ratio > 0
        (True, True)
    """
    from .bench.memory import peak_memory
    from .bench.run import relative_error
    from .bench.timing import interleaved_medians

    ours, theirs = _pair(layer, op, torch.float64)
    error = relative_error(ours(), theirs())
    ours, theirs = _pair(layer, op, torch.float32)
    for fn in (ours, theirs, ours, theirs):  # warm up: tnconv compiles and plans on its first call
        fn()
    t_ours, t_theirs = interleaved_medians([ours, theirs], repeats)
    return Result(name, op, error, t_ours * 1e3, t_theirs * 1e3, peak_memory(ours)[1], peak_memory(theirs)[1])


def _geometry(layer) -> str:
    """``3→64 32² k5`` plus the stride, padding and groups that are not 1, 0, 1."""
    same = lambda v: v[0] if len(set(v)) == 1 else "x".join(map(str, v))
    size = f"{layer.input_size[0]}²" if len(set(layer.input_size)) == 1 else "x".join(map(str, layer.input_size))
    text = f"{layer.in_channels}→{layer.out_channels} {size} k{same(layer.kernel_size)}"
    if set(layer.stride) != {1}:
        text += f" s{same(layer.stride)}"
    if set(layer.padding) != {0}:
        text += f" p{same(layer.padding)}"
    if layer.groups != 1:
        text += f" g{layer.groups}"
    return text


def _median(values) -> float:
    values = [v for v in values if v == v]
    return statistics.median(values) if values else float("nan")


def _speed(ratio: float) -> str:
    """``3.2x faster``, ``at par`` or ``1.4x slower``: within 15% of 1 is noise at these sizes."""
    if ratio < 1 / 1.15:
        return f"{1 / ratio:.1f}x faster"
    return f"{ratio:.1f}x slower" if ratio > 1.15 else "at par"


#: Why each family performs as it does, printed under the summary.
_WHY = {
    "kfc": "one matrix product of a strided view of x with itself, where the standard recipe first copies x "
           "into its im2col matrix [[X]]",
    "kfac_reduce": "the index patterns are summed over the output positions before they meet x, so [[X]] is "
                   "never built; the standard recipe builds it only to average it",
    "forward": "tnconv recognises each diagram as a convolution or its VJP and runs PyTorch's own kernel",
    "per_sample_grad": "PyTorch's grouped-convolution weight VJP, against im2col and a batched matrix product "
                       "(the recipe of Opacus and BackPACK)",
}


def _family(title: str, op: str, results: List[Result], why: str) -> List[str]:
    ratios = [r.ratio for r in results if r.op == op]
    median, memory = _median(ratios), _median(r.memory_ratio for r in results if r.op == op)
    slowest, fastest = _speed(max(ratios)), _speed(min(ratios))
    spread = f"{slowest} to {fastest}" if slowest != fastest else fastest
    text = (f"{title}: {_speed(median)} in the median ({median:.2f}; per layer {spread}), "
            f"{memory:.2f}x the peak memory: {why}.")
    return textwrap.wrap(text, 100, subsequent_indent="  ")


def summary(results: List[Result], chosen, threads: int, repeats: int) -> str:
    """The one-screen summary: time ratios per layer and operation, medians, memory, errors, and what they mean."""
    width = max(len(name) for name, _ in chosen) + 2
    geo = max(len(_geometry(layer)) for _, layer in chosen) + 2
    pad, c = width + geo + 5, _COLUMN
    top = " " * pad + "".join(f"{_HEADINGS[op][0]:>{c}}" for op in OPS)
    head = f"{'layer':<{width}}{'shape':<{geo}}{'batch':>5}" + "".join(f"{_HEADINGS[op][1]:>{c}}" for op in OPS)
    lines = ["time tnconv / standard PyTorch, float32 (below 1: tnconv is faster)", top, head, "-" * len(head)]
    cell = {(r.layer, r.op): r for r in results}
    for name, layer in chosen:
        row = f"{name:<{width}}{_geometry(layer):<{geo}}{layer.batch:>5}"
        lines.append(row + "".join(f"{cell[name, op].ratio:>{c}.2f}" for op in OPS))
    lines.append("-" * len(head))
    medians = {op: _median(r.ratio for r in results if r.op == op) for op in OPS}
    memory = {op: _median(r.memory_ratio for r in results if r.op == op) for op in OPS}
    errors = {op: max(r.error for r in results if r.op == op) for op in OPS}
    lines.append(f"{'median time ratio':<{pad}}" + "".join(f"{medians[op]:>{c}.2f}" for op in OPS))
    lines.append(f"{'median peak memory ratio':<{pad}}" + "".join(f"{memory[op]:>{c}.2f}" for op in OPS))
    lines.append(f"{'largest error, float64':<{pad}}" + "".join(f"{errors[op]:>{c}.0e}" for op in OPS))
    worst = max(errors.values())
    ok = worst <= TOLERANCE
    lines.append("")
    lines.append(f"{'OK' if ok else 'MISMATCH'}: {len(results)} results {'agree' if ok else 'do not all agree'} with "
                 f"PyTorch in float64 (largest relative error {worst:.1e}, tolerance {TOLERANCE:.0e}).")
    lines += textwrap.wrap(f"Timed on {threads} thread(s): median of {repeats} interleaved calls after warm-up; "
                           "peak memory is what one call allocates beyond its inputs (torch.profiler).", 100)
    lines.append("")
    lines += _family("KFC", "kfc", results, _WHY["kfc"])
    lines += _family("KFAC-reduce", "kfac_reduce", results, _WHY["kfac_reduce"])
    par = ", ".join(f"{_NAMES[op]} {_speed(medians[op])} ({medians[op]:.2f})" for op in ("forward", "input_vjp", "weight_vjp"))
    lines += textwrap.wrap(f"Forward and VJPs: {par}: {_WHY['forward']}.", 100, subsequent_indent="  ")
    lines += _family("The per-sample gradient", "per_sample_grad", results, _WHY["per_sample_grad"])
    lines.append("Within 15% of 1 counts as at par: that much is noise at these sizes (tnconv adds a few us per call).")
    if all(layer.batch == 1 for _, layer in chosen) and repeats == 1:
        lines.append("--quick: batch 1 and one timed call, a smoke run; its timings mean nothing.")
    return "\n".join(lines)


def _hyper(layer) -> dict:
    """The diagram builders' arguments for ``layer``, its input size fixed (so the rewrites can fire)."""
    return dict(N=len(layer.input_size), kernel_size=layer.kernel_size, stride=layer.stride, padding=layer.padding,
                dilation=layer.dilation, groups=layer.groups, input_size=layer.input_size)


def derivation(layer):
    """KFAC-reduce of ``layer`` derived step by step: a :class:`~tnconv.passes.Trace` from the unfolded input.

    The first step is the im2col diagram; the second joins it with a copy of
    itself (:func:`~tnconv.passes.rename_apart`, :func:`~tnconv.passes.contract`),
    summing each copy over the output positions; then tnconv's default pipeline.

    Example:
        >>> from tnconv.bench.layers import NETS
        >>> trace = derivation(NETS["convnext_base"][0])
        >>> trace.names, trace.changed
        (['unfold', 'rename_apart + contract', 'fuse_deltas', 'drop_ones', 'simplify'], ['rename_apart + contract', 'simplify'])
    """
    from . import compile, diagrams
    from .passes import Trace

    hyper = _hyper(layer)
    unfold = diagrams.unfold(**hyper)
    factor = diagrams.kfac_reduce(**hyper)
    trace = Trace([("unfold", unfold), ("rename_apart + contract", factor)])
    for name, tn in compile(factor, lowering=(), trace=True).trace.networks[1:]:
        trace.append_network(name, tn)
    return trace


def _diagrams(layer) -> List[Tuple[str, object]]:
    """Every operation family's network for ``layer``, after the passes: what tnconv contracts."""
    import inspect

    from . import compile, diagrams

    hyper = _hyper(layer)
    sizes = {f"I{d + 1}": s for d, s in enumerate(layer.input_size)}
    found = []
    for op, builder in (("forward", "conv"), ("input_vjp", "input_vjp"), ("weight_vjp", "weight_vjp"),
                        ("per_sample_grad", "per_sample_weight_grad"), ("kfc", "kfc"), ("kfac_reduce", "kfac_reduce")):
        fn = getattr(diagrams, builder)
        params = inspect.signature(fn).parameters
        tn = fn(**{k: v for k, v in hyper.items() if k in params}).specialize(**sizes)
        found.append((op, compile(tn, lowering=()).network))
    return found


def draw(layer, trace, folder: Path) -> List[str]:
    """SVGs of the derivation's steps that changed the network and of every operation on ``layer``."""
    from .ir import render

    folder.mkdir(parents=True, exist_ok=True)
    changed = [trace.names[0]] + trace.changed
    steps = [(f"kfac_reduce_step{n}_{name.split(' ')[0]}", tn)
             for n, (name, tn) in enumerate(trace.networks) if name in changed]
    ops = [(f"op_{op}", tn) for op, tn in _diagrams(layer)]
    return [render(tn, folder / f"{name}.svg") for name, tn in steps + ops]


def _progress(items: list) -> Iterable:
    """tqdm's bar if the ``bench`` extra is installed, else a one-line counter on a terminal, else nothing."""
    try:
        from tqdm import tqdm
    except ImportError:
        tty = sys.stderr.isatty()
        for n, item in enumerate(items):
            if tty:
                print(f"\r[{n + 1}/{len(items)}] {item[0]}: {item[2]}".ljust(60), end="", file=sys.stderr, flush=True)
            yield item
        if tty:
            print(file=sys.stderr)
        return
    bar = tqdm(items, unit="op", file=sys.stderr, dynamic_ncols=True, leave=False, disable=None)  # off if no terminal
    for item in bar:
        bar.set_postfix_str(f"{item[0]}: {item[2]}", refresh=False)
        yield item


def run(repeats: int = 7, quick: bool = False, out: Optional[Path] = None, draw_pictures: bool = True,
        threads: Optional[int] = None) -> int:
    """Run the demo and print its report; 0 if every result agrees with PyTorch, else 1.

    Args:
        repeats: timed calls of each implementation (``quick``: 1).
        quick: two layers at batch 1 (a smoke run).
        out: folder for the drawings (default: a new temporary folder); drawn only with graphviz.
        draw_pictures: write the drawings at all.
        threads: ``torch.set_num_threads`` for the run (default: leave PyTorch's setting); restored after.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be a positive int or None, got {threads!r}")
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _run(repeats, quick, out, draw_pictures)
    finally:
        torch.set_num_threads(before)


def _run(repeats, quick, out, draw_pictures) -> int:
    from .ir.draw import has_graphviz

    repeats = 1 if quick else repeats
    chosen = layers(quick)
    threads = torch.get_num_threads()
    print(f"tnconv demo: {len(OPS)} operation families on {len(chosen)} layers of real CNNs (random data of their "
          "shapes),\nchecked against PyTorch in float64 and timed against the standard PyTorch implementation in "
          "float32.\n", flush=True)
    start = time.perf_counter()
    items = [(name, layer, op) for name, layer in chosen for op in OPS]
    results = [measure(name, layer, op, repeats) for name, layer, op in _progress(items)]
    print(summary(results, chosen, threads, repeats))
    print(f"({time.perf_counter() - start:.0f} s; per-layer times and all 130 layers: tnconv bench)")

    by_label = {layer.label: layer for _, layer in chosen}
    layer = by_label.get(DERIVED) or chosen[0][1]
    trace = derivation(layer)
    print(f"\nHow tnconv derives KFAC-reduce for {layer.label} ({_geometry(layer)}), pass by pass:")
    print("the im2col diagram, then what each step changed (a unified diff of the text form)\n")
    print(trace.diff())
    if draw_pictures:
        if not has_graphviz():
            print("\nDrawings: skipped, graphviz's 'dot' is not installed (apt-get install graphviz).")
        else:
            folder = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="tnconv-demo-"))
            paths = draw(layer, trace, folder)
            print(f"\nDrawings ({len(paths)} SVGs: the derivation's steps and every operation on this layer): {folder}")
    ok = all(r.error <= TOLERANCE for r in results)
    return 0 if ok else 1
