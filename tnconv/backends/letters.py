"""The one place where legs become einsum letters."""

from __future__ import annotations

from opt_einsum import get_symbol


def letters(names) -> dict:
    """Map leg names (in order) to distinct einsum symbols, past 52 if needed.

    Example:
        >>> letters(["n", "c_in"])
        {'n': 'a', 'c_in': 'b'}
    """
    return {name: get_symbol(k) for k, name in enumerate(dict.fromkeys(names))}


def equation(inputs, output) -> str:
    """An einsum equation for inputs/output given as tuples of leg names."""
    table = letters([leg for legs in inputs for leg in legs] + list(output))
    lhs = ",".join("".join(table[leg] for leg in legs) for legs in inputs)
    return lhs + "->" + "".join(table[leg] for leg in output)
