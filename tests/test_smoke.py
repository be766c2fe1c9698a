import torch

import tnconv
from tnconv import functional as tf


def test_conv_matches_torch_2d():
    x, w, b = torch.randn(2, 4, 9, 8, dtype=torch.float64), torch.randn(6, 2, 3, 2, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    y = tf.conv(x, w, b, stride=2, padding=1, groups=2)
    torch.testing.assert_close(y, torch.nn.functional.conv2d(x, w, b, stride=2, padding=1, groups=2))


def test_cli_demo_runs(tmp_path, capsys):
    from tnconv.cli import main
    from tnconv.ir.draw import has_graphviz

    assert main(["demo", "--quick", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "OK: 12 results agree with PyTorch in float64" in out
    for heading in ("forward", "VJP", "sample", "KFC", "reduce", "median peak memory ratio"):
        assert heading in out
    # the derivation of KFAC-reduce, pass by pass: the dense rewrite replaces the patterns by a reshape
    assert "// ---- unfold ----" in out and "// ---- after fuse_deltas ----\nunchanged" in out
    assert "+  tensor x : input (n) (c) (o1 k1) (o2 k2)" in out
    if has_graphviz():
        assert f"Drawings (9 SVGs" in out and str(tmp_path) in out and len(list(tmp_path.glob("*.svg"))) == 9
    else:
        assert "Drawings: skipped" in out


def test_demo_summary_says_what_the_numbers_say():
    from tnconv import demo

    chosen = demo.layers()
    ratios = {"forward": 1.02, "input_vjp": 0.97, "weight_vjp": 1.3, "per_sample_grad": 1.0, "kfc": 0.5, "kfac_reduce": 0.1}
    results = [demo.Result(name, op, 1e-16, ratios[op], 1.0, 50, 100) for name, _ in chosen for op in demo.OPS]
    text = demo.summary(results, chosen, threads=2, repeats=9)
    assert "OK: 30 results agree" in text and "--quick" not in text
    assert "KFC: 2.0x faster in the median (0.50" in text and "KFAC-reduce: 10.0x faster" in text
    assert "forward at par (1.02), input VJP at par (0.97), weight VJP 1.3x slower (1.30)" in text
    assert max(len(line) for line in text.splitlines()) <= 100
    bad = [demo.Result(r.layer, r.op, 1e-6 if r.op == "kfc" else r.error, r.tnconv_ms, r.standard_ms, 1, 1) for r in results]
    assert "MISMATCH: 30 results do not all agree" in demo.summary(bad, chosen, threads=2, repeats=9)


def test_demo_rejects_bad_arguments(capsys):
    from tnconv.cli import main

    assert main(["demo", "--threads", "0"]) == 2 and "threads must be a positive int" in capsys.readouterr().err
    assert main(["demo", "--repeats", "0"]) == 2 and "repeats must be >= 1, got 0" in capsys.readouterr().err
