"""cotengra backend: hyper-optimized contraction trees, sliced under a memory limit."""

from __future__ import annotations

import warnings

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import cotengra as ctg

from .base import Plan
from .letters import equation

# Exhaustive search is cheap and optimal for the few tensors of a convolution
# diagram; past that a hyper-optimizer samples trees.
_EXHAUSTIVE_UP_TO = 8


def _optimizer(n_inputs: int):
    if n_inputs <= _EXHAUSTIVE_UP_TO:
        return "auto-hq"
    return ctg.HyperOptimizer(max_repeats=32, parallel=False, progbar=False, methods=["greedy", "kahypar"] if _has_kahypar() else ["greedy"])


def _has_kahypar() -> bool:
    try:
        import kahypar  # noqa: F401
    except ImportError:
        return False
    return True


def plan(inputs, output, size_dict, memory_limit=None) -> Plan:
    """Find a contraction tree and return a :class:`Plan` running it with torch.

    ``memory_limit`` caps the largest intermediate (in elements) by slicing.
    """
    inputs = [tuple(legs) for legs in inputs]
    output = tuple(output)
    with warnings.catch_warnings():
        # cotengra suggests kahypar for large networks; ours are small, its fallback is fine
        warnings.filterwarnings("ignore", message=".*kahypar.*")
        tree = ctg.array_contract_tree(inputs, output, size_dict=size_dict, optimize=_optimizer(len(inputs)))
    if memory_limit is not None and tree.max_size() > memory_limit:
        tree = tree.slice(target_size=memory_limit)
        if tree.max_size() > memory_limit:
            raise ValueError(f"memory_limit={memory_limit} cannot be met: slicing leaves an intermediate "
                             f"of {int(tree.max_size())} elements")
    if len(inputs) == 1 and not tree.sliced_inds:
        run = _single(inputs[0], output)
    else:
        def run(*arrays):
            return tree.contract(arrays, backend="torch")
    # cotengra counts a multiply-add as one operation; opt_einsum and tnconv count two
    return Plan(run, equation(inputs, output), 2.0 * float(tree.total_flops()), int(tree.max_size()),
                tuple(tree.get_path()), int(tree.nslices), float(tree.total_write()))


def _single(legs, output):
    import torch

    eq = equation([legs], output)
    if legs == output:
        return lambda a: a
    return lambda a: torch.einsum(eq, a)
