"""A text form of networks that parses back exactly.

::

    network conv
      index n = B
      index c_in = C_in
      ...
      tensor x : input (n) (c_in) (i1)
      tensor pi1 : pattern[dilation=1, pad_left=0, pad_right=0, stride=1] (i1) (o1) (k1)
      output (n) (c_out) (o1)
      scale 1
    end

An axis is a parenthesized group of legs; ``()`` is an axis of size one. A sum
of networks is ``sum NAME`` followed by its terms.
"""

from __future__ import annotations

import re

import sympy

from .index import Index, format_size, parse_expression, parse_size
from .network import NetworkSum, TensorNetwork
from .tensor import Tensor


def _axes(axes) -> str:
    return " ".join("(" + " ".join(leg.name for leg in axis) + ")" for axis in axes)


def _single(tn: TensorNetwork) -> list:
    lines = [f"network {tn.name}"]
    for leg in tn.legs.values():
        lines.append(f"  index {leg.name} = {format_size(leg.size)}")
    for t in tn.tensors:
        attrs = "[" + ", ".join(f"{k}={v}" for k, v in t.attrs) + "]" if t.attrs else ""
        lines.append(f"  tensor {t.name} : {t.kind}{attrs} {_axes(t.axes)}".rstrip())
    lines.append(f"  output {_axes(tn.output)}".rstrip())
    lines.append(f"  scale {sympy.sstr(tn.scale)}")
    lines.append("end")
    return lines


def network_to_text(tn) -> str:
    """Text of a network or a sum of networks."""
    if isinstance(tn, NetworkSum):
        lines = [f"sum {tn.name}"]
        for term in tn.terms:
            lines.extend(_single(term))
        return "\n".join(lines)
    return "\n".join(_single(tn))


_TENSOR = re.compile(r"^tensor (\S+) : (\w+)(?:\[([^\]]*)\])?\s*(.*)$")
_AXIS = re.compile(r"\(([^()]*)\)")


class TextError(ValueError):
    """The text does not describe a network."""


def _parse_axes(text: str, legs: dict, where: str):
    rest = _AXIS.sub("", text).strip()
    if rest:
        raise TextError(f"{where}: unexpected {rest!r} outside parentheses")
    axes = []
    for group in _AXIS.findall(text):
        axis = []
        for name in group.split():
            if name not in legs:
                raise TextError(f"{where}: leg {name!r} has no 'index' line")
            axis.append(legs[name])
        axes.append(tuple(axis))
    return tuple(axes)


def _parse_network(lines, pos):
    header = lines[pos].split()
    if len(header) != 2 or header[0] != "network":
        raise TextError(f"line {pos + 1}: expected 'network NAME', got {lines[pos]!r}")
    name = header[1]
    legs, tensors, output, scale = {}, [], None, sympy.Integer(1)
    pos += 1
    while pos < len(lines):
        line = lines[pos].strip()
        where = f"line {pos + 1}"
        pos += 1
        if line == "end":
            if output is None:
                raise TextError(f"network {name!r} has no 'output' line")
            return TensorNetwork(tuple(tensors), output, scale, name), pos
        if line.startswith("index "):
            match = re.match(r"^index (\S+) = (.+)$", line)
            if not match:
                raise TextError(f"{where}: expected 'index NAME = SIZE', got {line!r}")
            legs[match.group(1)] = Index(match.group(1), parse_size(match.group(2)))
        elif line.startswith("tensor "):
            match = _TENSOR.match(line)
            if not match:
                raise TextError(f"{where}: expected 'tensor NAME : KIND (legs)...', got {line!r}")
            tname, kind, attrs, axes = match.groups()
            pairs = []
            for item in filter(None, (a.strip() for a in (attrs or "").split(","))):
                key, _, value = item.partition("=")
                pairs.append((key.strip(), int(value)))
            tensors.append(Tensor(tname, _parse_axes(axes, legs, where), kind, tuple(pairs)))
        elif line.startswith("output"):
            output = _parse_axes(line[len("output"):], legs, where)
        elif line.startswith("scale "):
            scale = _parse_scale(line[len("scale "):])
        elif line:
            raise TextError(f"{where}: cannot read {line!r}")
    raise TextError(f"network {name!r} has no 'end'")


def _parse_scale(text):
    return parse_expression(text.strip())


def parse(text: str):
    """Parse :func:`network_to_text` output back into the same object."""
    lines = [line for line in text.strip().splitlines()]
    if not lines:
        raise TextError("empty text")
    first = lines[0].split()
    if first and first[0] == "sum":
        if len(first) != 2:
            raise TextError(f"line 1: expected 'sum NAME', got {lines[0]!r}")
        terms, pos = [], 1
        while pos < len(lines):
            if not lines[pos].strip():
                pos += 1
                continue
            term, pos = _parse_network(lines, pos)
            terms.append(term)
        return NetworkSum(tuple(terms), first[1])
    tn, pos = _parse_network(lines, 0)
    if any(line.strip() for line in lines[pos:]):
        raise TextError(f"line {pos + 1}: text after the network's 'end'")
    return tn
