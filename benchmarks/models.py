"""Model-level curvature on whole CNNs: tnconv against Opacus, BackPACK and curvlinops, time and peak memory.

Run (needs the ``peers`` extra): ``python benchmarks/models.py [--models c3d3,all_cnn_c,resnet18]
[--ops grad_batch,batch_l2,diag_ggn,kfac] [--threads 1,2] [--batch 32] [--size 32] [--repeats 7]
[--out benchmarks/results/models.csv] [--quick]``

Operations, each one call on one batch of ``--batch`` CIFAR-sized inputs (float32,
cross-entropy with ``reduction="mean"``), covering every weight and bias of the
convolutions and linear layers:

- ``grad_batch``: per-sample gradients. tnconv: ``PerSample(model, loss)(x, y)``;
  Opacus: forward and ``loss.backward()`` through ``GradSampleModule`` (its own
  samplers; it also computes ``.grad``); BackPACK: ``loss.backward()`` under
  ``backpack(BatchGrad())`` (also ``.grad``).
- ``batch_l2``: per-sample squared gradient norms, what DP-SGD clips by. tnconv:
  ``PerSample(...)(x, y, grad_batch=False, batch_l2=True)`` (no per-sample gradient
  where the Gram route is cheaper); Opacus: ghost clipping's first backward pass,
  ``GradSampleModuleFastGradientClipping`` with ``use_ghost_clipping=True`` (norm
  samplers for the linear layers; per-sample gradients, then norms, for the
  convolutions); BackPACK: ``BatchL2Grad``.
- ``diag_ggn``: the exact GGN diagonal. tnconv: ``PerSample(...)(x, y, grad_batch=False,
  diag_ggn=True)``; BackPACK: ``DiagGGNExact``.
- ``kfac``: one KFAC update, expand and reduce, Monte-Carlo Fisher, against curvlinops'
  ``KFACLinearOperator`` (the method and models of ``benchmarks/kfac_models.py``).
- ``opacus_hooks``, ``opacus_ghost``: Opacus' own pipeline, forward and ``loss.backward()``
  through ``GradSampleModule`` (per-sample gradients) or ``GradSampleModuleFastGradientClipping``
  with ghost clipping (per-sample norms, the first of its two backward passes), with
  tnconv's convolution samplers installed (``tnconv.integrations.opacus.register()``)
  against Opacus' own.

Models: 3c3d and All-CNN-C (dropout in eval mode) and ResNet-18 at 32x32 with
10 classes. Per-sample quantities are only defined when samples do not interact:
ResNet-18's BatchNorm layers run in eval mode with frozen affine parameters for
them (BackPACK converts the residual additions with ``use_converter=True``). The
KFAC rows use the models as ``kfac_models.py`` does (BatchNorm training).

Method, as in ``kfac_models.py``: each thread count in a subprocess with
``OMP_NUM_THREADS`` set; every contender gets its own copy of the model (no
foreign hooks); results are compared once (largest relative difference to
tnconv's, float32); two warm-up calls each; then the contenders alternate
(order reversed every other round), ``--repeats`` rounds; medians. Peak memory:
the highest running sum of the CPU allocator's allocations and frees during one
call above the level at its start (PyTorch's profiler), results included.
"""

from __future__ import annotations

import argparse
import copy
import json
import pathlib
import statistics
import sys
import time
import warnings

import torch
from torch import nn

ROOT = pathlib.Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "models.csv"
sys.path.insert(0, str(ROOT / "benchmarks"))

OPS = ("grad_batch", "batch_l2", "diag_ggn", "kfac", "opacus_hooks", "opacus_ghost")


def build(name: str) -> nn.Module:
    """The model in the state per-sample quantities need: train mode, BatchNorm and dropout in eval mode."""
    from tnconv.testing.models import all_cnn_c, c3d3, resnet18

    model = {"c3d3": c3d3, "all_cnn_c": all_cnn_c, "resnet18": lambda: resnet18(10)}[name]()
    model.train()
    for module in model.modules():
        if isinstance(module, (nn.BatchNorm2d, nn.Dropout)):
            module.eval()
            for p in module.parameters():
                p.requires_grad_(False)
    return model


def relative(mine: dict, theirs: dict) -> float:
    """Largest ``max |a - b| / max |b|`` over the entries of two dicts with the same keys."""
    return max(((mine[k] - theirs[k]).abs().max() / theirs[k].abs().max().clamp_min(1e-30)).item() for k in theirs)


def per_sample_contenders(model_name: str, op: str, batch: int, size: int):
    """``({name: call()}, {peer: largest relative difference to tnconv})`` for one per-sample operation."""
    import backpack as bp
    from backpack.extensions import BatchGrad, BatchL2Grad, DiagGGNExact

    from tnconv.curvature import PerSample

    torch.manual_seed(0)
    model = build(model_name)
    x, y = torch.randn(batch, 3, size, size), torch.randint(10, (batch,))
    loss = nn.CrossEntropyLoss()
    ours = PerSample(copy.deepcopy(model), loss)
    flags = {"grad_batch": {}, "batch_l2": dict(grad_batch=False, batch_l2=True),
             "diag_ggn": dict(grad_batch=False, diag_ggn=True)}[op]
    fns, convert = {}, {}

    def tnconv():
        return getattr(ours(x, y, **flags), op)

    fns["tnconv"] = tnconv

    if op in ("grad_batch", "batch_l2"):
        gsm, names, field = opacus_module(copy.deepcopy(model), "hooks" if op == "grad_batch" else "ghost")

        def opacus():
            loss(gsm(x), y).backward()
            out = {names[id(p)]: getattr(p, field) for p in gsm.parameters() if p.requires_grad}
            gsm.zero_grad(set_to_none=True)  # here, not at the next call's start: its peak would miss them
            return out

        fns["opacus"] = opacus
        # Opacus scales by the batch size (loss_reduction="mean") and its norms are not squared
        convert["opacus"] = (lambda t: t / batch) if op == "grad_batch" else (lambda t: (t / batch) ** 2)

    extension = {"grad_batch": BatchGrad, "batch_l2": BatchL2Grad, "diag_ggn": DiagGGNExact}[op]
    attr = {"grad_batch": "grad_batch", "batch_l2": "batch_l2", "diag_ggn": "diag_ggn_exact"}[op]
    backpack_model = bp.extend(copy.deepcopy(model), use_converter=model_name == "resnet18")
    backpack_loss = bp.extend(nn.CrossEntropyLoss())
    named = [(n, p) for n, p in backpack_model.named_parameters() if p.requires_grad]
    # the converter keeps the parameters' names (not their order)

    def backpack():
        with bp.backpack(extension()):
            backpack_loss(backpack_model(x), y).backward()
        out = {n: getattr(p, attr) for n, p in named}
        for _, p in named:
            p.grad = None
            delattr(p, attr)
        return out

    fns["backpack"] = backpack
    mine = fns["tnconv"]()
    errors = {}
    for name in fns:
        if name != "tnconv":
            theirs = {k: convert.get(name, lambda t: t)(v) for k, v in fns[name]().items()}
            errors[name] = relative(mine, theirs)
    return fns, errors


def opacus_module(model: nn.Module, mode: str):
    """``(wrapped model, {id(parameter): name}, attribute)``: ``model`` in Opacus' ``GradSampleModule`` (``mode``
    ``"hooks"``; per-sample gradients in ``grad_sample``) or with ghost clipping (``"ghost"``; norms in
    ``_norm_sample``), mean reduction."""
    from opacus import GradSampleModule
    from opacus.grad_sample import GradSampleModuleFastGradientClipping

    if mode == "hooks":
        gsm = GradSampleModule(model, loss_reduction="mean")
    else:
        gsm = GradSampleModuleFastGradientClipping(model, loss_reduction="mean", use_ghost_clipping=True)
    names = {id(p): n for n, p in model.named_parameters()}
    return gsm, names, "grad_sample" if mode == "hooks" else "_norm_sample"


def opacus_contenders(model_name: str, mode: str, batch: int, size: int):
    """Opacus' step (``mode`` ``"hooks"`` or ``"ghost"``) with tnconv's convolution samplers and with its own."""
    from tnconv.integrations import opacus as tnconv_opacus

    torch.manual_seed(0)
    model = build(model_name)
    x, y = torch.randn(batch, 3, size, size), torch.randint(10, (batch,))
    loss = nn.CrossEntropyLoss()
    fns = {}
    for name in ("tnconv", "opacus"):
        gsm, names, field = opacus_module(copy.deepcopy(model), mode)

        def step(gsm=gsm, names=names, field=field, ours=name == "tnconv"):
            if ours:
                tnconv_opacus.register()
            try:
                loss(gsm(x), y).backward()
            finally:
                tnconv_opacus.unregister()
            out = {names[id(p)]: getattr(p, field) for p in gsm.parameters() if p.requires_grad}
            gsm.zero_grad(set_to_none=True)
            return out

        fns[name] = step
    return fns, {"opacus": relative(fns["tnconv"](), fns["opacus"]())}


def kfac_contenders(model_name: str, approx: str, batch: int, size: int):
    from kfac_models import contenders

    fns, error = contenders(model_name, approx, "mc", batch, size)
    return fns, {"curvlinops": error}


def time_them(fns: dict, repeats: int) -> dict:
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
    return {name: 1e3 * statistics.median(ts) for name, ts in times.items()}


def measure(models, ops, batch, size, repeats, threads) -> list:
    from kfac_models import peak_bytes

    torch.set_num_threads(threads)
    warnings.simplefilter("ignore")
    rows = []
    for model_name in models:
        for op in ops:
            if op == "kfac":
                cases = [("kfac-" + a, lambda a=a: kfac_contenders(model_name, a, batch, size)) for a in ("expand", "reduce")]
            elif op.startswith("opacus_"):
                cases = [(op, lambda: opacus_contenders(model_name, op.split("_")[1], batch, size))]
            else:
                cases = [(op, lambda: per_sample_contenders(model_name, op, batch, size))]
            for label, make in cases:
                fns, errors = make()
                ms = time_them(fns, repeats)
                peaks = {name: peak_bytes(fn) / 2 ** 20 for name, fn in fns.items()}
                for peer in errors:
                    row = dict(model=model_name, op=label, peer=peer, threads=threads, batch=batch, size=size,
                               tnconv_ms=ms["tnconv"], peer_ms=ms[peer], time_ratio=ms["tnconv"] / ms[peer],
                               tnconv_peak_mib=peaks["tnconv"], peer_peak_mib=peaks[peer],
                               peak_ratio=peaks["tnconv"] / max(peaks[peer], 1e-9), max_rel_diff=errors[peer])
                    print(json.dumps(row), flush=True)
                    rows.append(row)
                del fns
    return rows


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="c3d3,all_cnn_c,resnet18")
    parser.add_argument("--ops", default=",".join(OPS))
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=pathlib.Path, default=OUT)
    parser.add_argument("--quick", action="store_true", help="c3d3 only, batch 4, 2 repeats, 1 thread")
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.threads, args.batch, args.repeats = "c3d3", "1", 4, 2
    return args


def table(rows) -> str:
    lines = ["| model | operation | peer | threads | tnconv (ms) | peer (ms) | time ratio | tnconv peak (MiB) | "
             "peer peak (MiB) | peak ratio |", "|" + " --- |" * 10]
    for r in rows:
        lines.append(f"| {r['model']} | {r['op']} | {r['peer']} | {r['threads']} | {r['tnconv_ms']:.1f} | "
                     f"{r['peer_ms']:.1f} | {r['time_ratio']:.2f} | {r['tnconv_peak_mib']:.1f} | "
                     f"{r['peer_peak_mib']:.1f} | {r['peak_ratio']:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> list:
    args = parse_args(argv)
    split = lambda s: [v for v in s.split(",") if v]  # noqa: E731
    for op in split(args.ops):
        if op not in OPS:
            raise SystemExit(f"--ops: unknown operation {op!r}; choose from {', '.join(OPS)}")
    if args.worker is not None:
        measure(split(args.models), split(args.ops), args.batch, args.size, args.repeats, args.worker)
        return []
    from kfac_models import run_workers, write_rows

    options = ["--models", args.models, "--ops", args.ops, "--batch", str(args.batch), "--size", str(args.size),
               "--repeats", str(args.repeats)]
    rows = run_workers(__file__, options, map(int, split(args.threads)), keep_partial=True)
    if not rows:
        raise SystemExit("nothing was measured")
    write_rows(rows, args.out)
    print(table(rows))
    worst = max(r["max_rel_diff"] for r in rows)
    print(f"\nlargest relative difference of a result, tnconv vs a peer (float32): {worst:.1e}; wrote {args.out}")
    return rows


if __name__ == "__main__":
    main()
