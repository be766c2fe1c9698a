"""docs/diagrams.md is what docs/generate.py writes today."""

import importlib.util
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_diagram_docs_are_current():
    spec = importlib.util.spec_from_file_location("generate_docs", DOCS / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert (DOCS / "diagrams.md").read_text() == module.render(), "stale: run python docs/generate.py"
