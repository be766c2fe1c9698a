"""KFAC-reduce as a preconditioner for torch.optim.SGD, with tnconv's input factors and with im2col's.

Run: ``python examples/kfac_reduce_optimizer.py [--epochs 10] [--batch 64] [--size 32] [--seed 0] [--out DIR]
[--quick]``

:class:`tnconv.curvature.KFACPreconditioner` keeps a running KFAC-reduce
approximation of every layer's curvature (convolutions and the linear head:
``G ⊗ A``; the empirical Fisher, whose gradient factor comes from the same
backward pass as the gradient and is deterministic, so that the two factor
implementations below follow one trajectory) and turns the gradients into
``(KFAC + damping)⁻¹ ∇`` before a plain ``torch.optim.SGD`` step with momentum::

    pre = KFACPreconditioner(model, loss_func, approx="reduce", fisher_type="empirical", damping=3.0,
                             pi_correction=True, inverse_every=5)
    for x, y in batches:
        optimizer.zero_grad()
        loss = pre.backward(x, y)   # one forward: the gradient and the factor update
        pre.precondition()          # .grad <- (KFAC + damping)^-1 .grad
        optimizer.step()

A small CNN trains on sklearn's digits (upsampled to 32x32) with

(a) the preconditioner as it is: the convolutions' input factors from
    :func:`tnconv.functional.kfac_reduce`, which sums the index pattern over
    output positions and never unfolds the input;
(b) the same preconditioner with the textbook input factor of each
    convolution: ``torch.nn.functional.unfold``, mean over output positions,
    outer product (:class:`FactorKFAC`; the same matrix up to float error, so
    the same trajectory);
(c) SGD with momentum, (d) Adam,

each from the same initialization, with the same batches and a cosine decay
of its learning rate.

Reported per method: median wall time of a training step (forward, backward,
preconditioning, optimizer), median time of the convolutions' input factors
within it, the peak memory of computing those factors and the test accuracy.
CPU memory is invisible to ``tracemalloc`` and ``torch.cuda`` statistics; the
peak comes from PyTorch's profiler (``profile_memory=True``), whose trace
records every allocation and free of the CPU allocator: the running sum of
their sizes over one step's factor computation, at its highest, is the peak
above what was allocated before.
"""

from __future__ import annotations

import argparse
import csv
import json
import pathlib
import statistics
import tempfile
import time

import torch
from torch import nn

from tnconv.curvature import KFAC, KFACPreconditioner
from tnconv.curvature.factors import Block
from tnconv.functional import kfac_reduce

OUT = pathlib.Path(__file__).parent / "results"


def tnconv_factor(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """KFAC-reduce factor ``[G, C_in/G·K, C_in/G·K]`` of ``conv`` at input ``x``, by tnconv."""
    return kfac_reduce(x, conv.kernel_size, conv.stride, conv.padding, conv.dilation, conv.groups)


def im2col_factor(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """The same factor the textbook way: unfold ``[B, C_in·K, O]``, average patch, outer product.

    Example:
        >>> conv, x = nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2), torch.randn(5, 4, 9, 9)
        >>> torch.allclose(im2col_factor(x, conv), tnconv_factor(x, conv), atol=1e-6)
        True
    """
    if not isinstance(conv, nn.Conv2d) or isinstance(conv.padding, str):
        raise ValueError("im2col_factor needs a Conv2d with numeric padding (torch's unfold is 2d only)")
    unfolded = nn.functional.unfold(x, conv.kernel_size, conv.dilation, conv.padding, conv.stride)
    mean_patch = unfolded.mean(-1).view(x.shape[0], conv.groups, -1)  # channels are grouped outermost
    return torch.einsum("bgi,bgj->gij", mean_patch, mean_patch) / x.shape[0]


FACTORS = {"tnconv": None, "im2col": im2col_factor}  # None: the library's own factor (tnconv_factor's kfac_reduce)


class FactorKFAC(KFAC):
    """KFAC whose convolutions' input factors come from ``factor`` (default: the library's own), timed.

    ``factor_seconds`` is the total time spent in the convolutions' input
    factors so far.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 3))
        >>> kfac = FactorKFAC(net, nn.CrossEntropyLoss(), approx="reduce", factor=im2col_factor)
        >>> kfac.update(torch.randn(4, 1, 4, 4))
        >>> kfac.factors["0.weight"][0].shape, kfac.factor_seconds > 0
        (torch.Size([1, 9, 9]), True)
    """

    def __init__(self, *args, factor=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.factor = factor
        self.factor_seconds = 0.0

    def batch_input_factor(self, layer, x, output_shape):
        if layer.kind != "conv":
            return super().batch_input_factor(layer, x, output_shape)
        start = time.perf_counter()
        if self.factor is None:
            block = super().batch_input_factor(layer, x, output_shape)
        else:
            A = self.factor(x, layer.module)
            block = Block(A, None, A.shape[-1])
        self.factor_seconds += time.perf_counter() - start
        return block


def digits_split(size: int = 32, seed: int = 0):
    """Train and test images ``[N, 1, size, size]`` (bilinear upsampling, normalized by the train statistics)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1)
    x = nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    y = torch.tensor(digits.target)
    train, test = train_test_split(torch.arange(len(y)).numpy(), test_size=0.25, random_state=seed,
                                   stratify=y.numpy())
    mean, std = x[train].mean(), x[train].std()
    return (x[train] - mean) / std, y[train], (x[test] - mean) / std, y[test]


def small_cnn(num_classes: int = 10) -> nn.Sequential:
    """Three 3x3 convolutions (two with stride 2), average pooling to 4x4, a linear layer.

    Example:
        >>> small_cnn()(torch.randn(2, 1, 32, 32)).shape
        torch.Size([2, 10])
    """
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
                         nn.Conv2d(32, 32, 3, stride=2, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(32 * 16, num_classes))


#: the preconditioner's settings, the best of a small grid (see make_optimizer)
KFAC_SETTINGS = dict(lr=0.1, momentum=0.9, damping=3.0, fisher_type="empirical")


def make_optimizer(method: str, model: nn.Module):
    """``(optimizer, preconditioner or None)`` of ``method``; :func:`train` adds a cosine decay of the learning rate.

    The settings are the best of a few tried with that decay (see ``RESULTS.md``).
    KFAC-reduce, momentum 0.9, π-corrected damping, empirical Fisher: over 4
    epochs (lr, damping) = (0.03, 0.1), (0.1, 0.1), (0.03, 1), (0.1, 1),
    (0.3, 1), (0.1, 3), (0.3, 3), (1, 3) (damping 0.1 and lr 0.3 diverged),
    then over 10 epochs (0.1, 1), (0.05, 1), (0.05, 0.3), (0.1, 3): (0.1, 3)
    reached the best accuracy. With one Monte-Carlo label per sample instead
    (``fisher_type="mc"``, the library's default) (0.1, 1) was best over 10
    epochs (test accuracy 0.973, loss 0.089), but the sampled labels make the
    two factor implementations part ways. SGD: 0.01, 0.02, 0.05; Adam: 1e-3,
    3e-3, 1e-2.
    """
    if method in FACTORS:
        kfac = FactorKFAC(model, nn.CrossEntropyLoss(), approx="reduce", ema=0.95, factor=FACTORS[method],
                          fisher_type=KFAC_SETTINGS["fisher_type"])
        pre = KFACPreconditioner.from_kfac(kfac, damping=KFAC_SETTINGS["damping"], pi_correction=True,
                                           inverse_every=5)
        return torch.optim.SGD(model.parameters(), lr=KFAC_SETTINGS["lr"], momentum=KFAC_SETTINGS["momentum"]), pre
    if method == "sgd":
        return torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9), None
    if method == "adam":
        return torch.optim.Adam(model.parameters(), lr=1e-2), None
    raise ValueError(f"unknown method {method!r}; choose from {list(FACTORS) + ['sgd', 'adam']}")


METHODS = ("kfac-reduce (tnconv)", "kfac-reduce (im2col)", "sgd", "adam")
_KEYS = {"kfac-reduce (tnconv)": "tnconv", "kfac-reduce (im2col)": "im2col", "sgd": "sgd", "adam": "adam"}


@torch.no_grad()
def evaluate(model, x, y):
    """Mean cross-entropy and accuracy of ``model`` on ``(x, y)``."""
    model.eval()
    logits = model(x)
    model.train()
    return nn.functional.cross_entropy(logits, y).item(), (logits.argmax(1) == y).float().mean().item()


def layer_inputs(model, x):
    """``[(conv, input)]`` of every convolution of ``model`` for the batch ``x``."""
    out = []
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    hooks = [conv.register_forward_pre_hook(lambda m, args: out.append((m, args[0].detach()))) for conv in convs]
    with torch.no_grad():
        model(x)
    for hook in hooks:
        hook.remove()
    return out


def peak_bytes(fn) -> int:
    """Peak of CPU memory allocated by ``fn()`` above the level at its start (from the profiler's memory events)."""
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


def train(method, data, epochs, batch, seed, log=print):
    """Train a fresh :func:`small_cnn` (same initialization and batch order for every method)."""
    x_train, y_train, x_test, y_test = data
    torch.manual_seed(seed)
    model = small_cnn()
    optimizer, pre = make_optimizer(_KEYS[method], model)
    steps = epochs * -(-len(x_train) // batch)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)  # the same decay for every method
    order = torch.Generator().manual_seed(seed)
    step_seconds, factor_seconds, history = [], [], []
    for epoch in range(1, epochs + 1):
        losses = []
        for index in torch.randperm(len(x_train), generator=order).split(batch):
            start = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            if pre is None:
                loss = nn.functional.cross_entropy(model(x_train[index]), y_train[index])
                loss.backward()
            else:
                before = pre.kfac.factor_seconds
                loss = pre.backward(x_train[index], y_train[index])
                factor_seconds.append(pre.kfac.factor_seconds - before)
                pre.precondition()
            optimizer.step()
            schedule.step()
            step_seconds.append(time.perf_counter() - start)
            losses.append(loss.item())
        test_loss, test_acc = evaluate(model, x_test, y_test)
        history.append(dict(method=method, epoch=epoch, train_loss=statistics.fmean(losses), test_loss=test_loss,
                            test_acc=test_acc))
        log(f"  {method:22s} epoch {epoch:2d}: train loss {history[-1]['train_loss']:.4f}, "
            f"test loss {test_loss:.4f}, test accuracy {test_acc:.4f}")
    summary = dict(method=method, step_ms=1e3 * statistics.median(step_seconds), factor_ms=None, factor_peak_kib=None,
                   test_loss=history[-1]["test_loss"], test_acc=history[-1]["test_acc"])
    if pre is not None:
        summary["factor_ms"] = 1e3 * statistics.median(factor_seconds)
        inputs = layer_inputs(model, x_train[:batch])
        factor = FACTORS[_KEYS[method]] or tnconv_factor
        summary["factor_peak_kib"] = peak_bytes(lambda: [factor(x, conv) for conv, x in inputs]) / 1024
    return history, summary


def factor_agreement(data, batch, seed) -> float:
    """Largest ``|A_tnconv − A_im2col| / max|A_im2col|`` over the layers of a fresh model, on one batch."""
    torch.manual_seed(seed)
    errors = []
    for conv, x in layer_inputs(small_cnn(), data[0][:batch]):
        ours, reference = tnconv_factor(x, conv), im2col_factor(x, conv)
        errors.append(((ours - reference).abs().max() / reference.abs().max()).item())
    return max(errors)


def plot(history, path):
    """Test accuracy and test loss against epochs, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for method in METHODS:
        rows = [r for r in history if r["method"] == method]
        # im2col's run dashed on top of tnconv's: the two coincide
        style = dict(marker="o", markersize=3, label=method, linestyle="--" if "im2col" in method else "-",
                     zorder=3 if "im2col" in method else 2)
        axes[0].plot([r["epoch"] for r in rows], [r["test_acc"] for r in rows], **style)
        axes[1].plot([r["epoch"] for r in rows], [r["test_loss"] for r in rows], **style)
    axes[0].set(xlabel="epoch", ylabel="test accuracy")
    axes[1].set(xlabel="epoch", ylabel="test loss", yscale="log")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _write_csv(rows, path):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=32, help="side of the upsampled digit images")
    parser.add_argument("--seed", type=int, default=0, help="data split, initialization and batch order")
    parser.add_argument("--out", type=pathlib.Path, default=OUT, help="folder for the CSVs and the plot")
    parser.add_argument("--quick", action="store_true", help="tiny run for tests: 2 epochs on 256 images of 16x16")
    args = parser.parse_args(argv)
    args.train_limit = None
    if args.quick:
        args.epochs, args.size, args.train_limit = 2, 16, 256
    return args


def main(argv=None) -> dict:
    """Train with every method; returns ``{"summary", "history", "factor_error"}`` (also written to ``--out``)."""
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    x_train, y_train, x_test, y_test = digits_split(args.size, args.seed)
    data = (x_train[:args.train_limit], y_train[:args.train_limit], x_test, y_test)
    print(f"digits {args.size}x{args.size}: {len(data[0])} train / {len(x_test)} test images, batch {args.batch}, "
          f"{args.epochs} epochs, {torch.get_num_threads()} thread(s)")
    factor_error = factor_agreement(data, args.batch, args.seed)
    print(f"KFAC-reduce factors, tnconv vs im2col: max relative difference {factor_error:.1e}")
    history, summary = [], []
    for method in METHODS:
        h, s = train(method, data, args.epochs, args.batch, args.seed)
        history += h
        summary.append(s)
    _write_csv(history, args.out / "kfac_reduce_history.csv")
    _write_csv(summary, args.out / "kfac_reduce.csv")
    plot(history, args.out / "kfac_reduce.png")

    def fmt(value, spec):
        return "—" if value is None else format(value, spec)

    print("\n| method | step (ms, median) | factor (ms, median) | factor peak memory (KiB) | test loss | test accuracy |")
    print("| --- | --- | --- | --- | --- | --- |")
    for s in summary:
        print(f"| {s['method']} | {s['step_ms']:.1f} | {fmt(s['factor_ms'], '.2f')} | {fmt(s['factor_peak_kib'], '.0f')} "
              f"| {s['test_loss']:.4f} | {s['test_acc']:.4f} |")
    by_method = {h["method"]: [] for h in history}
    for h in history:
        by_method[h["method"]].append(h["test_loss"])
    drift = max(abs(a - b) for a, b in zip(by_method[METHODS[0]], by_method[METHODS[1]]))
    print(f"\ntnconv vs im2col factors: max relative difference {factor_error:.1e} on one batch; "
          f"largest difference of the test losses over the epochs {drift:.1e}")
    print(f"wrote {args.out / 'kfac_reduce.csv'}, {args.out / 'kfac_reduce_history.csv'}, {args.out / 'kfac_reduce.png'}")
    return dict(summary=summary, history=history, factor_error=factor_error, trajectory_drift=drift)


if __name__ == "__main__":
    main()
