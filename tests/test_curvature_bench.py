"""benchmarks/kfac_models.py runs (a smoke run: no timing is asserted) and checks the two KFACs agree."""

import csv
import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "kfac_models.py"


def test_kfac_models_quick(tmp_path, capsys):
    pytest.importorskip("curvlinops")
    spec = importlib.util.spec_from_file_location("kfac_models", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--quick", "--out", str(tmp_path / "k.csv")])
    rows = list(csv.DictReader(open(tmp_path / "k.csv")))
    assert [(r["model"], r["approx"], r["threads"]) for r in rows] == [("c3d3", "expand", "1"), ("c3d3", "reduce", "1")]
    for r in rows:
        assert float(r["tnconv_ms"]) > 0 and float(r["curvlinops_peak_mib"]) > 0
        assert float(r["max_rel_factor_diff"]) < 1e-4  # float32, the same factors
    assert "| c3d3 | mc | reduce | 1 |" in capsys.readouterr().out
