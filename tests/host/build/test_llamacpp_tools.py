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
