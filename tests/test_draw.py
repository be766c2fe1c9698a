"""Drawings: valid DOT for every network, the paper's symbols, and real images from graphviz's dot."""

import inspect
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tnconv import diagrams, passes
from tnconv.ir import Index, Tensor, TensorNetwork, render, to_dot
from tnconv.ir.draw import has_graphviz

needs_dot = pytest.mark.skipif(not has_graphviz(), reason="graphviz's dot is not installed")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# Settings every builder is drawn at: a general grouped convolution with a bias (symbolic sizes), a
# mixed-dense one (dense along the second axis) and a 1x1 down-sampling one, both with concrete sizes
# so the rewrites fire.
SETTINGS = {
    "general": (dict(N=2, kernel_size=3, stride=2, padding=1, groups=2, bias=True, input_size=(9, 9), output_size=(9, 9)), {}),
    "mixed_dense": (dict(N=2, kernel_size=(3, 2), stride=(1, 2), input_size=(8, 8), output_size=(8, 8)), dict(I1=8, I2=8)),
    "downsampling": (dict(N=1, kernel_size=1, stride=2, input_size=(8,), output_size=(8,)), dict(I1=8)),
}


def build(name, setting):
    kwargs, sizes = SETTINGS[setting]
    builder = getattr(diagrams, name)
    params = inspect.signature(builder).parameters
    tn = builder(**{k: v for k, v in kwargs.items() if k in params})
    return tn.specialize(**sizes) if sizes else tn


def networks():
    """Every builder's network at every setting, and every pass's output on it; distinct drawings only."""
    found = {}

    def add(label, tn):
        found.setdefault(to_dot(tn), (label, tn))

    for name in diagrams.__all__:
        for setting in SETTINGS:
            tn = build(name, setting)
            add(f"{name}/{setting}", tn)
            for pass_name, fn in sorted(passes.PASSES.items()):
                add(f"{name}/{setting}/{pass_name}", fn(tn))
    conv = build("conv", "general")
    add("differentiate w (product rule, with bias)", passes.differentiate(conv, "w"))
    add("differentiate x", passes.differentiate(diagrams.conv(N=2, kernel_size=3), "x"))
    add("vjp unfused", passes.vjp(diagrams.conv(N=2, kernel_size=3, stride=2), "w", fuse=False))
    add("jvp", passes.jvp(diagrams.conv(N=1, kernel_size=3), "x", "tangent"))
    add("swap_kernel_output", passes.swap_kernel_output(diagrams.weight_vjp(N=2, kernel_size=3)))
    add("crs", passes.crs(diagrams.weight_vjp(N=2, kernel_size=3), "i1", 0.5))
    add("batch", passes.batch(diagrams.conv(N=1, kernel_size=3, batch=False), "n", "B", ["x"]))
    return list(found.values())


NETWORKS = networks()

_QUOTED = r'"(?:[^"\\]|\\.)*"'
_VALUE = rf'(?:{_QUOTED}|<.*>|[A-Za-z0-9_.#-]+)'
_ATTRS = rf'\[(?:\w+={_VALUE})(?:, \w+={_VALUE})*\]'
_STATEMENT = re.compile(
    rf'^(?:graph {_QUOTED} \{{|\}}|subgraph {_QUOTED} \{{|(?:graph|node|edge) {_ATTRS};|{_QUOTED} {_ATTRS};'
    rf'|{_QUOTED} -- {_QUOTED}(?: {_ATTRS})?;|\{{ rank=sink;(?: {_QUOTED};)+ \}})$')


def _statements(dot):
    return [line.strip() for line in dot.splitlines() if line.strip()]


def test_every_statement_quotes_its_ids():
    # a DOT grammar for what to_dot writes: every id quoted, so primed legs (c', o1') cannot break it
    assert len(NETWORKS) > 60
    for label, tn in NETWORKS:
        bad = [line for line in _statements(to_dot(tn)) if not _STATEMENT.match(line)]
        assert not bad, (label, bad[:3])


def test_primed_legs_are_quoted():
    # regression: kfac_reduce's legs c', k1'... were written as bare ids, and dot rejected them
    dot = to_dot(diagrams.kfac_reduce(N=2, kernel_size=3, stride=2))
    assert "'" in dot
    for line in _statements(dot):
        unquoted = re.sub(_QUOTED, "", line)
        assert "'" not in unquoted, line


@needs_dot
def test_primed_legs_render(tmp_path):
    path = render(diagrams.kfac_reduce(N=2, kernel_size=3, stride=2), tmp_path / "k.png")
    assert Path(path).read_bytes()[:8] == PNG_MAGIC


@needs_dot
@pytest.mark.filterwarnings("error")  # render passes on whatever dot prints: a warning fails the test
def test_every_builder_and_pass_renders_to_valid_images(tmp_path):
    for n, (label, tn) in enumerate(NETWORKS):
        root = ET.parse(render(tn, tmp_path / f"{n}.svg")).getroot()
        assert root.tag == "{http://www.w3.org/2000/svg}svg", label
        assert root.find(".//{http://www.w3.org/2000/svg}g") is not None, label
        if label.count("/") == 1:  # each builder's own network as a PNG too
            assert Path(render(tn, tmp_path / f"{n}.png")).read_bytes()[:8] == PNG_MAGIC, label


@needs_dot
@pytest.mark.parametrize("fmt, magic", [("png", PNG_MAGIC), ("pdf", b"%PDF-"), ("svg", None)])
def test_render_formats(tmp_path, fmt, magic):
    path = render(diagrams.conv(N=2, kernel_size=3, groups=2, bias=True), str(tmp_path / f"conv.{fmt}"))
    data = Path(path).read_bytes()
    if magic:
        assert data.startswith(magic)
    else:
        assert ET.fromstring(data).tag.endswith("svg")


@needs_dot
def test_names_with_quotes_and_backslashes_are_escaped(tmp_path):
    a = Index("a", 2)
    tn = TensorNetwork((Tensor('x "the" \\input', (a,)),), ((a,),), name='odd "name"')
    root = ET.parse(render(tn, tmp_path / "odd.svg")).getroot()
    texts = [el.text for el in root.iter() if el.text]
    assert 'x "the" \\input' in texts


@needs_dot
def test_dot_warnings_are_passed_on(tmp_path, monkeypatch):
    monkeypatch.setattr("tnconv.ir.draw.to_dot", lambda tn: 'graph "g" { "a" [shape=nonsense]; }')
    with pytest.warns(RuntimeWarning, match="nonsense"):
        render(diagrams.conv(N=1, kernel_size=3), tmp_path / "g.svg")


def test_render_errors(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"\.svg"):
        render(diagrams.conv(N=1, kernel_size=3), tmp_path / "conv.jpeg")
    monkeypatch.setattr("tnconv.ir.draw.has_graphviz", lambda: False)
    with pytest.raises(RuntimeError, match="apt-get install graphviz"):
        render(diagrams.conv(N=1, kernel_size=3), tmp_path / "conv.svg")
    assert Path(render(diagrams.conv(N=1, kernel_size=3), tmp_path / "conv.dot")).read_text().startswith("graph")


def _attrs(dot, label):
    """The attribute lists of the nodes whose label is ``label``."""
    return [line for line in _statements(dot) if f"label={label}," in line]


def test_the_papers_symbols():
    dot = to_dot(diagrams.kfac_reduce(N=2, kernel_size=3, stride=2).specialize(I1=9, I2=9))
    assert all("shape=box" in line for line in _attrs(dot, '"x"')) and len(_attrs(dot, '"x"')) == 2
    # index patterns: triangles with stride, padding and dilation
    assert dot.count("shape=triangle, style=filled, fillcolor=\"#fbe3c4\"") == 4 and "S=2 P=0 D=1" in dot
    # o1 is summed on one pattern only: it ends in a vector of ones
    assert dot.count('tooltip="sum over o') == 4
    # each output axis (c k1 k2) is one bundled leg labelled with its size
    assert '"(c k1 k2)\\n9·C"' in dot and "\"(c' k1' k2')\\n9·C\"" in dot
    assert dot.count("fillcolor=black") == 2 and dot.count("penwidth=2.5") == 2
    assert "scale 1/(256·B)" in dot  # 1/(B·O²) with O = 4·4
    # a delta is a dot; an open leg ends in its name and size
    jac = to_dot(diagrams.weight_jacobian(N=1, kernel_size=3))
    assert "xlabel=\"δ\"" in jac and "shape=point" in jac and '"o1\\nI1 - 2"' in jac
    # a leg on three holders (x, grad_output and the output) meets in one dot named after it
    psg = to_dot(diagrams.per_sample_weight_grad(N=1, kernel_size=3))
    assert 'xlabel="n"' in psg


def test_a_sum_draws_its_terms_in_order():
    dot = to_dot(diagrams.conv(N=1, kernel_size=3, bias=True))
    assert dot.index('"cluster_0"') < dot.index('"cluster_1"') and 'label="+ conv1d_bias"' in dot


def test_show_draws_svg(tmp_path, capsys):
    from tnconv.cli import main

    path = tmp_path / "k.svg"
    if not has_graphviz():
        assert main(["show", "kfac_reduce", "--stride", "2", "--draw", str(path)]) == 2
        assert "graphviz" in capsys.readouterr().err
        return
    assert main(["show", "kfac_reduce", "--stride", "2", "--draw", str(path)]) == 0
    assert ET.parse(path).getroot().tag.endswith("svg")
    assert f"drawing: {path}" in capsys.readouterr().out
