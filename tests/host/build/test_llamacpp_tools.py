"""The llama.cpp build's cache key and the GGUF kind's pre-build checks (no build, no model: fast tier)."""

from __future__ import annotations

import json

import pytest

from host.build import gguf, llamacpp_tools
from host.errors import BuildError

INTEL = "x86_64-amx_bf16-amx_int8-amx_tile-avx-avx2-avx512bw-avx512f-avx512_vnni-fma"
AMD = "x86_64-avx-avx2-fma"


def test_key_holds_the_host_isa_and_no_amx_on_amx_hosts(monkeypatch):
    """A -march=native build from the AVX-512/AMX Intel must never be reused on the AVX2-only AMD (SIGILL)."""
    monkeypatch.setattr(llamacpp_tools, "host_isa", lambda: INTEL)
    intel, intel_flags = llamacpp_tools.build_key(), llamacpp_tools.c_flags()
    monkeypatch.setattr(llamacpp_tools, "host_isa", lambda: AMD)
    amd, amd_flags = llamacpp_tools.build_key(), llamacpp_tools.c_flags()
    assert intel != amd and intel.startswith(llamacpp_tools.VERSION) and amd.startswith(llamacpp_tools.VERSION)
    assert intel_flags == "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16" and amd_flags == ""
    assert "-DGGML_NATIVE=ON" in llamacpp_tools.CMAKE_FLAGS and "-DBUILD_SHARED_LIBS=OFF" in llamacpp_tools.CMAKE_FLAGS


def test_host_isa_reads_this_cpu():
    isa = llamacpp_tools.host_isa()
    assert isa.split("-")[0] and ("avx2" in isa.split("-") or not isa.startswith("x86_64"))


def test_missing_build_names_the_make_target(monkeypatch, tmp_path):
    monkeypatch.setenv("RKDEPLOY_CACHE", str(tmp_path))
    assert llamacpp_tools.cache_root() == tmp_path / "llamacpp" and not llamacpp_tools.is_built()
    with pytest.raises(llamacpp_tools.LlamaCppError, match="make llamacpp"):
        llamacpp_tools.tool("llama-quantize")
    with pytest.raises(llamacpp_tools.LlamaCppError, match="make llamacpp"):
        llamacpp_tools.driver()


def _jobs(make_recipe, tmp_path, edit):
    from host.config import load_recipe
    from host.plan import plan

    return {j.scheme: j for j in plan(load_recipe(make_recipe(edit)), "rk3576", root=tmp_path / "art", kinds=("gguf",))}


def _with_gguf(calibration=True):
    def edit(data):
        for m in data["models"]:
            if m["kind"] == "llm":
                m["gguf"] = ["gguf-f16", "gguf-q8_0", "gguf-q4_0", "gguf-q4_k_m"]
                if not calibration:
                    m.pop("calibration")
    return edit


def test_only_k_quants_hash_the_calibration(make_recipe, tmp_path):
    jobs = _jobs(make_recipe, tmp_path, _with_gguf())
    assert sorted(jobs) == ["gguf-f16", "gguf-q4_0", "gguf-q4_k_m", "gguf-q8_0"]
    ins = {s: gguf.inputs(j) for s, j in jobs.items()}
    assert ins["gguf-q4_k_m"]["imatrix"]["calibration_sha256"] and ins["gguf-q4_k_m"]["type"] == "Q4_K_M"
    assert all("imatrix" not in ins[s] for s in ("gguf-f16", "gguf-q8_0", "gguf-q4_0"))
    assert all(gguf.check(j) == [] for j in jobs.values())


def test_k_quant_without_calibration_is_refused_before_work(make_recipe, tmp_path):
    jobs = _jobs(make_recipe, tmp_path, _with_gguf(calibration=False))
    assert gguf.check(jobs["gguf-q8_0"]) == []
    [msg] = gguf.check(jobs["gguf-q4_k_m"])
    assert "gguf-q4_k_m" in msg and "calibration" in msg


def test_unknown_gguf_scheme_names_the_allowed_ones(make_recipe):
    from host.config import load_recipe
    from host.errors import RkdeployError

    def edit(data):
        data["models"][0]["gguf"] = ["gguf-q3_k"]
    with pytest.raises((RkdeployError, ValueError), match="gguf-q3_k.*gguf-q4_k_m"):
        load_recipe(make_recipe(edit))


def test_calibration_text_is_prompts_and_answers(tmp_path):
    p = tmp_path / "c.json"
    p.write_text(json.dumps([{"input": "Q1 ", "target": "A1"}, {"input": "Q2 ", "target": "A2"}]))
    assert gguf.calibration_text(p) == "Q1 A1\n\nQ2 A2"
    p.write_text(json.dumps({"input": "x"}))
    with pytest.raises(BuildError, match="list of objects"):
        gguf.calibration_text(p)


def test_backend_without_driver_says_how_to_get_it(monkeypatch, tmp_path):
    from board.backends import backend_status

    monkeypatch.setenv("RKDEPLOY_LLAMACPP_RUN", str(tmp_path / "missing"))
    ok, why = backend_status("llamacpp")
    assert not ok and "rk-llama-run" in why and "make llamacpp" in why


# --- the aarch64 cross build for boards (issue 15, part 2) ------------------------------------------

def test_aarch64_build_targets_rk3588_cores_only_libllama():
    """GGML_NATIVE off (the build host is x86), the A76/A55 ISA: dotprod + fp16, never i8mm/SVE/SME."""
    flags = llamacpp_tools.CROSS_CMAKE_FLAGS
    assert "-DGGML_NATIVE=OFF" in flags and "-DGGML_NATIVE=ON" not in flags
    assert "-DGGML_CPU_ARM_ARCH=armv8.2-a+dotprod+fp16" in flags and "-DBUILD_SHARED_LIBS=OFF" in flags
    assert not any(x in " ".join(flags) for x in ("i8mm", "sve", "sme"))
    assert llamacpp_tools.CROSS_TARGETS == ("llama",) and "-DLLAMA_BUILD_TOOLS=OFF" in flags
    assert "aarch64-linux-gnu-g++" in llamacpp_tools.TOOLCHAIN and "CMAKE_SYSTEM_PROCESSOR aarch64" in llamacpp_tools.TOOLCHAIN
    key = llamacpp_tools.aarch64_key()
    assert key.startswith(f"{llamacpp_tools.VERSION}-aarch64-cross-") and key != llamacpp_tools.build_key()


def test_missing_aarch64_build_names_the_make_target(monkeypatch, tmp_path):
    monkeypatch.setenv("RKDEPLOY_CACHE", str(tmp_path))
    assert not llamacpp_tools.aarch64_built()
    with pytest.raises(llamacpp_tools.LlamaCppError, match="make llamacpp-aarch64"):
        llamacpp_tools.driver_aarch64()


def test_builder_cli_refuses_unknown_arguments(capsys):
    assert llamacpp_tools.main(["--arm"]) == 2
    assert "unknown argument(s) --arm; allowed: --host, --aarch64" in capsys.readouterr().err


def _pushed_driver(tmp_path, monkeypatch, needs):
    from board.backends import llamacpp

    folder = tmp_path / "bin" / "aarch64"
    folder.mkdir(parents=True)
    exe = folder / "rk-llama-run"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o644)                       # as a push installs it (a content-addressed blob)
    (folder / "rk-llama-run.json").write_text(json.dumps({"arch": "armv8.2-a+dotprod+fp16", "needs_cpu_features": needs}))
    monkeypatch.setattr(llamacpp, "BUNDLED_DIR", str(tmp_path / "bin"))
    monkeypatch.setattr(llamacpp.platform, "machine", lambda: "aarch64")
    monkeypatch.delenv(llamacpp.ENV, raising=False)
    return llamacpp, exe


def test_pushed_driver_is_refused_in_one_line_on_a_cpu_without_its_features(tmp_path, monkeypatch):
    """RK3576's Cortex-A72/A53 have no dot product: one line naming what is missing, not a SIGILL."""
    llamacpp, exe = _pushed_driver(tmp_path, monkeypatch, ["asimddp", "asimdhp"])
    monkeypatch.setattr(llamacpp, "cpu_features", lambda: {"fp", "asimd", "crc32"})   # an A72's Features
    monkeypatch.setattr(llamacpp.shutil, "which", lambda _n: None)
    ok, why = llamacpp.available()
    assert not ok and str(exe) in why and "lacks asimddp asimdhp" in why and "armv8.2-a+dotprod+fp16" in why
    assert not exe.stat().st_mode & 0o111          # never made executable there


def test_pushed_driver_is_used_and_made_executable_on_a_cpu_with_its_features(tmp_path, monkeypatch):
    llamacpp, exe = _pushed_driver(tmp_path, monkeypatch, ["asimddp", "asimdhp"])
    monkeypatch.setattr(llamacpp, "cpu_features", lambda: {"fp", "asimd", "asimddp", "asimdhp"})
    assert llamacpp.find_driver() == str(exe) and exe.stat().st_mode & 0o111
    assert llamacpp.find_driver({"driver": str(exe)}) == str(exe)


def test_push_carries_no_llamacpp_driver_without_a_gguf_artifact(tmp_path):
    from host.deploy.push import board_tools, runner_dir
    from host.testing.deploy import write_artifact

    folder = write_artifact(tmp_path / "art" / "m" / "rk3588" / "int8", {"model.onnx": b"x"})
    from host.deploy.push import artifact_dir

    arts = [artifact_dir(folder, tmp_path / "art")]
    assert board_tools(arts) == {} and not any(n.startswith("bin/") for n in runner_dir(artifacts=arts).files)


def test_push_without_the_aarch64_build_carries_no_driver_and_says_why(tmp_path, monkeypatch, capsys):
    """A push never starts the cross build, nor fails the runner and the other artifacts for want of it."""
    from host.deploy.push import artifact_dir, board_tools
    from host.testing.deploy import write_artifact

    monkeypatch.setenv("RKDEPLOY_CACHE", str(tmp_path / "cache"))
    folder = write_artifact(tmp_path / "art" / "m" / "any" / "gguf-q4_0", {"model.gguf": b"GGUF"}, format="gguf",
                            artifact_kind="gguf")
    assert board_tools([artifact_dir(folder, tmp_path / "art")]) == {}
    err = capsys.readouterr().err
    assert "without rk-llama-run" in err and "make llamacpp-aarch64" in err


def test_row_runtime_names_the_llamacpp_the_driver_was_built_from(tmp_path):
    """Rows say which llama.cpp ran (the pushed driver's sidecar, else the artifact's toolkit); a sidecar is
    untrusted board data: a non-printable or oversized version is dropped."""
    from board.backends.llamacpp import _driver_version

    exe = tmp_path / "rk-llama-run"
    assert _driver_version(str(exe)) is None
    (tmp_path / "rk-llama-run.json").write_text(json.dumps({"llamacpp": "llama-cpp-python 0.3.36 sdist"}))
    assert _driver_version(str(exe)) == "llama-cpp-python 0.3.36 sdist"
    for bad in ("x\x1b[2J", "v" * 200, 7):
        (tmp_path / "rk-llama-run.json").write_text(json.dumps({"llamacpp": bad}))
        assert _driver_version(str(exe)) is None
