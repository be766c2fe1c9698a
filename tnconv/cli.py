"""The ``tnconv`` command line.

``tnconv show OP [options]`` prints an operation's diagram, the einsum the
backend will run and its cost (``--trace``: what each pass changed; ``--draw``:
a picture); ``tnconv demo`` runs every operation family on layers of real CNNs,
checked against PyTorch and timed against the standard implementation;
``tnconv bench`` times tnconv against PyTorch on the layers of nine CNNs (needs
the ``bench`` extra).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _ints(text: str):
    values = tuple(int(v) for v in text.split(","))
    return values[0] if len(values) == 1 else values


def _padding(text: str):
    return text if text in ("same", "valid") else _ints(text)


def _show_parser(sub):
    p = sub.add_parser("show", help="print an operation's diagram, einsum and cost")
    p.add_argument("op", help="a builder of tnconv.diagrams, e.g. conv, unfold, conv_transpose")
    p.add_argument("--N", type=int, default=2, help="number of spatial dimensions")
    p.add_argument("--kernel-size", type=_ints, default=3)
    p.add_argument("--stride", type=_ints, default=1)
    p.add_argument("--padding", type=_padding, default=0)
    p.add_argument("--dilation", type=_ints, default=1)
    p.add_argument("--groups", type=int, default=None)
    p.add_argument("--output-padding", type=_ints, default=None)
    p.add_argument("--input-size", type=_ints, default=None, help="spatial input size, e.g. 32,32 (for the cost)")
    p.add_argument("--batch", type=int, default=8, help="batch size (for the cost)")
    p.add_argument("--channels", type=_ints, default=(16, 16), help="C_in,C_out (for the cost)")
    p.add_argument("--backend", default="cotengra")
    p.add_argument("--draw", metavar="PATH",
                   help="write the drawing of the network after the passes: .svg, .png or .pdf (graphviz), or .dot")
    p.add_argument("--trace", action="store_true",
                   help="print the input network, then what each pass changed (a unified diff, or 'unchanged')")
    p.add_argument("--differentiate", metavar="TENSOR", help="cut TENSOR out first (its Jacobian)")
    p.add_argument("--vjp", metavar="TENSOR", help="form the VJP with respect to TENSOR first")
    p.add_argument("--jvp", metavar="TENSOR", help="form the JVP with respect to TENSOR first")
    return p


def _build(args):
    from . import diagrams

    builder = getattr(diagrams, args.op, None)
    if builder is None or args.op.startswith("_") or not callable(builder):
        names = sorted(n for n in getattr(diagrams, "__all__", ()) if callable(getattr(diagrams, n)))
        raise SystemExit(f"tnconv show: unknown operation {args.op!r}; choose from {names}")
    kwargs = dict(N=args.N, kernel_size=args.kernel_size, stride=args.stride, padding=args.padding, dilation=args.dilation)
    if args.groups is not None:
        kwargs["groups"] = args.groups
    if args.output_padding is not None:
        kwargs["output_padding"] = args.output_padding
    import inspect

    params = inspect.signature(builder).parameters
    if "input_size" in params or "output_size" in params:
        size = args.input_size or (8,) * args.N
        kwargs["input_size" if "input_size" in params else "output_size"] = size
    return builder(**{k: v for k, v in kwargs.items() if k in params})


def _size_values(args) -> dict:
    """Example values of the size symbols, from --batch/--channels/--input-size."""
    from .ir import size_symbol

    size = args.input_size or (16,) * args.N
    size = size if isinstance(size, tuple) else (size,) * args.N
    cin, cout = args.channels if isinstance(args.channels, tuple) else (args.channels,) * 2
    values = {size_symbol("B"): args.batch, size_symbol("C_in"): cin, size_symbol("C_out"): cout, size_symbol("C"): cin,
              size_symbol("V"): 2}
    values.update({size_symbol(f"I{d + 1}"): s for d, s in enumerate(size)})
    values.update({size_symbol(f"O{d + 1}"): s for d, s in enumerate(size)})
    return values


def _example_shapes(tn, args):
    """Shapes of the inputs for the cost report."""
    values = _size_values(args)
    shapes = {}
    for name, shape in tn.input_shapes().items():
        shapes[name] = tuple(int(s.subs(values)) if hasattr(s, "subs") else s for s in shape)
    return shapes


def show(args) -> int:
    from .compiler import compile

    from . import passes

    tn = _build(args)
    if args.differentiate:
        tn = passes.differentiate(tn, args.differentiate)
    if args.vjp:
        tn = passes.vjp(tn, args.vjp, "vector")
    if args.jvp:
        tn = passes.jvp(tn, args.jvp, "tangent")
    compiled = compile(tn, backend=args.backend, trace=True)
    if args.trace:  # the input in full, then what each pass changed
        print(compiled.trace.diff())
    else:
        print(compiled.network.to_text())
    print(f"\neinsum: {compiled.equation}")
    try:
        shapes = _example_shapes(compiled.network, args)
        fixed = {str(s): int(v) for s, v in _size_values(args).items() if str(s) in {str(t) for t in compiled.network.size_symbols}}
        cost = compiled.cost(**shapes, **{k: v for k, v in fixed.items() if k not in shapes})
        print(f"shapes: {shapes}")
        print(f"cost:   {cost['flops']:.3g} FLOPs, largest intermediate {cost['largest_intermediate']} elements")
    except ValueError as error:
        print(f"cost:   not available for these sizes ({error})")
    if args.draw:
        from .ir import render

        try:
            print(f"drawing: {render(compiled.network, args.draw)}")
        except RuntimeError as error:  # no graphviz, or dot failed: say so, no traceback
            print(f"tnconv show: {error}", file=sys.stderr)
            return 2
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="tnconv", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _show_parser(sub)
    demo = sub.add_parser("demo", help="every operation family on layers of real CNNs: checked against PyTorch, "
                                       "timed against the standard implementation, derived pass by pass, drawn")
    demo.add_argument("--repeats", type=int, default=7, help="timed calls of each implementation (default 7)")
    demo.add_argument("--quick", action="store_true", help="smoke run: two layers at batch 1, one timed call")
    demo.add_argument("--threads", type=int, default=None, help="torch.set_num_threads for the run (default: PyTorch's)")
    demo.add_argument("--out", type=Path, default=None, help="folder for the drawings (default: a new temporary folder)")
    demo.add_argument("--no-draw", action="store_true", help="do not draw (drawing needs graphviz's dot)")
    from .bench.run import add_arguments

    add_arguments(sub.add_parser("bench", help="time tnconv against PyTorch on the layers of nine CNNs; CSV, table, plots"))
    args = parser.parse_args(argv)
    try:
        if args.command == "show":
            return show(args)
        if args.command == "bench":
            from .bench.run import run

            return run(args)
        from .demo import run

        return run(repeats=args.repeats, quick=args.quick, out=args.out, draw_pictures=not args.no_draw, threads=args.threads)
    except (ValueError, TypeError) as error:
        print(f"tnconv {args.command}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
