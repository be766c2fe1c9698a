"""One KFAC update on a whole model: tnconv.curvature.KFAC against curvlinops' KFACLinearOperator.

Run: ``python benchmarks/kfac_models.py [--models c3d3,resnet18] [--approx expand,reduce] [--fisher mc,type-2]
[--threads 1,2] [--batch 32] [--size 32] [--repeats 7] [--out benchmarks/results/kfac_models.csv] [--quick]``

One update is a forward and backward pass on one batch that leaves the
Kronecker factors of every convolution and linear layer computed: tnconv's
``KFAC.update(x, y)`` and curvlinops' ``compute_kronecker_factors()`` on a
one-batch loader (both without their data-loader bookkeeping: curvlinops gets
``num_data`` and ``num_per_example_loss_terms``, no determinism check). Both
cover the same parameters (every weight and bias of the convolutions and linear
layers; BatchNorm's are left out, as curvlinops cannot take them), use
cross-entropy with ``reduction="mean"`` and the same ``fisher_type``, on the
same model and batch, float32.

Each thread count runs in a subprocess started with ``OMP_NUM_THREADS`` set
(and ``torch.set_num_threads``). Timings: after two warm-up updates each, the
two implementations alternate, ``--repeats`` times; medians. Peak memory: the
highest running sum of the CPU allocator's allocations and frees during one
update (PyTorch's profiler with ``profile_memory=True``), above what was
allocated before it: the factors themselves included.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

import torch
from torch import nn

ROOT = pathlib.Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "kfac_models.csv"


def build(name: str) -> nn.Module:
    from tnconv.testing.models import all_cnn_c, c3d3, resnet18

    model = {"c3d3": c3d3, "all_cnn_c": all_cnn_c, "resnet18": lambda: resnet18(10)}[name]()
    for module in model.modules():
        if isinstance(module, nn.Dropout):  # the same network for both: no random masks
            module.eval()
    return model


def covered(model: nn.Module) -> list:
    from tnconv.curvature import supported_parameters

    return supported_parameters(model)


def peak_bytes(fn) -> int:
    """Peak CPU memory allocated by ``fn()`` above the level at its start (profiler memory events)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    with tempfile.TemporaryDirectory() as folder:
        path = pathlib.Path(folder) / "trace.json"
        prof.export_chrome_trace(str(path))
        trace = json.loads(path.read_text())
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    memory = sorted((e for e in events if e.get("name") == "[memory]" and e["args"].get("Device Type", 0) == 0),
                    key=lambda e: e["ts"])
    level = peak = 0
    for event in memory:
        level += event["args"]["Bytes"]
        peak = max(peak, level)
    return peak


def contenders(model_name, approx, fisher, batch, size):
    """``{"tnconv": update(), "curvlinops": update()}`` on one model and batch, and a check that they agree."""
    from curvlinops import KFACLinearOperator

    from tnconv.curvature import KFAC

    torch.manual_seed(0)
    model = build(model_name)
    x, y = torch.randn(batch, 3, size, size), torch.randint(10, (batch,))
    loss = nn.CrossEntropyLoss()
    params = covered(model)
    op = KFACLinearOperator(model, loss, params, [(x, y)], fisher_type=fisher, kfac_approx=approx,
                            check_deterministic=False, num_data=batch, num_per_example_loss_terms=1)
    ours = KFAC(model, loss, params, approx=approx, fisher_type=fisher)

    def curvlinops_update():
        op._input_covariances.clear()
        op._gradient_covariances.clear()
        op.compute_kronecker_factors()

    def tnconv_update():
        ours.reset()
        ours.update(x, y)

    # the same numbers: exact for type-2 and empirical; for mc both draw from curvlinops' seed in the same order
    tnconv_update()
    curvlinops_update()
    factors = ours.factors
    error = 0.0
    for layer in ours.layers:
        A, G = factors[layer.weight]
        for mine, theirs in ((A[0], op._input_covariances[layer.name]), (G[0], op._gradient_covariances[layer.name])):
            error = max(error, ((mine - theirs).abs().max() / theirs.abs().max().clamp_min(1e-30)).item())
    return {"tnconv": tnconv_update, "curvlinops": curvlinops_update}, error


def measure(models, approxes, fishers, batch, size, repeats, threads) -> list:
    torch.set_num_threads(threads)
    warnings.simplefilter("ignore")
    rows = []
    for model_name in models:
        for fisher in fishers:
            for approx in approxes:
                fns, error = contenders(model_name, approx, fisher, batch, size)
                for fn in fns.values():
                    fn()
                    fn()
                times = {name: [] for name in fns}
                names = list(fns)
                for r in range(repeats):
                    for name in names if r % 2 == 0 else names[::-1]:
                        start = time.perf_counter()
                        fns[name]()
                        times[name].append(time.perf_counter() - start)
                peaks = {name: peak_bytes(fn) for name, fn in fns.items()}
                row = dict(model=model_name, fisher_type=fisher, approx=approx, threads=threads, batch=batch, size=size,
                           tnconv_ms=1e3 * statistics.median(times["tnconv"]),
                           curvlinops_ms=1e3 * statistics.median(times["curvlinops"]),
                           tnconv_peak_mib=peaks["tnconv"] / 2 ** 20, curvlinops_peak_mib=peaks["curvlinops"] / 2 ** 20,
                           max_rel_factor_diff=error)
                row["time_ratio"] = row["tnconv_ms"] / row["curvlinops_ms"]
                row["peak_ratio"] = row["tnconv_peak_mib"] / row["curvlinops_peak_mib"]
                print(json.dumps(row), flush=True)
                rows.append(row)
    return rows


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="c3d3,resnet18")
    parser.add_argument("--approx", default="expand,reduce")
    parser.add_argument("--fisher", default="mc,type-2", help="curvlinops' fisher_type values, comma-separated")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=pathlib.Path, default=OUT)
    parser.add_argument("--quick", action="store_true", help="c3d3 only, batch 8, 3 repeats, 1 thread")
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.threads, args.batch, args.repeats, args.fisher = "c3d3", "1", 8, 3, "mc"
    return args


def table(rows) -> str:
    lines = ["| model | fisher_type | approx | threads | tnconv (ms) | curvlinops (ms) | time ratio | "
             "tnconv peak (MiB) | curvlinops peak (MiB) | peak ratio |", "|" + " --- |" * 10]
    for r in rows:
        lines.append(f"| {r['model']} | {r['fisher_type']} | {r['approx']} | {r['threads']} | {r['tnconv_ms']:.1f} | "
                     f"{r['curvlinops_ms']:.1f} | {r['time_ratio']:.2f} | {r['tnconv_peak_mib']:.1f} | "
                     f"{r['curvlinops_peak_mib']:.1f} | {r['peak_ratio']:.2f} |")
    return "\n".join(lines)


def run_workers(script, options, threads, keep_partial: bool) -> list:
    """The JSON rows ``script --worker N`` prints, one subprocess per thread count ``N`` with
    ``OMP_NUM_THREADS=N`` set before torch loads. With ``keep_partial`` a failed worker's error is
    printed and the rows it measured before the failure are kept; without, it raises."""
    rows = []
    for n in threads:
        env = dict(os.environ, OMP_NUM_THREADS=str(n), PYTHONPATH=str(ROOT))
        result = subprocess.run([sys.executable, str(script), *options, "--worker", str(n)], env=env,
                                capture_output=True, text=True, check=not keep_partial)
        rows += [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
        if result.returncode:
            print(f"the {n}-thread run failed:\n{result.stderr[-4000:]}", file=sys.stderr)
    return rows


def write_rows(rows, path: pathlib.Path) -> None:
    """``rows`` (dicts with the same keys) as a CSV at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def main(argv=None) -> list:
    args = parse_args(argv)
    split = lambda s: [v for v in s.split(",") if v]  # noqa: E731
    if args.worker is not None:
        for row in measure(split(args.models), split(args.approx), split(args.fisher), args.batch, args.size,
                           args.repeats, args.worker):
            pass
        return []
    options = ["--models", args.models, "--approx", args.approx, "--fisher", args.fisher, "--batch", str(args.batch),
               "--size", str(args.size), "--repeats", str(args.repeats)]
    rows = run_workers(__file__, options, map(int, split(args.threads)), keep_partial=False)
    write_rows(rows, args.out)
    print(table(rows))
    worst = max(r["max_rel_factor_diff"] for r in rows)
    print(f"\nlargest relative difference of a factor, tnconv vs curvlinops (float32): {worst:.1e}; wrote {args.out}")
    return rows


if __name__ == "__main__":
    main()
