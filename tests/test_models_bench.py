"""benchmarks/models.py runs (a smoke run: no timing is asserted) and every contender agrees with tnconv."""

import csv
import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "models.py"


def test_models_quick(tmp_path, capsys):
    for peer in ("curvlinops", "backpack", "opacus"):
        pytest.importorskip(peer)
    spec = importlib.util.spec_from_file_location("models_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--quick", "--out", str(tmp_path / "m.csv")])
    rows = list(csv.DictReader(open(tmp_path / "m.csv")))
    assert [(r["op"], r["peer"]) for r in rows] == [
        ("grad_batch", "opacus"), ("grad_batch", "backpack"), ("batch_l2", "opacus"), ("batch_l2", "backpack"),
        ("diag_ggn", "backpack"), ("kfac-expand", "curvlinops"), ("kfac-reduce", "curvlinops"),
        ("opacus_hooks", "opacus"), ("opacus_ghost", "opacus")]
    for r in rows:
        assert float(r["tnconv_ms"]) > 0 and float(r["peer_peak_mib"]) > 0
        assert float(r["max_rel_diff"]) < 1e-4  # float32, the same numbers
    assert "| c3d3 | grad_batch | opacus | 1 |" in capsys.readouterr().out
