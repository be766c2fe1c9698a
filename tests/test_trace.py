"""Pass-by-pass records: what each pass changed, as a unified diff of the text form."""

import tnconv
from tnconv import diagrams, passes
from tnconv.cli import main
from tnconv.ir import TensorNetwork
from tnconv.passes import Trace, text_diff


def _vjp_trace():
    return tnconv.compile(passes.vjp(diagrams.conv(N=1, kernel_size=3), "w", fuse=False), trace=True).trace


def test_trace_stays_a_list_of_pass_and_text_pairs():
    trace = _vjp_trace()
    assert isinstance(trace, list) and isinstance(trace, Trace)
    assert [name for name, _ in trace] == trace.names == ["input", "fuse_deltas", "drop_ones", "simplify"]
    assert all(text == tn.to_text() for (_, text), (_, tn) in zip(trace, trace.networks))
    assert TensorNetwork.from_text(trace[-1][1]) == trace.networks[-1][1]


def test_diff_shows_changes_and_unchanged_passes():
    trace = _vjp_trace()
    assert trace.changed == ["fuse_deltas"]
    out = trace.diff()
    blocks = out.split("// ---- ")
    assert blocks[1].startswith("input ----\nnetwork vjp_w_conv1d") and blocks[1].count("tensor ") == 4
    fuse = blocks[2]
    assert fuse.startswith("after fuse_deltas ----\n--- before fuse_deltas\n+++ after fuse_deltas\n@@")
    assert "-  tensor delta_c_out : delta (c_out) (c_out')" in fuse
    removed = [line for line in fuse.splitlines() if line.startswith("-  ")]
    added = [line for line in fuse.splitlines() if line.startswith("+  ")]
    # only what changed, never the whole network again
    assert removed and added and len(removed) + len(added) < 2 * trace[1][1].count("\n")
    assert blocks[3] == "after drop_ones ----\nunchanged\n" and blocks[4] == "after simplify ----\nunchanged"
    assert not trace.diff(input=False).startswith("// ---- input")


def test_diff_of_a_rewrite_that_removes_patterns():
    tn = diagrams.kfac_reduce(N=2, kernel_size=2, stride=2, input_size=(8, 8))
    trace = tnconv.compile(tn, trace=True).trace
    assert trace.changed == ["simplify"]
    diff = trace.diff(input=False)
    assert "+  tensor x : input (n) (c) (o1 k1) (o2 k2)" in diff
    assert "-  tensor pi1 : pattern[dilation=1, pad_left=0, pad_right=0, stride=2] (i1) (o1) (k1)" in diff


def test_text_diff_and_trace_dots():
    assert text_diff("same", "same") == ""
    assert text_diff("a\nb", "a\nc", "p", context=0).splitlines() == ["--- before p", "+++ after p", "@@ -2 +2 @@", "-b", "+c"]
    f = tnconv.compile(diagrams.conv(N=1, kernel_size=3), trace=True)
    assert [name for name, _ in f.trace_dots] == f.trace.names
    assert all(dot.startswith('graph "conv1d" {') for _, dot in f.trace_dots)
    assert tnconv.compile(diagrams.conv(N=1, kernel_size=3)).trace_dots is None


def test_run_pipeline_without_record_returns_an_empty_list():
    out, trace = passes.run_pipeline(diagrams.conv(N=1, kernel_size=3), record=False)
    assert trace == [] and out == diagrams.conv(N=1, kernel_size=3)


def test_show_trace_prints_diffs(capsys):
    # the example: a general pattern that no rewrite touches, then a dense one the rewrite removes
    assert main(["show", "kfac_reduce", "--N", "2", "--kernel-size", "3", "--stride", "2", "--trace"]) == 0
    out = capsys.readouterr().out
    assert out.count("network kfac_reduce2d") == 1 and out.count("\nunchanged") == 3
    assert main(["show", "kfac_reduce", "--N", "2", "--kernel-size", "2", "--stride", "2", "--trace"]) == 0
    out = capsys.readouterr().out
    assert out.count("network kfac_reduce2d") == 1 and out.count("\nunchanged") == 2 and "+++ after simplify" in out
