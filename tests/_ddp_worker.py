"""The per-rank part of tests/test_curvature_ddp.py (a module of its own so that spawned processes can import it)."""

import datetime

import torch
import torch.distributed as dist
from torch import nn


def run(rank, world_size, port, out_dir, cases):
    """Each rank: its shard of the batch, KFAC updates with all-reduce, factors saved to ``out_dir/rank{rank}.pt``."""
    from tnconv.curvature import KFAC
    from tnconv.testing.models import curvature_cnn

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=60))
    try:
        results = {}
        for case in cases:
            torch.manual_seed(0)
            net = curvature_cnn(groups=2).double()
            loss = getattr(nn, case["loss"])(reduction=case["reduction"])
            kfac = KFAC(net, loss, approx=case["approx"], fisher_type=case["fisher_type"], ema=case["ema"],
                        separate_weight_and_bias=case["separate"])
            for x, y, bounds in zip(case["xs"], case["ys"], case["shards"]):
                lo, hi = bounds[rank], bounds[rank + 1]
                kfac.update(x[lo:hi], y[lo:hi])
            results[case["name"]] = ({k: (A.clone(), G.clone()) for k, (A, G) in kfac.factors.items()},
                                     kfac.num_data)
        torch.save(results, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()
