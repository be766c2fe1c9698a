"""The benchmark's data, references, memory helper and a tiny end-to-end run. No timing assertions."""

import csv
import dataclasses
import importlib.util

import pytest
import torch

from tnconv import functional as tf
from tnconv.bench import layers as L
from tnconv.bench import run as R
from tnconv.bench.memory import peak_memory
from tnconv.bench.ops import OPS, make, standard_kfac_reduce, standard_kfc
from tnconv.bench.report import COLUMNS, EINCONV_COLUMNS, einconv_table, markdown_table, write_results
from tnconv.cli import main

ALL = L.select()


def _layer(label):
    return next(layer for layer in ALL if layer.label == label)


def test_layer_counts_and_unique_within_each_net():
    counts = {net: len(layers) for net, layers in L.NETS.items()}
    assert counts == {"3c3d": 3, "2c2d": 2, "allcnnc": 9, "alexnet": 5, "resnet18": 11, "resnext101": 19,
                      "convnext_base": 8, "inception_v3": 43, "mobilenet_v2": 30}
    for net, layers in L.NETS.items():
        hyper = [dataclasses.astuple(dataclasses.replace(layer, name="", batch=0)) for layer in layers]
        assert len(set(hyper)) == len(hyper), net
        assert len({layer.name for layer in layers}) == len(layers), net


@pytest.mark.parametrize("layer", ALL, ids=lambda layer: layer.label)
def test_layer_data_is_sane(layer):
    N = len(layer.input_size)
    assert N == 2 and all(len(t) == N for t in (layer.kernel_size, layer.stride, layer.padding, layer.dilation))
    assert all(o >= 1 for o in layer.output_size)
    assert layer.in_channels % layer.groups == 0 and layer.out_channels % layer.groups == 0
    assert layer.kind in L.KINDS
    assert layer.batch >= 1 and layer.batch & (layer.batch - 1) == 0  # a power of two
    elements, flops = L.sample_cost(layer.in_channels, layer.out_channels, layer.input_size, layer.kernel_size,
                                    layer.stride, layer.padding, layer.dilation, layer.groups)
    # within both budgets, unless one sample alone exceeds them (then the batch is 1)
    assert layer.batch == 1 or (layer.batch * elements <= L.MEMORY_BUDGET and layer.batch * flops <= L.FLOP_BUDGET)
    # the output size is PyTorch's
    y = torch.nn.functional.conv2d(torch.empty(1, layer.in_channels, *layer.input_size, device="meta"),
                                   torch.empty(layer.weight_size, device="meta"), stride=layer.stride,
                                   padding=layer.padding, dilation=layer.dilation, groups=layer.groups)
    assert tuple(y.shape[2:]) == layer.output_size


@pytest.mark.parametrize("label, kind", [
    ("convnext_base/features.0.0", "dense"),                  # 4x4 stride-4 stem
    ("convnext_base/features.2.1", "dense"),                  # 2x2 stride-2 down-sampling layer
    ("resnet18/layer2.0.downsample.0", "down-sampling"),      # 1x1 stride-2 shortcut
    ("resnext101/layer1.0.conv1", "dense"),                   # 1x1 stride 1
    ("inception_v3/Mixed_6b.branch7x7_2", "general"),         # 1x7, padding (0, 3)
    ("inception_v3/Mixed_6b.branch7x7_3", "general"),         # 7x1, padding (3, 0)
    ("inception_v3/Conv2d_1a_3x3", "general"),                # 3x3 stride 2, no padding
    ("resnet18/conv1", "general"),
    ("mobilenet_v2/features.1.conv.0.0", "general"),          # depthwise 3x3
])
def test_kind_of_known_layers(label, kind):
    assert _layer(label).kind == kind


def test_kind_rules_on_made_up_layers():
    def kind(k, s, p=(0, 0), d=(1, 1)):
        return L.Layer("n", "l", 4, 4, (16, 16), k, s, p, d, 1, 1).kind

    assert kind((2, 3), (2, 1), (0, 1)) == "mixed-dense"  # dense along the first dimension only
    assert kind((2, 1), (2, 1)) == "dense"
    assert kind((1, 1), (3, 2)) == "down-sampling"
    assert kind((2, 2), (2, 2), d=(2, 1)) == "mixed-dense"  # dilation breaks density along one dimension
    assert kind((2, 2), (2, 2), d=(2, 2)) == "general"
    assert kind((1, 1), (1, 1), p=(1, 1)) == "general"


def test_select_rejects_unknown_net():
    with pytest.raises(ValueError, match="unknown net"):
        L.select(["vgg16"])


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is None, reason="cross-check needs torchvision")
def test_layers_match_torchvision():
    try:  # BackPACK (the peers extra) pulls in a torchvision whose CPU wheel may not load beside this torch
        import torchvision.models as M
    except (ImportError, RuntimeError) as error:
        pytest.skip(f"torchvision does not load beside this torch: {error}")

    factories = {"alexnet": M.alexnet, "resnet18": M.resnet18, "resnext101": M.resnext101_32x8d,
                 "convnext_base": M.convnext_base, "mobilenet_v2": M.mobilenet_v2,
                 "inception_v3": lambda: M.inception_v3(init_weights=False, aux_logits=False)}
    for net, factory in factories.items():
        model, seen = factory().eval(), {}
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d):
                module.register_forward_hook(lambda m, inp, out: seen.setdefault(
                    (m.in_channels, m.out_channels, tuple(inp[0].shape[2:]), m.kernel_size, m.stride, m.padding,
                     m.dilation, m.groups), None))
        size = 299 if net == "inception_v3" else 224
        with torch.no_grad():
            model(torch.zeros(1, 3, size, size))
        ours = [(l.in_channels, l.out_channels, l.input_size, l.kernel_size, l.stride, l.padding, l.dilation, l.groups)
                for l in L.NETS[net]]
        assert ours == list(seen), net


@pytest.mark.parametrize("groups, hyper", [
    (1, dict(kernel_size=3)),
    (2, dict(kernel_size=(1, 3), padding=(0, 1))),
    (4, dict(kernel_size=(3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2))),
    (1, dict(kernel_size=2, stride=2)),
    (2, dict(kernel_size=1, stride=2)),
])
def test_standard_factors_agree_with_tnconv_in_float64(groups, hyper):
    x = torch.randn(3, 4, 7, 8, dtype=torch.float64)
    torch.testing.assert_close(standard_kfc(x, groups=groups, **hyper), tf.kfc(x, groups=groups, N=2, **hyper))
    torch.testing.assert_close(standard_kfac_reduce(x, groups=groups, **hyper), tf.kfac_reduce(x, groups=groups, N=2, **hyper))


def test_standard_kfc_matches_its_definition():
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    u = torch.nn.functional.unfold(x, 3, padding=1).reshape(2, 2, 18, 25)  # [B, G, C/G·K, O]
    expected = torch.stack([sum(u[b, g] @ u[b, g].T for b in range(2)) / 2 for g in range(2)])
    torch.testing.assert_close(standard_kfc(x, 3, padding=1, groups=2), expected)
    m = u.mean(-1)
    expected = torch.stack([sum(torch.outer(m[b, g], m[b, g]) for b in range(2)) / 2 for g in range(2)])
    torch.testing.assert_close(standard_kfac_reduce(x, 3, padding=1, groups=2), expected)


@pytest.mark.parametrize("op", OPS)
def test_both_implementations_agree_in_float64(op):
    layer = dataclasses.replace(_layer("inception_v3/Mixed_7b.branch3x3_2a"), batch=2, in_channels=8, out_channels=6)
    ours, theirs = make(layer, op, torch.float64)
    torch.testing.assert_close(ours(), theirs())


def test_peak_memory_of_known_allocations():
    def held_then_freed():
        a = torch.ones(1_000_000)      # 4 MB
        b = torch.ones(2_000_000)      # 8 MB more: 12 MB at once
        del a, b
        return torch.ones(250_000)     # 1 MB returned

    out, peak = peak_memory(held_then_freed)
    assert out.numel() == 250_000
    assert abs(peak - 12_000_000) <= 0.03 * 12_000_000
    _, peak = peak_memory(lambda: torch.empty(3_000_000, dtype=torch.float64))
    assert abs(peak - 24_000_000) <= 0.03 * 24_000_000


def test_peak_memory_sees_buffers_freed_inside_one_operator():
    x = torch.randn(4, 8, 32, 32)
    unfolded = 4 * 8 * 9 * 30 * 30 * 4  # bytes of the im2col matrix the sum frees before returning
    _, peak = peak_memory(lambda: torch.nn.functional.unfold(x, 3).sum())
    assert peak >= unfolded


def test_mismatch_is_an_error_row(monkeypatch):
    import tnconv.bench.ops as ops

    monkeypatch.setattr(ops, "standard_kfac_reduce", lambda *args: torch.zeros(1, 75, 75) + 1)
    row = R.measure(dataclasses.replace(_layer("3c3d/conv1"), batch=1), "kfac_reduce", repeats=1)
    assert row.error.startswith("mismatch") and row.max_rel_err > R.TOLERANCE
    assert "1 error row(s) left out" in markdown_table([row])


def test_quick_run_end_to_end_writes_csv(tmp_path):
    tiny = [dataclasses.replace(_layer(label), batch=1) for label in
            ("2c2d/conv1", "resnet18/layer2.0.downsample.0", "allcnnc/conv9")]
    rows = R.benchmark(tiny, OPS, repeats=1)
    paths = write_results(rows, tmp_path, {"test": True}, plots=False)
    with open(tmp_path / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert tuple(table[0]) == COLUMNS
    assert len(table) == len(tiny) * len(OPS)
    assert [r["error"] for r in table] == [""] * len(table)
    assert all(float(r["ratio"]) > 0 and float(r["tnconv_peak_mb"]) >= 0 for r in table)
    assert {r["kind"] for r in table} == {"general", "down-sampling", "dense"}
    summary = (tmp_path / "summary.md").read_text()
    assert "| kfc |" in summary and "down-sampling" in summary and tmp_path / "summary.md" in paths


def test_plots_are_written(tmp_path):
    pytest.importorskip("matplotlib")
    rows = R.benchmark([dataclasses.replace(_layer("2c2d/conv1"), batch=1)], ["forward", "kfc"], repeats=1)
    paths = write_results(rows, tmp_path, plots=True)
    assert {p.name for p in paths} >= {"ratio_per_layer.png", "ratio_per_op.png"}
    assert all(p.stat().st_size > 0 for p in paths)


def test_quick_selection_is_small():
    quick = R.quick_layers(ALL)
    assert [layer.label for layer in quick] == list(R.QUICK_LAYERS)
    assert all(layer.batch <= R.QUICK_BATCH for layer in quick)
    assert {layer.kind for layer in quick} == {"general", "dense", "down-sampling"}


def test_cli_bench_says_what_is_missing(monkeypatch, capsys):
    monkeypatch.setattr(R, "missing_extras", lambda: ["tqdm"])
    assert main(["bench", "--quick"]) == 2
    err = capsys.readouterr().err
    assert "tqdm" in err and "tnconv[bench]" in err


def test_cli_bench_runs(tmp_path, capsys):
    pytest.importorskip("tqdm")
    pytest.importorskip("matplotlib")
    code = main(["bench", "--quick", "--nets", "2c2d", "--ops", "forward", "kfac_reduce", "--repeats", "1",
                 "--threads", "1", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0 and "| forward |" in out and (tmp_path / "results.csv").exists()


# ---- einconv, the optional third implementation (skipped without it) ----

needs_einconv = pytest.mark.skipif(importlib.util.find_spec("einconv") is None or importlib.util.find_spec("einops") is None,
                                   reason="einconv (and einops) not installed: pip install 'tnconv[einconv]'")

#: Tiny versions of a general (padded, grouped), a down-sampling and a dense layer, and a 1x3 one with padding (0, 1).
EINCONV_LAYERS = [
    dataclasses.replace(_layer("mobilenet_v2/features.2.conv.1.0"), batch=2, in_channels=4, out_channels=4, groups=2,
                        input_size=(9, 8)),
    dataclasses.replace(_layer("resnet18/layer2.0.downsample.0"), batch=2, in_channels=3, out_channels=5,
                        input_size=(8, 7)),
    dataclasses.replace(_layer("convnext_base/features.2.1"), batch=3, in_channels=4, out_channels=6, input_size=(6, 8)),
    dataclasses.replace(_layer("inception_v3/Mixed_7b.branch3x3_2a"), batch=2, in_channels=6, out_channels=4,
                        input_size=(5, 6)),
]


@needs_einconv
@pytest.mark.parametrize("op", OPS)
def test_einconv_agrees_with_standard_in_float64(op):
    from tnconv.bench import einconv_ops

    for layer in EINCONV_LAYERS:
        theirs = make(layer, op, torch.float64)[1]()
        ein = einconv_ops.make(layer, op, torch.float64)()
        # einconv makes the factors' scale 1/B resp. 1/(B·O²) in float32 before casting it: float32 precision there
        rtol = 1e-6 if op in ("kfc", "kfac_reduce") else 1e-10
        torch.testing.assert_close(ein, theirs, rtol=rtol, atol=1e-12, msg=lambda m: f"{layer.label}: {m}")


def test_einconv_rejects_padding_it_cannot_express():
    from tnconv.bench import einconv_ops

    with pytest.raises(einconv_ops.Unsupported, match="padding"):
        einconv_ops.make(dataclasses.replace(EINCONV_LAYERS[0], padding=((0, 1), (1, 1))), "forward")
    assert einconv_ops.padding(EINCONV_LAYERS[3]) == (0, 1)


@needs_einconv
def test_einconv_skip_and_mismatch_rows(monkeypatch):
    from tnconv.bench import einconv_ops

    layer = EINCONV_LAYERS[1]

    def unsupported(layer):
        raise einconv_ops.Unsupported("padding: made up")

    with monkeypatch.context() as patch:
        patch.setattr(einconv_ops, "padding", unsupported)
        skipped = R.measure(layer, "forward", repeats=1, einconv=True)
    assert not skipped.error and skipped.einconv_skipped.startswith("padding") and skipped.ratio > 0
    assert torch.tensor(skipped.ratio_vs_einconv).isnan()
    real = einconv_ops.make
    monkeypatch.setattr(einconv_ops, "make", lambda *args: (lambda: 2 * real(*args)()))
    row = R.measure(layer, "kfc", repeats=1, einconv=True)
    assert row.error.startswith("einconv mismatch") and row.einconv_max_rel_err > R.TOLERANCE


@needs_einconv
def test_quick_einconv_run_writes_its_columns(tmp_path, capsys):
    pytest.importorskip("tqdm")
    pytest.importorskip("matplotlib")
    # no quick layer among these nets: the first layer of each, 2c2d/conv1 and allcnnc/conv1, batch 2
    code = R.main(["--quick", "--einconv", "--nets", "2c2d", "allcnnc", "--repeats", "1", "--threads", "1", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0 and "tnconv not faster" in out
    with open(tmp_path / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert tuple(table[0]) == EINCONV_COLUMNS and len(table) == 2 * len(OPS)
    assert all(r["error"] == "" and float(r["einconv_ms"]) > 0 and float(r["einconv_peak_mb"]) >= 0 for r in table)
    assert all(abs(float(r["ratio_vs_einconv"]) - float(r["tnconv_ms"]) / float(r["einconv_ms"])) < 1e-3 * float(r["ratio_vs_einconv"])
               for r in table)
    assert "tnconv / einconv" in (tmp_path / "summary.md").read_text()


def test_without_einconv_the_csv_is_unchanged(tmp_path):
    rows = R.benchmark([dataclasses.replace(_layer("2c2d/conv1"), batch=1)], ["forward"], repeats=1)
    write_results(rows, tmp_path, plots=False)
    with open(tmp_path / "results.csv") as f:
        assert next(csv.reader(f)) == list(COLUMNS)
    assert "einconv" not in (tmp_path / "summary.md").read_text()
    assert EINCONV_COLUMNS[:len(COLUMNS) - 1] == COLUMNS[:-1] and EINCONV_COLUMNS[-1] == "error"


def test_einconv_table_counts_layers_where_tnconv_is_not_faster():
    rows = [R.Row("n", f"l{i}", kind, "forward", 1, r, 1.0, r, 1.0, 1.0, 0.0, einconv_ms=1.0, einconv_peak_mb=1.0,
                  ratio_vs_einconv=r) for i, (kind, r) in enumerate([("dense", 0.5), ("general", 1.0), ("general", 3.0)])]
    rows.append(R.Row("n", "skip", "dense", "forward", 1, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, einconv_skipped="padding x"))
    table = einconv_table(rows)
    assert "| forward | 1.00 (3) | 2.00 (2) | 0.50 (1) | 1.00 | 2 / 3 |" in table
    assert "n/l2 forward: 3.00" in table and "n/skip forward: padding x" in table


def test_einconv_missing_gives_install_instructions(monkeypatch, capsys):
    from tnconv.bench import einconv_ops

    monkeypatch.setattr(einconv_ops, "missing", lambda: ["einconv"])
    monkeypatch.setattr(R, "missing_extras", lambda: [])
    assert main(["bench", "--quick", "--einconv"]) == 2
    err = capsys.readouterr().err
    assert "einconv" in err and "pip install" in err and "--no-deps einconv==0.1.0" in err


# ---- autotuned tnconv, floors, thread counts ----

@pytest.mark.parametrize("label", ["resnext101/layer1.0.conv1", "convnext_base/features.0.0", "2c2d/conv1",
                                   "mobilenet_v2/features.1.conv.0.0"])
def test_floors_compute_the_unavoidable_products(label):
    from tnconv.bench.ops import data, floors

    layer = dataclasses.replace(_layer(label), batch=2)
    for op in OPS:
        found = floors(layer, op, torch.float64)
        x, w, g = data(layer, op, torch.float64)
        G, B = layer.groups, layer.batch
        hyper = dict(stride=layer.stride, padding=layer.padding, dilation=layer.dilation, groups=G)
        if op == "kfc":
            torch.testing.assert_close(found["gram"](), B * standard_kfc(x, layer.kernel_size, **hyper))
        elif op == "kfac_reduce":
            torch.testing.assert_close(found["gram"](), B * standard_kfac_reduce(x, layer.kernel_size, **hyper))
        elif layer.kind != "dense":
            assert found == {}
        else:  # the matrix products are the operation itself, in matrix layout
            assert set(found) == ({"matmul"} if op == "weight_vjp" else {"matmul", "matmul/per-sample"})
            if op == "forward":
                y = torch.nn.functional.conv2d(x, w, **hyper)
                torch.testing.assert_close(found["matmul"]().reshape(G, -1, B, y[0, 0].numel()).permute(2, 0, 1, 3)
                                           .reshape(y.shape), y)
                torch.testing.assert_close(found["matmul/per-sample"]().reshape(y.shape), y)
            elif op == "weight_vjp":
                dw = torch.nn.grad.conv2d_weight(x, w.shape, g, **hyper)
                torch.testing.assert_close(found["matmul"]().reshape(dw.shape), dw)
            elif layer.kernel_size == (1, 1):
                dx = torch.nn.grad.conv2d_input(x.shape, w, g, **hyper)
                torch.testing.assert_close(found["matmul/per-sample"]().reshape(dx.shape), dx)


def test_autotuned_and_floor_columns_and_the_csv_round_trip(tmp_path):
    from tnconv.bench.report import floor_table, read_csv

    rows = R.benchmark([dataclasses.replace(_layer("2c2d/conv2"), batch=1)], ["forward", "kfc"], repeats=1)
    assert all(not r.error and r.tuned_ms > 0 and r.tuned_lowering and r.floor_ms > 0 and r.threads >= 1 for r in rows)
    by_op = {r.op: r for r in rows}
    assert by_op["kfc"].floor_kind == "gram" and by_op["forward"].floor_kind == "kernel"
    kfc = by_op["kfc"]
    assert abs(kfc.tuned_floor_ratio - kfc.tuned_ms / kfc.floor_ms) < 1e-6 * kfc.tuned_floor_ratio
    # the read of x counts beside the Gram product for the factors only
    assert kfc.read_ms > 0 and abs(kfc.tuned_read_floor_ratio - kfc.tuned_ms / (kfc.read_ms + kfc.floor_ms)) < \
        1e-6 * kfc.tuned_read_floor_ratio
    assert by_op["forward"].read_ms != by_op["forward"].read_ms
    write_results(rows, tmp_path, plots=False)
    back = read_csv(tmp_path / "results.csv")
    assert [(r.op, r.tuned_lowering, r.threads, r.floor_kind) for r in back] == \
           [(r.op, r.tuned_lowering, r.threads, r.floor_kind) for r in rows]
    assert all(abs(a.tuned_ratio - b.tuned_ratio) <= 1e-5 * b.tuned_ratio for a, b in zip(back, rows))
    assert abs(back[1].tuned_read_floor_ratio - kfc.tuned_read_floor_ratio) <= 1e-5 * kfc.tuned_read_floor_ratio
    assert "| kfc |" in floor_table(rows) and "worst autotuned / floor" in floor_table(rows)
    assert "worst autotuned / (read + floor)" in floor_table(rows)
    assert "autotuned / standard" in (tmp_path / "summary.md").read_text()
    # the autotuned columns are left out on request
    (row,) = R.benchmark([dataclasses.replace(_layer("2c2d/conv2"), batch=1)], ["kfac_reduce"], repeats=1, tuned=False)
    assert row.tuned_lowering == "" and row.tuned_ms != row.tuned_ms and row.floor_ms > 0


def test_two_thread_counts_run_in_subprocesses(tmp_path, capsys):
    pytest.importorskip("tqdm")
    pytest.importorskip("matplotlib")
    code = main(["bench", "--quick", "--nets", "2c2d", "--ops", "kfac_reduce", "--repeats", "1", "--threads", "1", "2",
                 "--out", str(tmp_path)])
    assert code == 0
    with open(tmp_path / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert sorted(r["threads"] for r in table) == ["1", "2"]
    summary = (tmp_path / "summary.md").read_text()
    assert "## 1 thread\n" in summary and "## 2 threads" in summary
    assert {"ratio_per_layer_threads1.png", "tuned_per_layer_threads2.png"} <= {p.name for p in tmp_path.iterdir()}
    # each subprocess tuned into its own cache, beside its results
    assert (tmp_path / "threads2" / "autotune_cache" / "autotune.json").exists()
    with pytest.raises(SystemExit):
        main(["bench", "--threads"])
    assert main(["bench", "--quick", "--threads", "1", "1"]) == 2
