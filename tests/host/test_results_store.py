"""Results store and renderers: round trip, schema versions, the vendor-style table, one definition."""

from __future__ import annotations

import csv
import io
import json
import sqlite3

import pytest

from board.rows import ResultRow, field_names, fields, header
from host.results import STORE_SCHEMA_VERSION, ResultStore, StoreError, render
from tests.conftest import run_cli


def bench_row(scheme="int8", decode=22.2, **kw):
    base = dict(kind="bench", test="pp+tg", model="smollm2-135m-instruct", target="rk3576", scheme=scheme,
                backend="onnxruntime", board="local", n_prompt=128, n_gen=64, threads=2, ttft_ms=220.5,
                prefill_tps=580.25, decode_tps=decode, decode_stddev_tps=0.51, peak_rss_mb=295.3,
                avg_ns=3_100_000_000, stddev_ns=12_000_000, avg_ts=61.9, stddev_ts=0.2,
                samples_ns=[3_100_000_000, 3_090_000_000], samples_ts=[61.9, 62.1], test_time="2026-11-28T08:00:00Z",
                env={"kernel": "6.1", "cpu": {"cores": 2}}, artifact_sha256=f"sha-{scheme}")
    base.update(kw)
    return ResultRow(**base)


def quality_row(scheme="int8", **kw):
    base = dict(kind="quality", test="ppl", model="smollm2-135m-instruct", target="rk3576", scheme=scheme,
                backend="onnxruntime", ppl=12.3, ppl_ratio=1.0123, kld_mean=0.0123, kld_p99=0.2,
                top1_agree=0.951, n_tokens=4096, method="measured", artifact_sha256=f"sha-{scheme}")
    if kw.get("method") == "simulated":
        base["artifact_sha256"] = None   # a simulated row describes the scheme, not a built artifact
    base.update(kw)
    return ResultRow(**base)


def encoder_row(**kw):
    base = dict(kind="bench", test="encode", model="all-minilm-l6-v2", target="rk3576", scheme="int8-dyn",
                backend="onnxruntime", board="local", batch=1, seq_len=128, threads=2, latency_ms=6.5,
                latency_stddev_ms=0.3, latency_p50_ms=6.4, latency_p99_ms=7.9, seqs_per_s=153.8, peak_rss_mb=120.0)
    base.update(kw)
    return ResultRow(**base)


def test_add_and_filter(tmp_path):
    with ResultStore(tmp_path / "r.sqlite") as s:
        s.add(bench_row("fp32"))
        s.add(bench_row("int8").to_dict())
        s.add(quality_row())
        assert [r.scheme for r in s.rows()] == ["fp32", "int8", "int8"]
        assert [r.scheme for r in s.rows(kind="bench", scheme="int8")] == ["int8"]
        assert len(s.rows({"kind": "quality"})) == 1
        with pytest.raises(StoreError, match="cannot filter on ppl"):
            s.rows(ppl=1)
        with pytest.raises(StoreError, match="unknown result-row field"):
            s.add({"kind": "bench", "bogus": 1})
        with pytest.raises(StoreError, match="kind 'nope'"):
            s.add({"kind": "nope"})


def test_jsonl_round_trips_unchanged(tmp_path):
    rows = [bench_row("fp32", decode=10.123456789), bench_row("int8"), quality_row(), encoder_row(),
            ResultRow(kind="bench", status="error", error="model.onnx missing", backend="onnxruntime")]
    with ResultStore(tmp_path / "a.sqlite") as a:
        for r in rows:
            a.add(r)
        first = render(a.rows(), "jsonl")
    with ResultStore(tmp_path / "b.sqlite") as b:
        assert b.import_jsonl(first.splitlines()) == len(rows)
        second = render(b.rows(), "jsonl")
    assert first == second
    assert [ResultRow.from_dict(json.loads(x)) for x in first.splitlines()] == rows


def test_report_cli_jsonl_round_trip(tmp_path):
    store = tmp_path / "r.sqlite"
    with ResultStore(store) as s:
        s.add(bench_row())
        s.add(quality_row())
    p = run_cli("report", "--format", "jsonl", "--store", store)
    assert p.returncode == 0, p.stderr
    with ResultStore(tmp_path / "again.sqlite") as s2:
        s2.import_jsonl(p.stdout.splitlines())
    p2 = run_cli("report", "--format", "jsonl", "--store", tmp_path / "again.sqlite")
    assert p2.stdout == p.stdout


def test_newer_store_schema_is_refused(tmp_path):
    path = tmp_path / "r.sqlite"
    ResultStore(path).close()
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value = ? WHERE key = 'store_schema'", (str(STORE_SCHEMA_VERSION + 1),))
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="newer than this rkdeploy reads.*upgrade rkdeploy"):
        ResultStore(path)
    p = run_cli("report", "--store", path)
    assert p.returncode == 1 and p.stderr.startswith("rkdeploy: error:") and "upgrade rkdeploy" in p.stderr


def test_newer_runner_schema_is_refused(tmp_path):
    with ResultStore(tmp_path / "r.sqlite") as s, pytest.raises(StoreError, match="upgrade rkdeploy on the host"):
        s.import_jsonl(['{"type": "hello", "runner_version": "9", "schema_version": 99}'])


def test_markdown_reads_like_the_vendor_table_with_quality_joined():
    md = render([bench_row("fp32", decode=10.2), bench_row("int8"), quality_row("int8"), encoder_row(),
                 quality_row("w4a16", method="simulated", target="rk3576")], "md")
    lines = md.splitlines()
    head = next(ln for ln in lines if ln.startswith("| model"))
    cols = [c.strip() for c in head.strip("|").split("|")]
    assert cols[:4] == ["model", "target", "scheme", "backend"]
    for want in ("TTFT ms", "prefill tok/s", "decode tok/s ± sd", "peak mem MB", "board", "PPL ratio", "KLD", "top-1"):
        assert want in cols, want
    assert cols.index("TTFT ms") < cols.index("decode tok/s ± sd") < cols.index("peak mem MB") < cols.index("board")
    int8 = next(ln for ln in lines if "| int8 |" in ln)
    assert "22.20 ± 0.51" in int8 and "220.5" in int8 and "1.0123" in int8 and "0.951" in int8
    fp32 = next(ln for ln in lines if "| fp32 |" in ln)
    assert "10.20 ± 0.51" in fp32
    assert "### Encoder" in md and "6.50 ± 0.30" in md and "153.8" in md
    assert "### Quality (no benchmark row of the same artifact)" in md and "simulated" in md


def test_measured_quality_beats_simulated_in_the_join():
    md = render([bench_row("w8a8", backend="rkllm"), quality_row("w8a8", method="measured", ppl_ratio=1.05),
                 quality_row("w8a8", method="simulated", backend="fakequant", ppl_ratio=1.09)], "md")
    row = next(ln for ln in md.splitlines() if "| w8a8 | rkllm |" in ln)
    assert "1.0500" in row and "measured" in row and "1.0900" not in md.split("### Quality")[0]


def test_quality_joins_only_the_same_artifact():
    """A quality row of an older build is never shown beside a newer build's speed, nor a simulated row."""
    old_q = quality_row("int8", ppl_ratio=1.0777, artifact_sha256="sha-old", test_time="2026-11-01T00:00:00Z")
    new_bench = bench_row("int8", artifact_sha256="sha-new")
    md = render([old_q, new_bench, quality_row("w8a8", method="simulated", ppl_ratio=1.0555),
                 bench_row("w8a8", backend="rkllm")], "md")
    bench_part, lone = md.split("### Quality (no benchmark row of the same artifact)")
    assert "1.0777" not in bench_part and "1.0777" in lone
    assert "1.0555" not in bench_part and "1.0555" in lone
    # the same build's quality joins, even when a newer build's quality row exists
    md = render([old_q, bench_row("int8", artifact_sha256="sha-old"), quality_row("int8", ppl_ratio=1.0333,
                 artifact_sha256="sha-new")], "md")
    joined = next(ln for ln in md.splitlines() if "| int8 | onnxruntime |" in ln and "22.20" in ln)
    assert "1.0777" in joined and "1.0333" not in joined


def test_degraded_quality_is_flagged_in_store_and_table(tmp_path):
    with ResultStore(tmp_path / "r.sqlite") as s:
        s.add(quality_row("int8-dyn", ppl_ratio=56.7, kld_mean=4.07, top1_agree=0.18, env={}))
        s.add(bench_row("int8-dyn"))
        s.add(quality_row("int8", ppl_ratio=1.001, kld_mean=0.005, top1_agree=0.95, env={}))
        rows = s.rows(kind="quality")
    bad, good = rows
    assert bad.status == "degraded" and "PPL ratio 56.7 > 1.1" in bad.gate and bad.env["gate"] == "degraded"
    assert good.status == "ok" and good.gate is None and good.env["gate"] == "healthy"
    md = render(rows + [bench_row("int8-dyn")], "md")
    line = next(ln for ln in md.splitlines() if "| int8-dyn |" in ln)
    assert "56.7" in line and "PPL ratio 56.7 > 1.1" in line
    assert "### Degraded" in md and "int8-dyn" in md.split("### Degraded")[1]
    # a row stored before the gate existed (status ok) is judged when rendered
    assert "### Degraded" in render([quality_row("int8-dyn", ppl_ratio=9.0)], "md")
    assert "### Degraded" not in render([quality_row("int8-dyn", ppl_ratio=1.05)], "md")


def test_markdown_shows_newest_per_configuration_and_errors():
    md = render([bench_row(decode=1.0), bench_row(decode=2.0),
                 ResultRow(kind="bench", model="m", scheme="x", backend="rkllm", status="error", error="a|b\x1b[31m")],
                "md")
    assert "2.00 ± 0.51" in md and "1.00 ±" not in md
    assert "### Errors" in md and "m/x/rkllm on ?: a|b" in md and "\x1b" not in md


def test_csv_and_html_derive_from_field_metadata():
    rows = [bench_row(), quality_row(), encoder_row()]
    table = list(csv.reader(io.StringIO(render(rows, "csv"))))
    csv_fields = [f.name for f in fields() if "csv" in f.metadata["formats"]]
    assert table[0] == csv_fields and len(table) == 4
    assert json.loads(table[1][table[0].index("samples_ns")]) == [3_100_000_000, 3_090_000_000]
    page = render(rows, "html")
    assert page.startswith("<!doctype html>") and "<th>decode tok/s ± sd</th>" in page and "22.20 ± 0.51" in page
    with pytest.raises(StoreError, match="allowed: md, csv, jsonl, html"):
        render(rows, "xml")


def test_every_field_has_a_renderer():
    """Completeness: each field of the ONE row definition has display metadata and reaches csv/jsonl."""
    csv_head = render([bench_row()], "csv").splitlines()[0].split(",")
    for f in fields():
        assert f.metadata["display"], f.name
        assert header(f.name)
        assert set(f.metadata["formats"]) <= {"md", "html", "csv"}
        assert f.name in csv_head or not f.metadata["formats"], f.name
    assert set(json.loads(render([bench_row()], "jsonl"))) == set(field_names()) | {"type"}


def test_report_on_empty_store(tmp_path):
    p = run_cli("report", "--store", tmp_path / "empty.sqlite")
    assert p.returncode == 0 and "no results yet" in p.stdout


def test_many_processes_open_a_new_store_at_once(tmp_path):
    """Parallel benches on several boards open the same new store: none may see half a schema."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    for round_ in range(8):
        path = tmp_path / f"r{round_}.sqlite"
        procs = [ctx.Process(target=_open_and_add, args=(str(path), i)) for i in range(4)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        assert [p.exitcode for p in procs] == [0, 0, 0, 0], round_
        with ResultStore(path) as s:
            assert len(s.rows()) == 4


def _open_and_add(path, i):
    with ResultStore(path) as s:
        s.add(bench_row(f"s{i}"))


def test_quality_of_an_artifact_benched_only_under_emulation_stays_visible():
    md = render([bench_row("int8", env={"emulated": True, "arch": "aarch64"}, board="vrk3588"),
                 quality_row("int8", ppl_ratio=1.0044)], "md")
    assert "emulated" in md and "1.0044" in md.split("### Quality (no benchmark row of the same artifact)")[1]
