"""The record of a pipeline run: the network after every pass, and what each pass changed."""

from __future__ import annotations

import difflib
from typing import List, Sequence, Tuple


def text_diff(before: str, after: str, name: str = "pass", context: int = 2) -> str:
    """A unified diff of two text forms, ``""`` when they are equal.

    Example:
        >>> print(text_diff("a\\nb\\nc", "a\\nB\\nc", "upper", context=0))
        --- before upper
        +++ after upper
        @@ -2 +2 @@
        -b
        +B
    """
    lines = difflib.unified_diff(before.splitlines(), after.splitlines(), f"before {name}", f"after {name}",
                                 lineterm="", n=context)
    return "\n".join(lines)


class Trace(list):
    """The network after every pass of a pipeline, starting with ``("input", ...)``.

    A list of ``(pass name, text)`` pairs, as ``compile(..., trace=True).trace``
    has always been, that also keeps the networks themselves and tells what
    each pass changed: :meth:`diff` prints the input once and then, per pass,
    a unified diff of the text form or ``unchanged``.

    Example:
        >>> import tnconv
        >>> from tnconv import diagrams, passes
        >>> tn = passes.vjp(diagrams.conv(N=1, kernel_size=3), "w", fuse=False)
        >>> trace = tnconv.compile(tn, trace=True).trace
        >>> [name for name, _ in trace]
        ['input', 'fuse_deltas', 'drop_ones', 'simplify']
        >>> trace.changed
        ['fuse_deltas']
        >>> print(trace.diff(input=False).splitlines()[0])
        // ---- after fuse_deltas ----
    """

    def __init__(self, networks: Sequence[Tuple[str, object]] = ()):
        self.networks: List[Tuple[str, object]] = [(name, tn) for name, tn in networks]
        super().__init__((name, tn.to_text()) for name, tn in self.networks)

    def append_network(self, name: str, tn) -> None:
        """Record ``tn`` as the network after the pass ``name``."""
        self.networks.append((name, tn))
        self.append((name, tn.to_text()))

    @property
    def names(self) -> List[str]:
        """The pass names, ``"input"`` first."""
        return [name for name, _ in self]

    @property
    def changed(self) -> List[str]:
        """The passes whose network differs from the one before them."""
        return [self[n][0] for n in range(1, len(self)) if self[n][1] != self[n - 1][1]]

    def dots(self) -> List[Tuple[str, str]]:
        """``(pass name, DOT text)`` of every recorded network (see :func:`tnconv.ir.to_dot`)."""
        from ..ir import to_dot

        return [(name, to_dot(tn)) for name, tn in self.networks]

    def diff(self, context: int = 2, input: bool = True) -> str:
        """The input's text, then per pass a unified diff against the network before it, or ``unchanged``.

        Args:
            context: lines of context around each change.
            input: print the input network in full first (``// ---- input ----``).
        """
        out = []
        for n, (name, text) in enumerate(self):
            if n == 0:
                if input:
                    out += [f"// ---- {name} ----", text]
                continue
            change = text_diff(self[n - 1][1], text, name, context)
            out += [f"// ---- after {name} ----", change or "unchanged"]
        return "\n".join(out)

    def __repr__(self):
        return f"Trace({self.names}, changed={self.changed})"
