"""Vector-Jacobian and Jacobian-vector products: contract a cut with a new tensor."""

from __future__ import annotations

from ..ir import Tensor
from ._util import rebuild, require_input, terms_of
from .cut import differentiate
from .deltas import fuse_deltas


def _check_new_name(tn, name, argument):
    if not isinstance(name, str) or not name.isidentifier():
        raise TypeError(f"{argument} must be a tensor name (identifier), got {name!r}")
    if name in tn.inputs:
        raise ValueError(f"{argument}={name!r} is already an input of the network; its inputs are {list(tn.inputs)}")


def vjp(tn, wrt: str, vector: str = "vector", fuse: bool = True):
    """Vector-Jacobian product: ``Σ_out vector[out] ∂tn[out]/∂wrt`` as a network.

    The new input ``vector`` has ``tn``'s output shape; the result has
    ``wrt``'s shape. The Jacobian is never materialized: the vector is wired
    into the cut diagram and the deltas are summed out (``fuse=False`` keeps them).

    Example:
        >>> from tnconv import diagrams
        >>> tn = vjp(diagrams.conv(N=2, kernel_size=3), "w", "grad_output")
        >>> tn.inputs, tn.output_shape
        (('x', 'grad_output'), (C_out, C_in, 3, 3))
    """
    require_input(tn, wrt)
    _check_new_name(tn, vector, "vector")
    n_out = len(tn.output)
    terms = []
    for term in terms_of(differentiate(tn, wrt)):
        v = Tensor(vector, term.output[:n_out])
        terms.append(term.replace(tensors=term.tensors + (v,), output=term.output[n_out:], name=f"vjp_{wrt}_{tn.name}"))
    result = rebuild(tn, terms)
    return fuse_deltas(result) if fuse else result


def jvp(tn, wrt: str, tangent: str = "tangent", fuse: bool = True):
    """Jacobian-vector product: ``Σ_wrt ∂tn/∂wrt[..] tangent[..]`` as a network.

    The new input ``tangent`` has ``wrt``'s shape; the result has ``tn``'s.

    Example:
        >>> from tnconv import diagrams
        >>> jvp(diagrams.conv(N=1, kernel_size=3), "x", "dx").inputs
        ('w', 'dx')
    """
    require_input(tn, wrt)
    _check_new_name(tn, tangent, "tangent")
    n_out = len(tn.output)
    terms = []
    for term in terms_of(differentiate(tn, wrt)):
        t = Tensor(tangent, term.output[n_out:])
        terms.append(term.replace(tensors=term.tensors + (t,), output=term.output[:n_out], name=f"jvp_{wrt}_{tn.name}"))
    result = rebuild(tn, terms)
    return fuse_deltas(result) if fuse else result
