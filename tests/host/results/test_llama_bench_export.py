"""llama-bench's JSONL/SQLite from our rows, read by llama.cpp's own scripts/compare-llama-bench.py.

The script comes from the llama.cpp tree vendored in the llama-cpp-python sdist on PyPI (pip download,
cached under ~/.cache/rkdeploy/llama-cpp-python-sdist/); it imports GitPython and tabulate (rkdeploy[dev]).
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from host.results import ResultStore
from host.results.llamabench import FIELDS, to_llama_bench
from tests.conftest import run_cli
from tests.host.results.sample_rows import demo_run, encoder_row, llm_row

SDIST_VERSION = "0.3.36"
SCRIPT = "vendor/llama.cpp/scripts/compare-llama-bench.py"


def test_records_are_llama_bench_tests():
    """One LLM row -> pp<n_prompt> and tg<n_gen>; every field compare-llama-bench.py joins on is set."""
    row = llm_row("int8", reps=3)
    recs = to_llama_bench([row, encoder_row()], label="run1")
    assert [(r["n_prompt"], r["n_gen"]) for r in recs] == [(128, 0), (0, 64)]
    pp, tg = recs
    assert all(set(FIELDS) <= set(r) and all(r[k] is not None for k in FIELDS) for r in recs)
    assert tg["samples_ts"] == row.samples_decode_tps
    assert tg["avg_ts"] == pytest.approx(row.decode_tps)
    assert pp["samples_ts"] == pytest.approx([128_000 / x for x in row.samples_ttft_ms])
    assert pp["build_commit"] == "run1" and pp["model_type"] == "smollm2-135m-instruct int8 (onnxruntime)"
    assert to_llama_bench([row])[0]["build_commit"] == "1.3.0"  # no rkdeploy commit recorded: the runner version
    at = llm_row("int8", env={"rkdeploy": {"commit": "0123456789abcdef" * 2 + "01234567"}})
    assert to_llama_bench([at])[0]["build_commit"] == "01234567"  # as llama-bench: its own build's short commit


def _script() -> tuple[Path, float]:
    """compare-llama-bench.py from the cached sdist (downloaded once with pip); returns (path, seconds spent)."""
    cache = Path(os.environ.get("RKDEPLOY_SDIST_CACHE") or Path.home() / ".cache" / "rkdeploy" / "llama-cpp-python-sdist")
    root = cache / f"llama_cpp_python-{SDIST_VERSION}"
    script = root / SCRIPT
    t0 = time.monotonic()
    if not script.exists():
        sdist = cache / f"llama_cpp_python-{SDIST_VERSION}.tar.gz"
        if not sdist.exists():
            cache.mkdir(parents=True, exist_ok=True)
            subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                            f"llama-cpp-python=={SDIST_VERSION}", "-d", str(cache)], check=True, timeout=900)
        with tarfile.open(sdist) as tf:
            member = tf.getmember(f"llama_cpp_python-{SDIST_VERSION}/{SCRIPT}")
            tf.extractall(cache, members=[member], filter="data")
    return script, time.monotonic() - t0


@pytest.mark.real
def test_compare_llama_bench_reads_our_export(tmp_path):
    """Two runs (the second 10 % faster decode) exported as llama-bench JSONL and SQLite; the real script
    compares them: exit 0, our rows by name, pp128/tg64, and the tg speedup it computes."""
    script, fetch_s = _script()
    print(f"compare-llama-bench.py ready in {fetch_s:.1f} s")
    store = tmp_path / "r.sqlite"
    with ResultStore(store) as s:
        for r in demo_run("2026-12-02T15:00:00Z") + demo_run("2026-12-02T16:00:00Z", shift=0.10):
            s.add(r)
    jsonl = tmp_path / "lb.jsonl"
    parts = []
    for sel, label in (("previous", "run1"), ("latest", "run2")):
        p = run_cli("report", "--store", store, "--select", sel, "--format", "llama-bench-jsonl", "--label", label)
        assert p.returncode == 0, p.stderr
        parts.append(p.stdout)
        p = run_cli("report", "--store", store, "--select", sel, "--format", "llama-bench-sqlite", "--label", label,
                    "--out", tmp_path / "lb.sqlite")
        assert p.returncode == 0 and "llama-bench records added" in p.stdout, p.stderr
    jsonl.write_text("".join(parts))
    n = sum(1 for _ in jsonl.open())
    with sqlite3.connect(tmp_path / "lb.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM llama_bench").fetchone()[0] == n == 2 * 2 * 6  # 6 LLM rows per run
    for data in (jsonl, tmp_path / "lb.sqlite"):
        t0 = time.monotonic()
        out = subprocess.run([sys.executable, str(script), "-i", str(data), "-b", "run1", "-c", "run2",
                              "--tool", "llama-bench"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
        print(f"{data.name}: compare-llama-bench.py {time.monotonic() - t0:.1f} s\n{out.stdout}")
        assert out.returncode == 0, out.stderr
        table = out.stdout
        for name in ("smollm2-135m-instruct int8 (onnxruntime)", "smollm2-135m-instruct w8a8 (rkllm)", "pp128", "tg64"):
            assert name in table
        tg = [line for line in table.splitlines() if "int8 (onnxruntime)" in line and "tg64" in line and "local" in line]
        assert len(tg) == 1 and tg[0].rstrip(" |").split("|")[-1].strip() == "1.10", tg  # the speedup column


def test_jsonl_lines_are_llama_bench_json(tmp_path):
    """Booleans as JSON booleans, as llama-bench writes them; samples arrays present."""
    store = tmp_path / "r.sqlite"
    with ResultStore(store) as s:
        s.add(llm_row("int4"))
    from host.results import report

    lines = [json.loads(x) for x in report(store=store, fmt="llama-bench-jsonl", label="abc").splitlines()]
    assert len(lines) == 2 and lines[0]["embeddings"] is False and lines[0]["samples_ns"]
