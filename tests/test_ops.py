"""tnconv's custom operators (torch.ops.tnconv.*) and the functionals under torch.compile."""

import pytest
import torch
import torch.nn.functional as TF

import tnconv
from tnconv import functional as F
from tnconv.ops import library

DT = torch.float64

# (x shape, weight shape, stride, padding pairs (flattened), dilation, groups)
CONVS = [
    ((2, 4, 7), (6, 2, 3), [2], [1, 1], [1], 2),
    ((2, 3, 6, 5), (4, 3, 3, 2), [1, 2], [1, 1, 0, 0], [2, 1], 1),
    ((1, 2, 5, 4, 4), (2, 2, 2, 1, 2), [1, 1, 2], [0, 0, 1, 1, 1, 1], [1, 1, 1], 1),
    ((2, 3, 7, 6), (3, 3, 3, 3), [1, 1], [0, 1, 1, 0], [1, 1], 1),  # asymmetric padding: not PyTorch's kernel
]


def _reference(x, w, b, stride, padding, dilation, groups):
    pad = [p for d in reversed(range(len(stride))) for p in padding[2 * d:2 * d + 2]]
    return {1: TF.conv1d, 2: TF.conv2d, 3: TF.conv3d}[w.ndim - 2](TF.pad(x, pad), w, b, stride, 0, dilation, groups)


@pytest.mark.parametrize("config", CONVS)
def test_conv_operators_match_pytorch_and_their_gradients(config):
    x_shape, w_shape, stride, padding, dilation, groups = config
    x = torch.randn(*x_shape, dtype=DT, requires_grad=True)
    w = torch.randn(*w_shape, dtype=DT, requires_grad=True)
    b = torch.randn(w_shape[0], dtype=DT, requires_grad=True)
    y = torch.ops.tnconv.conv(x, w, b, stride, padding, dilation, groups)
    y_ref = _reference(x, w, b, stride, padding, dilation, groups)
    torch.testing.assert_close(y, y_ref)
    g = torch.randn_like(y)
    grads = torch.autograd.grad(y_ref, (x, w, b), g)
    for a, r in zip(torch.autograd.grad(y, (x, w, b), g), grads):
        torch.testing.assert_close(a, r)
    torch.testing.assert_close(torch.ops.tnconv.conv_input_vjp(x.shape, w, g, stride, padding, dilation, groups), grads[0])
    torch.testing.assert_close(torch.ops.tnconv.conv_weight_vjp(x, w.shape, g, stride, padding, dilation, groups), grads[1])


@pytest.mark.parametrize("N, stride, padding, output_padding, dilation, groups", [
    (1, 2, 1, 1, 1, 2), (2, (2, 1), (1, 0), (1, 0), (1, 2), 1), (3, 2, 0, 1, 1, 1)])
def test_conv_transpose_operators_match_pytorch(N, stride, padding, output_padding, dilation, groups):
    x = torch.randn(2, 4, *(4,) * N, dtype=DT, requires_grad=True)
    w = torch.randn(4, 3, *(3,) * N, dtype=DT, requires_grad=True)
    b = torch.randn(3 * groups, dtype=DT, requires_grad=True)
    spec = tnconv._args.ConvSpec.make(N, w.shape[2:], stride, padding, dilation, groups)
    args = (list(spec.stride), library.flat(spec.padding), list(tnconv._args.ntuple(output_padding, N, "op", 0)),
            list(spec.dilation), groups)
    y = torch.ops.tnconv.conv_transpose(x, w, b, *args)
    ref = {1: TF.conv_transpose1d, 2: TF.conv_transpose2d, 3: TF.conv_transpose3d}[N]
    y_ref = ref(x, w, b, stride, padding, output_padding, groups, dilation)
    torch.testing.assert_close(y, y_ref)
    g = torch.randn_like(y)
    for a, r in zip(torch.autograd.grad(y, (x, w, b), g), torch.autograd.grad(y_ref, (x, w, b), g)):
        torch.testing.assert_close(a, r)


def test_factor_operators_match_functional():
    x = torch.randn(3, 4, 7, 6, dtype=DT)
    for op, fn in ((torch.ops.tnconv.kfc, F.kfc), (torch.ops.tnconv.kfac_reduce, F.kfac_reduce)):
        torch.testing.assert_close(op(x, [3, 2], [2, 1], [1, 1, 0, 0], [1, 1], 2),
                                   fn(x, (3, 2), (2, 1), (1, 0), 1, 2))


def test_opcheck_schemas_fake_kernels_and_autograd_registrations():
    x, w, b = torch.randn(2, 4, 6, 5, dtype=DT), torch.randn(4, 2, 3, 2, dtype=DT), torch.randn(4, dtype=DT)
    hyper = ([2, 1], [1, 1, 0, 1], [1, 1], 2)
    g = torch.randn(2, 4, 3, 5, dtype=DT)
    cases = [
        (torch.ops.tnconv.conv.default, (x.requires_grad_(), w.requires_grad_(), b.requires_grad_()) + hyper),
        (torch.ops.tnconv.conv_input_vjp.default, (list(x.shape), w.detach(), g) + hyper),
        (torch.ops.tnconv.conv_weight_vjp.default, (x.detach(), list(w.shape), g) + hyper),
        (torch.ops.tnconv.kfc.default, (x.detach(), [3, 2]) + hyper),
        (torch.ops.tnconv.kfac_reduce.default, (x.detach(), [3, 2]) + hyper),
        (torch.ops.tnconv.conv_transpose.default,
         (torch.randn(2, 4, 5, dtype=DT, requires_grad=True), torch.randn(4, 3, 3, dtype=DT, requires_grad=True), None,
          [2], [1, 1], [1], [1], 1)),
    ]
    for op, args in cases:
        torch.library.opcheck(op, args, test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


def test_operators_follow_autocast():
    x, w, b = torch.randn(2, 3, 8, 8), torch.randn(4, 3, 3, 3), torch.randn(4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = torch.ops.tnconv.conv(x, w, b, [1, 1], [1, 1, 1, 1], [1, 1], 1)
        y_ref = TF.conv2d(x, w, b, 1, 1)
        t = torch.ops.tnconv.conv_transpose(x, w.transpose(0, 1), None, [1, 1], [1, 1, 1, 1], [0, 0], [1, 1], 1)
        y64 = torch.ops.tnconv.conv(x.double(), w.double(), None, [1, 1], [1, 1, 1, 1], [1, 1], 1)
    assert y.dtype == t.dtype == y_ref.dtype == torch.bfloat16
    assert y64.dtype == DT  # float64 is not cast, as in PyTorch
    torch.testing.assert_close(y.float(), y_ref.float(), atol=2e-2, rtol=2e-2)


def _explain_and_compile(fn, *args):
    torch._dynamo.reset()
    explained = torch._dynamo.explain(fn)(*args)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons
    torch._dynamo.reset()
    return torch.compile(fn, fullgraph=True, backend="aot_eager")(*args)


def test_functionals_compile_to_one_graph_of_custom_operators():
    x = torch.randn(2, 4, 7, 6, dtype=DT, requires_grad=True)
    w = torch.randn(6, 2, 3, 3, dtype=DT, requires_grad=True)
    b = torch.randn(6, dtype=DT, requires_grad=True)
    g = torch.randn(2, 6, 4, 6, dtype=DT)
    hyper = dict(stride=(2, 1), padding=1, groups=2)

    def everything(x, w, b, g):
        y = F.conv(x, w, b, **hyper)
        return (y, F.input_vjp(x.shape, w, g, **hyper), F.weight_vjp(x, w.shape, g, **hyper),
                F.kfc(x, 3, **hyper), F.kfac_reduce(x, 3, **hyper), F.conv_transpose(y, w, None, 1, 0, 0, 2))

    compiled = _explain_and_compile(everything, x, w, b, g)
    for c, e in zip(compiled, everything(x, w, b, g)):
        torch.testing.assert_close(c, e)
    (grads,) = [torch.autograd.grad(compiled[0].pow(2).sum(), (x, w, b))]
    ref = torch.autograd.grad(TF.conv2d(x, w, b, **hyper).pow(2).sum(), (x, w, b))
    for a, r in zip(grads, ref):
        torch.testing.assert_close(a, r)


def test_functional_errors_under_compile_name_the_argument():
    x, w = torch.randn(2, 3, 8, 8), torch.randn(4, 2, 3, 3)
    with pytest.raises(Exception, match="channels"):
        torch.compile(lambda x, w: F.conv(x, w), fullgraph=True, backend="eager")(x, w)
    torch._dynamo.reset()
