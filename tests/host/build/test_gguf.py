"""GGUF artifacts and the llama.cpp backend on real parts: the cached llama.cpp build (built by the
session fixture with the same code as ``make llamacpp``; ~20 min once per host ISA, then seconds), the
built-in SmolLM2-135M, the recipe's calibration JSON, ``rk-llama-run``.

Measured on a 2-core Intel Xeon (AVX-512/AMX) under load ~5, with the build cached: the module ~2 min
(three conversions + quantizations + one imatrix ~1 min, quality on 1,024 held-out tokens, a tiny bench).
"""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from tests.conftest import QUALITY_TEST

pytestmark = pytest.mark.real
LLM = "smollm2-135m-instruct"
SCHEMES = ("gguf-q8_0", "gguf-q4_0", "gguf-q4_k_m")


@pytest.fixture(scope="module")
def gguf_export(tmp_path_factory, default_recipe_data, builtin_models, llamacpp):
    from host.export import export

    base = tmp_path_factory.mktemp("gguf-export")
    data = copy.deepcopy(default_recipe_data)
    data["models"] = [m for m in data["models"] if m["name"] == LLM]
    data["models"][0].update(onnx=[], targets={}, gguf=list(SCHEMES))
    data["quality"] = dict(QUALITY_TEST)
    recipe = base / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(data, sort_keys=False))
    mp = pytest.MonkeyPatch()
    mp.setenv("RKDEPLOY_QUALITY_CACHE", str(base / "quality-cache"))
    rep = export(recipe, "rk3576", root=base / "artifacts", progress=False)
    yield SimpleNamespace(base=base, recipe=recipe, root=base / "artifacts", report=rep, store=base / "results.sqlite")
    mp.undo()


def test_export_builds_each_scheme_with_a_manifest_and_skips_when_unchanged(gguf_export):
    from host.export import export
    from host.manifest import read_manifest

    rep = gguf_export.report
    assert [(r.job.scheme, r.status) for r in rep.results] == [(s, "built") for s in SCHEMES], \
        [r.reason for r in rep.results]
    sizes = {}
    for r in rep.results:
        m = read_manifest(r.job.out_dir)
        assert (m.artifact_kind, m.format, m.entry, m.model_kind) == ("gguf", "gguf", "model.gguf", "llm")
        assert (r.job.out_dir / "model.gguf").read_bytes()[:4] == b"GGUF" and m.vocab_size == 49152
        sizes[r.job.scheme] = m.files["model.gguf"]["size"]
    # Q8_0 is 8.5 bits a weight, Q4_0 4.5: the 4-bit files are well below the 8-bit one
    assert sizes["gguf-q4_0"] < 0.75 * sizes["gguf-q8_0"] and sizes["gguf-q4_k_m"] < sizes["gguf-q8_0"]
    km = read_manifest(rep.results[2].job.out_dir).extra
    assert km["imatrix"]["chunks"] and km["imatrix"]["chunks"] >= 4
    # 576 % 256 != 0: llama-quantize falls back to a 32-block type for SmolLM2's k-quant tensors
    assert km["quantize"]["fallback_tensors"] > 0, km["quantize"]
    again = export(gguf_export.recipe, "rk3576", root=gguf_export.root, progress=False)
    assert [r.status for r in again.results] == ["up to date"] * len(SCHEMES)


def _backend(llamacpp, folder, n_ctx=256):
    from board.backends.llamacpp import LlamaCppBackend
    from host.manifest import read_manifest

    be = LlamaCppBackend()
    be.load(str(folder), {"manifest": read_manifest(folder).to_dict(), "threads": 2, "n_ctx": n_ctx,
                          "driver": str(llamacpp.driver)})
    return be


def test_driver_generates_greedy_tokens_that_match_its_logprobs(gguf_export, llamacpp):
    """gen = argmax of logprobs at every step: the two protocol paths agree on OUR ids."""
    from board.runner import make_prompt

    be = _backend(llamacpp, gguf_export.report.results[0].job.out_dir)
    try:
        assert be.info()["n_vocab"] == 49152
        prompt = make_prompt(16, 49152)
        got: list[int] = []
        be.generate(prompt, 6, got.append)
        assert len(got) == 6
        lp = be.logprobs(prompt + got[:-1])
        assert lp.shape == (21, 49152) and np.allclose(np.exp(lp).sum(axis=1), 1.0, atol=1e-3)
        assert [int(i) for i in lp[15:].argmax(axis=1)] == got
        with pytest.raises(Exception, match="do not fit n_ctx"):
            be.generate(make_prompt(250, 49152), 10, got.append)
        be.generate(prompt, 2, got.append)      # still serving after a refused request
    finally:
        be.close()


def test_quality_rows_for_gguf_artifacts(gguf_export):
    from host.config import load_recipe
    from host.quality import evaluate

    rows = evaluate(load_recipe(gguf_export.recipe), "rk3576", root=gguf_export.root, simulated=False,
                    store=gguf_export.store)
    by = {r["scheme"]: r for r in rows if r["backend"] == "llamacpp"}
    assert sorted(by) == sorted(SCHEMES)
    for r in by.values():
        assert r["method"] == "measured" and r["n_tokens"] > 500 and math.isfinite(r["ppl"])
        assert r["env"]["llamacpp_build"] and r["env"]["host_cpu"]["model"]
    q8, q4 = by["gguf-q8_0"], by["gguf-q4_0"]
    # Q8_0 is close to float, Q4_0 clearly not: the rows measure the artifact, not the float model
    assert q8["kld_mean"] < 0.02 and q8["top1_agree"] > 0.9 and abs(q8["ppl_ratio"] - 1) < 0.03
    assert q4["kld_mean"] > 3 * q8["kld_mean"]
    assert by["gguf-q4_k_m"]["kld_mean"] < q4["kld_mean"]


def test_runner_bench_row_for_a_gguf_artifact(gguf_export, llamacpp, tmp_path, monkeypatch):
    """The board runner (python -m board bench) on a GGUF artifact: same prompt ids/n_gen/reps as others."""
    from host.bench import BenchParams, bench_local

    monkeypatch.setenv("RKDEPLOY_LLAMACPP_RUN", "")   # unset: the local runner gets this host's build
    store = tmp_path / "results.sqlite"
    summary = bench_local(recipe=gguf_export.recipe, target="rk3576", store=store, artifacts_root=gguf_export.root,
                          params=BenchParams(n_prompt=16, n_gen=8, reps=2, warmup=1), log=lambda _m: None)
    rows = [r for r in summary.rows if r.backend == "llamacpp"]
    assert sorted(r.scheme for r in rows) == sorted(SCHEMES), [(r.scheme, r.error) for r in summary.rows]
    for r in rows:
        assert r.status == "ok" and r.n_prompt == 16 and r.n_gen == 8 and r.decode_tps > 0 and r.prefill_tps > 0
        # the model lives in rk-llama-run: the row's peak is runner + driver (not the 20-MB Python runner alone)
        driver = r.runtime_perf["driver_vmhwm_mb"]
        assert r.peak_rss_method.endswith("+driver") and driver > 50 and r.peak_rss_mb > driver, (r.peak_rss_mb, driver)


def test_driver_logprobs_give_llama_perplexity_kl_divergence(gguf_export, llamacpp, builtin_models, tmp_path):
    """Parity with llama.cpp's own tool: KLD(F16 || Q4_0) from rk-llama-run's log-probs, on llama-perplexity's
    layout (chunks of 512 held-out tokens, positions 256..510 scored), equals ``llama-perplexity --kl-divergence``."""
    import re
    import subprocess

    from tokenizers import Tokenizer

    from host.build.gguf import convert_f16
    from tests.conftest import DEFAULT_RECIPE

    ctx, chunks = 512, 2
    text = (DEFAULT_RECIPE.parent / yaml.safe_load(DEFAULT_RECIPE.read_text())["text"]["heldout"]).resolve()
    q4 = next(r.job.out_dir for r in gguf_export.report.results if r.job.scheme == "gguf-q4_0")
    f16_dir = tmp_path / "f16"
    f16_dir.mkdir()
    convert_f16(builtin_models[LLM], f16_dir / "model.gguf", lambda _m: None)
    ppl = str(llamacpp.tools.tool("llama-perplexity"))
    base = tmp_path / "base.kld"
    common = ["-c", str(ctx), "--chunks", str(chunks), "-t", "2"]
    subprocess.run([ppl, "-m", str(f16_dir / "model.gguf"), "-f", str(text), "--kl-divergence-base", str(base), *common],
                   check=True, capture_output=True)
    out = subprocess.run([ppl, "-m", str(q4 / "model.gguf"), "--kl-divergence-base", str(base), "--kl-divergence",
                          *common], check=True, capture_output=True, text=True)
    theirs = float(re.search(r"Mean\s+KLD:\s+([0-9.]+)", out.stdout + out.stderr).group(1))

    ids = Tokenizer.from_file(str(q4 / "tokenizer.json")).encode(text.read_text()).ids
    klds = []
    for folder in (f16_dir, q4):
        from board.backends.llamacpp import LlamaCppBackend

        be = LlamaCppBackend()
        be.load(str(folder), {"manifest": {"entry": "model.gguf"}, "threads": 2, "n_ctx": ctx + 8,
                              "driver": str(llamacpp.driver)})
        try:
            klds.append([be.logprobs(ids[c * ctx:(c + 1) * ctx])[ctx // 2:ctx - 1].astype(np.float64)
                         for c in range(chunks)])
        finally:
            be.close()
    ours = float(np.mean(np.concatenate([(np.exp(f) * (f - q)).sum(axis=1) for f, q in zip(*klds, strict=True)])))
    assert theirs > 0.1 and abs(ours - theirs) < 0.01 * theirs, (ours, theirs)
