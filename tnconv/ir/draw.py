"""Drawings of a network: DOT text, PNG/SVG through graphviz, a networkx graph."""

from __future__ import annotations

import shutil
import subprocess

from .network import NetworkSum

_SHAPES = {"input": "box", "pattern": "triangle", "delta": "point", "constant": "circle"}


def _dot_body(tn, prefix: str) -> list:
    lines = []
    holders = {}
    for n, t in enumerate(tn.tensors):
        label = t.name if t.kind != "pattern" else f"{t.name}\\nS={t.attr['stride']} D={t.attr['dilation']}"
        lines.append(f'  {prefix}t{n} [label="{label}", shape={_SHAPES[t.kind]}];')
        for leg in t.legs:
            holders.setdefault(leg.name, []).append(f"{prefix}t{n}")
    out = {leg.name for leg in tn.output_legs}
    for name, nodes in holders.items():
        if name in out:
            lines.append(f'  {prefix}out_{name} [label="{name}", shape=plaintext];')
            nodes = nodes + [f"{prefix}out_{name}"]
        if len(nodes) == 2:
            lines.append(f'  {nodes[0]} -- {nodes[1]} [label="{name}"];')
        else:
            hub = f"{prefix}leg_{name}"
            lines.append(f'  {hub} [label="", shape=point];')
            lines.extend(f'  {node} -- {hub} [label="{name}"];' for node in nodes)
    return lines


def to_dot(tn) -> str:
    """DOT text (graphviz) of a network; a sum draws one cluster per term.

    Open legs end in a plain label; a leg shared by more than two tensors meets
    in a small hub point.
    """
    lines = ["graph tn {", "  node [fontname=Helvetica];", "  edge [fontname=Helvetica, fontsize=10];"]
    if isinstance(tn, NetworkSum):
        for n, term in enumerate(tn.terms):
            lines.append(f"  subgraph cluster_{n} {{")
            lines.append(f'  label="{term.name}";')
            lines.extend(_dot_body(term, f"s{n}_"))
            lines.append("  }")
    else:
        lines.extend(_dot_body(tn, ""))
    lines.append("}")
    return "\n".join(lines)


def render(tn, path: str) -> str:
    """Write a PNG or SVG drawing (by ``path``'s suffix) with graphviz's ``dot``.

    Raises:
        RuntimeError: graphviz's ``dot`` program is not installed.
    """
    fmt = path.rsplit(".", 1)[-1].lower()
    if fmt == "dot":
        with open(path, "w") as f:
            f.write(to_dot(tn))
        return path
    if fmt not in ("png", "svg", "pdf"):
        raise ValueError(f"path must end in .dot, .png, .svg or .pdf, got {path!r}")
    if shutil.which("dot") is None:
        raise RuntimeError("drawing to PNG/SVG needs graphviz's 'dot' program (apt-get install graphviz); "
                           "write a .dot file instead")
    subprocess.run(["dot", f"-T{fmt}", "-o", path], input=to_dot(tn).encode(), check=True)
    return path


def to_networkx(tn):
    """A ``networkx.MultiGraph``: tensor nodes (``kind``, ``name``) and one edge per shared leg.

    Open legs connect a tensor to the node ``"output"``. Legs on more than two
    tensors give an edge between every pair of them.
    """
    import networkx as nx

    terms = tn.terms
    graph = nx.MultiGraph()
    for s, term in enumerate(terms):
        prefix = (s,) if isinstance(tn, NetworkSum) else ()
        holders = {}
        for n, t in enumerate(term.tensors):
            graph.add_node(prefix + (n,), name=t.name, kind=t.kind)
            for leg in t.legs:
                holders.setdefault(leg.name, []).append(prefix + (n,))
        out = prefix + ("output",)
        graph.add_node(out, name="output", kind="output")
        for leg in term.output_legs:
            holders.setdefault(leg.name, []).append(out)
        for name, nodes in holders.items():
            for a in range(len(nodes)):
                for b in range(a + 1, len(nodes)):
                    graph.add_edge(nodes[a], nodes[b], leg=name)
    return graph
