"""The examples run and check themselves."""

import importlib.util
import pathlib

EXAMPLES = pathlib.Path(__file__).parent.parent / "examples"


def load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_derivative_walkthrough(capsys):
    assert load("derivative_walkthrough").main() < 1e-10
    out = capsys.readouterr().out
    assert "after fuse_deltas" in out and "delta" in out
