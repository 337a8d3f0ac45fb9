"""rkdeploy compare: selectors, pairing, significance verdicts, renderers and the one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from host.errors import ReportError
from host.results import ResultStore
from host.results.compare import compare, compare_rows
from host.results.select import apply_selector, parse_selector
from tests.conftest import run_cli
from tests.host.results.sample_rows import demo_run, demo_store_rows, llm_row


@pytest.fixture
def store(tmp_path):
    path = tmp_path / "r.sqlite"
    with ResultStore(path) as s:
        for r in demo_store_rows() + demo_run("2026-12-02T17:00:00Z", shift=0.10):
            s.add(r)
    return path


@pytest.mark.parametrize(("text", "want"), [
    ("latest", dict(run=1)), ("previous", dict(run=2)), ("run=-3", dict(run=3)),
    ("board=rock5b,scheme=w8a8", dict(fields={"board": "rock5b", "scheme": "w8a8"})),
    ("runner=1.3.0", dict(fields={"runner_version": "1.3.0"})),
    ("time=2026-12-01..2026-12-02T12:00", dict(time=("2026-12-01", "2026-12-02T12:00"))),
    ("time=2026-12-02T16..", dict(time=("2026-12-02T16", ""))),
])
def test_parse_selector(text, want):
    sel = parse_selector(text)
    for k, v in want.items():
        assert getattr(sel, k) == v


@pytest.mark.parametrize(("text", "says"), [
    ("", "empty"), ("latest,", "empty term"), ("nonsense", "'nonsense' is not a known term"),
    ("run=0", "takes a run number"), ("run=x", "takes a run number"), ("time=yesterday..", "takes FROM..TO"),
    ("time=2026-12-01", "takes FROM..TO"), ("colour=red", "unknown field"), ("board=", "has no value"),
    ("commit=main", "takes a git commit hash"), ("commit=abc", "takes a git commit hash"), ("old.jsonl", "does not exist"),
])
def test_bad_selectors_name_the_term(text, says):
    with pytest.raises(ReportError, match=says) as e:
        parse_selector(text)
    assert "\n" not in str(e.value)


def test_runs_and_time_ranges_select_per_configuration():
    rows = demo_store_rows()
    same = ("board", "scheme", "backend", "test")
    first = apply_selector(rows, parse_selector("previous"), same)
    assert {r.test_time for r in first if r.kind == "bench" and r.status == "ok"} == {"2026-12-02T15:00:00Z"}
    window = apply_selector(rows, parse_selector("time=2026-12-02T15:30..2026-12-02T16"), same)
    assert {r.test_time for r in window} == {"2026-12-02T16:00:00Z"}
    assert apply_selector(rows, parse_selector("run=3"), same) == []


def test_commit_selects_the_rkdeploy_checkout_that_ran_the_benchmark():
    def at(commit, t):
        return llm_row("int8", t=t, env={"rkdeploy": {"commit": commit, "version": "0.2.0", "dirty": False}})

    rows = [at("a" * 40, "t1"), at("b" * 40, "t2"), llm_row("int8", t="t3")]  # the last stored before provenance
    same = ("scheme",)
    assert [r.test_time for r in apply_selector(rows, parse_selector("commit=AAAA"), same)] == ["t1"]
    assert [r.test_time for r in apply_selector(rows, parse_selector("commit=" + "b" * 40), same)] == ["t2"]
    assert apply_selector(rows, parse_selector("commit=abcd"), same) == []


def test_identical_runs_are_within_noise():
    a, b = demo_run("2026-12-02T15:00:00Z"), demo_run("2026-12-02T16:00:00Z")
    result = compare_rows(a, b)
    assert result and all(c.verdict.startswith("within noise") for c in result)
    assert {c.ratio for c in result} == {1.0}
    assert [c.verdict for c in result if c.test.get("board") == "vrk3588"][0].startswith("within noise (too few reps: 2+2")


def test_a_real_change_is_significant_with_its_direction():
    a = [llm_row("int8", t="t1")]
    faster = [llm_row("int8", t="t2", shift=0.10)]
    by = {c.metric: c for c in compare_rows(a, faster)}
    assert by["decode tok/s"].verdict == "better" and by["decode tok/s"].ratio == pytest.approx(1.10)
    assert by["decode tok/s"].p == pytest.approx(2 / 252) and by["TTFT ms"].verdict == "better"  # TTFT went down
    assert {c.verdict for c in compare_rows(faster, a) if c.metric == "decode tok/s"} == {"worse"}
    noisy = [llm_row("int8", t="t2", shift=0.002)]  # 0.2 % inside the +-2 % spread of the reps
    assert {c.verdict for c in compare_rows(a, noisy) if c.metric != "test t/s"} == {"within noise"}


def test_boards_pair_the_same_artifact_across_boards():
    a = [llm_row("w8a8", board="boardA", target="rk3588", backend="rkllm")]
    b = [llm_row("w8a8", board="boardB", target="rk3588", backend="rkllm", shift=-0.2),
         llm_row("int8", board="boardB")]
    result = compare_rows(a, b, varying=("board",))
    assert [c.verdict for c in result if c.metric == "decode tok/s"] == ["worse"]
    assert [c.only for c in result if c.only] == ["B"]


def test_a_runtime_upgrade_pairs_the_same_test_and_says_so():
    """Comparing before/after a runtime upgrade is the point of compare: the runtime version alone must not
    split a test into "only in A" + "only in B"; two versions on the same side stay apart (ambiguous)."""
    a = [llm_row("int8", t="t1")]
    b = [llm_row("int8", t="t2", shift=0.10, runtime="onnxruntime 1.25.0")]
    result = compare_rows(a, b)
    assert not [c for c in result if c.only]
    dec = [c for c in result if c.metric == "decode tok/s"][0]
    assert dec.verdict == "better" and dec.test["runtime"] == "onnxruntime 1.24.1 → onnxruntime 1.25.0"
    from host.results.compare import render_compare_md
    md = render_compare_md(result, parse_selector("run=2"), parse_selector("latest"), 0.05)
    assert "runtime=onnxruntime 1.24.1 → onnxruntime 1.25.0" in md
    both = b + [llm_row("int8", t="t2", runtime="onnxruntime 1.26.0")]
    assert sorted(c.only for c in compare_rows(a, both) if c.only) == ["A", "B", "B"]


def test_compare_store_md_jsonl_html(store):
    md = compare("run=2", "latest", store=store)
    assert "| decode tok/s |" in md and "+10.0 %" in md and "better" in md
    lines = [json.loads(x) for x in compare("previous", "latest", store=store, fmt="jsonl").splitlines()]
    assert {x["type"] for x in lines} == {"compare"} and all(x["p"] is not None for x in lines)
    html = compare("run=3", "run=2", store=store, fmt="html")
    assert html.startswith("<!doctype html>") and "within noise" in html and "<script" not in html


@pytest.mark.slow  # three rkdeploy processes
def test_cli_errors_are_one_line_before_any_store_opens(tmp_path, store):
    missing = tmp_path / "none" / "r.sqlite"
    for args, says in ((("bogus", "latest", "--store", missing), "selector 'bogus': term 'bogus' is not a known term"),
                       (("latest", "board=nope", "--store", store), "selector 'board=nope' matches no benchmark rows")):
        p = run_cli("compare", *args)
        assert p.returncode == 1 and p.stderr.startswith("rkdeploy: error: " + says), p.stderr
        assert len(p.stderr.strip().splitlines()) == 1
    assert not missing.parent.exists()
    p = run_cli("compare", "previous", "latest", "--store", store)
    assert p.returncode == 0 and "within noise" in p.stdout


@pytest.mark.slow  # board runner processes with injected delays
def test_runner_runs_compared_end_to_end(tmp_path):
    """Rows of the real board runner (fake backend, known delays): the same run imported twice is within noise;
    a run with twice the per-token delay is a significant decode slow-down."""
    from board.testing.artifacts import write_fake_artifact
    from tests.conftest import ROOT

    store = tmp_path / "r.sqlite"
    runs = {}
    for name, token_ms in (("base", 4.0), ("slow", 8.0)):
        art = write_fake_artifact(str(tmp_path / name), prefill_ms=20.0, token_ms=token_ms)
        runs[name] = subprocess.run([sys.executable, "-m", "board", "bench", "--artifact", art, "--backend", "fake",
                                     "--n-prompt", "16", "--n-gen", "16", "--reps", "5", "--warmup", "0", "--board", "b1"],
                                    capture_output=True, text=True, cwd=ROOT, timeout=120, check=True).stdout
    with ResultStore(store) as s:
        for name in ("base", "base", "slow"):
            s.import_jsonl(runs[name].splitlines())
    same = run_cli("compare", "run=3", "run=2", "--store", store)  # both "base" imports (slow is one row newer)
    assert same.returncode == 0, same.stderr
    rows = [x for x in same.stdout.splitlines() if x.startswith("| fake-model")]
    assert len(rows) == 3 and all(x.endswith("| within noise |") for x in rows), same.stdout
    diff = run_cli("compare", "previous", "latest", "--store", store, "--format", "jsonl")
    by = {c["metric"]: c for c in map(json.loads, diff.stdout.splitlines())}
    assert by["decode tok/s"]["verdict"] == "worse" and by["decode tok/s"]["p"] == pytest.approx(2 / 252)
    assert 0.4 < by["decode tok/s"]["ratio"] < 0.6  # 4 ms -> 8 ms per token


def test_bench_rows_record_the_rkdeploy_commit_that_compare_selects(tmp_path):
    """host.bench stamps env.rkdeploy (version, commit of this checkout, dirty) on every row it streams."""
    from board.rows import ResultRow
    from host.bench import BenchParams, bench_artifact
    from tests.conftest import ROOT

    line = json.dumps({"type": "row", **llm_row("int8").to_dict()})
    rows = list(bench_artifact("/nowhere", "fake", run_stream=lambda argv: iter([line + "\n"]),
                               params=BenchParams(reps=5), board="b1"))
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    prov = rows[0].env["rkdeploy"]
    assert prov["commit"] == (head or None) and "version" in prov  # not a git checkout: commit and dirty None
    assert isinstance(prov["dirty"], bool) if head else prov["dirty"] is None
    assert isinstance(rows[0], ResultRow) and rows[0].env["cpu"] == llm_row("int8").env["cpu"]
    if head:
        assert apply_selector(rows, parse_selector(f"commit={head[:7]}"), ("scheme",)) == rows
