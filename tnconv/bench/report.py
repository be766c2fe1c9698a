"""Benchmark results out: the CSV, the Markdown medians table and the plots.

matplotlib is imported only by :func:`plot`, so the CSV and the table need
nothing beyond the standard library.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import statistics
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from .layers import KINDS
from .ops import OPS

#: The CSV's columns, in order.
COLUMNS = ("net", "layer", "kind", "op", "batch", "threads", "tnconv_ms", "standard_ms", "ratio", "tuned_ms",
           "tuned_ratio", "floor_ms", "floor_kind", "floor_ratio", "tuned_floor_ratio", "read_ms",
           "tuned_read_floor_ratio", "tnconv_peak_mb",
           "standard_peak_mb", "tuned_peak_mb", "tuned_lowering", "max_rel_err", "error")

#: The CSV's columns with ``--einconv``: :data:`COLUMNS` with einconv's before ``error``.
EINCONV_COLUMNS = COLUMNS[:-1] + ("einconv_ms", "einconv_peak_mb", "ratio_vs_einconv", "einconv_max_rel_err",
                                  "einconv_skipped") + COLUMNS[-1:]


def write_csv(rows, path: Path, einconv: bool = False) -> Path:
    """One line per row under the header :data:`COLUMNS` (:data:`EINCONV_COLUMNS` with ``einconv``);
    NaN, as of an error row, as an empty field."""
    columns = EINCONV_COLUMNS if einconv else COLUMNS
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for row in rows:
            values = [getattr(row, name) for name in columns]
            writer.writerow(["" if isinstance(v, float) and math.isnan(v) else f"{v:.6g}" if isinstance(v, float) else v
                             for v in values])
    return path


def read_csv(path: Path) -> list:
    """The rows of a ``results.csv`` :func:`write_csv` wrote, back as :class:`~tnconv.bench.run.Row` (empty: NaN).

    Example:
        >>> import tempfile, pathlib
        >>> from tnconv.bench.run import Row
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "results.csv"
        >>> _ = write_csv([Row("n", "l", "dense", "kfc", 2, 1.0, 2.0, 0.5, 1.0, 1.0, 0.0, threads=2)], path)
        >>> row, = read_csv(path)
        >>> row.ratio, row.threads, row.tuned_ms != row.tuned_ms
        (0.5, 2, True)
    """
    from .run import Row

    fields = {f.name: f.type for f in dataclasses.fields(Row)}
    rows = []
    with open(path, newline="") as f:
        for record in csv.DictReader(f):
            values = {}
            for name, text in record.items():
                kind = fields.get(name)
                if kind is None:
                    continue
                if kind in ("float", float):
                    values[name] = float(text) if text != "" else math.nan
                elif kind in ("int", int):
                    values[name] = int(float(text)) if text != "" else 0
                else:
                    values[name] = text
            rows.append(Row(**values))
    return rows


def _ok(rows):
    return [row for row in rows if not row.error]


def medians(rows, key: str = "ratio") -> Dict[str, Dict[str, tuple]]:
    """``{op: {"all" or kind: (median of key, count)}}`` over the rows without error and with a value of ``key``.

    Example:
        >>> from tnconv.bench.run import Row
        >>> rows = [Row("n", "l", "dense", "kfc", 1, 1.0, 2.0, r, 1.0, 1.0, 0.0) for r in (0.5, 1.0, 4.0)]
        >>> medians(rows)["kfc"]["all"]
        (1.0, 3)
    """
    table = {}
    for op in OPS:
        of_op = [row for row in _ok(rows) if row.op == op and not math.isnan(getattr(row, key))]
        if not of_op:
            continue
        cells = {"all": of_op, **{kind: [r for r in of_op if r.kind == kind] for kind in KINDS}}
        table[op] = {name: (statistics.median(getattr(r, key) for r in cells[name]), len(cells[name]))
                     for name in cells if cells[name]}
    return table


def _memory_ratio(row) -> float:
    # a standard call that allocates nothing beyond its inputs would make any ratio infinite
    return row.tnconv_peak_mb / row.standard_peak_mb if row.standard_peak_mb > 0 else math.nan


def markdown_table(rows) -> str:
    """Median time ratio tnconv/standard per operation, overall and per kind, with the median peak-memory ratio.

    A cell reads ``median (number of layers)``; below 1 tnconv is faster.
    """
    time = medians(rows)
    memory = {}
    for op in time:
        ratios = [r for r in map(_memory_ratio, (row for row in _ok(rows) if row.op == op)) if not math.isnan(r)]
        memory[op] = statistics.median(ratios) if ratios else math.nan
    kinds = [kind for kind in KINDS if any(kind in cells for cells in time.values())]
    head = ["operation", "all"] + kinds + ["peak memory (all)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for op, cells in time.items():
        values = [f"{cells[k][0]:.2f} ({cells[k][1]})" if k in cells else "–" for k in ["all"] + kinds]
        lines.append("| " + " | ".join([op] + values + [f"{memory[op]:.2f}"]) + " |")
    errors = len(rows) - len(_ok(rows))
    note = (f"Median ratio tnconv / standard (layers); below 1 tnconv is faster or uses less memory. "
            f"{errors} error row(s) left out." if errors else
            "Median ratio tnconv / standard (layers); below 1 tnconv is faster or uses less memory.")
    return "\n".join(lines) + "\n\n" + note


def _cell(values) -> str:
    return f"{statistics.median(values):.2f} / {max(values):.2f}" if values else "–"


def floor_table(rows) -> str:
    """Per operation, median / worst layer of tnconv / standard, autotuned / standard, autotuned / floor and
    tnconv / floor, and below the table the worst layer of each autotuned ratio with its lowering and floor.

    Example:
        >>> from tnconv.bench.run import Row
        >>> rows = [Row("n", f"l{r}", "dense", "kfc", 1, r, 1.0, r, 1.0, 1.0, 0.0, tuned_ms=r / 2, tuned_ratio=r / 2,
        ...             floor_ms=0.25, floor_kind="gram", floor_ratio=4 * r, tuned_floor_ratio=2 * r) for r in (0.5, 1.0)]
        >>> print(floor_table(rows).splitlines()[2])
        | kfc | 0.75 / 1.00 | 0.38 / 0.50 | 1.50 / 2.00 | 3.00 / 4.00 | – | 2 |
    """
    ok = _ok(rows)
    head = ["operation", "tnconv / standard", "autotuned / standard", "autotuned / floor", "tnconv / floor",
            "autotuned / (read + floor)", "layers"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    worst = []
    for op in OPS:
        of_op = [row for row in ok if row.op == op]
        if not of_op:
            continue
        column = {key: [getattr(r, key) for r in of_op if not math.isnan(getattr(r, key))]
                  for key in ("ratio", "tuned_ratio", "tuned_floor_ratio", "floor_ratio", "tuned_read_floor_ratio")}
        lines.append("| " + " | ".join([op] + [_cell(column[k]) for k in column] + [str(len(of_op))]) + " |")
        for key, what in (("tuned_ratio", "autotuned / standard"), ("tuned_floor_ratio", "autotuned / floor"),
                          ("tuned_read_floor_ratio", "autotuned / (read + floor)")):
            measured = [r for r in of_op if not math.isnan(getattr(r, key))]
            if measured:
                r = max(measured, key=lambda r: getattr(r, key))
                worst.append(f"- {op}, worst {what}: {r.net}/{r.layer} {getattr(r, key):.2f} ({r.tuned_ms:.3g} ms; "
                             f"standard {r.standard_ms:.3g} ms, floor {r.floor_ms:.3g} ms ({r.floor_kind}"
                             + (f", read {r.read_ms:.3g} ms" if not math.isnan(r.read_ms) else "")
                             + f"); lowering {r.tuned_lowering or '?'})")
    note = ("Median / worst layer of each time ratio; below 1 the first is faster. Floor: the fastest of PyTorch's "
            "kernel and, for dense layers, one matrix product of the prepared operands (forward, VJPs), or the final "
            "Gram product of the already unfolded or reduced input (KFC, KFAC-reduce); read: one pass over the "
            "input x (its sum), which KFC and KFAC-reduce cannot skip either.")
    return "\n".join(lines) + "\n\n" + note + ("\n\n" + "\n".join(worst) if worst else "")


def einconv_table(rows) -> str:
    """Median time ratio tnconv/einconv per operation, overall and per kind, the median peak-memory ratio,
    and on how many layers tnconv is not faster than einconv, listed below the table.

    Rows without an einconv time (error, skipped, or einconv not run) are left out.

    Example:
        >>> from tnconv.bench.run import Row
        >>> rows = [Row("n", f"l{r}", "dense", "kfc", 1, r, 1.0, r, 1.0, 1.0, 0.0, einconv_ms=1.0,
        ...             einconv_peak_mb=2.0, ratio_vs_einconv=r) for r in (0.5, 2.0, 0.25)]
        >>> print(einconv_table(rows).splitlines()[2])
        | kfc | 0.50 (3) | 0.50 (3) | 0.50 | 1 / 3 |
    """
    time = medians(rows, "ratio_vs_einconv")
    measured = [row for row in _ok(rows) if not math.isnan(row.ratio_vs_einconv)]
    kinds = [kind for kind in KINDS if any(kind in cells for cells in time.values())]
    head = ["operation", "all"] + kinds + ["peak memory (all)", "tnconv not faster"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    slower = []
    for op, cells in time.items():
        of_op = [row for row in measured if row.op == op]
        memory = [row.tnconv_peak_mb / row.einconv_peak_mb for row in of_op if row.einconv_peak_mb > 0]
        not_faster = [row for row in of_op if not row.ratio_vs_einconv < 1]
        slower.extend(not_faster)
        values = [f"{cells[k][0]:.2f} ({cells[k][1]})" if k in cells else "–" for k in ["all"] + kinds]
        values.append(f"{statistics.median(memory):.2f}" if memory else "–")
        lines.append("| " + " | ".join([op] + values + [f"{len(not_faster)} / {len(of_op)}"]) + " |")
    skipped = [row for row in _ok(rows) if row.einconv_skipped]
    errors = len(rows) - len(_ok(rows))
    note = "Median ratio tnconv / einconv (layers); below 1 tnconv is faster or uses less memory."
    if skipped:
        note += f" {len(skipped)} row(s) einconv cannot express left out."
    if errors:
        note += f" {errors} error row(s) left out."
    table = "\n".join(lines) + "\n\n" + note if time else "No layer with an einconv time. " + note
    if slower:
        table += "\n\ntnconv not faster than einconv (tnconv / einconv):\n" + "\n".join(
            f"- {row.net}/{row.layer} {row.op}: {row.ratio_vs_einconv:.2f} ({row.tnconv_ms:.3g} ms vs "
            f"{row.einconv_ms:.3g} ms)" for row in slower)
    if skipped:
        table += "\n\neinconv skipped:\n" + "\n".join(
            f"- {row.net}/{row.layer} {row.op}: {row.einconv_skipped}" for row in skipped)
    return table


def plot(rows, out: Path, suffix: str = "") -> List[Path]:
    """``ratio_per_layer.png`` (time ratio of every layer, one panel per operation), ``ratio_per_op.png``
    (box and strip plot of the time and peak-memory ratios per operation) and, when measured,
    ``tuned_per_layer.png`` (per layer: tnconv / standard, autotuned / standard, autotuned / floor), all
    log scale with a line at 1; ``suffix`` goes before ``.png``."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    # round ratios as tick labels, so a narrow range (0.9 to 1.5, say) still gets a few
    coarse = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
    fine = (0.1, 0.2, 0.3, 0.5, 0.7, 0.8, 0.9, 1, 1.2, 1.5, 2, 3, 5, 7, 10)

    def log_axis(ax):
        ax.set_yscale("log")
        low, high = ax.get_ylim()
        ladder = fine if high / low < 10 else coarse
        ax.yaxis.set_major_locator(FixedLocator([t for t in ladder if low <= t <= high] or [1]))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())

    ok = _ok(rows)
    colors = dict(zip(KINDS, ("tab:blue", "tab:purple", "tab:green", "tab:orange")))
    ops = [op for op in OPS if any(r.op == op for r in ok)]
    labels = list(dict.fromkeys((r.net, r.layer) for r in rows))
    position = {label: i for i, label in enumerate(labels)}
    paths = []

    fig, axes = plt.subplots(len(ops) or 1, 1, figsize=(max(8, 0.09 * len(labels) + 3), 2.0 * max(len(ops), 1) + 1),
                             sharex=True, squeeze=False)
    for ax, op in zip(axes[:, 0], ops):
        for kind in KINDS:
            pts = [(position[(r.net, r.layer)], r.ratio) for r in ok if r.op == op and r.kind == kind]
            if pts:
                ax.scatter(*zip(*pts), s=12, color=colors[kind], label=kind)
        ax.axhline(1.0, color="black", linewidth=0.8)
        log_axis(ax)
        ax.set_ylabel(f"{op}\ntnconv / std")
        starts = [i for i, (net, _) in enumerate(labels) if i == 0 or labels[i - 1][0] != net]
        for i in starts[1:]:
            ax.axvline(i - 0.5, color="grey", linewidth=0.5, linestyle=":")
    bottom = axes[-1, 0]
    starts = [i for i, (net, _) in enumerate(labels) if i == 0 or labels[i - 1][0] != net]
    ends = starts[1:] + [len(labels)]
    bottom.set_xticks([(s + e - 1) / 2 for s, e in zip(starts, ends)])
    bottom.set_xticklabels([labels[s][0] for s in starts], rotation=30, ha="right")
    fig.suptitle("Run time tnconv / standard per layer (below 1: tnconv faster)", x=0.02, y=0.995, ha="left")
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="upper right", bbox_to_anchor=(1, 0.975),
               fontsize="small", ncol=len(KINDS))
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    paths.append(out / f"ratio_per_layer{suffix}.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), squeeze=False)
    for ax, (title, value) in zip(axes[0], (("run time", lambda r: r.ratio), ("extra peak memory", _memory_ratio))):
        seen = set()
        data = [[v for v in (value(r) for r in ok if r.op == op) if v > 0 and math.isfinite(v)] for op in ops]
        ax.boxplot([d or [math.nan] for d in data], showfliers=False, widths=0.6)
        for i, op in enumerate(ops):
            for kind in KINDS:
                ys = [value(r) for r in ok if r.op == op and r.kind == kind]
                ys = [y for y in ys if y > 0 and math.isfinite(y)]
                if not ys:
                    continue
                # deterministic jitter: spread points by their rank so none hide behind another
                xs = [i + 1 + 0.25 * ((j % 9) / 4 - 1) for j in range(len(ys))]
                ax.scatter(xs, ys, s=9, alpha=0.7, color=colors[kind], label=kind if kind not in seen else None)
                seen.add(kind)
        ax.axhline(1.0, color="black", linewidth=0.8)
        log_axis(ax)
        ax.set_xticks(range(1, len(ops) + 1))
        ax.set_xticklabels(ops, rotation=20)
        ax.set_title(f"{title}: tnconv / standard")
    axes[0, 0].legend(fontsize="small")
    fig.tight_layout()
    paths.append(out / f"ratio_per_op{suffix}.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    measured = [r for r in ok if not math.isnan(r.tuned_ratio) or not math.isnan(r.tuned_floor_ratio)]
    if measured:
        series = (("ratio", "tnconv / standard", "o", "lightgrey"), ("tuned_ratio", "autotuned / standard", "o", None),
                  ("tuned_floor_ratio", "autotuned / floor", "v", "black"))
        fig, axes = plt.subplots(len(ops), 1, figsize=(max(8, 0.09 * len(labels) + 3), 2.2 * len(ops) + 1),
                                 sharex=True, squeeze=False)
        for ax, op in zip(axes[:, 0], ops):
            for key, name, marker, color in series:
                for kind in KINDS if color is None else (None,):
                    pts = [(position[(r.net, r.layer)], getattr(r, key)) for r in measured
                           if r.op == op and (kind is None or r.kind == kind) and getattr(r, key) > 0]
                    if pts:
                        ax.scatter(*zip(*pts), s=10 if color else 14, marker=marker, color=color or colors[kind],
                                   label=f"{name} ({kind})" if kind else name, alpha=0.9 if color is None else 0.7)
            ax.axhline(1.0, color="black", linewidth=0.8)
            log_axis(ax)
            ax.set_ylabel(op)
            for i in starts[1:]:
                ax.axvline(i - 0.5, color="grey", linewidth=0.5, linestyle=":")
        bottom = axes[-1, 0]
        bottom.set_xticks([(s + e - 1) / 2 for s, e in zip(starts, ends)])
        bottom.set_xticklabels([labels[s][0] for s in starts], rotation=30, ha="right")
        fig.suptitle("Per layer: tnconv / standard (grey), autotuned / standard (by kind), autotuned / floor (black)",
                     x=0.02, y=0.995, ha="left")
        handles, names = axes[0, 0].get_legend_handles_labels()
        fig.legend(handles, names, loc="upper right", bbox_to_anchor=(1, 0.975), fontsize="x-small", ncol=3)
        fig.tight_layout(rect=(0, 0, 1, 0.94))
        paths.append(out / f"tuned_per_layer{suffix}.png")
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)
    return paths


def write_results(rows, out: Path, meta: Optional[dict] = None, plots: bool = True, einconv: bool = False) -> List[Path]:
    """Write ``results.csv``, ``summary.md`` (the tables and the run's settings) and, with ``plots``, the plots.

    The summary has, per thread count, :func:`markdown_table` (tnconv / standard by kind),
    :func:`floor_table` when the autotuned or floor columns were measured, and with
    ``einconv`` (where the CSV gets einconv's columns) :func:`einconv_table`. Plots of
    several thread counts get a ``_threads<N>`` suffix. Returns the paths written.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [write_csv(rows, out / "results.csv", einconv)]
    summary = out / "summary.md"
    settings = f"\n\nRun: `{json.dumps(meta)}`\n" if meta else "\n"
    counts = sorted({row.threads for row in rows})
    sections = []
    for n in counts:
        part = [row for row in rows if row.threads == n]
        tables = [markdown_table(part)]
        if any(not math.isnan(r.tuned_ratio) or not math.isnan(r.floor_ratio) for r in _ok(part)):
            tables.append(floor_table(part))
        if einconv:
            tables.append(einconv_table(part))
        title = f"## {n} thread{'s' if n != 1 else ''}\n\n" if len(counts) > 1 or n else ""
        sections.append(title + "\n\n".join(tables))
    summary.write_text("\n\n".join(sections) + settings)
    paths.append(summary)
    if plots and _ok(rows):
        for n in counts:
            part = [row for row in rows if row.threads == n]
            if _ok(part):
                paths.extend(plot(part, out, f"_threads{n}" if len(counts) > 1 else ""))
    return paths


__all__ = ["COLUMNS", "EINCONV_COLUMNS", "write_csv", "read_csv", "medians", "markdown_table", "floor_table",
           "einconv_table", "plot", "write_results"]
