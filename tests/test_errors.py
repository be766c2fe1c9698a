"""Bad input to the forward functionals: a ValueError/TypeError that names the argument, before any contraction."""

import pytest
import torch

from tnconv import diagrams
from tnconv import functional as F

x2 = torch.randn(2, 4, 8, 8)
w2 = torch.randn(6, 2, 3, 3)

CASES = [
    # wrong tensor rank
    (lambda: F.conv(torch.randn(2, 4), w2), ValueError, "x"),
    (lambda: F.conv(x2, torch.randn(6, 4)), ValueError, "weight"),
    (lambda: F.unfold(torch.randn(8, 8), (3, 3)), ValueError, "x"),
    (lambda: F.unfold(torch.randn(8), 3), ValueError, "x"),
    (lambda: F.fold(torch.randn(2, 4), (4, 4), 2), ValueError, "x"),
    (lambda: F.fold(torch.randn(1, 2, 4, 9), (4, 4), 2), ValueError, "x"),
    # channels that do not match the weight
    (lambda: F.conv(x2, torch.randn(6, 3, 3, 3)), ValueError, "channels"),
    (lambda: F.conv_transpose(x2, torch.randn(3, 2, 3, 3)), ValueError, "channels"),
    # groups that do not divide the channels
    (lambda: F.conv(x2, torch.randn(6, 1, 3, 3), groups=3), ValueError, "groups"),
    (lambda: F.conv(x2, torch.randn(5, 2, 3, 3), groups=2), ValueError, "groups"),
    (lambda: F.conv_transpose(x2, torch.randn(4, 2, 3, 3), groups=3), ValueError, "groups"),
    (lambda: F.conv(x2, w2, groups=0), ValueError, "groups"),
    (lambda: F.conv(x2, w2, groups=2.0), TypeError, "groups"),
    # non-positive stride / dilation / kernel size
    (lambda: F.conv(x2, w2, groups=2, stride=0), ValueError, "stride"),
    (lambda: F.conv(x2, w2, groups=2, dilation=(1, 0)), ValueError, "dilation"),
    (lambda: F.unfold(x2, 0, N=2), ValueError, "kernel_size"),
    (lambda: F.conv(x2, torch.randn(6, 2, 0, 3), groups=2), ValueError, "kernel_size"),
    # negative padding
    (lambda: F.conv(x2, w2, groups=2, padding=-1), ValueError, "padding"),
    (lambda: F.unfold(x2, 3, padding=((1, -1), (0, 0))), ValueError, "padding"),
    # tuples of the wrong length
    (lambda: F.conv(x2, w2, groups=2, stride=(1, 1, 1)), ValueError, "stride"),
    (lambda: F.unfold(x2, (3, 3, 3, 3)), ValueError, "x"),
    (lambda: F.unfold(x2, (3, 3, 3), N=2), ValueError, "kernel_size"),
    (lambda: F.conv_transpose(x2, torch.randn(4, 2, 3, 3), output_padding=(0, 0, 0)), ValueError, "output_padding"),
    # unknown padding string, 'same' with stride > 1
    (lambda: F.conv(x2, w2, groups=2, padding="full"), ValueError, "padding"),
    (lambda: F.conv(x2, w2, groups=2, padding="same", stride=2), ValueError, "padding"),
    (lambda: F.conv_transpose(x2, torch.randn(4, 2, 3, 3), padding="same"), ValueError, "padding"),
    # kernel larger than the padded input
    (lambda: F.conv(torch.randn(1, 2, 2, 8), torch.randn(3, 2, 3, 3)), ValueError, "kernel_size"),
    (lambda: F.unfold(torch.randn(1, 2, 4, 4), 3, dilation=2, N=2), ValueError, "kernel_size"),
    (lambda: F.unfold_kernel(w2, (2, 8), groups=2), ValueError, "kernel_size"),
    (lambda: F.conv_transpose(torch.randn(1, 4, 1, 1), torch.randn(4, 2, 1, 1), padding=1), ValueError, "padding"),
    # dtype and device mismatch
    (lambda: F.conv(x2.double(), w2, groups=2), TypeError, "dtype"),
    (lambda: F.conv(x2, w2, torch.randn(6, dtype=torch.float64), groups=2), TypeError, "bias"),
    (lambda: F.conv(x2, w2.to("meta"), groups=2), ValueError, "device"),
    (lambda: F.conv(x2.int(), w2.int(), groups=2), TypeError, "floating"),
    # bias of the wrong size or rank
    (lambda: F.conv(x2, w2, torch.randn(5), groups=2), ValueError, "bias"),
    (lambda: F.conv(x2, w2, torch.randn(6, 1), groups=2), ValueError, "bias"),
    (lambda: F.conv_transpose(x2, torch.randn(4, 2, 3, 3), torch.randn(4)), ValueError, "bias"),
    # fold's output_size inconsistent with its input
    (lambda: F.fold(torch.randn(2, 12, 9), (5, 5), 2), ValueError, "output_size|x.shape"),
    (lambda: F.fold(torch.randn(2, 10, 9), (4, 4), 2), ValueError, "kernel"),
    (lambda: F.fold(torch.randn(2, 12, 9), (4, 4, 4), 2), ValueError, "x.shape|output_size"),
    # output_padding not smaller than stride or dilation
    (lambda: F.conv_transpose(x2, torch.randn(4, 2, 3, 3), stride=2, output_padding=2), ValueError, "output_padding"),
    (lambda: F.unfold_transpose(x2, 3, output_padding=1, N=2), ValueError, "output_padding"),
    # non-tensors and bools
    (lambda: F.conv([[1.0]], w2), TypeError, "x"),
    (lambda: F.conv(x2, "w"), TypeError, "weight"),
    (lambda: F.conv(x2, w2, groups=2, stride=True), TypeError, "stride"),
    (lambda: F.unfold_kernel(w2, "8x8", groups=2), TypeError, "input_size"),
    # builders validate too
    (lambda: diagrams.conv(N=0, kernel_size=3), ValueError, "N"),
    (lambda: diagrams.conv(N=2, kernel_size=(3,) * 3), ValueError, "kernel_size"),
    (lambda: diagrams.fold(N=1, output_size=2, kernel_size=3), ValueError, "kernel_size"),
]


@pytest.mark.parametrize("call, error, match", CASES)
def test_bad_input_raises_naming_the_argument(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_unfold_transpose_refuses_an_empty_output():
    # found by the thorough fuzz profile: a RuntimeError from torch.zeros escaped
    from tnconv.functional import unfold_transpose

    with pytest.raises(ValueError, match="padding"):
        unfold_transpose(torch.zeros(0, 0, 0, dtype=torch.float64), 1, padding=10**9, N=1)
    with pytest.raises(ValueError, match="output_padding"):
        unfold_transpose(torch.zeros(1, 1, 4), 2, stride=2, output_padding=2, N=1)
