"""The third model family on real trained weights (issue 14): Qwen2, as the built-in ``smollm2-135m-qwen2``
(SmolLM2-135M-Instruct's weights in Qwen2ForCausalLM: zero q/k/v biases, untied head; host/transplant.py).

check → export (onnxruntime-genai int8 + int4 on the Qwen2 config with bias tensors and an untied lm_head; rkllm
w8a8 through the rkllm-toolkit double, labelled) → quality → bench on this host. The float model must score exactly
the Llama original's perplexity (same function), below the sane bound of the family test.

Time (2-core host): deriving the model once ~30 s (cached under ~/.cache/rkdeploy/models/smollm2-135m-qwen2); the
module ~3-5 min at low load, most of it the two genai builds.
"""

from __future__ import annotations

import pytest

from tests.host.test_families_real import BOUND, TOKENS, _float_ppl, _recipe

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def qwen2_dir():
    from host.models import fetch_builtin

    return fetch_builtin("smollm2-135m-qwen2")


def test_qwen2_transplant_scores_the_llama_originals_float_ppl(llm_dir, qwen2_dir, tmp_path, monkeypatch):
    import json

    import numpy as np

    from host.families import detect

    assert detect(json.loads((qwen2_dir / "config.json").read_text())).name == "qwen2"
    ev_q, w_q, ppl_q = _float_ppl(_recipe(tmp_path, "smollm2-qwen2"), monkeypatch, tmp_path / "q")
    ev_l, w_l, ppl_l = _float_ppl(_recipe(tmp_path, "smollm2-135m"), monkeypatch, tmp_path / "l")
    print(f"\nqwen2 transplant float PPL on {TOKENS} held-out tokens: {ppl_q:.4f} (llama original {ppl_l:.4f})")
    assert ev_q.bos == () and np.array_equal(w_q, w_l)
    assert 3.0 < ppl_q < BOUND["llama"] and abs(ppl_q / ppl_l - 1) < 1e-4, (ppl_q, ppl_l)


@pytest.fixture(scope="module")
def qwen2_export(qwen2_dir, tmp_path_factory):
    import yaml

    from host.export import export
    from host.testing.fake_rkllm import install_fake_toolkit
    from tests.conftest import ROOT

    tmp = tmp_path_factory.mktemp("qwen2")
    recipe = _recipe(tmp, "smollm2-qwen2", eval_tokens=128, window=129)
    data = yaml.safe_load(recipe.read_text())      # the rkllm build calibrates: keep the recipe's calibration JSON
    data["models"][0]["calibration"] = str(ROOT / "calib_data" / "smollm2-135m-instruct.calib.json")
    recipe.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.MonkeyPatch.context() as mp:
        venvs = tmp / "venvs"
        mp.setenv("RKDEPLOY_VENVS", str(venvs))
        mp.setenv("RKDEPLOY_GPU", "0")
        mp.delenv("FAKE_RKLLM_FAIL", raising=False)
        install_fake_toolkit(venvs, "1.3.0")
        rep = export(recipe, "rk3588", only=("int8", "int4", "w8a8"), root=tmp / "artifacts", progress=False)
    return tmp, rep


def test_qwen2_check_and_export_build_every_artifact(qwen2_export):
    from host.manifest import read_manifest

    _tmp, rep = qwen2_export
    status = {r.job.scheme: (r.status, r.reason) for r in rep.results}
    assert {s: st for s, (st, _) in status.items()} == {"int8": "built", "int4": "built", "w8a8": "built"}, status
    for r in rep.results:
        m = read_manifest(r.job.out_dir)
        assert "Qwen2" in (m.get("model_note") or ""), m.get("model_note")   # the provenance travels with it
        if r.job.scheme == "w8a8":
            assert m.built_by_test_double                          # the rkllm-toolkit double, labelled as one


def test_qwen2_quality_rows_and_local_bench(qwen2_export):
    from host.bench import BenchParams, bench_local
    from host.quality.evaluate import evaluate

    tmp, rep = qwen2_export
    rows = evaluate(rep.recipe, "rk3588", root=tmp / "artifacts", schemes=("int8", "int4"), simulated=False,
                    store=tmp / "results.sqlite", eval_tokens=128)
    by = {r["scheme"]: r for r in rows}
    print("\nqwen2 quality: " + ", ".join(f"{s} ppl_ratio {by[s]['ppl_ratio']:.4f} kld {by[s]['kld_mean']:.4f}"
                                         for s in ("int8", "int4")))
    assert by["int8"]["ppl_ratio"] < 1.05 and by["int4"]["ppl_ratio"] < 2.0, by
    summary = bench_local(recipe=rep.recipe.path, target="rk3588", params=BenchParams(n_prompt=16, n_gen=4, reps=1, warmup=0),
                          store=tmp / "results.sqlite", artifacts_root=tmp / "artifacts")
    ok = {r.scheme: r for r in summary.rows if r.status == "ok"}
    assert {"int8", "int4"} <= set(ok), [(r.scheme, r.status, r.error) for r in summary.rows]
    assert all(ok[s].decode_tps > 0 and ok[s].backend == "onnxruntime" for s in ("int8", "int4"))
