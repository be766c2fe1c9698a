"""From a convolution diagram to its weight gradient, one graph edit at a time.

Run: ``python examples/derivative_walkthrough.py``

1. build the diagram of a 2d convolution and print it;
2. cut the weight out (the Jacobian): the legs of ``w`` become open legs, a
   Kronecker delta ties the output channel to the weight's;
3. wire a vector into the output (the VJP) and compile, printing the network
   after every pass of the pipeline;
4. check the result against ``torch.autograd``.
"""

import torch

import tnconv
from tnconv import diagrams, passes


def section(title):
    print(f"\n=== {title} " + "=" * max(0, 60 - len(title)))


def main() -> float:
    conv = diagrams.conv(N=2, kernel_size=3, stride=2, padding=1, groups=2)
    section("1. the convolution diagram")
    print(conv.to_text())

    jacobian = passes.differentiate(conv, "w")
    section("2. cut out w: the weight Jacobian")
    print(jacobian.to_text())

    vjp = passes.vjp(conv, "w", "grad_output", fuse=False)
    compiled = tnconv.compile(vjp, trace=True)
    for name, text in compiled.trace:
        section(f"3. VJP, {'as built' if name == 'input' else 'after ' + name}")
        print(text)
    print(f"\neinsum: {compiled.equation}")

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
