"""KFAC under torch.distributed: 2 gloo processes on 127.0.0.1 hold the factors of the concatenated batch."""

import socket
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from tnconv.curvature import KFAC
from tnconv.testing.models import curvature_cnn

TIMEOUT = 180  # seconds for both ranks, start-up included


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cases():
    gen = torch.Generator().manual_seed(0)
    out = []
    for name, loss, reduction, approx, fisher_type, ema, separate in [
            ("ce-mean-expand-type2", "CrossEntropyLoss", "mean", "expand", "type-2", None, True),
            ("ce-sum-reduce-empirical", "CrossEntropyLoss", "sum", "reduce", "empirical", None, False),
            ("mse-mean-reduce-type2-ema", "MSELoss", "mean", "reduce", "type-2", 0.7, True),
            ("mse-sum-expand-forward-only", "MSELoss", "sum", "expand", "forward-only", None, True)]:
        xs = [torch.randn(B, 2, 8, 8, dtype=torch.float64, generator=gen) for B in (8, 6)]
        ys = [torch.randint(4, (x.shape[0],), generator=gen) if loss == "CrossEntropyLoss" else
              torch.randn(x.shape[0], 4, dtype=torch.float64, generator=gen) for x in xs]
        # uneven shards: 3 + 5 samples, then 4 + 2
        out.append(dict(name=name, loss=loss, reduction=reduction, approx=approx, fisher_type=fisher_type, ema=ema,
                        separate=separate, xs=xs, ys=ys, shards=[(0, 3, 8), (0, 4, 6)]))
    return out


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_factors_are_all_reduced_to_the_concatenated_batch(tmp_path):
    todo = cases()
    sys.path.insert(0, str(Path(__file__).parent))  # the spawned ranks import the worker from here
    try:
        import _ddp_worker

        context = mp.start_processes(_ddp_worker.run, args=(2, free_port(), str(tmp_path), todo), nprocs=2,
                                     join=False, start_method="spawn")
    finally:
        sys.path.remove(str(Path(__file__).parent))
    deadline = time.monotonic() + TIMEOUT
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for p in context.processes:
                p.kill()
            pytest.fail(f"the 2 ranks did not finish within {TIMEOUT} s")
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for case in todo:
        torch.manual_seed(0)
        net = curvature_cnn(groups=2).double()
        kfac = KFAC(net, getattr(nn, case["loss"])(reduction=case["reduction"]), approx=case["approx"],
                    fisher_type=case["fisher_type"], ema=case["ema"], separate_weight_and_bias=case["separate"])
        for x, y in zip(case["xs"], case["ys"]):
            kfac.update(x, y)
        for factors, num_data in (r[case["name"]] for r in ranks):
            assert num_data == kfac.num_data == 14
            for name, (A, G) in kfac.factors.items():
                torch.testing.assert_close(factors[name][0], A, rtol=1e-12, atol=1e-14, msg=f"{case['name']} {name} A")
                torch.testing.assert_close(factors[name][1], G, rtol=1e-12, atol=1e-14, msg=f"{case['name']} {name} G")


def test_without_an_initialized_group():
    net = curvature_cnn()
    with pytest.raises(RuntimeError, match="distributed=True needs an initialized torch.distributed process group"):
        KFAC(net, nn.MSELoss(), distributed=True, fisher_type="type-2").update(torch.randn(2, 2, 8, 8))
