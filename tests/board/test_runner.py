"""Board runner: measurement fidelity against an independent clock, aggregates, error rows, registry."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys

import pytest

from board import SCHEMA_VERSION, metrics
from board.backends import BACKENDS, BACKENDS_FOR_FORMAT, BackendUnavailable, backend_status, load_backend
from board.rows import ResultRow, field_names
from board.runner import BenchConfig, default_threads, fastest_cluster_cpus, make_prompt, run_bench
from board.testing.artifacts import write_fake_artifact
from board.testing.sysfs import make_rk3588_tree
from tests.conftest import ROOT


def board_cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "board", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=120)


PREFILL_MS, TOKEN_MS, N_PROMPT, N_GEN, REPS = 300.0, 30.0, 64, 32, 3


@pytest.mark.slow  # compiles the shim, injected delays
@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc (compiles the librkllmrt shim)")
def test_fidelity_against_the_shim_clock(tmp_path):
    """The runner's TTFT and decode rate against a clock that is not its own.

    The runner runs as a user runs it (``python -m board bench``, its own process) on the rkllm
    backend over the librkllmrt shim (C, board/testing/rkllm_shim.c) with 300 ms prefill and 30
    ms/token injected. The shim stamps entering ``rkllm_run`` and handing out the first and last
    token with CLOCK_MONOTONIC and writes them to its echo file, which the runner never reads.
    Per rep: the runner's TTFT spans the shim's (its clock starts before the call and stops in the
    callback) and exceeds it by less than a third of a token (timing one token too many would add
    30 ms); its decode rate equals the shim's within 1.5 % ((n-1)/n would be 3.2 % off). Against
    the injected delays only physical and order-of-magnitude bounds: a sleep never ends early, and
    a shared machine may stretch it; speed goals live in bench/ (bench/speed_goals.py).
    """
    from board.testing.rkllm import build_shim, write_rkllm_artifact

    lib = build_shim(str(tmp_path / "shim"), "1.3.0")
    art = write_rkllm_artifact(str(tmp_path / "art"), "1.3.0")
    echo = tmp_path / "echo.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RKLLM", "RKDEPLOY_RKLLM"))}
    env.update(RKLLM_SHIM_PREFILL_MS=str(PREFILL_MS), RKLLM_SHIM_TOKEN_MS=str(TOKEN_MS), RKLLM_SHIM_ECHO=str(echo))
    p = subprocess.run([sys.executable, "-m", "board", "bench", "--backend", "rkllm", "--artifact", art, "--rkllm-lib",
                        lib, "--n-prompt", str(N_PROMPT), "--n-gen", str(N_GEN), "--reps", str(REPS), "--warmup", "1"],
                       capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    row = json.loads(p.stdout.splitlines()[-1])
    assert row["status"] == "ok", row["error"]
    timing = [e for e in map(json.loads, echo.read_text().splitlines()) if e["event"] == "timing"]
    assert len(timing) == 1 + REPS and all(t["tokens"] == N_GEN for t in timing)
    shim_ttft = [t["t_first_ms"] - t["t_enter_ms"] for t in timing[1:]]  # after the warmup run
    shim_decode = [(N_GEN - 1) * 1000.0 / (t["t_last_ms"] - t["t_first_ms"]) for t in timing[1:]]
    print(f"runner TTFT {row['samples_ttft_ms']} vs shim {shim_ttft} ms; "
          f"decode {row['samples_decode_tps']} vs shim {shim_decode} tok/s")
    for ours, theirs in zip(row["samples_ttft_ms"], shim_ttft, strict=True):
        assert theirs <= ours < theirs + TOKEN_MS / 3
    for ours, theirs in zip(row["samples_decode_tps"], shim_decode, strict=True):
        assert ours == pytest.approx(theirs, rel=0.015)
    assert row["ttft_ms"] == pytest.approx(statistics.mean(row["samples_ttft_ms"]))
    assert row["decode_tps"] == pytest.approx(statistics.mean(row["samples_decode_tps"]))
    # the injected delays: physical lower bound, order-of-magnitude upper bound
    assert PREFILL_MS <= min(shim_ttft) and max(row["samples_ttft_ms"]) < 10 * PREFILL_MS
    assert 0.1 < row["decode_tps"] / (1000.0 / TOKEN_MS) < 10


def test_row_aggregates_match_the_samples(tmp_path):
    art = write_fake_artifact(str(tmp_path / "a"), prefill_ms=20, token_ms=5)
    row = run_bench(BenchConfig(artifact=art, backend="fake", n_prompt=32, n_gen=8, reps=4, warmup=0))
    assert len(row.samples_ns) == len(row.samples_ts) == len(row.samples_decode_tps) == 4
    assert row.avg_ns == round(statistics.mean(row.samples_ns))
    assert row.stddev_ns == round(statistics.stdev(row.samples_ns))
    assert row.samples_ts == [40 * 1e9 / ns for ns in row.samples_ns]  # (n_prompt + n_gen) / wall
    assert row.decode_stddev_tps == pytest.approx(statistics.stdev(row.samples_decode_tps))
    assert row.decode_cv == pytest.approx(row.decode_stddev_tps / row.decode_tps)
    assert row.test == "pp+tg" and row.n_prompt == 32 and row.n_gen == 8 and row.reps == 4
    assert row.model == "fake-model" and row.target == "rk3588" and row.scheme == "fp16"
    assert row.peak_rss_mb > 0 and row.peak_rss_method == "in-process"
    assert row.env["backend"]["name"] == "fake" and row.env["python"]
    assert row.test_time.endswith("Z") and row.threads >= 1
    assert row.npu_load_pct is None  # no rknpu here
    json.dumps(row.to_dict())


def test_encode_test_reports_latency_percentiles(tmp_path):
    art = write_fake_artifact(str(tmp_path / "e"), model_kind="encoder", encode_ms=4)
    row = run_bench(BenchConfig(artifact=art, backend="fake", reps=5, warmup=1, encode_iters=20))
    assert row.status == "ok" and row.test == "encode"
    assert (row.batch, row.seq_len) == (1, 16)
    assert len(row.samples_ns) == 20
    assert row.latency_p50_ms >= 3.9  # the injected 4 ms sleep (upper side unbounded on a shared CI box)
    assert row.latency_p50_ms <= row.latency_p99_ms
    assert row.seqs_per_s == pytest.approx(1000.0 / row.latency_ms)
    assert row.ttft_ms is None and row.decode_tps is None


def test_prompt_is_deterministic_and_exact():
    p = make_prompt(128, 49152)
    assert len(p) == 128 and p == make_prompt(128, 49152)
    assert all(1000 <= t < 49152 for t in p) and len(set(p)) > 100
    assert all(0 <= t < 10 for t in make_prompt(7, 10))


def test_stats_helpers():
    xs = [1.0, 2.0, 4.0]
    assert metrics.stddev(xs) == pytest.approx(statistics.stdev(xs))
    assert metrics.stddev([3.0]) == 0.0
    assert metrics.percentile([1, 2, 3, 4], 50) == 2.5
    assert metrics.percentile(list(range(101)), 99) == 99


def test_npu_load_sampler_reads_debugfs(tmp_path):
    make_rk3588_tree(str(tmp_path), npu_load="NPU load:  Core0: 30%, Core1: 10%, Core2:  2%,\n")
    assert metrics.parse_npu_load("NPU load:  Core0: 30%, Core1: 10%, Core2:  2%,") == pytest.approx(14.0)
    assert metrics.parse_npu_load("NPU load: 35%") == 35.0
    with metrics.NpuLoadSampler(str(tmp_path), interval_s=0.01) as s:
        import time

        time.sleep(0.1)
    assert s.mean == pytest.approx(14.0)
    with metrics.NpuLoadSampler(str(tmp_path / "none")) as s2:
        pass
    assert s2.mean is None


def test_npu_load_in_row_from_fake_board(tmp_path):
    root = make_rk3588_tree(str(tmp_path / "root"), npu_load="NPU load:  Core0: 50%, Core1: 50%, Core2: 50%,\n")
    art = write_fake_artifact(str(tmp_path / "a"), prefill_ms=20, token_ms=5)
    row = run_bench(BenchConfig(artifact=art, backend="fake", n_gen=4, reps=2, warmup=0, sysfs_root=root))
    assert row.npu_load_pct == 50.0 and row.env["rknpu_version"] == "0.9.8"


def test_default_threads_prefer_the_big_cluster(tmp_path):
    root = make_rk3588_tree(str(tmp_path))
    assert fastest_cluster_cpus(root) == 4  # policy4 + policy6 = the four A76 cores
    assert fastest_cluster_cpus(str(tmp_path / "none")) == 0
    assert 1 <= default_threads(root) <= 4


def test_vmhwm_is_read_and_reset():
    assert metrics.read_vmhwm_mb() > 1
    if os.path.exists("/proc/self/clear_refs"):
        assert metrics.reset_vmhwm()


def test_cli_bench_writes_hello_then_row(tmp_path):
    art = write_fake_artifact(str(tmp_path / "a"), prefill_ms=10, token_ms=2)
    out = tmp_path / "rows.jsonl"
    p = board_cli("bench", "--artifact", art, "--backend", "fake", "--n-prompt", 16, "--n-gen", 4, "--reps", 2,
                  "--threads", 3, "--board", "rock5b", "--out", out)
    assert p.returncode == 0, p.stderr
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert lines[0] == {"type": "hello", "runner_version": lines[0]["runner_version"], "schema_version": SCHEMA_VERSION}
    row = ResultRow.from_dict(lines[1])
    assert lines[1]["type"] == "row" and row.status == "ok" and row.board == "rock5b" and row.threads == 3
    assert row.peak_rss_method == "fresh-process"
    for name in ("model_type", "model_size", "n_prompt", "n_gen", "avg_ns", "stddev_ns", "avg_ts", "stddev_ts",
                 "samples_ns", "samples_ts", "test_time", "board", "target", "backend", "scheme", "artifact_sha256",
                 "ttft_ms", "prefill_tps", "decode_tps", "peak_rss_mb", "threads", "env", "status"):
        assert lines[1][name] is not None, name
    assert set(lines[1]) == set(field_names()) | {"type"}


def _error_case(tmp_path, art, backend="fake", *extra):
    out = tmp_path / "rows.jsonl"
    p = board_cli("bench", "--artifact", art, "--backend", backend, "--reps", 1, "--n-gen", 2, "--out", out, *extra)
    assert p.returncode == 1
    assert "Traceback" not in p.stderr and p.stderr.count("\n") == 1 and p.stderr.startswith("board: error: ")
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert rows[0]["type"] == "hello" and rows[1]["status"] == "error" and rows[1]["error"]
    return p.stderr, rows[1]


def test_missing_artifact_is_an_error_row(tmp_path):
    err, row = _error_case(tmp_path, str(tmp_path / "missing"))
    assert "does not exist" in err and row["env"]["python"]


def test_corrupt_manifest_is_an_error_row(tmp_path):
    art = write_fake_artifact(str(tmp_path / "a"))
    with open(os.path.join(art, "manifest.json"), "w") as f:
        f.write('{"schema": 1, "files": ')
    err, _ = _error_case(tmp_path, art)
    assert "manifest.json is not valid JSON" in err


def test_truncated_file_is_an_error_row(tmp_path):
    art = write_fake_artifact(str(tmp_path / "a"))
    with open(os.path.join(art, "weights.bin"), "wb") as f:
        f.write(b"x")
    err, row = _error_case(tmp_path, art)
    assert "weights.bin is 1 bytes" in err and row["model"] is None


def test_backend_load_failure_is_an_error_row(tmp_path):
    art = write_fake_artifact(str(tmp_path / "a"), fail="load")
    err, row = _error_case(tmp_path, art)
    assert "injected load failure" in err and row["model"] == "fake-model"


def test_runtime_exception_mid_test_is_an_error_row(tmp_path):
    art = write_fake_artifact(str(tmp_path / "a"), fail="crash")
    err, row = _error_case(tmp_path, art)
    assert row["error"] == "fake: RuntimeError: simulated runtime crash" and row["model"] == "fake-model"


def test_unimplemented_backend_says_not_available(tmp_path):
    art = write_fake_artifact(str(tmp_path / "a"))
    err, _ = _error_case(tmp_path, art, "llamacpp")
    assert "not available" in err
    err, _ = _error_case(tmp_path, art, "nosuch")
    assert "unknown backend 'nosuch'" in err and "onnxruntime" in err


def test_registry_completeness():
    """Every registered backend either loads with the protocol or says clearly why not."""
    assert {"onnxruntime", "fake", "rkllm", "rknnlite", "llamacpp"} <= set(BACKENDS)
    for name in BACKENDS:
        ok, why = backend_status(name)
        assert why, name
        if ok:
            b = load_backend(name)
            for method in ("load", "close", "info"):
                assert callable(getattr(b, method)), (name, method)
            assert callable(getattr(b, "generate", None)) or callable(getattr(b, "encode", None))
        else:
            with pytest.raises(BackendUnavailable, match="not available|not implemented"):
                load_backend(name)
    assert set(b for bs in BACKENDS_FOR_FORMAT.values() for b in bs) <= set(BACKENDS)
