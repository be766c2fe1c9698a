"""From a convolution diagram to its weight gradient, one graph edit at a time.

Run: ``python examples/derivative_walkthrough.py``

1. build the diagram of a 2d convolution and print it;
2. cut the weight out (the Jacobian): the legs of ``w`` become open legs, a
   Kronecker delta ties the output channel to the weight's;
3. wire a vector into the output (the VJP) and compile: the network as built,
   then what each pass of the pipeline changed (a unified diff of the text
   form, ``unchanged`` for a pass that had nothing to do);
4. check the result against ``torch.autograd``.

With graphviz installed, ``--draw DIR`` also writes the drawing of every step
(``DIR/1_conv.svg``, ..., one per pass that changed the network).
"""

import argparse
from pathlib import Path

import torch

import tnconv
from tnconv import diagrams, passes


def section(title):
    print(f"\n=== {title} " + "=" * max(0, 60 - len(title)))


def main(argv=None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draw", type=Path, metavar="DIR", help="write an SVG of every step to DIR (needs graphviz)")
    args = parser.parse_args(argv)
    conv = diagrams.conv(N=2, kernel_size=3, stride=2, padding=1, groups=2)
    section("1. the convolution diagram")
    print(conv.to_text())

    jacobian = passes.differentiate(conv, "w")
    section("2. cut out w: the weight Jacobian")
    print(jacobian.to_text())

    vjp = passes.vjp(conv, "w", "grad_output", fuse=False)
    compiled = tnconv.compile(vjp, trace=True)
    section("3. the VJP as built, then what each pass changed")
    print(compiled.trace.diff())
    print(f"\neinsum: {compiled.equation}")
    if args.draw:
        args.draw.mkdir(parents=True, exist_ok=True)
        steps = [("1_conv", conv), ("2_jacobian", jacobian)]
        changed = ["input"] + compiled.trace.changed  # a pass that changed nothing draws the same picture
        steps += [(f"3_vjp_{n}_{name}", tn) for n, (name, tn) in enumerate(compiled.trace.networks) if name in changed]
        for name, tn in steps:
            print(f"drawing: {tnconv.ir.render(tn, args.draw / f'{name}.svg')}")

    x = torch.randn(4, 6, 10, 10, dtype=torch.float64, requires_grad=True)
    w = torch.randn(8, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    y = torch.nn.functional.conv2d(x, w, stride=2, padding=1, groups=2)
    grad_output = torch.randn_like(y)
    (reference,) = torch.autograd.grad(y, w, grad_output)
    ours = compiled(x=x.detach(), grad_output=grad_output)
    error = (ours - reference).abs().max().item()
    section("4. against torch.autograd")
    print(f"cost: {compiled.cost()}")
    print(f"max |tnconv - autograd| = {error:.2e}")
    return error


if __name__ == "__main__":
    assert main() < 1e-10
