"""`rkdeploy export`: plan, ONNX artifacts + manifests, rebuild-only-what-changed, crash safety, failures.

Real model, real torch/onnxruntime/onnxruntime-genai. The ONNX artifacts are built once per
session (``onnx_export`` in conftest.py); tests that change something work on a hard-linked copy.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from host.fsutil import sha256_file
from tests.conftest import ROOT, run_cli

LLM, ENC = "smollm2-135m-instruct", "all-minilm-l6-v2"
LLM_SCHEMES = ("fp32", "int8", "int4", "int8-dyn")
ENC_SCHEMES = ("fp32", "int8-dyn", "int8-qdq")
ONNX = "fp32,int8,int4,int8-dyn,int8-qdq"


def _write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _linked_copy(src: Path, dst: Path) -> Path:
    """A copy of an artifacts root sharing file data (builds replace folders by rename, never edit files)."""
    shutil.copytree(src, dst, copy_function=os.link, ignore=shutil.ignore_patterns(".logs", ".lock-*"))
    return dst


def _status(report) -> dict[str, str]:
    return {r.job.label: r.status for r in report.results}


def _jsonl(path: Path) -> dict[str, dict]:
    return {r["artifact"]: r for r in map(json.loads, path.read_text().splitlines())}


def _export(recipe, root, only=ONNX, **kw):
    from host.export import export

    return export(recipe, "rk3576", only=tuple(only.split(",")), root=root, progress=False, **kw)


# --- plan -----------------------------------------------------------------------------------------

def test_dry_run_prints_plan_and_builds_nothing(tmp_path, builtin_models):  # the plan reads the models
    root = tmp_path / "art"
    p = run_cli("export", "--recipe", ROOT / "configs/models/smollm2-135m.yaml", "--target", "rk3576", "--dry-run",
                "--artifacts", root, "--jsonl", tmp_path / "plan.jsonl")
    assert p.returncode == 0, p.stderr
    print(p.stdout)
    assert "dry run: nothing built" in p.stdout
    plan = _jsonl(tmp_path / "plan.jsonl")
    expected = {f"{LLM}/rk3576/{s}": "onnx" for s in LLM_SCHEMES} | \
        {f"{LLM}/rk3576/{s}": "rkllm" for s in ("w4a16", "w4a16-g64", "w8a8")} | \
        {f"{LLM}/rk3576/{s}": "gguf" for s in ("gguf-q8_0", "gguf-q4_0", "gguf-q4_k_m")} | \
        {f"{ENC}/rk3576/{s}": "onnx" for s in ENC_SCHEMES} | {f"{ENC}/rk3576/{s}": "rknn" for s in ("w8a8", "w4a16", "fp16")}
    assert {a: r["kind"] for a, r in plan.items()} == expected
    assert {r["status"] for r in plan.values()} == {"planned"}
    for a, r in plan.items():
        assert r["path"] == str(root / a) and a.split("/")[0] in p.stdout
    assert not root.exists()


# --- build + manifests ----------------------------------------------------------------------------

def test_export_builds_every_onnx_artifact(onnx_export):
    st = _status(onnx_export.report)
    expected = {f"{LLM}/rk3576/{s}" for s in LLM_SCHEMES} | {f"{ENC}/rk3576/{s}" for s in ENC_SCHEMES}
    assert set(st) == expected
    assert set(st.values()) == {"built"}, st
    for r in onnx_export.report.results:
        print(f"{r.job.label:40s} {r.seconds:6.1f} s {r.size / 1e6:8.1f} MB")


def test_manifests_carry_every_field(onnx_export, llm_dir, encoder_dir):
    from host.models import model_sha256

    recipe_sha = None
    for r in onnx_export.report.results:
        m = json.loads((r.job.out_dir / "manifest.json").read_text())
        where = r.job.label
        # sha256 and size of every file, and nothing else in the folder
        on_disk = {str(p.relative_to(r.job.out_dir)) for p in r.job.out_dir.rglob("*")
                   if p.is_file() and p.name != "manifest.json"}
        assert set(m["files"]) == on_disk, where
        for name, meta in m["files"].items():
            p = r.job.out_dir / name
            assert p.stat().st_size == meta["size"], (where, name)
            assert sha256_file(p) == meta["sha256"], (where, name)
        assert m["scheme"] == r.job.scheme and m["target"] == "rk3576" and m["artifact_kind"] == "onnx"
        assert r.job.out_dir.stat().st_mode & 0o777 == 0o755
        assert (r.job.out_dir / "manifest.json").stat().st_mode & 0o777 == 0o644
        recipe_sha = recipe_sha or m["recipe_sha256"]
        assert m["recipe_sha256"] == recipe_sha and len(recipe_sha) == 64
        assert m["model_sha256"] == model_sha256(llm_dir if r.job.model.name == LLM else encoder_dir)
        assert "calibration_sha256" in m and "exclusions" in m
        tools = m["tool_versions"]
        assert tools["onnxruntime"] and tools["torch"] and tools["onnxruntime-genai"], tools
        assert m["build_seconds"] > 0 and m["inputs_hash"] == r.inputs_hash
        assert m["entry"] in m["files"] and m["tokenizer"] in m["files"] and m["scheme_definition"]
        if r.job.model.name == LLM:
            cfg = json.loads((r.job.out_dir / "genai_config.json").read_text())
            assert cfg["model"]["decoder"]["session_options"]["intra_op_num_threads"] == 4
    by = {r.job.label: json.loads((r.job.out_dir / "manifest.json").read_text()) for r in onnx_export.report.results}
    ex = by[f"{LLM}/rk3576/int8-dyn"]["exclusions"]
    assert ex["patterns"] == ["down_proj"] and ex["count"] == 30 and "sensitive_layers" in ex["rule"]
    assert all("down_proj" in n for n in ex["nodes"])
    assert by[f"{LLM}/rk3576/fp32"]["exclusions"] is None
    qdq = by[f"{ENC}/rk3576/int8-qdq"]
    assert len(qdq["calibration_sha256"]) == 64 and qdq["calibration"]["sentences"] == 64
    assert by[f"{ENC}/rk3576/fp32"]["calibration_sha256"] is None
    # the encoder's quantized schemes keep the FFN output dense layers (not attention.output.dense) float
    for s in ("int8-dyn", "int8-qdq"):
        ex = by[f"{ENC}/rk3576/{s}"]["exclusions"]
        assert ex["patterns"] == ["layer.*.output.dense"] and ex["count"] == 6 and "sensitive_layers" in ex["rule"]
        assert sorted(ex["nodes"]) == [f"/m/encoder/layer.{i}/output/dense/MatMul" for i in range(6)], ex
    assert by[f"{ENC}/rk3576/fp32"]["exclusions"] is None


def test_llm_fp32_stores_the_tied_embedding_once_with_exact_logits(onnx_export, llm_dir):
    """SmolLM2 ties lm_head to the embedding: one initializer (Gemm transB), logits equal to PyTorch's."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    import torch
    from transformers import AutoModelForCausalLM

    folder = onnx_export.root / LLM / "rk3576" / "fp32"
    m = json.loads((folder / "manifest.json").read_text())
    size = sum(f["size"] for f in m["files"].values())
    print(f"fp32 LLM artifact: {size / 1e6:.1f} MB (untied export: 656 MB)")
    assert size < 560e6                           # 134.5 M float parameters = 538 MB, plus tokenizer files
    tied = m["tied_weights"]
    assert tied["embedding"] == "m.model.embed_tokens.weight" and tied["bytes_saved"] == 49152 * 576 * 4
    graph = onnx.load(str(folder / "model.onnx"), load_external_data=False).graph
    assert [list(i.dims) for i in graph.initializer if 49152 in i.dims] == [[49152, 576]]
    head = [n for n in graph.node if n.op_type == "Gemm"]
    assert len(head) == 1 and head[0].input[1] == tied["embedding"]
    assert next(a.i for a in head[0].attribute if a.name == "transB") == 1

    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(folder / "model.onnx"), so, providers=["CPUExecutionProvider"])
    model = AutoModelForCausalLM.from_pretrained(str(llm_dir), attn_implementation="eager", dtype=torch.float32).eval()
    ids = np.array([[1, 504, 3575, 282, 4649, 314, 2, 17, 42, 100]], np.int64)
    with torch.no_grad():
        ref = model(input_ids=torch.from_numpy(ids)).logits.numpy()
    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "position_ids": np.arange(ids.shape[1])[None]}
    for i in sess.get_inputs()[3:]:
        feed[i.name] = np.zeros((1, 3, 0, 64), np.float32)
    got = sess.run(["logits"], feed)[0]
    diff = float(np.abs(got - ref).max())
    print(f"max |logits - torch| = {diff:.2e}")
    assert got.shape == ref.shape and diff < 1e-3 and (got.argmax(-1) == ref.argmax(-1)).all()


@pytest.mark.parametrize("scheme", ["fp32", "int8", "int8-dyn"])
def test_llm_artifact_generates_with_onnxruntime_genai(onnx_export, scheme):
    og = pytest.importorskip("onnxruntime_genai")
    folder = onnx_export.root / LLM / "rk3576" / scheme
    model = og.Model(str(folder))
    tok = og.Tokenizer(model)
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=64, do_sample=False)
    gen = og.Generator(model, params)
    gen.append_tokens(tok.encode("The capital of France is"))
    out = []
    for _ in range(6):
        gen.generate_next_token()
        out.append(int(gen.get_next_tokens()[0]))
    text = tok.decode(out)
    print(scheme, repr(text))
    assert "Paris" in text


def test_second_export_is_up_to_date(onnx_export, tmp_path):
    before = {r.job.label: (r.job.out_dir / "manifest.json").stat().st_mtime_ns for r in onnx_export.report.results}
    t0 = time.monotonic()
    p = run_cli("export", "--recipe", onnx_export.recipe, "--target", "rk3576", "--only", ONNX, "--no-quality",
                "--artifacts", onnx_export.root, "--jsonl", tmp_path / "s.jsonl")
    seconds = time.monotonic() - t0
    print(f"second export (CLI, nothing changed, no quality): {seconds:.2f} s")
    assert p.returncode == 0, p.stderr
    assert {r["status"] for r in _jsonl(tmp_path / "s.jsonl").values()} == {"up to date"}
    assert "up to date" in p.stdout
    after = {r.job.label: (r.job.out_dir / "manifest.json").stat().st_mtime_ns for r in onnx_export.report.results}
    assert after == before


# --- what changed gets rebuilt, nothing else -----------------------------------------------------

def test_recipe_change_rebuilds_only_int8_dyn(onnx_export, tmp_path):
    root = _linked_copy(onnx_export.root, tmp_path / "art")
    data = copy.deepcopy(onnx_export.data)
    data["models"][0]["sensitive_layers"] = ["down_proj", "up_proj"]
    data["description"] = "edited"              # recipe text changes that no artifact depends on
    data["quality"]["eval_tokens"] = 2048
    rep = _export(_write(tmp_path / "r.yaml", data), root)
    st = _status(rep)
    assert st.pop(f"{LLM}/rk3576/int8-dyn") == "built"
    assert set(st.values()) == {"up to date"}, st
    m = json.loads((root / LLM / "rk3576" / "int8-dyn" / "manifest.json").read_text())
    assert m["exclusions"]["patterns"] == ["down_proj", "up_proj"] and m["exclusions"]["count"] == 60
    # the original root is untouched (hard links are never written through)
    orig = json.loads((onnx_export.root / LLM / "rk3576" / "int8-dyn" / "manifest.json").read_text())
    assert orig["exclusions"]["count"] == 30


def test_encoder_sensitive_layers_change_rebuilds_only_its_quantized_schemes(onnx_export, tmp_path):
    root = _linked_copy(onnx_export.root, tmp_path / "art")
    data = copy.deepcopy(onnx_export.data)
    data["models"][1]["sensitive_layers"] = ["layer.*.output.dense", "intermediate.dense"]
    rep = _export(_write(tmp_path / "r.yaml", data), root)
    st = _status(rep)
    assert st.pop(f"{ENC}/rk3576/int8-dyn") == "built" and st.pop(f"{ENC}/rk3576/int8-qdq") == "built"
    assert set(st.values()) == {"up to date"}, st
    for s in ("int8-dyn", "int8-qdq"):
        ex = json.loads((root / ENC / "rk3576" / s / "manifest.json").read_text())["exclusions"]
        assert ex["count"] == 12 and sum("/intermediate/dense/" in n for n in ex["nodes"]) == 6, ex


def test_sensitive_layer_patterns_match_name_components():
    from host.build.onnx_int8 import pattern_matches, sensitive_matches

    enc = [f"encoder.layer.{i}.{k}" for i in range(2)
           for k in ("attention.self.query", "attention.output.dense", "intermediate.dense", "output.dense")]
    assert sensitive_matches(enc, ["layer.*.output.dense"]) == ["encoder.layer.0.output.dense",
                                                                "encoder.layer.1.output.dense"]
    assert len(sensitive_matches(enc, ["output.dense"])) == 4            # both kinds: the pattern is a name suffix
    assert sensitive_matches(enc, ["attention.output.dense"]) == ["encoder.layer.0.attention.output.dense",
                                                                  "encoder.layer.1.attention.output.dense"]
    assert pattern_matches("model.layers.3.mlp.down_proj", "down_proj")
    assert pattern_matches("model.layers.3.mlp.down_proj", "layers.3.mlp.*")
    assert not pattern_matches("model.layers.3.mlp.down_proj", "down")      # whole components, not substrings
    assert not pattern_matches("model.layers.3.mlp.down_proj", "layers.*.down_proj")   # '*' is one component
    assert not pattern_matches("lm_head", "model.lm_head")


def test_sensitive_layers_defaults_per_kind():
    from pydantic import ValidationError

    from host.config import ModelSpec

    enc = ModelSpec(name="e", kind="encoder", source="builtin:all-minilm-l6-v2")
    llm = ModelSpec(name="l", kind="llm", source="builtin:smollm2-135m-instruct")
    assert enc.sensitive_layers == ["layer.*.output.dense"] and llm.sensitive_layers == ["down_proj"]
    # the encoder's built-in (BERT-like) default applies where it matches; a pattern a recipe names must match
    assert not enc.sensitive_layers_required and llm.sensitive_layers_required
    named = ModelSpec(name="e", kind="encoder", source="x", sensitive_layers=["layer.*.output.dense"])
    assert named.sensitive_layers_required
    assert ModelSpec(name="e", kind="encoder", source="x", sensitive_layers=[]).sensitive_layers == []
    with pytest.raises(ValidationError, match="sensitive_layers entry 'layer..dense'"):
        ModelSpec(name="e", kind="encoder", source="x", sensitive_layers=["layer..dense"])


def test_calibration_change_rebuilds_only_int8_qdq(onnx_export, tmp_path):
    root = _linked_copy(onnx_export.root, tmp_path / "art")
    data = copy.deepcopy(onnx_export.data)
    heldin = Path(data["text"]["heldin"]).read_text().splitlines()
    (tmp_path / "heldin.txt").write_text("\n".join(heldin[1:]) + "\n")   # first document dropped
    data["text"]["heldin"] = str(tmp_path / "heldin.txt")
    rep = _export(_write(tmp_path / "r.yaml", data), root)
    st = _status(rep)
    assert st.pop(f"{ENC}/rk3576/int8-qdq") == "built"
    assert set(st.values()) == {"up to date"}, st
    old = json.loads((onnx_export.root / ENC / "rk3576" / "int8-qdq" / "manifest.json").read_text())
    new = json.loads((root / ENC / "rk3576" / "int8-qdq" / "manifest.json").read_text())
    assert old["calibration_sha256"] != new["calibration_sha256"]


def test_builder_revision_of_one_scheme_rebuilds_only_that_scheme(onnx_export, tmp_path, monkeypatch):
    from host.build import onnx_int8

    root = _linked_copy(onnx_export.root, tmp_path / "art")
    monkeypatch.setitem(onnx_int8.SCHEME_REVISION, ("encoder", "int8-qdq"), 99)
    st = _status(_export(onnx_export.recipe, root))
    assert st.pop(f"{ENC}/rk3576/int8-qdq") == "built"
    assert set(st.values()) == {"up to date"}, st


# --- crash safety and failures -------------------------------------------------------------------

def test_killed_build_leaves_no_complete_artifact(onnx_export, tmp_path):
    root = tmp_path / "art"
    target_dir = root / ENC / "rk3576"
    cmd = [sys.executable, "-m", "host.cli", "export", "--recipe", str(onnx_export.recipe), "--target", "rk3576",
           "--only", "int8-qdq", "--no-quality", "--artifacts", str(root)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 300
    try:
        # kill once the build has written part of the artifact (the float graph in its temp folder)
        while not list(target_dir.glob(".tmp-int8-qdq-*/.float/model.onnx")):
            assert proc.poll() is None, "export finished before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.02)
        time.sleep(0.3)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (target_dir / "int8-qdq").exists()
    assert list(target_dir.glob(".tmp-int8-qdq-*")), "the kill should have left only a temp folder"
    rep = _export(onnx_export.recipe, root, only="int8-qdq")
    assert _status(rep) == {f"{ENC}/rk3576/int8-qdq": "built"}
    assert not list(target_dir.glob(".tmp-*")), "stale temp folder of the killed build not removed"
    m = json.loads((target_dir / "int8-qdq" / "manifest.json").read_text())
    assert all((target_dir / "int8-qdq" / n).stat().st_size == f["size"] for n, f in m["files"].items())


def test_one_failing_artifact_does_not_stop_the_others(onnx_export, encoder_dir, tmp_path):
    broken = tmp_path / "broken-encoder"
    shutil.copytree(encoder_dir, broken)
    cfg = json.loads((broken / "config.json").read_text())
    cfg["num_attention_heads"] = 5            # 384 is not a multiple of 5: the model does not load
    (broken / "config.json").write_text(json.dumps(cfg))
    data = copy.deepcopy(onnx_export.data)
    enc = data["models"][1]
    data["models"] = [{**enc, "name": "broken-encoder", "source": str(broken)}, enc]
    recipe = _write(tmp_path / "r.yaml", data)
    p = run_cli("export", "--recipe", recipe, "--target", "rk3576", "--only", "fp32", "--no-quality",
                "--artifacts", tmp_path / "art", "--jsonl", tmp_path / "s.jsonl")
    print(p.stdout)
    assert p.returncode == 1, p.stdout + p.stderr
    st = _jsonl(tmp_path / "s.jsonl")
    assert st["broken-encoder/rk3576/fp32"]["status"] == "failed"
    assert "num_attention_heads" in st["broken-encoder/rk3576/fp32"]["reason"] or \
        "attention heads" in st["broken-encoder/rk3576/fp32"]["reason"], st
    assert st[f"{ENC}/rk3576/fp32"]["status"] == "built"
    assert "failed" in p.stdout
    assert (tmp_path / "art" / ENC / "rk3576" / "fp32" / "manifest.json").is_file()
    assert not (tmp_path / "art" / "broken-encoder" / "rk3576" / "fp32").exists()


def _missing_model(data, tmp_path):
    data["models"][0]["source"] = str(tmp_path / "no-such-model")
    return "no-such-model does not exist"


def _corrupt_safetensors(data, tmp_path):
    from host.models import builtin_path

    src = builtin_path("smollm2-135m-instruct")
    folder = tmp_path / "corrupt"
    folder.mkdir()
    for p in src.iterdir():
        if p.suffix == ".safetensors":
            (folder / p.name).write_bytes(p.read_bytes()[: 1 << 20])     # truncated copy
        elif p.is_file():
            (folder / p.name).symlink_to(p)
    data["models"][0]["source"] = str(folder)
    return "corrupt safetensors file"


def _unknown_layer(data, tmp_path):
    data["models"][0]["sensitive_layers"] = ["down_proj", "down_prj"]
    return "sensitive_layers entry 'down_prj' matches no linear layer"


def _unknown_encoder_layer(data, tmp_path):
    data["models"][1]["sensitive_layers"] = ["layer.*.output.dense", "layer.*.output.dens"]
    return f"{ENC}: sensitive_layers entry 'layer.*.output.dens' matches no linear layer"


@pytest.mark.parametrize("breakage", [_missing_model, _corrupt_safetensors, _unknown_layer, _unknown_encoder_layer],
                         ids=["missing-model", "corrupt-safetensors", "unknown-layer", "unknown-encoder-layer"])
def test_prebuild_failure_is_one_clear_line(onnx_export, tmp_path, breakage, builtin_models):
    data = copy.deepcopy(onnx_export.data)
    needle = breakage(data, tmp_path)
    recipe = _write(tmp_path / "r.yaml", data)
    t0 = time.monotonic()
    p = run_cli("export", "--recipe", recipe, "--target", "rk3576", "--only", "int8-dyn",
                "--artifacts", tmp_path / "art")
    print(f"{time.monotonic() - t0:.1f} s: {p.stderr.strip()}")
    assert p.returncode == 1
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rkdeploy: error: ") and needle in lines[0], p.stderr
    assert "Traceback" not in p.stderr
    assert not (tmp_path / "art").exists()      # failed before any build


@pytest.mark.parametrize(("target", "scheme"), [("rk3576", "w4a16-g128"), ("rk3588", "w8a8-g128")])
def test_group_128_is_rejected_naming_the_layer(default_recipe_data, tmp_path, target, scheme, builtin_models):
    from host.config import load_recipe
    from host.errors import CheckError
    from host.targets import check

    data = copy.deepcopy(default_recipe_data)
    data["models"][0]["targets"] = {target: [scheme]}
    with pytest.raises(CheckError) as e:
        check(load_recipe(_write(tmp_path / "r.yaml", data)), target, scheme)
    msg = [p for p in e.value.problems if "group size 128" in p]
    assert len(msg) == 1, e.value.problems
    assert "does not divide layer model.layers.0." in msg[0] and "576" in msg[0], msg
    print(msg[0])
