"""Quality of every artifact vs the float model, on the real model with real onnxruntime.

Uses the session's ONNX artifacts (``onnx_export`` in conftest.py: 1,024 held-out tokens, its
own quality cache and results store). Thresholds are the issue's acceptance numbers.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT, run_cli

LLM, ENC = "smollm2-135m-instruct", "all-minilm-l6-v2"
LLM_COLUMNS = ("ppl", "ppl_ratio", "kld_mean", "kld_p99", "top1_agree", "n_tokens", "method")
ENC_COLUMNS = ("cos_mean", "cos_min", "nn_agree", "method")


def _recipe(onnx_export):
    from host.config import load_recipe

    return load_recipe(onnx_export.recipe)


def _by(rows, model, method=None):
    return {r["scheme"]: r for r in rows if r["model"] == model and (method is None or r["method"] == method)}


def _show(rows):
    for r in rows:
        vals = " ".join(f"{k}={r[k]:.4f}" if isinstance(r.get(k), float) else f"{k}={r.get(k)}"
                        for k in (*LLM_COLUMNS[:-1], *ENC_COLUMNS[:-1]) if r.get(k) is not None)
        print(f"{r['model']:24s} {r['target']} {r['scheme']:10s} {r['method']:9s} {vals}")


@pytest.fixture(scope="module")
def rk3576_rows(onnx_export):
    from host.quality import evaluate

    t0 = time.monotonic()
    rows = evaluate(_recipe(onnx_export), "rk3576", root=onnx_export.root, store=onnx_export.store)
    print(f"\nquality rk3576 (first evaluation): {time.monotonic() - t0:.1f} s")
    _show(rows)
    return rows


def test_every_artifact_has_a_measured_row_with_all_columns(rk3576_rows):
    llm, enc = _by(rk3576_rows, LLM, "measured"), _by(rk3576_rows, ENC, "measured")
    assert set(llm) == {"fp32", "int8", "int4", "int8-dyn"}
    assert set(enc) == {"fp32", "int8-dyn", "int8-qdq"}
    for r in llm.values():
        assert all(r.get(c) is not None for c in LLM_COLUMNS), r
        assert r["n_tokens"] == 1024 and r["backend"] == "onnxruntime" and r["status"] == "ok"
        assert r["artifact_sha256"] and r["env"]["definition"]
    for r in enc.values():
        assert all(r.get(c) is not None for c in ENC_COLUMNS), r


def test_llm_quality_thresholds(rk3576_rows):
    llm = _by(rk3576_rows, LLM, "measured")
    fp32, int8, int4, dyn = (llm[s] for s in ("fp32", "int8", "int4", "int8-dyn"))
    # the fp32 ONNX graph is the float model
    assert abs(fp32["ppl_ratio"] - 1) < 1e-3 and fp32["kld_mean"] < 1e-4 and fp32["top1_agree"] > 0.995
    assert int8["ppl_ratio"] <= 1.02                     # acceptance: genai int8
    assert dyn["ppl_ratio"] <= 1.08                      # acceptance: int8-dyn with the default exclusion, any host
    assert int4["ppl_ratio"] > int8["ppl_ratio"] and int4["kld_mean"] > int8["kld_mean"]
    assert int8["kld_mean"] < dyn["kld_mean"] < int4["kld_mean"] * 4
    for r in (int8, int4, dyn):
        assert r["kld_p99"] > r["kld_mean"] > 0 and 0.5 < r["top1_agree"] < 1.0
    assert "note" in int4["env"] and "Q4_1" in int4["env"]["note"] and "note" not in int8["env"]


def test_rows_carry_the_arithmetic_path(onnx_export, rk3576_rows):
    """Every row names this host's CPU/ISA and runtimes; int8 graphs are u8u8 (exact int32 on any CPU)."""
    from board.sysinfo import _cpu

    here = _cpu("/")
    for r in rk3576_rows:
        if r.get("status") == "error" or r["method"] == "simulator":
            continue
        hc = r["env"]["host_cpu"]
        assert hc["arch"] == here["arch"] and hc["isa"] == here["isa"] and r["env"]["runtime_versions"]["onnxruntime"]
        if r["backend"] == "onnxruntime" and r["scheme"] in ("int8-dyn", "int8-qdq"):
            assert r["env"]["int8_matmul"] == "exact int32 (u8u8 weights)", r["env"]
        elif r["backend"] == "onnxruntime":   # float graphs, weight-only MatMulNBits: no int8 MatMul
            assert "int8_matmul" not in r["env"], r
    for scheme in ("int8-dyn", "int8-qdq"):
        for model in (LLM, ENC):
            mf = onnx_export.root / model / "rk3576" / scheme / "manifest.json"
            if mf.is_file():
                import json

                assert json.loads(mf.read_text())["int8_weights"] == "u8u8"


def test_signed_weight_graph_scores_exactly_as_the_unsigned_artifact(onnx_export, tmp_path):
    """An int8 graph with signed weights (a foreign or older build) is evaluated through the exact u8u8
    rewrite: its log-probs equal the u8u8 artifact's bit for bit, on whatever CPU this is."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    from host.build.int8_format import signed_weight_count
    from host.quality import OrtCausalLm, eval_windows, llm_eval

    art = onnx_export.root / LLM / "rk3576" / "int8-dyn"
    model = onnx.load(str(art / "model.onnx"))
    back = []
    for node in model.graph.node:          # undo the shift: uint8 w/zp -> int8 w-128 / zp-128
        if node.op_type == "MatMulInteger":
            back += [node.input[1], node.input[3]]
    inits = {t.name: t for t in model.graph.initializer}
    for name in dict.fromkeys(back):
        arr = numpy_helper.to_array(inits[name]).astype(np.int16) - 128
        inits[name].CopyFrom(numpy_helper.from_array(arr.astype(np.int8), name))
    assert signed_weight_count(model) > 100
    signed = tmp_path / "signed"
    signed.mkdir()
    onnx.save(model, str(signed / "model.onnx"))
    shutil.copy(art / "genai_config.json", signed)
    recipe = _recipe(onnx_export)
    w = eval_windows(recipe, llm_eval(recipe, recipe.model(LLM)))[0][:128]
    ours, theirs = OrtCausalLm(art, {"entry": "model.onnx", "int8_weights": "u8u8"}), OrtCausalLm(signed, {"scheme": "int8-dyn"})
    assert theirs.sess.int8_rewritten == signed_weight_count(model) and ours.sess.int8_rewritten == 0
    np.testing.assert_array_equal(ours.logprobs(w), theirs.logprobs(w))


def test_encoder_rows(rk3576_rows):
    enc = _by(rk3576_rows, ENC, "measured")
    assert enc["fp32"]["cos_min"] > 0.9999 and enc["fp32"]["nn_agree"] == 1.0
    # measured here (64 sentences), FFN output dense layers kept float (recipe sensitive_layers):
    # int8-dyn cos 0.996 / min 0.994 / NN 0.94 (all quantized: 0.993 / 0.990 / 0.95);
    # int8-qdq 0.990 / 0.984 / 0.95 (all quantized: 0.927 / 0.891 / 0.70 — static per-tensor uint8
    # activations of the FFN output projection cost the most)
    dyn, qdq = enc["int8-dyn"], enc["int8-qdq"]
    assert 0.99 < dyn["cos_min"] <= dyn["cos_mean"] < 1.0 and dyn["cos_mean"] > 0.995 and dyn["nn_agree"] >= 0.85, dyn
    assert 0.975 < qdq["cos_min"] <= qdq["cos_mean"] < 1.0 and qdq["cos_mean"] > 0.985 and qdq["nn_agree"] >= 0.85, qdq


def test_unprotected_int8_qdq_is_clearly_worse(onnx_export, rk3576_rows, encoder_dir, tmp_path):
    """quantize_static of every MatMul (no sensitive_layers), built only here, vs the recipe's default rule."""
    import numpy as np
    import onnxruntime as ort

    from host.build.onnx_int8 import _quantize_qdq, encode_batch, encoder_input_names
    from host.quality import _mean_pool, embedding_metrics
    from host.textdata import read_docs, sentences

    recipe = _recipe(onnx_export)
    arts = onnx_export.root / ENC / "rk3576"
    calib = sentences(read_docs(recipe.text.heldin), 64)
    t0 = time.monotonic()
    _quantize_qdq(encoder_dir, arts / "fp32" / "model.onnx", tmp_path / "model.onnx", calib, 128, [], log=print)
    feeds = encode_batch(encoder_dir, sentences(read_docs(recipe.text.heldout), 64), 128,
                         encoder_input_names(encoder_dir))

    def embed(path):
        so = ort.SessionOptions()
        so.log_severity_level = 3
        s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        return np.stack([_mean_pool(s.run(["last_hidden_state"], f)[0], f["attention_mask"])[0] for f in feeds])

    ref = embed(arts / "fp32" / "model.onnx")
    bad, good = embedding_metrics(ref, embed(tmp_path / "model.onnx")), embedding_metrics(ref, embed(arts / "int8-qdq" / "model.onnx"))
    print(f"int8-qdq ({time.monotonic() - t0:.0f} s) unprotected: {bad}; FFN output float: {good}")
    assert good["cos_mean"] > bad["cos_mean"] + 0.03 and good["cos_min"] > bad["cos_min"] + 0.05
    assert good["nn_agree"] > bad["nn_agree"]


def test_simulated_rows_for_rk3576_and_rk3588(onnx_export, rk3576_rows):
    from host.fakequant import definition
    from host.quality import evaluate
    from host.results import ResultStore

    sim = _by(rk3576_rows, LLM, "simulated")
    assert set(sim) == {"w4a16", "w4a16-g64", "w8a8"}
    assert set(_by(rk3576_rows, ENC, "simulated")) == {"w8a8", "w4a16", "fp16"}
    for s, r in sim.items():
        assert r["env"]["definition"] == definition(s) and r["backend"] == "torch-fakequant"
        assert all(r.get(c) is not None for c in LLM_COLUMNS), r
        assert ("Q4_1" in r["env"].get("note", "")) == s.startswith("w4")
    # 4-bit costs more than 8-bit; group-wise 4-bit less than per-channel 4-bit
    assert sim["w8a8"]["kld_mean"] < sim["w4a16-g64"]["kld_mean"] < sim["w4a16"]["kld_mean"]
    assert sim["w8a8"]["ppl_ratio"] < sim["w4a16"]["ppl_ratio"]

    t0 = time.monotonic()
    rows88 = evaluate(_recipe(onnx_export), "rk3588", root=onnx_export.root, store=onnx_export.store)
    print(f"rk3588: {time.monotonic() - t0:.1f} s")
    _show(rows88)
    sim88 = _by(rows88, LLM, "simulated")
    assert set(sim88) == {"w8a8"} and sim88["w8a8"]["target"] == "rk3588"
    assert set(_by(rows88, ENC, "simulated")) == {"w8a8", "fp16"}
    # the same computation as rk3576's w8a8 (cached), stored as its own row for rk3588
    assert sim88["w8a8"]["kld_mean"] == sim["w8a8"]["kld_mean"]
    assert sim88["w8a8"]["env"]["quality_key"] != sim["w8a8"]["env"]["quality_key"]
    assert _by(rows88, LLM, "measured") == {}       # nothing built for rk3588 in this root
    with ResultStore(onnx_export.store) as st:
        stored = [r for r in st.rows(kind="quality", model=LLM) if r.method == "simulated" and r.scheme == "w8a8"]
    assert sorted(r.target for r in stored) == ["rk3576", "rk3588"]


def test_float_reference_is_cached_and_reused(onnx_export, rk3576_rows, tmp_path):
    """A second evaluation reuses the float logits; with every row cached it does not even import torch."""
    refs = list(onnx_export.qcache.glob("float-*/logprobs.npy"))
    assert len(refs) == 1
    st0 = refs[0].stat()
    code = ("import sys, time; from host.config import load_recipe; from host.quality import evaluate; t=time.monotonic(); "
            f"rows = evaluate(load_recipe({str(onnx_export.recipe)!r}), 'rk3576', root={str(onnx_export.root)!r}, "
            f"store={str(tmp_path / 'r.sqlite')!r}); "
            "print(len(rows), 'torch' in sys.modules, round(time.monotonic() - t, 2))")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "RKDEPLOY_QUALITY_CACHE": str(onnx_export.qcache)})
    assert p.returncode == 0, p.stderr
    n, torch_loaded, seconds = p.stdout.split()
    print(f"second evaluation: {n} rows in {seconds} s, torch imported: {torch_loaded}")
    assert int(n) == len(rk3576_rows) and torch_loaded == "False"
    st1 = refs[0].stat()
    assert (st1.st_ino, st1.st_mtime_ns) == (st0.st_ino, st0.st_mtime_ns)


def test_unprotected_int8_dyn_is_clearly_worse_and_flagged_degraded(onnx_export, rk3576_rows, tmp_path):
    """The LLM's int8-dyn with no sensitive layer kept float, exported here through the CLI: clearly worse
    than the recipe's default rule, and the quality gate flags it DEGRADED in the export and quality
    output (``--strict`` exits 1); the recipe's own int8-dyn stays healthy."""
    import copy

    import yaml

    from host.results import ResultStore

    data = copy.deepcopy(onnx_export.data)
    for m in data["models"]:
        if m["name"] == LLM:
            m["sensitive_layers"] = []
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(data, sort_keys=False))
    env = {"RKDEPLOY_QUALITY_CACHE": str(onnx_export.qcache), "RKDEPLOY_RESULTS": str(tmp_path / "r.sqlite")}
    t0 = time.monotonic()
    p = run_cli("export", "--recipe", recipe, "--target", "rk3576", "--only", "int8-dyn", "--artifacts",
                tmp_path / "artifacts", "--strict", env=env, timeout=1200)
    out = p.stdout + p.stderr
    assert p.returncode == 1, out[-3000:]
    assert f"rkdeploy: warning: {LLM}/int8-dyn is DEGRADED: PPL ratio" in p.stderr, out[-3000:]
    assert "DEGRADED" in p.stdout and f"{ENC}/int8-dyn is DEGRADED" not in p.stderr
    with ResultStore(tmp_path / "r.sqlite") as st:
        bad = next(r for r in st.rows(kind="quality", model=LLM, scheme="int8-dyn"))
    good = _by(rk3576_rows, LLM, "measured")["int8-dyn"]
    print(f"unprotected int8-dyn ({time.monotonic() - t0:.0f} s): PPL ratio {bad.ppl_ratio:.4f}, "
          f"KLD {bad.kld_mean:.4f}, top-1 {bad.top1_agree:.3f}; protected: {good['ppl_ratio']:.4f}, "
          f"{good['kld_mean']:.4f}, {good['top1_agree']:.3f}")
    assert bad.status == "degraded" and bad.gate.startswith("PPL ratio") and good["status"] == "ok"
    assert bad.ppl_ratio > good["ppl_ratio"] + 0.2
    assert bad.kld_mean > 2 * good["kld_mean"] and bad.top1_agree < good["top1_agree"]
    q = run_cli("quality", "--recipe", recipe, "--target", "rk3576", "--artifacts", tmp_path / "artifacts",
                "--no-simulated", env=env, timeout=1200)
    assert q.returncode == 0 and "DEGRADED" in q.stdout and "is DEGRADED" in q.stderr, q.stdout + q.stderr


def test_sensitivity_names_down_proj_among_the_top(onnx_export):
    from rich.console import Console

    from host.quality import render_sensitivity, sensitivity

    recipe = _recipe(onnx_export)
    t0 = time.monotonic()
    res = sensitivity(recipe, "rk3576", tokens=512, buckets=1)
    print(f"sensitivity ({time.monotonic() - t0:.0f} s, {res['n_tokens']} tokens, {res['scheme']}):")
    for g in res["groups"]:
        print(f"  {g['group']:16s} {g['layers']:3d} {g['kld_increase']:.5f}")
    assert res["scheme"] == "w8a8"                # the target's 8-bit scheme is the default
    names = [g["group"] for g in res["groups"]]
    assert sorted(names) == sorted(["q_proj@all", "k_proj@all", "v_proj@all", "o_proj@all", "gate_proj@all",
                                    "up_proj@all", "down_proj@all", "lm_head"])
    incs = [g["kld_increase"] for g in res["groups"]]
    assert incs == sorted(incs, reverse=True) and incs[0] > 0
    assert "down_proj@all" in names[:2], names
    assert res["kld_full"] >= incs[0] * 0.9
    con = Console(record=True, width=160)
    con.print(render_sensitivity(res))
    text = con.export_text()
    assert "down_proj@all" in text and "sensitive_layers: [" in text


def test_group_that_does_not_divide_gives_an_error_row(onnx_export, tmp_path):
    import copy

    import yaml

    from host.config import load_recipe
    from host.quality import evaluate, quality_table

    data = copy.deepcopy(onnx_export.data)
    data["models"][0]["targets"] = {"rk3576": ["w4a16-g128"]}
    data["models"] = data["models"][:1]
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    rows = evaluate(load_recipe(tmp_path / "r.yaml"), "rk3576", root=tmp_path / "none", store=tmp_path / "s.sqlite")
    assert len(rows) == 1 and rows[0]["status"] == "error" and rows[0]["method"] == "simulated"
    assert "group 128 does not divide the input width of layer model.layers.0." in rows[0]["error"]
    from rich.console import Console

    con = Console(record=True, width=250)
    con.print(quality_table(rows))
    assert "error: w4a16-g128: group 128" in con.export_text()


def test_vendor_rows_shown_next_to_onnx_rows(onnx_export, rk3576_rows, tmp_path):
    """A vendor builder's own quality row (rknn simulator) joins the table when its artifact is built.

    The .rknn artifact here is a stand-in folder with a manifest (the real one is built by
    host/build/rknn.py and tested there); what is tested is the join by artifact sha256.
    """
    from rich.console import Console

    from host.manifest import write_manifest
    from host.quality import evaluate, quality_table
    from host.results import ResultStore

    root = tmp_path / "art"
    shutil.copytree(onnx_export.root, root, copy_function=os.link, ignore=shutil.ignore_patterns(".*"))
    rknn = root / ENC / "rk3576" / "w8a8"
    rknn.mkdir()
    (rknn / "model.rknn").write_bytes(b"stand-in")
    art = write_manifest(rknn, scheme="w8a8", target="rk3576", artifact_kind="rknn", format="rknn")
    store = tmp_path / "s.sqlite"
    row = {"kind": "quality", "test": "embedding", "model": ENC, "target": "rk3576", "scheme": "w8a8",
           "backend": "rknn-simulator", "method": "simulator", "status": "ok", "cos_mean": 0.991, "cos_min": 0.95,
           "nn_agree": 0.97, "artifact_sha256": art.sha256, "env": {"quality_key": "x"}}
    stale = {**row, "cos_mean": 0.5, "artifact_sha256": "0" * 64, "env": {"quality_key": "y"}}
    with ResultStore(store) as st:
        st.add(stale)
        st.add(row)
    rows = evaluate(_recipe(onnx_export), "rk3576", root=root, store=store)
    enc = [r for r in rows if r["model"] == ENC]
    assert [r["method"] for r in enc].count("simulator") == 1
    sim = next(r for r in enc if r["method"] == "simulator")
    assert sim["cos_mean"] == 0.991 and enc[-1] is sim
    con = Console(record=True, width=250)
    con.print(quality_table(rows))
    text = con.export_text()
    assert "simulator" in text and "0.9910" in text
    print(text)


def test_quality_cli_prints_the_table(onnx_export, rk3576_rows):
    from tests.conftest import run_cli

    p = run_cli("quality", "--recipe", onnx_export.recipe, "--target", "rk3576", "--artifacts", onnx_export.root,
                env={"RKDEPLOY_QUALITY_CACHE": str(onnx_export.qcache), "RKDEPLOY_RESULTS": str(onnx_export.store)})
    assert p.returncode == 0, p.stderr
    print(p.stdout)
    for s in ("int8-dyn", "int8-qdq", "w4a16-g64", "simulated", "measured", "PPL ratio", "NN agree", "Q4_1"):
        assert s in p.stdout, s


def test_built_rkllm_artifact_gets_a_measured_row(onnx_export, rk3576_rows, tmp_path, monkeypatch):
    """With rkllm-toolkit installed, a built .rkllm is measured through the toolkit's host-side logits.

    The toolkit here is the recording double (host/testing/fake_rkllm: logits = float model + small
    noise), so what is tested is the wiring, labelled "(test double)" in the row's backend.
    """
    import copy

    import yaml

    from host.config import load_recipe
    from host.export import export
    from host.quality import evaluate
    from host.testing.fake_rkllm import install_fake_toolkit

    venvs = tmp_path / "venvs"
    monkeypatch.setenv("RKDEPLOY_VENVS", str(venvs))
    monkeypatch.setenv("FAKE_RKLLM_RECORD", str(tmp_path / "calls.jsonl"))
    monkeypatch.setenv("RKDEPLOY_GPU", "0")
    install_fake_toolkit(venvs, "1.3.0")
    calib = tmp_path / "calib.json"
    calib.write_text('[{"input": "<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n", "target": "Hello."}]')
    data = copy.deepcopy(onnx_export.data)
    data["models"][0]["calibration"] = str(calib)
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    recipe = load_recipe(tmp_path / "r.yaml")
    root = tmp_path / "art"
    rep = export(tmp_path / "r.yaml", "rk3588", only=("w8a8",), root=root, progress=False)
    assert {r.job.label: r.status for r in rep.results if r.job.kind == "rkllm"} == {f"{LLM}/rk3588/w8a8": "built"}
    t0 = time.monotonic()
    rows = evaluate(recipe, "rk3588", root=root, store=tmp_path / "s.sqlite")
    print(f"rk3588 with a built .rkllm: {time.monotonic() - t0:.1f} s")
    _show(rows)
    w8a8 = [r for r in rows if r["model"] == LLM and r["scheme"] == "w8a8"]
    assert sorted(r["method"] for r in w8a8) == ["measured", "simulated"]
    meas = next(r for r in w8a8 if r["method"] == "measured")
    assert meas["backend"] == "rkllm-toolkit 1.3.0 (test double)" and meas["status"] == "ok"
    assert all(meas.get(c) is not None for c in LLM_COLUMNS) and meas["artifact_sha256"]
    assert 1.0 <= meas["ppl_ratio"] < 1.2 and meas["top1_agree"] > 0.8
    # without the toolkit: nothing is measured; the stored row of this very artifact (same sha256) is shown
    monkeypatch.setenv("RKDEPLOY_VENVS", str(tmp_path / "empty"))
    rows = evaluate(recipe, "rk3588", root=root, store=tmp_path / "s.sqlite")
    again = {r["method"]: r for r in rows if r["model"] == LLM and r["scheme"] == "w8a8"}
    assert set(again) == {"measured", "simulated"} and again["measured"]["kld_mean"] == meas["kld_mean"]
    rows = evaluate(recipe, "rk3588", root=root, store=tmp_path / "other.sqlite")
    assert [r["method"] for r in rows if r["model"] == LLM and r["scheme"] == "w8a8"] == ["simulated"]
