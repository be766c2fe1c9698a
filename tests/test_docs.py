"""docs/diagrams.md is what docs/generate.py writes today."""

import importlib
import importlib.util
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _generate():
    spec = importlib.util.spec_from_file_location("generate_docs", DOCS / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_diagram_docs_are_current():
    assert (DOCS / "diagrams.md").read_text() == _generate().render(), "stale: run python docs/generate.py"


def test_gallery_and_readme_picture_are_current():
    # each SVG is stamped with the digest of the DOT text it was drawn from: a change to a builder, a pass
    # or the drawing makes it stale, whatever graphviz version drew it
    generate = _generate()
    assert (DOCS / "gallery.md").read_text() == generate.gallery(), "stale: run python docs/generate.py"
    shown = generate.pictures()
    stale = [path for path, tn in shown.items() if not (DOCS / path).exists()
             or generate.stamp_of((DOCS / path).read_text()) != generate.digest(tn.to_dot())]
    assert not stale, f"stale pictures {stale}: run python docs/generate.py"
    extra = {f"gallery/{p.name}" for p in (DOCS / "gallery").glob("*")} - set(shown)
    assert not extra, f"pictures no longer generated: {sorted(extra)}"
    gallery = (DOCS / "gallery.md").read_text()
    assert all(f"]({path})" in gallery for path in shown if path.startswith("gallery/"))
    readme = (DOCS.parent / "README.md").read_text()
    assert f"](docs/{generate.README_PICTURE})" in readme


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
