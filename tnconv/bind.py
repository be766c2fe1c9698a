"""Binding size symbols to the shapes of the tensors a network is called with."""

from __future__ import annotations

import sympy


class ShapeError(ValueError):
    """The tensors' shapes do not fit the network."""


def _value(expr, known):
    if isinstance(expr, int):
        return expr
    value = expr.subs(known) if known else expr
    return int(value) if value.is_Integer else value


def bind(tn, shapes: dict, given=None) -> dict:
    """Solve the network's size symbols from ``shapes`` (input name -> shape).

    ``given`` maps size symbols to values fixed by the caller (sizes that no
    input determines, such as ``C_out`` of a weight Jacobian). Returns
    ``{symbol: int}``. Raises :class:`ShapeError` naming the tensor and
    axis when a shape contradicts the network or leaves a size undetermined.
    """
    equations = []
    for term in tn.terms:
        for t in term.tensors:
            if t.kind not in ("input", "select") or t.name not in shapes:
                continue
            shape = shapes[t.name]
            if len(shape) != len(t.axes):
                raise ShapeError(f"{t.name} must have {len(t.axes)} dimensions, got shape {tuple(shape)}")
            for axis, (expr, dim) in enumerate(zip(t.shape, shape)):
                equations.append((expr, int(dim), t.name, axis, t.axes[axis]))
    known: dict = dict(given or {})
    pending = equations
    while pending:
        left = []
        for expr, dim, name, axis, legs in pending:
            value = _value(expr, known)
            if isinstance(value, int):
                if value != dim:
                    raise ShapeError(_mismatch(name, axis, legs, dim, value))
                continue
            free = value.free_symbols
            if len(free) == 1:
                symbol = next(iter(free))
                if dim == 0 and value.subs(symbol, 0) == 0:  # empty batch: symbols are declared positive
                    known[symbol] = 0
                    continue
                try:
                    solutions = [s for s in sympy.solve(sympy.Eq(value, dim), symbol) if s.is_Integer and s >= 0]
                except NotImplementedError:  # e.g. floor(): the size does not determine the symbol
                    left.append((expr, dim, name, axis, legs))
                    continue
                if not solutions:
                    raise ShapeError(f"{name} has size {dim} along dimension {axis} {_legs(legs)}, which does not fit {value}")
                known[symbol] = int(solutions[0])
                continue
            left.append((expr, dim, name, axis, legs))
        if len(left) == len(pending):
            names = sorted({str(s) for e, *_ in left for s in _value(e, known).free_symbols})
            raise ShapeError(f"cannot determine the sizes {names} from the tensors' shapes; "
                             "fix them in the diagram (e.g. its input_size argument)")
        pending = left
    missing = [s for s in tn.size_symbols if s not in known]
    if missing:
        raise ShapeError(f"the sizes {[str(s) for s in missing]} are not fixed by any input tensor; "
                         "pass them as keyword arguments, e.g. compiled(..., C_out=4)")
    return known


def _legs(legs) -> str:
    return "(" + " ".join(leg.name for leg in legs) + ")"


def _mismatch(name, axis, legs, dim, expected) -> str:
    return f"{name} has size {dim} along dimension {axis} {_legs(legs)}, expected {expected}"


def concrete(size, known) -> int:
    """A size with the bound symbols substituted; must come out an int >= 0."""
    value = _value(size, known)
    if not isinstance(value, int):
        raise ShapeError(f"size {size} is not fixed by the bound sizes {known}")
    return value
