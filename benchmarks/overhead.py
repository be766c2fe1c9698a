"""Per-call overhead of a cached ``tnconv.functional.conv`` beyond the contraction itself.

Run: ``python benchmarks/overhead.py``

On tiny tensors the contraction costs little, so the difference between the
full call and the bare contraction (the cached plan run on pre-reshaped
operands) is the Python work tnconv adds per call: argument validation, the
compiled-diagram and plan cache look-ups, reshapes. Medians over many
interleaved repeats.
"""

from __future__ import annotations

import statistics
import time

import torch

from tnconv import functional as F
from tnconv.functional._common import _freeze, compiled
from tnconv._args import ConvSpec


def median_us(fn, repeats=2000):
    for _ in range(50):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1e6


def main():
    torch.set_num_threads(1)
    x, w = torch.randn(1, 2, 6, 6), torch.randn(2, 2, 3, 3)
    spec = ConvSpec.make(2, (3, 3), 1, 1, 1, 1)
    fn = compiled("conv", N=2, groups=1, bias=False, **_freeze(spec))
    F.conv(x, w, padding=1)
    plan = fn._last
    term = plan.terms[0]
    operands = [x.reshape(s[2]) if s[1] == "x" else w.reshape(s[2]) if s[0] == "input" else s[1] for s in term.sources]

    def bare():
        return term.plan(*operands)

    def full():
        return F.conv(x, w, padding=1)

    def compiled_call():
        return fn(x=x, w=w)

    rows = {}
    for _ in range(3):  # interleave
        for name, f in (("contraction only", bare), ("compiled(**tensors)", compiled_call), ("functional.conv", full)):
            rows.setdefault(name, []).append(median_us(f))
    base = statistics.median(rows["contraction only"])
    print(f"{'call':<24}{'median us':>10}{'overhead us':>13}")
    for name, values in rows.items():
        value = statistics.median(values)
        print(f"{name:<24}{value:>10.1f}{value - base:>13.1f}")
    native = median_us(lambda: torch.nn.functional.conv2d(x, w, padding=1))
    print(f"{'torch conv2d (for scale)':<24}{native:>10.1f}")


if __name__ == "__main__":
    main()
