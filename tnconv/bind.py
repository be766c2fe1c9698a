"""Binding size symbols to the shapes of the tensors a network is called with.

A new shape is bound on every plan-cache miss, so the common cases avoid
sympy: each size expression is turned once into a closure that evaluates it
exactly from Python ints (:func:`evaluator`), and an expression linear in its one
unknown symbol is solved by arithmetic. Anything else goes to ``sympy.solve``.
"""

from __future__ import annotations

import math
from fractions import Fraction
from functools import lru_cache

import sympy


class ShapeError(ValueError):
    """The tensors' shapes do not fit the network."""


def _value(expr, known):
    if isinstance(expr, int):
        return expr
    symbols, fn = evaluator(expr)
    if fn is not None and symbols <= known.keys():
        value = fn(known)
        if type(value) is int or value.denominator == 1:
            return int(value)
        return sympy.Rational(value.numerator, value.denominator)
    value = expr.subs(known) if known else expr
    return int(value) if value.is_Integer else value


@lru_cache(maxsize=4096)
def evaluator(expr):
    """``(symbols, fn)``: ``fn(known)`` computes ``expr`` exactly (an int or a Fraction) once
    every symbol in ``symbols`` is bound in ``known``; ``fn`` is ``None`` for expressions
    beyond sums, products, integer powers, ``floor``, ``ceiling``, ``Max`` and ``Min``.

    Example:
        >>> from tnconv.ir import size_symbol
        >>> I = size_symbol("I")
        >>> symbols, fn = evaluator(sympy.floor((I - 3) / 2) + 1)
        >>> fn({I: 10})
        4
    """
    return frozenset(expr.free_symbols), _closure(expr)


def _closure(expr):
    if expr.is_Integer:
        value = int(expr)
        return lambda known: value
    if expr.is_Rational:
        value = Fraction(int(expr.p), int(expr.q))
        return lambda known: value
    if expr.is_Symbol:
        return lambda known: known[expr]
    parts = [_closure(a) for a in expr.args]
    if any(p is None for p in parts):
        return None
    if expr.is_Add:
        return lambda known: sum(p(known) for p in parts)
    if expr.is_Mul:
        return lambda known: math.prod(p(known) for p in parts)
    if expr.is_Pow and expr.exp.is_Integer:
        base, exp = parts[0], int(expr.exp)
        return lambda known: Fraction(base(known)) ** exp
    for kind, op in ((sympy.floor, math.floor), (sympy.ceiling, math.ceil), (sympy.Max, max), (sympy.Min, min)):
        if isinstance(expr, kind):
            return lambda known: op(*(p(known) for p in parts))
    return None


@lru_cache(maxsize=4096)
def _linear(expr, symbol):
    """``(a, b)`` with ``expr == a*symbol + b`` and ``a``, ``b`` free of ``symbol``, or ``None``."""
    if not expr.is_polynomial(symbol):
        return None
    poly = sympy.Poly(expr, symbol)
    if poly.degree() != 1:
        return None
    a, b = poly.all_coeffs()
    return a, b


def _solve_linear(expr, symbol, dim, known):
    """The value of ``symbol`` making ``expr == dim`` by arithmetic: an int, ``False`` (no
    non-negative integer fits) or ``None`` (not linear: ask sympy)."""
    coefficients = _linear(expr, symbol)
    if coefficients is None:
        return None
    a, b = (_exact(c, known) for c in coefficients)
    if a is None or b is None or a == 0:
        return None
    value = (dim - b) / a
    return int(value) if value.denominator == 1 and value >= 0 else False


def _exact(expr, known):
    """``expr`` as a Fraction once every symbol is bound, else ``None``."""
    if isinstance(expr, int) or expr.is_Rational:
        return Fraction(int(sympy.numer(expr)), int(sympy.denom(expr)))
    symbols, fn = evaluator(expr)
    if fn is None or not symbols <= known.keys():
        return None
    return Fraction(fn(known))


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
            unknown = () if isinstance(expr, int) else evaluator(expr)[0] - known.keys()
            if len(unknown) == 1:  # the common case, solved without sympy when linear
                symbol = next(iter(unknown))
                solved = _solve_linear(expr, symbol, dim, known)
                if solved is False:
                    raise ShapeError(f"{name} has size {dim} along dimension {axis} {_legs(legs)}, "
                                     f"which does not fit {_value(expr, known)}")
                if solved is not None:
                    known[symbol] = solved
                    continue
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
