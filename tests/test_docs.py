"""docs/diagrams.md is what docs/generate.py writes today."""

import importlib
import importlib.util
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_diagram_docs_are_current():
    spec = importlib.util.spec_from_file_location("generate_docs", DOCS / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert (DOCS / "diagrams.md").read_text() == module.render(), "stale: run python docs/generate.py"


def _public_names():
    import inspect
    import pkgutil

    import tnconv

    for info in pkgutil.walk_packages(tnconv.__path__, "tnconv."):
        if info.name.split(".")[-1].startswith("_"):
            continue
        module = importlib.import_module(info.name)
        for name in getattr(module, "__all__", ()):
            obj = getattr(module, name)
            if inspect.isclass(obj) or inspect.isfunction(obj):
                yield f"{info.name}.{name}", obj


def test_every_public_function_and_class_has_its_own_docstring():
    # a class docstring placed after another statement is silently dropped (and its doctests never run)
    missing = [name for name, obj in _public_names() if not obj.__dict__.get("__doc__") if isinstance(obj, type)]
    missing += [name for name, obj in _public_names() if not isinstance(obj, type) and not obj.__doc__]
    assert not missing, missing
