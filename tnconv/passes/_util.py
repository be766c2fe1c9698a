"""Small helpers shared by passes."""

from __future__ import annotations

from ..ir import NetworkSum, TensorNetwork


def terms_of(tn):
    if not isinstance(tn, (TensorNetwork, NetworkSum)):
        raise TypeError(f"tn must be a TensorNetwork or NetworkSum, got {type(tn).__name__}")
    return tn.terms


def rebuild(tn, terms):
    """A network from ``terms``: the single term itself, else a sum named like ``tn``."""
    terms = tuple(terms)
    if len(terms) == 1:
        return terms[0]
    return NetworkSum(terms, tn.name)


def used_names(tn) -> set:
    return {name for term in terms_of(tn) for name in term.legs}


def fresh(base: str, used: set) -> str:
    """A name from ``base`` not in ``used`` (which it is added to)."""
    name, n = base, 1
    while name in used:
        name = f"{base}_{n}"
        n += 1
    used.add(name)
    return name


def require_input(tn, name: str, argument: str = "wrt") -> None:
    terms_of(tn)
    if not isinstance(name, str):
        raise TypeError(f"{argument} must be the name of an input tensor (str), got {name!r}")
    if name not in tn.inputs:
        raise ValueError(f"{argument}={name!r} is not an input of the network; its inputs are {list(tn.inputs)}")
