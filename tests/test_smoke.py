import torch

import tnconv
from tnconv import functional as tf


def test_conv_matches_torch_2d():
    x, w, b = torch.randn(2, 4, 9, 8, dtype=torch.float64), torch.randn(6, 2, 3, 2, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    y = tf.conv(x, w, b, stride=2, padding=1, groups=2)
    torch.testing.assert_close(y, torch.nn.functional.conv2d(x, w, b, stride=2, padding=1, groups=2))


def test_cli_demo_runs(capsys):
    from tnconv.cli import main

    assert main(["demo", "--repeats", "1"]) == 0
    assert "OK" in capsys.readouterr().out
