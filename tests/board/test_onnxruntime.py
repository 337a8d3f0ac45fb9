"""onnxruntime backend on real graphs: the default LLM through genai and the plain ORT loop, an encoder,
and a graph too new for the installed onnxruntime. Then `rkdeploy bench` + `report` end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from board.artifact import read_artifact
from board.backends.onnxruntime import OnnxRuntimeBackend, onnx_opsets
from board.runner import make_prompt
from tests.conftest import ROOT, run_cli


@pytest.fixture(scope="module")
def llm_int8(onnx_export):
    """The default LLM's int8 artifact (onnxruntime-genai builder -p int8) from the session's one export
    (tests/conftest.py ``onnx_export``): no second build of the same artifact."""
    return onnx_export.root / "smollm2-135m-instruct" / "rk3576" / "int8"


def write_encoder(folder, opset=17, vocab=1000, hidden=16):
    """A small real encoder graph (embedding + mask) with the contract's I/O names."""
    import onnx
    from onnx import TensorProto, helper

    from host.manifest import write_manifest

    folder.mkdir(parents=True, exist_ok=True)
    emb = helper.make_tensor("emb", TensorProto.FLOAT, [vocab, hidden],
                             np.random.RandomState(0).randn(vocab * hidden).astype(np.float32).tolist())
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [-1])
    nodes = [helper.make_node("Gather", ["emb", "input_ids"], ["g"]),
             helper.make_node("Cast", ["attention_mask"], ["mf"], to=TensorProto.FLOAT),
             helper.make_node("Unsqueeze", ["mf", "axes"], ["mu"]),
             helper.make_node("Mul", ["g", "mu"], ["last_hidden_state"])]
    ins = [helper.make_tensor_value_info(n, TensorProto.INT64, ["b", "s"]) for n in ("input_ids", "attention_mask")]
    out = [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["b", "s", hidden])]
    model = helper.make_model(helper.make_graph(nodes, "enc", ins, out, [emb, axes]),
                              opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    onnx.save(model, str(folder / "model.onnx"))
    write_manifest(folder, model="all-minilm-l6-v2", model_kind="encoder", target="rk3576", scheme="fp32",
                   artifact_kind="onnx", format="onnx-encoder", entry="model.onnx", vocab_size=vocab,
                   inputs={"batch": 2, "seq_len": 32})
    return folder


def board_bench(art, *extra):
    p = subprocess.run([sys.executable, "-m", "board", "bench", "--artifact", str(art), "--backend", "onnxruntime",
                        *map(str, extra)], capture_output=True, text=True, cwd=ROOT, timeout=600)
    lines = [json.loads(x) for x in p.stdout.splitlines()]
    return p, lines[-1]


def test_genai_and_plain_ort_loop_agree_token_for_token(llm_int8):
    manifest = read_artifact(str(llm_int8))
    tokens = {}
    for engine in ("genai", "ort"):
        b = OnnxRuntimeBackend()
        b.load(str(llm_int8), {"manifest": manifest, "threads": 2, "engine": engine})
        assert b.info()["engine"] == engine and b.vocab_size == 49152
        got = []
        b.generate(make_prompt(24, b.vocab_size), 12, got.append)
        b.close()
        tokens[engine] = got
    assert len(tokens["genai"]) == 12
    assert tokens["genai"] == tokens["ort"]


def test_runner_row_for_the_llm(llm_int8):
    p, row = board_bench(llm_int8, "--n-prompt", 32, "--n-gen", 8, "--reps", 2, "--threads", 1)
    assert p.returncode == 0, p.stderr
    assert row["status"] == "ok" and row["threads"] == 1 and row["env"]["backend"]["threads"] == 1
    assert row["env"]["backend"]["engine"] == "genai" and row["runtime"].startswith("onnxruntime-genai 0.")
    assert row["ttft_ms"] > 0 and row["decode_tps"] > 0 and row["prefill_tps"] > 0 and row["peak_rss_mb"] > 100
    assert row["model_size"] > 100_000_000 and len(row["artifact_sha256"]) == 64
    p, row = board_bench(llm_int8, "--n-prompt", 32, "--n-gen", 8, "--reps", 1, "--opt", "engine=ort")
    assert p.returncode == 0 and row["env"]["backend"]["engine"] == "ort" and row["decode_tps"] > 0
    assert row["runtime"].startswith("onnxruntime 1.")


def test_encoder_row(tmp_path):
    art = write_encoder(tmp_path / "enc")
    p, row = board_bench(art, "--reps", 5, "--threads", 1)
    assert p.returncode == 0, p.stderr
    assert row["test"] == "encode" and (row["batch"], row["seq_len"]) == (2, 32)
    assert 0 < row["latency_p50_ms"] <= row["latency_p99_ms"] and row["seqs_per_s"] > 0
    b = OnnxRuntimeBackend()
    b.load(str(art), {"manifest": read_artifact(str(art)), "threads": 1})
    pooled = b.encode([[1, 2, 3], [4, 5, 6]])
    assert pooled.shape == (2, 16)


def test_graph_optimization_level_is_a_session_option(tmp_path):
    """``params["graph_optimization"]``: the session's level (quality --board measures int8 sensitivity with
    ``none``); an unknown level is one clear error before any session."""
    from board.backends.base import BackendError

    art = write_encoder(tmp_path / "enc")
    out = {}
    for level in ("all", "none"):
        b = OnnxRuntimeBackend()
        b.load(str(art), {"manifest": read_artifact(str(art)), "threads": 1, "graph_optimization": level})
        out[level] = b.encode([[1, 2, 3], [4, 5, 6]])
        assert b._impl.sess.get_session_options().graph_optimization_level.name == (
            "ORT_ENABLE_ALL" if level == "all" else "ORT_DISABLE_ALL")
        b.close()
    np.testing.assert_array_equal(out["all"], out["none"])   # a Gather and a Mul: nothing to fuse, same floats
    with pytest.raises(BackendError, match="graph_optimization 'fast'; allowed: all, extended, basic, none"):
        OnnxRuntimeBackend().load(str(art), {"manifest": read_artifact(str(art)), "graph_optimization": "fast"})


def test_opset_too_new_is_a_clear_error_row(tmp_path):
    art = write_encoder(tmp_path / "enc99", opset=99)
    assert onnx_opsets(str(art / "model.onnx")) == {"": 99}
    p, row = board_bench(art, "--reps", 1)
    assert p.returncode == 1 and "Traceback" not in p.stderr and p.stderr.count("\n") == 1
    assert "graph opset 99 is newer than this onnxruntime supports" in row["error"]
    assert "onnxruntime >= 1.20" in row["error"] and row["status"] == "error"


def test_rkdeploy_bench_and_report_end_to_end(llm_int8, tmp_path):
    root = tmp_path / "artifacts"
    (root / "smollm2-135m-instruct" / "rk3576").mkdir(parents=True)
    os.symlink(llm_int8, root / "smollm2-135m-instruct" / "rk3576" / "int8")
    write_encoder(root / "all-minilm-l6-v2" / "rk3576" / "fp32")
    store = tmp_path / "r.sqlite"
    p = run_cli("bench", "--target", "rk3576", "--reps", "2", "--n-prompt", "32", "--n-gen", "8", "--store", store,
                env={"RKDEPLOY_ARTIFACTS": str(root)})
    assert p.returncode == 0, p.stderr
    md = run_cli("report", "--store", store).stdout
    llm = next(ln for ln in md.splitlines() if "| int8 | onnxruntime |" in ln)
    assert all(c.strip() for c in llm.strip("|").split("|")), llm  # every column filled
    assert "±" in llm and "### Encoder" in md
