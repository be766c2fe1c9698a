"""The examples run and check themselves; issue 5's run in seconds with --quick and write sensible numbers.

Those need scikit-learn and matplotlib, part of the ``test`` extra: a missing one fails here, not skips.
"""

import csv
import importlib.util
import math
import pathlib

import pytest

EXAMPLES = pathlib.Path(__file__).parent.parent / "examples"


def load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_derivative_walkthrough(tmp_path, capsys):
    from tnconv.ir.draw import has_graphviz

    argv = ["--draw", str(tmp_path)] if has_graphviz() else []
    assert load("derivative_walkthrough").main(argv) < 1e-10
    out = capsys.readouterr().out
    # the pass that fused the deltas shows as a diff, the passes with nothing to do as "unchanged"
    assert "// ---- after fuse_deltas ----\n--- before fuse_deltas" in out and "-  tensor delta_g : delta (g) (g')" in out
    assert "// ---- after simplify ----\nunchanged" in out
    if argv:
        assert sorted(p.name for p in tmp_path.iterdir()) == [
            "1_conv.svg", "2_jacobian.svg", "3_vjp_0_input.svg", "3_vjp_1_fuse_deltas.svg"]


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_crs_figure8_quick(tmp_path, capsys):
    load("crs_figure8").main(["--quick", "--out", str(tmp_path)])
    rows = read_csv(tmp_path / "crs_figure8.csv")
    runs = read_csv(tmp_path / "crs_figure8_runs.csv")
    assert (tmp_path / "crs_figure8.png").stat().st_size > 0
    assert {(r["dataset"], r["scheme"]) for r in rows} == {(d, s) for d in ("digits", "random")
                                                            for s in ("channel", "spatial")}
    assert len(rows) == 2 * 2 * 3 and len(runs) == 2 * len(rows)
    for row in runs:
        assert 0 <= float(row["residual"]) <= 2.0
        if float(row["p"]) == 1.0:  # keep 1 takes the exact path: bit for bit the same gradient
            assert float(row["residual"]) == 0.0
        else:
            assert float(row["residual"]) > 0.0
    for row in rows:
        p, kept = float(row["p"]), float(row["kept_fraction"])
        assert abs(kept - p) < 0.12  # rounding of the kept counts (3 input channels of the first layer)
        if row["scheme"] == "channel" and p == 0.5:
            # with half the channels kept and rescaled by 2, ‖ĝ − g‖ = ‖g‖ whatever the draw (but for
            # the first layer, where 2 of 3 channels are kept)
            assert float(row["mean"]) == pytest.approx(1.0, abs=0.02)
    spatial = {(r["dataset"], float(r["p"])): float(r["mean"]) for r in rows if r["scheme"] == "spatial"}
    channel = {(r["dataset"], float(r["p"])): float(r["mean"]) for r in rows if r["scheme"] == "channel"}
    for dataset in ("digits", "random"):  # the paper's finding, with a wide margin even on this tiny run
        assert spatial[dataset, 0.25] < channel[dataset, 0.25] and spatial[dataset, 0.5] < channel[dataset, 0.5]
    out = capsys.readouterr().out
    assert "| digits | fixed | 0.25 |" in out and "pixels reach it" in out


def test_bernoulli_emulation_keeps_counts_and_rescales_by_one_over_p():
    import torch

    module = load("crs_figure8")
    model = torch.nn.Sequential(torch.nn.Conv2d(4, 3, 3), torch.nn.Conv2d(3, 2, 1))
    shapes = [(4, 8, 8), (3, 6, 6)]
    gen = torch.Generator().manual_seed(0)
    scales = []
    for _ in range(400):
        scale = module.bernoulli_crs_(model, shapes, (1.0, 0.5, 0.5), gen)
        for conv, (c, h, w), s in zip(model, shapes, scale):
            kept_c, kept_h, kept_w = (round(k * n) for k, n in zip(conv.crs_keep, (c, h, w)))
            assert kept_c == c and kept_h >= 1 and kept_w >= 1
            # an axis that kept nothing (drawn with M = 1 by tnconv) zeroes the layer's gradient
            assert s == 0 or s == pytest.approx(kept_h * kept_w / (h * w * 0.25))
        scales.append(scale)
    # the count M of a Bernoulli(p) draw has mean I·p, so the extra factor M/(I·p) has mean 1
    mean = torch.tensor(scales).mean(0)
    assert torch.allclose(mean, torch.ones(2), atol=0.05)
    assert module.bernoulli_crs_(model, shapes, (1.0, 1.0, 1.0), gen) == [1.0, 1.0]


def test_kfac_reduce_optimizer_quick(tmp_path, capsys):
    result = load("kfac_reduce_optimizer").main(["--quick", "--out", str(tmp_path)])
    summary = read_csv(tmp_path / "kfac_reduce.csv")
    history = read_csv(tmp_path / "kfac_reduce_history.csv")
    assert (tmp_path / "kfac_reduce.png").stat().st_size > 0
    assert [r["method"] for r in summary] == ["kfac-reduce (tnconv)", "kfac-reduce (im2col)", "sgd", "adam"]
    assert len(history) == 4 * 2
    for row in summary + history:
        assert 0 <= float(row["test_acc"]) <= 1 and math.isfinite(float(row["test_loss"]))
    for row in summary:
        assert float(row["step_ms"]) > 0
        if row["method"].startswith("kfac"):
            assert float(row["factor_ms"]) > 0 and float(row["factor_peak_kib"]) > 0
        else:
            assert row["factor_ms"] == "" and row["factor_peak_kib"] == ""
    # the two factors are one matrix up to float error, so the trajectories coincide
    assert result["factor_error"] < 1e-5
    tn, im2col = ([r for r in history if r["method"] == m] for m in ("kfac-reduce (tnconv)", "kfac-reduce (im2col)"))
    for a, b in zip(tn, im2col):
        assert float(a["test_loss"]) == pytest.approx(float(b["test_loss"]), rel=1e-4)
        assert abs(float(a["test_acc"]) - float(b["test_acc"])) <= 1 / 450 + 1e-9  # at most one test image
    # tnconv's factor never unfolds the input, so it peaks lower than im2col's
    peaks = {r["method"]: float(r["factor_peak_kib"]) for r in summary if r["factor_peak_kib"]}
    assert peaks["kfac-reduce (tnconv)"] < peaks["kfac-reduce (im2col)"]
    assert "| kfac-reduce (tnconv) |" in capsys.readouterr().out


def test_im2col_factor_matches_tnconv_with_groups_and_dilation():
    import torch

    module = load("kfac_reduce_optimizer")
    conv = torch.nn.Conv2d(6, 4, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2), groups=2)
    x = torch.randn(3, 6, 9, 8, dtype=torch.float64)
    torch.testing.assert_close(module.im2col_factor(x, conv), module.tnconv_factor(x, conv))
