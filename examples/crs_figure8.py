"""Figure 8 of the paper: column-row sampling of pixels beats sampling of channels.

Run: ``python examples/crs_figure8.py [--seeds 10] [--batch 128] [--ps 0.1,0.2,...] [--sampler fixed,bernoulli]
[--out DIR] [--quick]``

An untrained All-CNN-C (Springenberg et al., 2015; dropout disabled) is built
from ``torch.nn`` and switched to tnconv's layers by
:func:`tnconv.nn.convert`. With ``crs_keep`` the layers run the exact forward
pass and input VJP but estimate each weight gradient from a column-row-sampled
part of the layer input, the only part they save. For a keep rate ``p`` of
input entries we compare

* channel sampling ``crs_keep=(p, 1, 1)`` — what channel-sampling methods can
  do: a weight gradient column per unsampled channel is zero;
* spatial sampling ``crs_keep=(1, √p, √p)`` — the same memory, pixels dropped.

The error measure is the paper's normalized residual ``‖g − ĝ‖ / ‖g‖`` of the
concatenated weight gradients of all convolutions, ``g`` from the same layers
with ``crs_keep=None``; mean and standard deviation over seeds, each seed a new
model, a new mini-batch and new samples. Data: ``sklearn``'s 8x8 digits
upsampled to 32x32 RGB (a stand-in for CIFAR that ships with a package) and
Gaussian noise with random labels.

Two samplers (``--sampler``): ``fixed`` is tnconv's, a fixed number
``max(1, round(p·I))`` of indices per axis drawn without replacement and
rescaled by ``I/M`` (see :mod:`tnconv.passes.crs`); ``bernoulli`` is the
paper's Bernoulli-CRS (every index kept independently, rescaled by ``1/p``),
emulated on the same layers by :func:`bernoulli_crs_`. Both are unbiased; the
fixed count has the smaller variance when the sampled rows contribute alike,
as neighbouring pixels do. The CSV's ``kept_fraction`` is the share of input
entries the fixed-count sampler keeps, over all layers (the Bernoulli
sampler's expectation is ``p``).
"""

from __future__ import annotations

import argparse
import csv
import math
import pathlib
import time

import torch
from torch import nn

import tnconv.nn
from tnconv.testing.models import all_cnn_c

OUT = pathlib.Path(__file__).parent / "results"
PS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.75, 0.9, 1.0)
SCHEMES = {"channel": lambda p: (p, 1.0, 1.0), "spatial": lambda p: (1.0, math.sqrt(p), math.sqrt(p))}
SAMPLERS = ("fixed", "bernoulli")
REFERENCE_P = 0.75  # the paper: 75% of channels are matched by ~35% of pixels


def digits_images(size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """All 1797 sklearn digits as normalized ``[N, 3, size, size]`` images (bilinear upsampling) and labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1)
    x = nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
    return (x - x.mean()) / x.std(), torch.tensor(digits.target)


def conv_weight_grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor, scales=None) -> torch.Tensor:
    """The flattened, concatenated weight gradients of every convolution of ``model`` (each times its scale)."""
    model.zero_grad(set_to_none=True)
    nn.functional.cross_entropy(model(x), y).backward()
    grads = [m.weight.grad.flatten() for m in model.modules() if isinstance(m, nn.Conv2d)]
    return torch.cat(grads if scales is None else [g * s for g, s in zip(grads, scales)])


def input_shapes(model: nn.Module, x: torch.Tensor) -> list[tuple[int, ...]]:
    """``[C, H, W]`` of every convolution's input for the samples ``x``."""
    shapes = []
    hooks = [m.register_forward_pre_hook(lambda m, args: shapes.append(tuple(args[0].shape[1:])))
             for m in model.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        model(x[:1])
    for h in hooks:
        h.remove()
    return shapes


def kept_fraction(shapes, keep) -> float:
    """Share of all convolution input entries (of ``shapes``) that ``keep`` saves for the backward pass."""
    from tnconv.passes.crs import keep_count

    kept = sum(math.prod(keep_count(n, p) for n, p in zip(shape, keep)) for shape in shapes)
    return kept / sum(math.prod(shape) for shape in shapes)


def bernoulli_crs_(model: nn.Module, shapes, keep, generator) -> list[float]:
    """Switch ``model``'s layers to the paper's Bernoulli-CRS, in place; returns each layer's gradient scale.

    Bernoulli-CRS keeps every index independently with probability ``p`` and
    rescales by ``1/p``. Given the number ``M`` of kept indices, the kept set
    is uniform — tnconv's draw with keep rate ``M/I`` — and rescaling by
    ``1/p`` instead of tnconv's ``I/M`` multiplies the layer's weight gradient
    by ``M/(I·p)``, per sampled axis (0 when an axis keeps nothing).
    """
    scales = []
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    for conv, shape in zip(convs, shapes):
        counts = [int((torch.rand(size, generator=generator) < p).sum()) if p < 1 else size
                  for size, p in zip(shape, keep)]
        conv.crs_keep = tuple(max(m, 1) / size for m, size in zip(counts, shape))
        conv.generator = generator
        scales.append(math.prod(m / (size * p) for m, size, p in zip(counts, shape, keep)))
    return scales


def run(x_all, y_all, ps, seeds, batch, dataset, samplers=("fixed",), log=print) -> list[dict]:
    """One row per (seed, sampler, scheme, p): the normalized residual of the sampled gradient."""
    rows = []
    for seed in seeds:
        start = time.perf_counter()
        with torch.random.fork_rng():
            torch.manual_seed(seed)  # the model's initialization
            model = tnconv.nn.convert(all_cnn_c(int(y_all.max()) + 1)).eval()
        batch_gen = torch.Generator().manual_seed(seed)
        index = torch.randperm(len(x_all), generator=batch_gen)[:batch]
        x, y = x_all[index], y_all[index]
        shapes = input_shapes(model, x)
        exact = conv_weight_grad(tnconv.nn.convert(model, crs_keep=None), x, y)
        for sampler in samplers:
            for scheme, keep_of in SCHEMES.items():
                for p in ps:
                    keep = keep_of(p)
                    # a fresh generator per run: the draws for one p do not depend on the grid
                    generator = torch.Generator().manual_seed(seed)
                    if sampler == "bernoulli":
                        scales = bernoulli_crs_(model, shapes, keep, generator)
                    else:
                        scales = None
                        tnconv.nn.convert(model, crs_keep=keep, generator=generator)
                    estimate = conv_weight_grad(model, x, y, scales)
                    residual = ((estimate - exact).norm() / exact.norm()).item()
                    rows.append(dict(dataset=dataset, sampler=sampler, scheme=scheme, p=p,
                                     keep=" ".join(f"{k:.4g}" for k in keep),
                                     kept_fraction=round(kept_fraction(shapes, keep), 4), seed=seed,
                                     residual=residual))
        log(f"  {dataset} seed {seed}: {time.perf_counter() - start:.1f}s")
    return rows


def summarize(rows) -> list[dict]:
    """Mean and standard deviation over seeds per (dataset, sampler, scheme, p)."""
    groups = {}
    for row in rows:
        groups.setdefault((row["dataset"], row["sampler"], row["scheme"], row["p"]), []).append(row)
    out = []
    for (dataset, sampler, scheme, p), group in groups.items():
        values = torch.tensor([r["residual"] for r in group], dtype=torch.float64)
        std = values.std().item() if len(values) > 1 else 0.0
        out.append(dict(dataset=dataset, sampler=sampler, scheme=scheme, p=p, keep=group[0]["keep"],
                        kept_fraction=group[0]["kept_fraction"], mean=values.mean().item(), std=std, seeds=len(group)))
    return out


def _interp(p, ps, values):
    """Piecewise-linear interpolation of ``values`` (at sorted ``ps``) at ``p``."""
    for (p0, v0), (p1, v1) in zip(zip(ps, values), zip(ps[1:], values[1:])):
        if p0 <= p <= p1:
            return v0 + (v1 - v0) * (p - p0) / (p1 - p0)
    raise ValueError(f"p={p} lies outside the grid {ps}")


def matching_spatial_p(summary, dataset, sampler="fixed", reference_p=REFERENCE_P):
    """The channel residual at ``reference_p`` and the spatial keep rates that reach it.

    Returns ``(target, smallest grid p, interpolated p)``: the channel residual
    (interpolated in p if ``reference_p`` is not on the grid), the smallest p
    of the grid whose mean spatial residual is at most that, and the crossing
    of the piecewise-linear spatial curve with it (``None`` below the grid).
    """
    curve = {s: sorted((r["p"], r["mean"]) for r in summary
                       if r["dataset"] == dataset and r["sampler"] == sampler and r["scheme"] == s)
             for s in SCHEMES}
    target = _interp(reference_p, *zip(*curve["channel"]))
    ps, values = zip(*curve["spatial"])
    hits = [n for n, v in enumerate(values) if v <= target]
    if not hits:
        return target, None, None
    n = hits[0]
    if n == 0:
        return target, ps[0], None
    (p0, v0), (p1, v1) = (ps[n - 1], values[n - 1]), (ps[n], values[n])
    return target, p1, p0 + (p1 - p0) * (v0 - target) / (v0 - v1)


def plot(summary, path):
    """Residual against p, one panel per dataset, one line with error bars per scheme and sampler."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(r["dataset"] for r in summary))
    samplers = list(dict.fromkeys(r["sampler"] for r in summary))
    fig, axes = plt.subplots(1, len(datasets), figsize=(4.4 * len(datasets), 3.6), sharey=True, squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        for n, sampler in enumerate(samplers):
            for color, (scheme, label) in enumerate((("channel", "channels $(p, 1, 1)$"),
                                                     ("spatial", r"pixels $(1, \sqrt{p}, \sqrt{p})$"))):
                rows = sorted((r for r in summary if (r["dataset"], r["sampler"], r["scheme"]) == (dataset, sampler, scheme)),
                              key=lambda r: r["p"])
                ax.errorbar([r["p"] for r in rows], [r["mean"] for r in rows], yerr=[r["std"] for r in rows],
                            color=f"C{color}", linestyle=("-", "--", ":")[n % 3], marker="os^"[n % 3], markersize=3,
                            capsize=3, label=f"{label}, {sampler}" if len(samplers) > 1 else label)
        ax.set(title=dataset, xlabel="keep rate $p$ of input entries")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(r"$\|g - \hat g\|_2 / \|g\|_2$")
    axes[0][0].legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _write_csv(rows, path):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _choices(text, allowed):
    values = tuple(dict.fromkeys(v.strip() for v in text.split(",")))
    bad = [v for v in values if v not in allowed]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown {bad}; choose from {list(allowed)}")
    return values


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10, help="number of seeds (model, batch and samples)")
    parser.add_argument("--batch", type=int, default=128, help="mini-batch size")
    parser.add_argument("--ps", type=lambda s: tuple(float(p) for p in s.split(",")), default=PS,
                        help="comma-separated keep rates of input entries")
    parser.add_argument("--sampler", type=lambda s: _choices(s, SAMPLERS), default=("fixed",),
                        help="comma-separated: 'fixed' (tnconv's fixed-count draws) and/or 'bernoulli' (the paper's)")
    parser.add_argument("--out", type=pathlib.Path, default=OUT, help="folder for the CSVs and the plot")
    parser.add_argument("--quick", action="store_true", help="tiny run for tests: 2 seeds, 3 keep rates, batch 8")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.batch, args.ps = 2, 8, (0.25, 0.5, 1.0)
    if any(not 0 < p <= 1 for p in args.ps):
        parser.error(f"--ps must lie in (0, 1], got {args.ps}")
    args.ps = tuple(sorted(set(args.ps)))
    return args


def main(argv=None) -> list[dict]:
    """Run the comparison; returns the summary rows (also written to ``--out``)."""
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    x_digits, y_digits = digits_images()
    noise_gen = torch.Generator().manual_seed(0)
    x_noise = torch.randn(len(x_digits), 3, 32, 32, generator=noise_gen)
    y_noise = torch.randint(0, 10, (len(x_digits),), generator=noise_gen)
    seeds = range(args.seeds)
    print(f"All-CNN-C, batch {args.batch}, {args.seeds} seeds, p in {list(args.ps)}, sampler {', '.join(args.sampler)}")
    rows = (run(x_digits, y_digits, args.ps, seeds, args.batch, "digits", args.sampler)
            + run(x_noise, y_noise, args.ps, seeds, args.batch, "random", args.sampler))
    summary = summarize(rows)
    _write_csv(rows, args.out / "crs_figure8_runs.csv")
    _write_csv(summary, args.out / "crs_figure8.csv")
    plot(summary, args.out / "crs_figure8.png")

    print("\n| dataset | sampler | p | channel (p,1,1) | spatial (1,√p,√p) | kept: channel / spatial |")
    print("| --- | --- | --- | --- | --- | --- |")
    by_key = {(r["dataset"], r["sampler"], r["scheme"], r["p"]): r for r in summary}
    for dataset in ("digits", "random"):
        for sampler in args.sampler:
            for p in args.ps:
                c, s = by_key[dataset, sampler, "channel", p], by_key[dataset, sampler, "spatial", p]
                print(f"| {dataset} | {sampler} | {p:g} | {c['mean']:.3f} ± {c['std']:.3f} | "
                      f"{s['mean']:.3f} ± {s['std']:.3f} | {c['kept_fraction']:.3f} / {s['kept_fraction']:.3f} |")
    print()
    for dataset in ("digits", "random"):
        for sampler in args.sampler:
            target, grid_p, crossing = matching_spatial_p(summary, dataset, sampler)
            where = (f"no p of the grid reaches it" if grid_p is None else
                     f"pixels reach it at p={grid_p:g} on the grid "
                     + ("(the smallest p tried)" if crossing is None else f"(≈{crossing:.2f} interpolated)"))
            print(f"{dataset}, {sampler} sampler: keeping {REFERENCE_P:.0%} of channels gives residual {target:.3f}; "
                  f"{where}")
    print(f"\nwrote {args.out / 'crs_figure8.csv'}, {args.out / 'crs_figure8_runs.csv'}, {args.out / 'crs_figure8.png'}")
    return summary


if __name__ == "__main__":
    main()
