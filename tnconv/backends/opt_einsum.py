"""opt_einsum backend: one ``ContractExpression`` per plan."""

from __future__ import annotations

import opt_einsum as oe

from .base import Plan
from .letters import equation


def plan(inputs, output, size_dict, memory_limit=None) -> Plan:
    eq = equation(inputs, output)
    shapes = [tuple(size_dict[leg] for leg in legs) for legs in inputs]
    path, info = oe.contract_path(eq, *shapes, shapes=True, optimize="auto-hq", memory_limit=memory_limit)
    expression = oe.contract_expression(eq, *shapes, optimize=path)

    def run(*arrays):
        return expression(*arrays, backend="torch")

    return Plan(run, eq, float(info.opt_cost), int(info.largest_intermediate), tuple(path), write=float(sum(info.size_list)))
