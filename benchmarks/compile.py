"""torch.compile of plain and tnconv-converted CNNs: graphs, graph breaks, recompiles, first-compile time.

Run: ``python benchmarks/compile.py`` (all models, backends eager, aot_eager and
inductor if a C compiler is found; ``--models resnet18 --backends eager`` for fewer,
``--quick`` for small inputs and the eager backend only).

For each model (``tnconv.testing.models``: resnet18, mobilenet_v2, cnn3d) in
training mode, plain and after ``tnconv.nn.convert``:

* ``torch._dynamo.explain``: graphs and graph breaks of one forward pass;
* recompiles: frames dynamo compiled beyond the first over three calls (batch
  2, 2 again, then 4: the batch change makes dynamo recompile once with a
  dynamic batch size, plain or converted);
* first compile: the first forward and backward call of ``torch.compile(model,
  fullgraph=True, backend=...)`` minus a cached call, in a fresh process with
  inductor's and AOT autograd's on-disk caches off and the backend's modules
  loaded by a warm-up compile first. Medians of ``--repeat`` processes.

Timings on a shared machine are noisy; compare plain and converted from the
same run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time

MODELS = {"resnet18": (3, 64), "mobilenet_v2": (3, 64), "cnn3d": (1, 16)}  # channels, spatial size


def _model(name, converted):
    import torch

    import tnconv
    from tnconv.testing import models

    torch.manual_seed(0)
    if name == "cnn3d":
        model = models.cnn3d(num_classes=10)
    else:
        model = getattr(models, name)(num_classes=10)
    if converted:
        tnconv.nn.convert(model)
    channels, size = MODELS[name]
    N = 3 if name == "cnn3d" else 2
    return model.train(), (channels,) + (size,) * N


def measure(name, converted, backend):
    """One process's figures for (model, plain or converted, backend)."""
    import torch
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch.set_num_threads(1)
    torch._inductor.config.fx_graph_cache = False
    torch._functorch.config.enable_autograd_cache = False
    warm = torch.compile(lambda t: (t.sin() * 2).sum(), backend=backend)  # load the backend's modules
    warm(torch.randn(3, requires_grad=True)).backward()
    torch._dynamo.reset()
    model, shape = _model(name, converted)
    x = torch.randn(2, *shape)
    explained = torch._dynamo.explain(model)(x)
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(model, fullgraph=True, backend=backend)
    start = time.perf_counter()
    compiled(x).sum().backward()
    first = time.perf_counter() - start
    start = time.perf_counter()
    compiled(x).sum().backward()
    cached = time.perf_counter() - start
    compiled(torch.randn(4, *shape)).sum().backward()
    graphs = counters["stats"]["unique_graphs"]  # forward graphs dynamo compiled over the three calls
    return dict(graphs=explained.graph_count, breaks=explained.graph_break_count, recompiles=graphs - 1,
                first_compile_s=first - cached)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--backends", nargs="+", default=None)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="eager backend, one process each")
    parser.add_argument("--one", nargs=3, metavar=("MODEL", "CONVERTED", "BACKEND"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        name, converted, backend = args.one
        print(json.dumps(measure(name, converted == "1", backend)))
        return
    backends = args.backends or (["eager"] if args.quick else
                                 ["eager", "aot_eager"] + (["inductor"] if shutil.which("gcc") or shutil.which("cc") else []))
    repeat = 1 if args.quick else args.repeat
    print("| model | backend | variant | graphs | graph breaks | recompiles | first compile (s) | converted / plain |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for name in args.models:
        for backend in backends:
            rows = {}
            for _ in range(repeat):  # interleaved
                for converted in (False, True):
                    out = subprocess.run([sys.executable, __file__, "--one", name, "1" if converted else "0", backend],
                                         capture_output=True, text=True, check=True)
                    rows.setdefault(converted, []).append(json.loads(out.stdout.strip().splitlines()[-1]))
            plain = statistics.median(r["first_compile_s"] for r in rows[False])
            for converted in (False, True):
                r = rows[converted][-1]
                t = statistics.median(r["first_compile_s"] for r in rows[converted])
                ratio = f"{t / plain:.2f}" if converted else ""
                print(f"| {name} | {backend} | {'converted' if converted else 'plain'} | {r['graphs']} | {r['breaks']} | "
                      f"{r['recompiles']} | {t:.2f} | {ratio} |", flush=True)


if __name__ == "__main__":
    main()
