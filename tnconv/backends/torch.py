"""Plain ``torch.einsum`` backend.

One call when the network has at most 52 distinct legs (torch.einsum's
alphabet); otherwise the pairwise steps of an opt_einsum path, each with its
own letters, so any number of legs works.
"""

from __future__ import annotations

import opt_einsum as oe
import torch

from .base import Plan
from .letters import equation

_TORCH_LETTERS = 52


def plan(inputs, output, size_dict, memory_limit=None) -> Plan:
    inputs = [tuple(legs) for legs in inputs]
    output = tuple(output)
    eq = equation(inputs, output)
    shapes = [tuple(size_dict[leg] for leg in legs) for legs in inputs]
    path, info = oe.contract_path(eq, *shapes, shapes=True, optimize="auto", memory_limit=memory_limit)
    n_legs = len({leg for legs in inputs for leg in legs} | set(output))
    if n_legs <= _TORCH_LETTERS and memory_limit is None:
        def run(*arrays):
            return torch.einsum(eq, *arrays)
    else:
        run = _pairwise(inputs, output, path)
    return Plan(run, eq, float(info.opt_cost), int(info.largest_intermediate), tuple(path), write=float(sum(info.size_list)))


def _pairwise(inputs, output, path):
    """Contract along ``path``, each step a small ``torch.einsum`` of its own."""
    steps = []
    current = list(inputs)
    for positions in path:
        taken = [current[p] for p in positions]
        rest = [legs for p, legs in enumerate(current) if p not in positions]
        needed = set(output).union(*rest) if rest else set(output)
        result = tuple(dict.fromkeys(leg for legs in taken for leg in legs if leg in needed))
        steps.append((tuple(sorted(positions, reverse=True)), equation(taken, result), tuple(positions)))
        current = rest + [result]
    final = equation([current[0]], output)

    def run(*arrays):
        arrays = list(arrays)
        for remove, eq, positions in steps:
            operands = [arrays[p] for p in positions]
            for p in remove:
                del arrays[p]
            arrays.append(torch.einsum(eq, *operands))
        return torch.einsum(final, arrays[0])

    return run
