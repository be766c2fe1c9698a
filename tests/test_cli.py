"""The tnconv command line."""

import pytest

from tnconv import diagrams
from tnconv.cli import main


@pytest.mark.parametrize("op", diagrams.__all__)
def test_show_every_builder(op, capsys):
    assert main(["show", op, "--N", "2"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(("network", "sum")) and "einsum:" in out and "FLOPs" in out


def test_show_trace_prints_every_pass(capsys):
    assert main(["show", "conv", "--N", "1", "--vjp", "w", "--trace"]) == 0
    out = capsys.readouterr().out
    assert "// ---- input ----" in out and "// ---- after fuse_deltas ----\nunchanged" in out


def test_show_derivative_and_drawing(tmp_path, capsys):
    path = tmp_path / "jac.dot"
    assert main(["show", "conv", "--N", "1", "--differentiate", "w", "--draw", str(path)]) == 0
    assert path.read_text().startswith("graph")
    assert "delta" in capsys.readouterr().out


def test_show_reports_bad_arguments(capsys):
    assert main(["show", "conv", "--stride", "2", "--padding", "same"]) == 2
    assert "padding" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="unknown operation"):
        main(["show", "nonsense"])
