"""Drawings of a network in the paper's visual language: DOT text, SVG/PNG/PDF through graphviz, networkx.

The picture follows the diagrams of Dangel (2024):

* an input tensor is a box named like the tensor (``x``, ``w``, ``grad_output``);
* an index pattern Π is a triangle labelled with its stride, padding and dilation;
* a Kronecker delta is a black dot, and so is a leg shared by more than two
  tensors (a hyperedge is a delta: the same index on every tensor it meets);
* a constant is a circle with its value (``1`` for the vectors of ones), and
  a leg summed on one tensor only ends in such a ``1`` (a sum is a
  contraction with a vector of ones);
* a group of legs that forms one axis -- ``(c k1 k2)`` of a Kronecker factor,
  ``(o2 k2)`` of an input after the dense rewrite -- meets in a small black
  triangle (the paper's reshape) and leaves it as one bold, bundled leg;
* an open leg ends in a label with its name and size; the caption names the
  network and its scale. A sum of networks draws one box per term.

Every identifier and label is quoted and escaped, so any leg name the IR
allows (primed legs such as ``c_out'`` included) gives valid DOT.
"""

from __future__ import annotations

import html
import re
import shutil
import subprocess
import warnings

import sympy

from .network import NetworkSum

#: Output formats of :func:`render`; ``dot`` writes the DOT text itself.
FORMATS = ("svg", "png", "pdf", "dot")

_FONT = "Helvetica"
_INPUT = 'shape=box, style="rounded,filled", fillcolor="#dbe9f6", color="#2b5d8a", fontsize=12'
_PATTERN = 'shape=triangle, style=filled, fillcolor="#fbe3c4", color="#a8650f", fontsize=9, margin=0'
_DOT = 'shape=point, width=0.11, color=black, fontsize=10'
_CONSTANT = 'shape=circle, width=0.28, fixedsize=true, fontsize=10, style=filled, fillcolor="#eeeeee"'
_SELECT = 'shape=diamond, style=filled, fillcolor="#e3d7f0", color="#5b3f86", fontsize=10, margin=0.02'
_RESHAPE = 'shape=triangle, orientation=90, width=0.13, height=0.13, fixedsize=true, style=filled, fillcolor=black, label=""'
_TERMINAL = 'shape=plaintext, fontsize=10, margin=0.02'
_SUBSCRIPT = str.maketrans("0123456789", "₀₁₂₃₄₅₆₇₈₉")


def quote(text) -> str:
    """``text`` as a quoted DOT string: backslashes and double quotes escaped, newlines as ``\\n``.

    Example:
        >>> print(quote("out_c'"))
        "out_c'"
        >>> print(quote('a "b"'))
        "a \\"b\\""
    """
    text = str(text).replace("\\", "\\\\").replace('"', '\\"')
    return '"' + text.replace("\r\n", "\n").replace("\n", "\\n") + '"'


def _label(*lines) -> str:
    """A quoted multi-line label: each line escaped, joined by DOT's ``\\n``."""
    return '"' + "\\n".join(quote(line)[1:-1] for line in lines) + '"'


def format_size(size) -> str:
    """A size as the drawings print it: sympy's form with ``·`` for products and ``⌊x⌋`` for ``floor(x)``.

    Example:
        >>> from tnconv.ir import size_symbol
        >>> format_size(9 * size_symbol("C"))
        '9·C'
        >>> format_size(sympy.floor(size_symbol("I1") / 2) + 1)
        '⌊I1/2⌋ + 1'
    """
    if not isinstance(size, sympy.Basic):
        return str(size)
    text = sympy.sstr(size).replace("**", "^").replace("*", "·")
    out, closing = [], []  # a stack: which closing bracket each open parenthesis gets
    pos = 0
    while pos < len(text):
        if text.startswith("floor(", pos):
            out.append("⌊")
            closing.append("⌋")
            pos += len("floor(")
            continue
        char = text[pos]
        if char == "(":
            closing.append(")")
        elif char == ")" and closing:
            char = closing.pop()
        out.append(char)
        pos += 1
    return "".join(out)


def _pattern_label(t) -> str:
    """An HTML-like label: ``Π₁`` over the hyper-parameters in small print (a small triangle, not a text box)."""
    a = t.attr
    pad = f"{a['pad_left']}" if a["pad_left"] == a["pad_right"] else f"{a['pad_left']},{a['pad_right']}"
    match = re.fullmatch(r"pi(\d+)(.*)", t.name)
    name = "Π" + match.group(1).translate(_SUBSCRIPT) + match.group(2) if match else t.name
    return f'<{html.escape(name)}<BR/><FONT POINT-SIZE="8">S={a["stride"]} P={pad} D={a["dilation"]}</FONT>>'


def _node(t) -> str:
    if t.kind == "input":
        return f"label={quote(t.name)}, {_INPUT}"
    if t.kind == "pattern":
        return f"label={_pattern_label(t)}, {_PATTERN}"
    if t.kind == "delta":
        return f"label={quote('')}, xlabel={quote('δ')}, {_DOT}, tooltip={quote(t.name)}"
    if t.kind == "constant":
        value = t.attr.get("value", "")
        return f"label={quote(value)}, {_CONSTANT}, tooltip={quote(t.name)}"
    return f"label={quote(t.name)}, {_SELECT}"


def _size_of_axis(axis) -> str:
    size = 1
    for leg in axis:
        size = size * leg.size
    return format_size(sympy.simplify(size) if isinstance(size, sympy.Basic) else size)


def _axis_name(axis) -> str:
    return "(" + " ".join(leg.name for leg in axis) + ")"


def _dot_body(tn, prefix: str, indent: str) -> list:
    """Nodes and edges of one network; ids start with ``prefix`` so the terms of a sum stay apart."""
    lines, where = [], {}  # where: leg name -> the node ids its leg attaches to
    inputs = {f"{prefix}t{n}" for n, t in enumerate(tn.tensors) if t.kind == "input"}
    edge = lambda a, b, attrs="": lines.append(f"{indent}{quote(a)} -- {quote(b)}{f' [{attrs}]' if attrs else ''};")
    node = lambda name, attrs: lines.append(f"{indent}{quote(name)} [{attrs}];")
    for n, t in enumerate(tn.tensors):
        tid = f"{prefix}t{n}"
        node(tid, _node(t))
        for a, axis in enumerate(t.axes):
            attach = tid
            if len(axis) > 1:  # a reshaped axis: the legs meet in the reshape triangle, one bold leg to the tensor
                attach = f"{tid}_axis{a}"
                node(attach, _RESHAPE)
                edge(tid, attach, f"penwidth=2.5, tooltip={quote(_axis_name(axis))}")
            for leg in axis:
                where.setdefault(leg.name, []).append(attach)
    output = {}
    for a, axis in enumerate(tn.output):
        if not axis:
            continue  # an axis of size one (a single group): it has no leg to draw; the caption's shape shows it
        terminal = f"{prefix}out{a}"
        if len(axis) == 1:
            node(terminal, f"label={_label(axis[0].name, format_size(axis[0].size))}, {_TERMINAL}")
            output[axis[0].name] = (terminal, False)
            continue
        bundle = f"{prefix}out{a}_bundle"
        node(terminal, f"label={_label(_axis_name(axis), _size_of_axis(axis))}, {_TERMINAL}")
        node(bundle, _RESHAPE.replace("orientation=90", "orientation=270"))
        edge(bundle, terminal, "penwidth=2.5")
        for leg in axis:
            output[leg.name] = (bundle, True)
    for name in list(where) + [n for n in output if n not in where]:
        ends = list(where.get(name, ()))
        if name in output:
            end, bundled = output[name]
            ends.append(end)
            labelled = bundled or len(ends) > 2
        else:
            labelled = True
            if len(ends) == 1:  # summed on one tensor only: a contraction with a vector of ones
                ones = f"{prefix}sum_{name}"
                node(ones, f"label=\"1\", {_CONSTANT}, tooltip={quote('sum over ' + name)}")
                ends.append(ones)
        if len(ends) == 2:
            attrs = [f"label={quote(name)}"] if labelled else []
            if set(ends) <= inputs:  # two inputs side by side (KFC's x and x), not one behind the other
                attrs.append("constraint=false")
            edge(ends[0], ends[1], ", ".join(attrs))
        else:  # a hyperedge is a delta: every holder meets in one dot, named after the leg
            hub = f"{prefix}leg_{name}"
            node(hub, f"label=\"\", xlabel={quote(name)}, {_DOT}")
            for end in ends:
                edge(end, hub)
    terminals = [quote(f"{prefix}out{a}") for a, axis in enumerate(tn.output) if axis]
    if len(terminals) > 1:  # the open legs in one column on the right (their order is the caption's shape)
        lines.append(f"{indent}{{ rank=sink; {'; '.join(terminals)}; }}")
    return lines


def _caption(tn, shape=True) -> str:
    text = tn.name
    if shape:
        text += "  →  [" + ", ".join(format_size(s) for s in tn.output_shape) + "]"
    if getattr(tn, "scale", 1) != 1:
        text += f"  ·  scale {format_size(tn.scale)}"
    return text


def to_dot(tn) -> str:
    """DOT text (graphviz) of a network in the paper's visual language; a sum draws one cluster per term.

    See the module's docstring for the symbols. The text is valid DOT for any
    network: every id and label is quoted.

    Example:
        >>> from tnconv import diagrams
        >>> dot = to_dot(diagrams.kfac_reduce(N=1, kernel_size=3))
        >>> dot.splitlines()[0], '"c\\'' in dot
        ('graph "kfac_reduce1d" {', True)
    """
    lines = [f"graph {quote(tn.name)} {{",
             f"  graph [rankdir=LR, newrank=true, fontname={quote(_FONT)}, fontsize=12, labelloc=t, nodesep=0.25, ranksep=0.45, "
             f"forcelabels=true, label={quote(_caption(tn))}];",
             f"  node [fontname={quote(_FONT)}];",
             f"  edge [fontname={quote(_FONT)}, fontsize=9, color=\"#444444\"];"]
    if isinstance(tn, NetworkSum):
        for n, term in enumerate(tn.terms):
            lines.append(f"  subgraph {quote(f'cluster_{n}')} {{")
            lines.append(f"    graph [label={quote(('+ ' if n else '') + _caption(term, shape=False))}, style=rounded, "
                         f"color=\"#999999\"];")
            lines.extend(_dot_body(term, f"s{n}_", "    "))
            lines.append("  }")
        # the terms side by side in their order, read as a sum: an invisible edge from each term's
        # output to the next term's first tensor puts that term to the right
        outs = [a for a, axis in enumerate(tn.output) if axis]
        for n in range(len(tn.terms) - 1):
            if outs and tn.terms[n + 1].tensors:
                lines.append(f"  {quote(f's{n}_out{outs[0]}')} -- {quote(f's{n + 1}_t0')} [style=invis];")
    else:
        lines.extend(_dot_body(tn, "", "  "))
    lines.append("}")
    return "\n".join(lines) + "\n"


def has_graphviz() -> bool:
    """Whether graphviz's ``dot`` program is on the ``PATH`` (needed for SVG, PNG and PDF).

    Example:
        >>> has_graphviz() in (True, False)
        True
    """
    return shutil.which("dot") is not None


def render(tn, path) -> str:
    """Write a drawing of ``tn`` to ``path``, in the format its suffix names: ``.svg``, ``.png``, ``.pdf`` or ``.dot``.

    SVG, PNG and PDF run graphviz's ``dot``; ``.dot`` writes :func:`to_dot`'s
    text and needs nothing.

    Returns:
        ``path``, as a string.

    Raises:
        ValueError: the suffix is not one of :data:`FORMATS`.
        RuntimeError: graphviz's ``dot`` is not installed, or it failed (its message is included).

    Warns:
        RuntimeWarning: ``dot`` drew the picture but printed a warning (passed on).

    Example:
        >>> import tempfile, os
        >>> from tnconv import diagrams
        >>> path = os.path.join(tempfile.mkdtemp(), "conv.dot")
        >>> render(diagrams.conv(N=2, kernel_size=3), path) == path
        True
    """
    path = str(path)
    fmt = path.rsplit(".", 1)[-1].lower() if "." in path else ""
    if fmt not in FORMATS:
        raise ValueError(f"path must end in one of {['.' + f for f in FORMATS]}, got {path!r}")
    text = to_dot(tn)
    if fmt == "dot":
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path
    if not has_graphviz():
        raise RuntimeError(f"drawing to .{fmt} needs graphviz's 'dot' program (Debian/Ubuntu: apt-get install "
                           "graphviz; macOS: brew install graphviz); or write a .dot file instead")
    done = subprocess.run(["dot", f"-T{fmt}", "-o", path], input=text.encode("utf-8"), capture_output=True)
    message = done.stderr.decode(errors="replace").strip()
    if done.returncode != 0:
        raise RuntimeError(f"graphviz's dot failed on network {tn.name!r}: {message}")
    if message:  # drawn, but dot had something to say (a dropped attribute, a font it could not find)
        warnings.warn(f"graphviz's dot on network {tn.name!r}: {message}", RuntimeWarning, stacklevel=2)
    return path


def to_networkx(tn):
    """A ``networkx.MultiGraph``: tensor nodes (``kind``, ``name``) and one edge per shared leg.

    Open legs connect a tensor to the node ``"output"``. Legs on more than two
    tensors give an edge between every pair of them.

    Example:
        >>> from tnconv import diagrams
        >>> g = to_networkx(diagrams.conv(N=1, kernel_size=3))
        >>> sorted(data["name"] for _, data in g.nodes(data=True))
        ['output', 'pi1', 'w', 'x']
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
