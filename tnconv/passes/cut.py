"""Differentiation by cutting a tensor out of the diagram (the paper's §3.1).

Cutting ``wrt`` replaces it by Kronecker deltas between its legs and new open
legs. A delta on a summed leg is summed right away: the leg is renamed to the
new open leg. A delta on an output leg stays and imposes structure. A tensor
that occurs several times gives, by the product rule, one term per occurrence.
"""

from __future__ import annotations

from ..ir import Index, Tensor, TensorNetwork
from ._util import fresh, rebuild, require_input, terms_of, used_names


def _new_axes(tn, wrt):
    """Open legs for the derivative: the legs of ``wrt`` with a prime, renamed apart."""
    used = used_names(tn)
    first = next(t for term in tn.terms for t in term.tensors if t.kind == "input" and t.name == wrt)
    return tuple(tuple(Index(fresh(f"{leg.name}'", used), leg.size) for leg in axis) for axis in first.axes)


def _cut(term: TensorNetwork, position: int, new_axes, wrt: str) -> TensorNetwork:
    cut = term.tensors[position]
    rest = term.tensors[:position] + term.tensors[position + 1:]
    open_names = {leg.name for leg in term.output_legs}
    elsewhere = {leg.name for t in rest for leg in t.legs}
    rename, extra = {}, []
    for old, new in zip(cut.legs, (leg for axis in new_axes for leg in axis)):
        if old.name in open_names:
            extra.append(Tensor(f"delta_{old.name}", ((old,), (new,)), "delta"))
        elif old.name in elsewhere:
            rename[old.name] = new
        else:  # summed over this tensor alone: the derivative is constant along it
            extra.append(Tensor(f"ones_{new.name}", ((new,),), "constant", (("value", 1),)))
    tensors = tuple(t.rename_legs(rename) for t in rest) + tuple(extra)
    return TensorNetwork(tensors, term.output + tuple(new_axes), term.scale, f"d{term.name}_d{wrt}")


def differentiate(tn, wrt: str):
    """Jacobian of ``tn`` with respect to the input tensor ``wrt``.

    The result's output is ``tn``'s output axes followed by ``wrt``'s axes (as
    new legs named with a prime). Where ``wrt`` occurs more than once the result
    is a :class:`~tnconv.ir.NetworkSum` with one term per occurrence; terms
    without ``wrt`` vanish. Apply it again for higher derivatives.

    Example:
        >>> from tnconv import diagrams
        >>> jac = differentiate(diagrams.conv(N=1, kernel_size=3), "w")
        >>> [t.name for t in jac.tensors]
        ['x', 'pi1', 'delta_c_out']
        >>> jac.output_shape
        (B, C_out, I1 - 2, C_out, C_in, 3)
    """
    require_input(tn, wrt)
    new_axes = _new_axes(tn, wrt)
    terms = [_cut(term, pos, new_axes, wrt) for term in terms_of(tn) for pos in term.occurrences(wrt)]
    return rebuild(tn, terms)
