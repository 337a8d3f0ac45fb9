"""rknnlite backend against the rknnlite.api double (board/testing/rknnlite.py; the wheel is aarch64-only):
core_mask from the target's NPU cores, encode timings through the runner, error rows, row fields."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from board.backends.base import BackendError
from board.testing.rknnlite import FAKE_VERSION, install_fake_rknnlite, read_calls, write_rknn_artifact
from tests.conftest import ROOT

#: the onnxruntime encoder test's row fields (board/runner.py _measure_encode) the rknnlite row must have too
ENCODE_FIELDS = ("latency_ms", "latency_stddev_ms", "latency_p50_ms", "latency_p99_ms", "seqs_per_s", "avg_ns",
                 "stddev_ns", "samples_ns", "samples_ts", "avg_ts", "batch", "seq_len", "wall_ms", "runtime",
                 "model", "target", "scheme", "artifact_sha256", "model_size", "test", "env")


@pytest.fixture(scope="module")
def fake_site(tmp_path_factory):
    return install_fake_rknnlite(str(tmp_path_factory.mktemp("fake-rknnlite")))


@pytest.fixture()
def fake_api(fake_site, monkeypatch):
    """The double importable in this process (fresh module per test)."""
    monkeypatch.syspath_prepend(fake_site)
    for name in ("rknnlite", "rknnlite.api"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    yield
    for name in ("rknnlite", "rknnlite.api"):
        sys.modules.pop(name, None)


def board_bench(site, art, *extra):
    env = {**os.environ, "PYTHONPATH": site + os.pathsep + str(ROOT)}
    p = subprocess.run([sys.executable, "-m", "board", "bench", "--artifact", str(art), "--backend", "rknnlite",
                        *map(str, extra)], capture_output=True, text=True, cwd=ROOT, timeout=300, env=env)
    rows = [json.loads(x) for x in p.stdout.splitlines() if x.startswith("{")]
    return p, rows[-1]


def _load(art, **params):
    from board.artifact import read_artifact
    from board.backends import load_backend

    b = load_backend("rknnlite")
    b.load(str(art), {"manifest": read_artifact(str(art)), "threads": 1, **params})
    return b


@pytest.mark.parametrize("cores, mask, value", [(3, "0_1_2", 7), (2, "0_1", 3), (1, "auto", 0), (None, "auto", 0)])
def test_core_mask_follows_the_targets_npu_cores(fake_api, tmp_path, cores, mask, value):
    art = write_rknn_artifact(str(tmp_path / "a"), npu_cores=cores)
    b = _load(art)
    assert b.info()["core_mask"] == mask and b.info()["core_mask_value"] == value
    emb = b.encode([list(range(16))])
    assert emb.shape == (1, 8)
    b.close()
    calls = read_calls(art)
    assert [c["call"] for c in calls] == ["load_rknn", "init_runtime", "inference", "release"]
    assert calls[1]["core_mask"] == value


def test_explicit_core_mask_and_invalid_ones(fake_api, tmp_path):
    art = write_rknn_artifact(str(tmp_path / "a"), npu_cores=3)
    b = _load(art, core_mask="0")
    assert b.info()["core_mask_value"] == 1
    b.close()
    with pytest.raises(BackendError, match="core_mask 'bogus'; allowed: auto, 0, 1, 2, 0_1, 0_1_2, all"):
        _load(art, core_mask="bogus")
    # the double refuses a core the chip lacks, as librknnrt does: init_runtime returns -1
    art2 = write_rknn_artifact(str(tmp_path / "b"), target="rk3576", npu_cores=2)
    with pytest.raises(BackendError, match=r"init_runtime\(core_mask=NPU_CORE_0_1_2\) returned -1"):
        _load(art2, core_mask="0_1_2")


def test_shape_and_format_errors_are_one_line(fake_api, tmp_path):
    art = write_rknn_artifact(str(tmp_path / "a"), seq_len=16)
    b = _load(art)
    with pytest.raises(BackendError, match=r"fixed input shape \[1, 16\], got \[1, 8\]"):
        b.encode([list(range(8))])
    b.close()
    onnx_like = write_rknn_artifact(str(tmp_path / "c"), extra={"format": "onnx-encoder"})
    with pytest.raises(BackendError, match="runs format rknn, not 'onnx-encoder'"):
        _load(onnx_like)


def test_unavailable_without_the_wheel(monkeypatch):
    from board.backends import backend_status

    monkeypatch.setitem(sys.modules, "rknnlite", None)
    ok, why = backend_status("rknnlite")
    assert not ok and "rknn-toolkit-lite2" in why and "aarch64" in why


def test_encode_row_timings_and_fields_through_the_runner(fake_site, tmp_path):
    """python -m board bench on the double: latency = the injected delay, sequences/s = batch / latency."""
    delay = 0.02
    art = write_rknn_artifact(str(tmp_path / "a"), target="rk3588", npu_cores=3, batch=2, seq_len=32, delay_s=delay)
    p, row = board_bench(fake_site, art, "--reps", 20, "--warmup", 1)
    assert p.returncode == 0, p.stderr
    assert row["status"] == "ok" and row["backend"] == "rknnlite" and row["test"] == "encode"
    missing = [f for f in ENCODE_FIELDS if row.get(f) is None]
    assert not missing, missing
    assert row["batch"] == 2 and row["seq_len"] == 32 and row["target"] == "rk3588"
    assert row["runtime"].startswith("rknn-toolkit-lite2 " + FAKE_VERSION)
    assert row["env"]["backend"]["core_mask"] == "0_1_2"
    # at least ENCODE_MIN_ITERS timed calls; every latency >= the injected sleep, the median close to it
    assert len(row["samples_ns"]) >= 30
    assert min(row["samples_ns"]) >= delay * 1e9
    print(f"injected {delay * 1e3:.1f} ms; measured p50 {row['latency_p50_ms']:.2f} ms, "
          f"p99 {row['latency_p99_ms']:.2f} ms, mean {row['latency_ms']:.2f} ms")
    assert delay * 1e3 <= row["latency_p50_ms"] < delay * 1e3 * 1.5 + 5
    assert row["latency_p50_ms"] <= row["latency_p99_ms"]
    assert row["seqs_per_s"] == pytest.approx(2 * 1000.0 / row["latency_ms"], rel=1e-6)
    calls = [c["call"] for c in read_calls(art)]
    assert calls.count("inference") == 1 + len(row["samples_ns"]) and calls[-1] == "release"


def test_init_runtime_failure_is_an_error_row(fake_site, tmp_path):
    art = write_rknn_artifact(str(tmp_path / "a"), init_ret=-1)
    p, row = board_bench(fake_site, art)
    assert p.returncode == 1
    assert row["status"] == "error" and row["model"] == "fake-encoder" and row["scheme"] == "w8a8"
    assert "init_runtime(core_mask=NPU_CORE_0_1_2) returned -1" in row["error"]
    assert "board: error:" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    assert [c["call"] for c in read_calls(art)] == ["load_rknn", "init_runtime", "release"]


def board_doctor(site, root, art):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(x for x in (site, str(ROOT)) if x)}
    p = subprocess.run([sys.executable, "-m", "board", "doctor", "--sysfs-root", str(root), "--artifact", str(art),
                        "--json"], capture_output=True, text=True, cwd=ROOT, timeout=120, env=env)
    return p, {c["name"]: c for c in json.loads(p.stdout)}


def test_doctor_reports_librknnrt_and_the_wheel_for_rknn_artifacts(fake_site, tmp_path):
    from board.testing.sysfs import make_rk3588_tree

    root = make_rk3588_tree(str(tmp_path / "root"))  # librknnrt 2.3.0 in usr/lib
    ok_art = write_rknn_artifact(str(tmp_path / "a"), extra={"toolkit": {"name": "rknn-toolkit2", "version": "2.3.0"}})
    p, checks = board_doctor(fake_site, root, ok_art)
    assert checks["librknnrt"]["status"] == "ok" and "2.3.0" in checks["librknnrt"]["message"]
    assert checks["rknnlite"]["status"] == "ok" and FAKE_VERSION in checks["rknnlite"]["message"]
    new_art = write_rknn_artifact(str(tmp_path / "b"))  # built by rknn-toolkit2 2.5.0
    p, checks = board_doctor("", root, new_art)
    assert p.returncode == 1
    assert checks["librknnrt"]["status"] == "fail" and "older than the artifact's rknn-toolkit2 2.5.0" in \
        checks["librknnrt"]["message"] and "v2.5.0" in checks["librknnrt"]["fix"]
    assert checks["rknnlite"]["status"] == "fail" and "not installed" in checks["rknnlite"]["message"]
    os.unlink(os.path.join(root, "usr/lib/librknnrt.so"))
    p, checks = board_doctor(fake_site, root, ok_art)
    assert checks["librknnrt"]["status"] == "fail" and "librknnrt.so not found" in checks["librknnrt"]["message"]
