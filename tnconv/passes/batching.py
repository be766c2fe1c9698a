"""Batching as a graph edit (vmap): a new leg on some inputs and on the output."""

from __future__ import annotations

from ..ir import Index, Tensor, size_symbol
from ._util import rebuild, require_input, terms_of, used_names


def batch(tn, leg: str, size, tensors):
    """Add a batch leg ``leg`` as the first axis of each tensor in ``tensors`` and of the output.

    This is ``vmap`` over those inputs. A term of a sum that carries none of
    them is constant along the batch and is broadcast with a vector of ones.

    Args:
        tn: a network or sum.
        leg: name of the new leg (must not be used yet).
        size: an int, or the name of a size symbol bound at call time (e.g. ``"B"``).
        tensors: names of the inputs that get the batch axis.

    Example:
        >>> from tnconv import diagrams, passes
        >>> g = passes.vjp(diagrams.conv(N=1, kernel_size=3), "w", "v")
        >>> batch(g, "m", "M", ["x", "v"]).output_shape
        (M, C_out, C_in, 3)
    """
    if isinstance(tensors, str):
        tensors = [tensors]
    for name in tensors:
        require_input(tn, name, "tensors")
    if not isinstance(leg, str) or not leg.isidentifier():
        raise TypeError(f"leg must be an identifier, got {leg!r}")
    if leg in used_names(tn):
        raise ValueError(f"leg={leg!r} is already a leg of the network; choose a new name")
    index = Index(leg, size_symbol(size) if isinstance(size, str) else size)
    out = []
    for term in terms_of(tn):
        new = tuple(Tensor(t.name, ((index,),) + t.axes, t.kind, t.attrs) if t.kind == "input" and t.name in tensors else t
                    for t in term.tensors)
        if not any(t.kind == "input" and t.name in tensors for t in term.tensors):
            new += (Tensor(f"ones_{leg}", ((index,),), "constant", (("value", 1),)),)
        out.append(term.replace(tensors=new, output=((index,),) + term.output))
    return rebuild(tn, out)
