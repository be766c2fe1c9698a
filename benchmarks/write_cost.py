"""Calibrate ``tnconv.lowering.WRITE_COST``: where two values choose different lowerings, time both.

Run: ``python benchmarks/write_cost.py 256 1024 4096``

For every layer of the benchmark and the Kronecker factors (the operations whose
lowering the cost model decides), compile once per value; where the chosen plans
differ, time them interleaved and print the geometric mean of the times relative
to the first value.
"""

import torch, time, statistics, sys
import tnconv, tnconv.lowering as L
from tnconv import diagrams
from tnconv.bench.layers import NETS
torch.set_num_threads(2)
settings = [int(a) for a in sys.argv[1:]] or [256, 1024]
def t(f, r=7):
    ts = []
    for _ in range(r):
        s = time.perf_counter(); f(); ts.append(time.perf_counter() - s)
    return statistics.median(ts)
rows = []
for net, layers in NETS.items():
    for layer in layers:
        x = torch.randn(layer.batch, layer.in_channels, *layer.input_size)
        for op in (diagrams.kfc, diagrams.kfac_reduce):
            tn = op(N=len(layer.input_size), kernel_size=layer.kernel_size, stride=layer.stride, padding=layer.padding,
                    dilation=layer.dilation, groups=layer.groups)
            fs = {}
            for wc in settings:
                L.WRITE_COST = wc
                f = tnconv.compile(tn); f(x=x)
                fs[wc] = (f, f._last.terms[0].plan.equation)
            if len({e for _, e in fs.values()}) == 1:
                continue
            times = {wc: [] for wc in settings}
            for _ in range(3):
                for wc in settings:
                    times[wc].append(t(lambda: fs[wc][0](x=x)))
            med = {wc: statistics.median(v) * 1e3 for wc, v in times.items()}
            rows.append((net, layer.name, op.__name__, med, {wc: e[:28] for wc, (f, e) in fs.items()}))
            print(rows[-1], flush=True)
import math
for wc in settings:
    print(wc, "geomean vs first:", math.exp(statistics.mean(math.log(r[3][wc] / r[3][settings[0]]) for r in rows)))
