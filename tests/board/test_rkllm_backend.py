"""rkllm board backend: real gcc, real ctypes, the real runner CLI, against the librkllmrt shim.

The shim (board/testing/rkllm_shim.c) is compiled here for each ABI, exports the vendor symbols
with the documented layouts, echoes what it received, and emits tokens with injected delays; its
echo file also carries its own clock's stamps, the reference the runner's timers are checked against.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from board.backends.rkllm import LAYOUTS, Abi, BackendError, abi_for_version
from board.testing.rkllm import build_shim, write_rkllm_artifact
from tests.conftest import ROOT  # noqa: E402

PREFILL_MS, TOKEN_MS = 300.0, 30.0
N_PROMPT, N_GEN = 128, 32
TOOLKIT_FOR_ABI = {"1.3.0": "1.3.0", "1.2.1": "1.2.2"}

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")


@pytest.fixture(scope="session")
def shims(tmp_path_factory) -> dict[str, str]:
    out = tmp_path_factory.mktemp("rkllm-shim")
    return {abi: build_shim(str(out), abi) for abi in ("1.3.0", "1.2.1")}


def bench(artifact, lib, *extra, env=None, n_gen=N_GEN, reps=3):
    e = {k: v for k, v in os.environ.items() if not k.startswith(("RKLLM", "RKDEPLOY_RKLLM"))}
    e.update({"RKLLM_SHIM_PREFILL_MS": str(PREFILL_MS), "RKLLM_SHIM_TOKEN_MS": str(TOKEN_MS)})
    e.update(env or {})
    res = subprocess.run([sys.executable, "-m", "board", "bench", "--backend", "rkllm", "--artifact", str(artifact),
                          "--rkllm-lib", lib, "--n-prompt", str(N_PROMPT), "--n-gen", str(n_gen), "--reps", str(reps),
                          "--warmup", "1", *extra], capture_output=True, text=True, cwd=ROOT, env=e, timeout=120)
    lines = [json.loads(x) for x in res.stdout.splitlines()]  # every stdout line is JSONL: the runtime log is captured
    assert lines[0]["type"] == "hello"
    rows = [x for x in lines if x["type"] == "row"]
    assert len(rows) == 1
    return res, rows[0]


def echo(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_ctypes_layouts_match_the_compiled_abi(shims):
    """Parity: every size/offset of our ctypes table equals the C compiler's for that ABI."""
    import ctypes

    for abi, lib_path in shims.items():
        lib = ctypes.CDLL(lib_path)
        lib.rkllm_shim_layout.restype = ctypes.c_long
        lib.rkllm_shim_layout.argtypes = [ctypes.c_char_p]
        ours = Abi(abi).layout()
        theirs = {k: lib.rkllm_shim_layout(k.encode()) for k in ours}
        assert ours == theirs, abi
        Abi(abi).check_layout()
    assert set(LAYOUTS) == {"1.2.1", "1.3.0"}  # every ABI in the table has a shim build


@pytest.mark.parametrize("abi", ["1.2.1", "1.3.0"])
def test_bench_rows_match_the_shim_clock_and_carry_runtime_perf(abi, shims, tmp_path):
    art = write_rkllm_artifact(str(tmp_path / "art"), TOOLKIT_FOR_ABI[abi])
    echo_file = tmp_path / "echo.jsonl"
    res, row = bench(art, shims[abi], env={"RKLLM_SHIM_ECHO": str(echo_file)})
    assert res.returncode == 0, res.stderr
    assert row["status"] == "ok" and row["backend"] == "rkllm"
    perf = row["runtime_perf"]
    print(f"ABI {abi}: TTFT {row['ttft_ms']:.2f} ms (injected {PREFILL_MS}), decode {row['decode_tps']:.3f} tok/s "
          f"(injected {1000.0 / TOKEN_MS}); runtime perf prefill {perf['prefill_time_ms']} ms, "
          f"generate {perf['generate_time_ms']} ms for {perf['generate_tokens']} tokens")
    assert (row["n_prompt"], row["n_gen"]) == (N_PROMPT, N_GEN)
    # the runner's timers vs the shim's own clock (its echo file; the runner never reads it), per rep
    timing = [e for e in echo(echo_file) if e["event"] == "timing"][1:]  # after the warmup run
    assert len(timing) == 3
    for t, ttft, decode in zip(timing, row["samples_ttft_ms"], row["samples_decode_tps"], strict=True):
        assert t["t_first_ms"] - t["t_enter_ms"] <= ttft < t["t_first_ms"] - t["t_enter_ms"] + TOKEN_MS / 3
        assert decode == pytest.approx((N_GEN - 1) * 1000.0 / (t["t_last_ms"] - t["t_first_ms"]), rel=0.015)
    # the runtime's own perf stats from the FINISH callback, beside ours: they are the shim's clock
    runs = perf["runs"][1:]
    for t, r in zip(timing, runs, strict=True):
        assert r["prefill_time_ms"] == pytest.approx(t["t_first_ms"] - t["t_enter_ms"], abs=0.01)
        assert r["generate_time_ms"] == pytest.approx(t["t_last_ms"] - t["t_first_ms"], abs=0.01)
    assert perf["prefill_tokens"] == N_PROMPT and perf["generate_tokens"] == N_GEN
    # vs the injected delays: a sleep never ends early; upper bounds only to an order of magnitude
    assert PREFILL_MS <= perf["prefill_time_ms"] and row["ttft_ms"] < 10 * PREFILL_MS
    assert (N_GEN - 1) * TOKEN_MS / 10 < perf["generate_time_ms"] < 10 * (N_GEN - 1) * TOKEN_MS
    assert perf["memory_usage_mb"] > 0 and len(perf["runs"]) == 1 + 3  # warmup + reps
    assert any(f"rkllm-runtime version: {abi}" in x for x in perf["log_tail"])  # RKLLM_LOG_LEVEL=1 captured
    assert any(x.startswith("I rkllm: Generate") for x in perf["log_tail"])
    info = row["env"]["backend"]
    assert info["abi"] == abi and info["abi_source"] == f"artifact toolkit {TOOLKIT_FOR_ABI[abi]}"
    assert info["version"] == abi and Path(info["log"]).is_file()
    assert "toolkit_test_double" not in info  # not built by the double; run by the shim, and the row says so
    assert row["runtime"] == f"rkllm {abi} (rkdeploy librkllmrt shim)"
    # what the runtime received
    ev = echo(echo_file)
    init = [e for e in ev if e["event"] == "init"]
    runs = [e for e in ev if e["event"] == "run"]
    assert len(runs) == 4
    assert all(e["abi"] == abi for e in ev)
    p = init[-1]
    assert p["model_path"] == str(Path(art) / json.load(open(Path(art) / "manifest.json"))["entry"])
    assert (p["n_batch"], p["top_k"], p["max_new_tokens"], p["max_context_len"], p["is_async"]) == (1, 1, N_GEN, 4096, 0)
    assert p["skip_special_token"] == 1
    if abi == "1.3.0":
        assert p["ignore_eos_token"] == 1
    from board.runner import make_prompt

    prompt = make_prompt(N_PROMPT, 49152)
    for r in runs:
        assert (r["input_type"], r["n_tokens"], r["first_id"], r["last_id"], r["sum_ids"]) == (
            1, N_PROMPT, prompt[0], prompt[-1], sum(prompt))  # RKLLM_INPUT_TOKEN, exactly n_prompt ids
        assert (r["mode"], r["keep_history"], r["role"], r["n_gen"]) == (0, 0, "user", N_GEN)
        if abi == "1.3.0":
            assert r["infer_max_new_tokens"] == N_GEN


@pytest.mark.parametrize("abi", ["1.2.1", "1.3.0"])
def test_error_callback_state_becomes_an_error_row(abi, shims, tmp_path):
    art = write_rkllm_artifact(str(tmp_path / "art"), TOOLKIT_FOR_ABI[abi])
    res, row = bench(art, shims[abi], env={"RKLLM_SHIM_ERROR_AT": "5"}, reps=1)
    assert res.returncode == 1
    assert row["status"] == "error"
    assert f"RKLLM_RUN_ERROR after 5 of {N_GEN} tokens" in row["error"]
    assert "board: error: rkllm" in res.stderr


def test_unflushed_runtime_log_lands_in_the_log_not_the_jsonl(shims, tmp_path):
    art = write_rkllm_artifact(str(tmp_path / "art"), "1.3.0")
    log = tmp_path / "run.log"
    res, row = bench(art, shims["1.3.0"], env={"RKLLM_SHIM_NO_FFLUSH": "1", "RKDEPLOY_RKLLM_LOG": str(log)}, reps=1,
                     n_gen=4)  # bench() asserts every stdout line is JSON
    assert row["status"] == "ok", row["error"]
    text = log.read_text()
    assert "rkllm-runtime version: 1.3.0" in text and text.count("I rkllm: Generate") == 2
    assert all(line.startswith("{") for line in res.stdout.splitlines())


def test_waiting_state_tokens_are_counted(shims, tmp_path):
    art = write_rkllm_artifact(str(tmp_path / "art"), "1.3.0")
    res, row = bench(art, shims["1.3.0"], env={"RKLLM_SHIM_WAITING_EVERY": "3"}, reps=1, n_gen=8)
    assert row["status"] == "ok", row["error"]
    assert row["runtime_perf"]["generate_tokens"] == 8


def test_eos_is_ignored_on_1_3_0_and_reported_on_1_2_x(shims, tmp_path):
    a13 = write_rkllm_artifact(str(tmp_path / "a13"), "1.3.0")
    a12 = write_rkllm_artifact(str(tmp_path / "a12"), "1.2.1")
    _, ok = bench(a13, shims["1.3.0"], env={"RKLLM_SHIM_EOS_AT": "4"}, reps=1, n_gen=8)
    assert ok["status"] == "ok" and ok["runtime_perf"]["generate_tokens"] == 8
    _, bad = bench(a12, shims["1.2.1"], env={"RKLLM_SHIM_EOS_AT": "4"}, reps=1, n_gen=8)
    assert bad["status"] == "error"
    assert "produced 4 of 8 tokens" in bad["error"] and "cannot ignore it" in bad["error"]
    assert "cannot be ignored" in bad["env"]["backend"]["eos"]


def test_runtime_version_mismatch_is_reported_before_init(shims, tmp_path):
    art = write_rkllm_artifact(str(tmp_path / "art"), "1.3.0")
    echo_file = tmp_path / "echo.jsonl"
    res, row = bench(art, shims["1.2.1"], env={"RKLLM_SHIM_ECHO": str(echo_file)}, reps=1)
    assert row["status"] == "error" and res.returncode == 1
    assert "librkllmrt 1.2.1" in row["error"] and "rkllm-toolkit 1.3.0" in row["error"]
    assert "install librkllmrt 1.3.0" in row["error"]
    assert not echo_file.exists()  # never called into a mismatched runtime


@pytest.mark.parametrize("forced,lib_abi,toolkit", [("1.3.0", "1.2.1", "1.2.1"), ("1.2.1", "1.3.0", "1.3.0")])
def test_forced_wrong_abi_is_detected_by_n_batch_rejection(forced, lib_abi, toolkit, shims, tmp_path):
    """A wrong --rkllm-abi makes the runtime read n_batch from another offset: it sees 0 and refuses."""
    art = write_rkllm_artifact(str(tmp_path / "art"), toolkit)
    echo_file = tmp_path / "echo.jsonl"
    res, row = bench(art, shims[lib_abi], "--rkllm-abi", forced, env={"RKLLM_SHIM_ECHO": str(echo_file)}, reps=1)
    assert row["status"] == "error" and res.returncode == 1
    assert "rkllm_init failed (-1)" in row["error"] and f"ABI {forced} (--rkllm-abi)" in row["error"]
    assert "n_batch 0 is out of range" in row["error"]
    assert echo(echo_file)[0]["n_batch"] == 0


def test_model_built_by_another_toolkit_is_refused_by_the_runtime(shims, tmp_path):
    art = write_rkllm_artifact(str(tmp_path / "art"), "1.3.0")
    res, row = bench(art, shims["1.2.1"], "--rkllm-abi", "1.2.1", reps=1)
    assert row["status"] == "error"
    assert "invalid rkllm model" in row["error"]  # the runtime's own E line is quoted


def test_abi_table_version_gates():
    assert abi_for_version("1.2.1") == abi_for_version("1.2.3") == "1.2.1"
    assert abi_for_version("v1.3.0") == "1.3.0"
    with pytest.raises(BackendError, match="older than 1.2.1"):
        abi_for_version("1.1.4")
    with pytest.raises(BackendError, match="no known ABI"):
        abi_for_version("1.4.0")
    with pytest.raises(BackendError, match="--rkllm-abi"):
        abi_for_version("")


def test_missing_library_is_a_clear_error_row(tmp_path):
    art = write_rkllm_artifact(str(tmp_path / "art"), "1.3.0")
    res, row = bench(art, str(tmp_path / "nowhere" / "librkllmrt.so"), reps=1)
    assert row["status"] == "error" and "librkllmrt.so not found" in row["error"]


def test_max_context_too_small_for_the_test(shims, tmp_path):
    art = write_rkllm_artifact(str(tmp_path / "art"), "1.3.0", max_context=128)
    _, row = bench(art, shims["1.3.0"], reps=1)
    assert row["status"] == "error" and "exceed the artifact's max_context 128" in row["error"]


# --- doctor ------------------------------------------------------------------------------------

def doctor(root, art, env=None):
    e = {k: v for k, v in os.environ.items() if not k.startswith("RKLLM")}
    e.update(env or {})
    res = subprocess.run([sys.executable, "-m", "board", "doctor", "--sysfs-root", str(root), "--artifact", str(art),
                          "--json"], capture_output=True, text=True, cwd=ROOT, env=e, timeout=60)
    checks = {c["name"]: c for c in json.loads(res.stdout)}
    return res, checks


@pytest.mark.parametrize("lib_abi,toolkit,status", [("1.3.0", "1.3.0", "ok"), ("1.2.1", "1.2.3", "warn"),
                                                     ("1.2.1", "1.3.0", "fail"), (None, "1.3.0", "fail")])
def test_doctor_checks_librkllmrt_against_the_artifact(lib_abi, toolkit, status, shims, tmp_path):
    from board.testing.sysfs import make_rk3588_tree

    root = make_rk3588_tree(str(tmp_path / "root"))
    if lib_abi:
        os.makedirs(os.path.join(root, "usr", "lib"), exist_ok=True)
        shutil.copy(shims[lib_abi], os.path.join(root, "usr", "lib", "librkllmrt.so"))
    art = write_rkllm_artifact(str(tmp_path / "art"), toolkit)
    res, checks = doctor(root, art)
    c = checks["librkllmrt"]
    assert c["status"] == status, c
    if status == "fail":
        assert res.returncode == 1
        assert f"v{toolkit}" in c["fix"]  # says what to install
    assert checks["rknpu"]["status"] == "ok"  # rknpu >= 0.9.8 (the general driver check)


def test_doctor_flags_old_rknpu_driver_for_rkllm(shims, tmp_path):
    from board.testing.sysfs import make_rk3588_tree

    root = make_rk3588_tree(str(tmp_path / "root"), rknpu_version="0.9.6")
    art = write_rkllm_artifact(str(tmp_path / "art"), "1.3.0")
    res, checks = doctor(root, art, env={"RKLLM_LIB": shims["1.3.0"]})
    assert checks["rknpu"]["status"] == "fail" and "0.9.8" in checks["rknpu"]["message"]
    assert checks["librkllmrt"]["status"] == "ok"  # RKLLM_LIB names the library explicitly
    assert res.returncode == 1


# --- end to end: fake toolkit build → shim runtime --------------------------------------------

@pytest.mark.parametrize("toolkit,abi", [("1.3.0", "1.3.0"), ("1.2.2", "1.2.1")])
def test_fake_toolkit_artifact_runs_on_the_matching_runtime(toolkit, abi, shims, tmp_path, monkeypatch, make_recipe,
                                                            llm_dir):
    from host.export import export
    from host.testing.fake_rkllm import install_fake_toolkit

    calib = tmp_path / "calib.json"
    calib.write_text(json.dumps([{"input": "<|im_start|>user\nhi<|im_end|>\n", "target": "Hello."}]))

    def edit(d):
        llm = next(m for m in d["models"] if m["kind"] == "llm")
        llm.update(calibration=str(calib), onnx=[], gguf=[])
        d["models"] = [llm]
    monkeypatch.setenv("RKDEPLOY_VENVS", str(tmp_path / "venvs"))
    monkeypatch.setenv("RKDEPLOY_GPU", "0")
    install_fake_toolkit(tmp_path / "venvs", toolkit)
    rep = export(make_recipe(edit), "rk3588", root=tmp_path / "art", progress=False)
    assert [r.status for r in rep.results] == ["built"], [r.reason for r in rep.results]
    art = tmp_path / "art" / "smollm2-135m-instruct" / "rk3588" / "w8a8"
    res, row = bench(art, shims[abi], reps=1, n_gen=8)
    assert row["status"] == "ok", row["error"]
    assert row["env"]["backend"]["abi"] == abi and row["runtime_perf"]["generate_tokens"] == 8
    # built by the test double: the row says so
    assert row["env"]["backend"]["toolkit_test_double"] is True
    assert row["runtime"] == f"rkllm {abi} (rkdeploy librkllmrt shim; artifact from the rkllm-toolkit test double)"
    from host.manifest import load_artifact

    assert row["artifact_sha256"] == load_artifact(art).sha256   # the whole-artifact digest, as quality rows
