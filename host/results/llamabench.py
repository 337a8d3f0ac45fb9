"""Rows as llama-bench writes them (``-o jsonl`` / ``-o sql``), so llama.cpp's own
``scripts/compare-llama-bench.py`` reads rkdeploy results (tested against the real script from the
llama.cpp tree vendored in the llama-cpp-python sdist: tests/host/results/test_llama_bench_export.py).

One rkdeploy LLM row (prompt + generation in one test) becomes llama-bench's two tests:
``pp<n_prompt>`` (t/s = n_prompt ÷ TTFT per rep) and ``tg<n_gen>`` (t/s = our decode tok/s per rep, the
tokens after the first). Fields llama-bench has and we do not measure get neutral values (0 or "")
because compare-llama-bench.py joins on them; ``build_commit`` is the run's label (``--label``; default
the first 8 hex digits of the rkdeploy commit that ran it, ``env.rkdeploy.commit``, as llama-bench
records its own build, else the runner version): compare-llama-bench.py compares two with ``-b X -c Y``
and cuts every label to the shortest one's length, so give labels of one length (run1, run2).
Encoder rows have no llama-bench test and are left out.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from board.metrics import mean, stddev
from board.rows import ResultRow
from host.errors import ReportError

# llama-bench's test::get_fields() and get_field_type() (tools/llama-bench/llama-bench.cpp, llama.cpp as
# vendored in llama-cpp-python 0.3.36): the one place this schema lives here. B = bool, I = int, F = float.
FIELDS = {"build_commit": "S", "build_number": "I", "cpu_info": "S", "gpu_info": "S", "backends": "S",
          "model_filename": "S", "model_type": "S", "model_size": "I", "model_n_params": "I", "n_batch": "I",
          "n_ubatch": "I", "n_threads": "I", "cpu_mask": "S", "cpu_strict": "B", "poll": "I", "type_k": "S",
          "type_v": "S", "n_gpu_layers": "I", "n_cpu_moe": "I", "split_mode": "S", "main_gpu": "I",
          "no_kv_offload": "B", "flash_attn": "I", "devices": "S", "tensor_split": "S", "tensor_buft_overrides": "S",
          "load_mode": "S", "lazy_mode": "S", "embeddings": "B", "no_op_offload": "I", "no_host": "B", "repack": "B",
          "fit_target": "I", "fit_min_ctx": "I", "n_prompt": "I", "n_gen": "I", "n_depth": "I", "test_time": "S",
          "avg_ns": "I", "stddev_ns": "I", "avg_ts": "F", "stddev_ts": "F"}
SQL_TYPE = {"S": "TEXT", "I": "INTEGER", "B": "INTEGER", "F": "REAL"}
NPU_BACKENDS = ("rkllm", "rknnlite")


def _common(r: ResultRow, label: str) -> dict:
    env = r.env or {}
    cpu = str((env.get("cpu") or {}).get("model") or "unknown CPU")
    if env.get("emulated"):
        cpu += " (emulated)"
    out = {k: ("" if t == "S" else 0) for k, t in FIELDS.items()}
    out.update(build_commit=label, cpu_info=f"{r.board or 'local'}: {cpu}",
               gpu_info=f"{r.target} NPU" if r.backend in NPU_BACKENDS else "",
               backends=r.runtime or r.backend or "", model_filename=f"{r.model}/{r.target}/{r.scheme}",
               model_type=f"{r.model} {r.scheme} ({r.backend})", model_size=int(r.model_size or 0),
               n_batch=int(r.n_prompt or 0), n_ubatch=int(r.n_prompt or 0), n_threads=int(r.threads or 0),
               test_time=r.test_time or "")
    return out


def _test(base: dict, n_prompt: int, n_gen: int, tokens: int, ts: list[float]) -> dict:
    ns = [int(round(tokens * 1e9 / x)) for x in ts]
    return {**base, "n_prompt": n_prompt, "n_gen": n_gen, "avg_ns": int(round(mean(ns))), "stddev_ns": int(round(stddev(ns))),
            "avg_ts": mean(ts), "stddev_ts": stddev(ts), "samples_ns": ns, "samples_ts": ts}


def to_llama_bench(rows: list[ResultRow], *, label: str | None = None) -> list[dict]:
    """llama-bench records (``FIELDS`` + ``samples_ns``/``samples_ts``) of the ok LLM rows."""
    out = []
    for r in rows:
        if r.kind != "bench" or r.status not in ("ok", "degraded") or r.test != "pp+tg":
            continue
        commit = ((r.env or {}).get("rkdeploy") or {}).get("commit")
        base = _common(r, label or (commit[:8] if commit else None) or r.runner_version or "unknown")
        ttft = [x for x in (r.samples_ttft_ms or []) if x > 0]
        if ttft and r.n_prompt:
            out.append(_test(base, r.n_prompt, 0, r.n_prompt, [r.n_prompt * 1000.0 / x for x in ttft]))
        dec = [x for x in (r.samples_decode_tps or []) if x > 0]
        if dec and r.n_gen:
            out.append(_test(base, 0, r.n_gen, max(r.n_gen - 1, 1), dec))
    return out


def render_llama_bench_jsonl(rows: list[ResultRow], *, label: str | None = None) -> str:
    """One JSON object per line, keys in llama-bench's order, as ``llama-bench -o jsonl`` writes them."""
    import json

    def value(k: str, v: object) -> object:
        return bool(v) if FIELDS.get(k) == "B" else v

    return "".join(json.dumps({k: value(k, v) for k, v in rec.items()}) + "\n" for rec in to_llama_bench(rows, label=label))


def write_llama_bench_sqlite(rows: list[ResultRow], path: Path, *, label: str | None = None) -> int:
    """Add the records to table ``llama_bench`` of ``path`` (created as ``llama-bench -o sql | sqlite3`` does;
    an existing llama-bench database is appended to). Returns the number of records written."""
    recs = to_llama_bench(rows, label=label)
    path = Path(path)
    try:
        db = sqlite3.connect(str(path))
    except sqlite3.Error as e:
        raise ReportError(f"{path}: cannot open as SQLite: {e}") from None
    try:
        with db:
            tables = {t for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if tables - {"llama_bench"}:
                raise ReportError(f"{path}: holds tables {', '.join(sorted(tables))}, not a llama-bench database; "
                                  "give a new file or one llama-bench (or this command) wrote")
            db.execute("CREATE TABLE IF NOT EXISTS llama_bench (" + ", ".join(f"{k} {SQL_TYPE[t]}" for k, t in FIELDS.items())
                       + ")")
            have = {c[1] for c in db.execute("PRAGMA table_info(llama_bench)")}
            missing = sorted(set(FIELDS) - have)
            if missing:
                raise ReportError(f"{path}: table llama_bench lacks {', '.join(missing)} (another llama-bench version); "
                                  "write to a new file")
            names = list(FIELDS)
            db.executemany(f"INSERT INTO llama_bench ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
                           [[int(r[k]) if FIELDS[k] == "B" else r[k] for k in names] for r in recs])
    except sqlite3.DatabaseError as e:
        raise ReportError(f"{path}: not a writable SQLite database ({e}); give a new file") from None
    finally:
        db.close()
    return len(recs)
