"""Per-call cost of tnconv against PyTorch on tiny tensors, where the Python around the kernel is all there is.

Run: ``python benchmarks/overhead.py`` (``--repeats`` per median, ``--rounds`` of interleaving).

Rows, each a median over interleaved rounds of medians over repeated calls, 1 thread:

* ``layer forward+backward``: ``layer(x).sum().backward()`` for ``tnconv.nn.Conv2d``
  against ``torch.nn.Conv2d`` (same weights, ``x`` requires grad); with tnconv's
  own autograd function too (``native=False``: no kernel pair);
* ``layer forward``: the same without autograd;
* ``functional.conv``: ``tnconv.functional.conv`` against ``torch.nn.functional.conv2d``;
* ``compiled(**tensors)`` and the bare contraction: the compiled network's call
  and its plan's kernel alone, what the cached call adds around it;
* ``first call of a new shape``: a layer whose hyper-parameters were seen before,
  forward and backward on an input size it has not seen (median over sizes).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import tnconv
from tnconv import functional as F
from tnconv.ops import convolution


def median_us(fn, repeats):
    for _ in range(max(20, repeats // 20)):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1e6


def first_calls_ms(make, sizes):
    """Median time of forward and backward on each new input size."""
    times = []
    for size in sizes:
        layer, x = make(size)
        start = time.perf_counter()
        layer(x).sum().backward()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    ref = torch.nn.Conv2d(2, 2, 3, padding=1)
    layer = tnconv.nn.Conv2d(2, 2, 3, padding=1)
    layer.load_state_dict(ref.state_dict())
    x = torch.randn(1, 2, 6, 6, requires_grad=True)
    xd, w, b = x.detach(), ref.weight.detach(), ref.bias.detach()
    fn = tnconv.functional._common.compiled("conv", N=2, groups=1, bias=False, kernel_size=(3, 3), stride=(1, 1),
                                            padding=((1, 1), (1, 1)), dilation=(1, 1))
    term = fn.plan(x=xd, w=w).terms[0]
    operands = [xd.reshape(s[2]) if s[1] == "x" else w.reshape(s[2]) for s in term.sources]

    def train(module):
        return lambda: module(x).sum().backward()

    def train_tnconv_function():
        convolution.conv(x, layer.weight, layer.bias, layer.stride, layer.padding, layer.dilation, layer.groups,
                         native=False).sum().backward()

    rows = {  # name -> (tnconv, PyTorch or None)
        "layer forward+backward": (train(layer), train(ref)),
        "layer forward+backward, tnconv's VJPs": (train_tnconv_function, train(ref)),
        "layer forward (no autograd)": (lambda: layer(xd), lambda: ref(xd)),
        "functional.conv": (lambda: F.conv(xd, w, b, 1, 1), lambda: torch.nn.functional.conv2d(xd, w, b, 1, 1)),
        "compiled(**tensors), no bias": (lambda: fn(x=xd, w=w), lambda: term.plan(*operands)),
    }
    results = {name: ([], []) for name in rows}
    for _ in range(args.rounds):  # interleave
        for name, (ours, theirs) in rows.items():
            with torch.enable_grad() if "backward" in name else torch.no_grad():
                results[name][0].append(median_us(ours, args.repeats))
                results[name][1].append(median_us(theirs, args.repeats))
    print(f"{'call (1 thread, tiny tensors)':<40}{'tnconv us':>10}{'PyTorch us':>12}{'difference us':>15}")
    for name, (ours, theirs) in results.items():
        a, b_ = statistics.median(ours), statistics.median(theirs)
        reference = "(bare plan)" if name.startswith("compiled") else ""
        print(f"{name:<40}{a:>10.1f}{b_:>12.1f}{a - b_:>15.1f} {reference}")

    def make(size, module=tnconv.nn.Conv2d):
        torch.manual_seed(size)
        return module(3, 8, 3, padding=1), torch.randn(2, 3, size, size, requires_grad=True)

    make(8)[0](torch.randn(2, 3, 8, 8)).sum()  # the hyper-parameters seen before
    sizes = list(range(9, 30))
    ours = first_calls_ms(make, sizes)
    theirs = first_calls_ms(lambda s: make(s, torch.nn.Conv2d), [s + 40 for s in sizes])
    print(f"{'first call of a new shape (ms)':<40}{ours:>10.2f}{theirs:>12.2f}{ours - theirs:>15.2f}")


if __name__ == "__main__":
    main()
