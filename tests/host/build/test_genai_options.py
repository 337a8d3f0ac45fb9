"""onnxruntime-genai builder options (issue 19): what the up-to-date check hashes, what the builder is
given, and the quality path's full-logits view of a graph built with ``prune_lm_head``.

Fast tier: real onnx + onnxruntime on a small hand-made graph shaped like genai's pruned lm_head (same
node names). The last test runs on the session's real ONNX artifacts (``onnx_export``) and rebuilds one.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest


def _job(scheme: str, kind: str = "llm"):
    return SimpleNamespace(scheme=scheme, model=SimpleNamespace(kind=kind, sensitive_layers=["down_proj"], batch=1,
                                                                seq_len=8, float_layers=["down_proj"]))


def test_genai_options_are_inputs_of_int8_and_int4_only(monkeypatch):
    from host.build import onnx_int8

    assert onnx_int8.inputs(_job("int8"))["genai_options"] == onnx_int8.GENAI_OPTIONS["int8"]
    assert onnx_int8.inputs(_job("int4"))["genai_options"] == onnx_int8.GENAI_OPTIONS["int4"]
    for scheme in ("fp32", "int8-dyn"):
        assert "genai_options" not in onnx_int8.inputs(_job(scheme))
    before = onnx_int8.inputs(_job("int8"))
    monkeypatch.setitem(onnx_int8.GENAI_OPTIONS, "int4", {"block_size": 64})
    assert onnx_int8.inputs(_job("int4"))["genai_options"] == {"block_size": 64}
    assert onnx_int8.inputs(_job("int8")) == before          # one scheme's options leave the other's key alone


def test_builder_command_carries_the_options(monkeypatch, tmp_path):
    """build_genai turns the options into the builder's ``--extra_options key=value`` (booleans as true/false)
    and returns them for the manifest."""
    import json
    import subprocess

    from host.build import genai

    seen = {}

    def fake_run(cmd, **kw):   # the command line is what is under test, not the builder
        seen["cmd"] = cmd
        out = Path(cmd[cmd.index("-o") + 1])
        (out / "genai_config.json").write_text(json.dumps({"model": {"decoder": {"session_options": {}}}}))
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(genai.subprocess, "run", fake_run)
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    out = tmp_path / "out"
    out.mkdir()
    extra = genai.build_genai(src, out, "int4", lambda s: None, threads=1, board_threads=4,
                              options={"prune_lm_head": True, "block_size": 64})
    cmd = seen["cmd"]
    i = cmd.index("--extra_options")
    assert cmd[i + 1:] == ["block_size=64", "prune_lm_head=true"]
    assert extra["builder_options"] == {"prune_lm_head": True, "block_size": 64}
    assert "block 64" in extra["graph"]
    assert json.loads((out / "genai_config.json").read_text())["model"]["decoder"]["session_options"] == {
        "intra_op_num_threads": 4}


def _pruned_graph(path: Path, pruned: bool = True, s: int = 5, h: int = 8, v: int = 11) -> np.ndarray:
    """hidden [1, S, H] -> (genai's prune: Gather(axis 1, -1) + Unsqueeze) -> MatMul -> logits; weights
    stored as external data like genai's. Returns the weight."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(0).standard_normal((h, v)).astype(np.float32)
    inits = [numpy_helper.from_array(w, "lm_head.weight"),
             numpy_helper.from_array(np.array(-1, np.int64), "/model/constants/INT64/-1"),
             numpy_helper.from_array(np.array([1], np.int64), "/model/constants/INT64/[1]")]
    nodes = [helper.make_node("Mul", ["hidden", "hidden"], ["/model/norm/output_0"], name="/model/norm/Mul")]
    src = "/model/norm/output_0"
    if pruned:
        nodes += [helper.make_node("Gather", [src, "/model/constants/INT64/-1"], ["/lm_head/prune/Gather/output_0"],
                                   name="/lm_head/prune/Gather", axis=1),
                  helper.make_node("Unsqueeze", ["/lm_head/prune/Gather/output_0", "/model/constants/INT64/[1]"],
                                   ["/lm_head/prune/Unsqueeze/output_0"], name="/lm_head/prune/Unsqueeze")]
        src = "/lm_head/prune/Unsqueeze/output_0"
    nodes.append(helper.make_node("MatMul", [src, "lm_head.weight"], ["logits"], name="/lm_head/MatMul"))
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("hidden", TensorProto.FLOAT, [1, "sequence_length", h])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 1 if pruned else "sequence_length", v])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=path.name + ".data", size_threshold=64)
    return w


def test_full_logits_graph_undoes_the_pruned_lm_head(tmp_path):
    import onnxruntime as ort

    from host.build.genai import full_logits_graph

    path = tmp_path / "model.onnx"
    w = _pruned_graph(path)
    x = np.random.default_rng(1).standard_normal((1, 5, 8)).astype(np.float32)
    pruned = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"hidden": x})[0]
    assert pruned.shape == (1, 1, 11)
    graph = full_logits_graph(path)
    import onnx

    inits = onnx.load_from_string(graph).graph.initializer  # the weights stay in the artifact's data file
    assert any(t.name == "lm_head.weight" and t.data_location == onnx.TensorProto.EXTERNAL for t in inits)
    from board.backends.onnxruntime import _session

    full = _session(str(path), 1, graph).run(None, {"hidden": x})[0]
    assert full.shape == (1, 5, 11)                       # every position, same weights (read from external data)
    np.testing.assert_allclose(full, (x * x) @ w, rtol=1e-5, atol=1e-5)
    # the last row is what the pruned graph gives (M=5 vs M=1 MatMul: MLAS may round the last bit apart on another CPU)
    np.testing.assert_allclose(full[:, -1:], pruned, rtol=1e-6, atol=1e-6)


def test_full_logits_graph_leaves_an_unpruned_graph_alone(tmp_path):
    from host.build.genai import full_logits_graph

    path = tmp_path / "model.onnx"
    _pruned_graph(path, pruned=False)
    assert full_logits_graph(path) is None


@pytest.mark.parametrize("options, rewritten", [({"prune_lm_head": True}, True), ({}, False)])
def test_quality_graph_of_a_pruned_artifact_has_every_position(tmp_path, options, rewritten):
    """host.quality.runtimes.ort_graph: a manifest whose builder_options prune the lm_head gets the full-logits
    graph (the evaluation needs every position); other genai artifacts run their file as it is."""
    from host.quality.runtimes import ort_graph

    _pruned_graph(tmp_path / "model.onnx", pruned=True)
    graph, n = ort_graph(tmp_path, {"scheme": "int8", "format": "onnx-genai", "builder_options": options})
    assert (graph is not None) == rewritten and n == 0


def test_genai_options_are_in_the_manifest_and_a_change_rebuilds_only_that_scheme(onnx_export, tmp_path,
                                                                                   monkeypatch):
    """The genai builder's extra options (issue 19) reach the graph and the manifest; changing one scheme's
    options rebuilds that scheme only. Real builder: one int4 rebuild (~1.5-3.5 min on the 2-core Xeon)."""
    import json

    import onnx

    from host.build import onnx_int8
    from tests.host.build.test_export import LLM
    from tests.host.build.test_export import _export as export_
    from tests.host.build.test_export import _linked_copy as linked_copy
    from tests.host.build.test_export import _status as status

    def graph_facts(folder):
        g = onnx.load(str(folder / "model.onnx"), load_external_data=False).graph
        blocks = {a.i for n in g.node if n.op_type == "MatMulNBits" for a in n.attribute if a.name == "block_size"}
        return blocks, any(n.name == "/lm_head/prune/Gather" for n in g.node)

    for scheme in ("int8", "int4"):
        folder = onnx_export.root / LLM / "rk3576" / scheme
        m = json.loads((folder / "manifest.json").read_text())
        assert m["builder_options"] == onnx_int8.GENAI_OPTIONS[scheme]
        blocks, pruned = graph_facts(folder)
        assert blocks == {onnx_int8.GENAI_OPTIONS[scheme].get("block_size", 32)}
        assert pruned == bool(onnx_int8.GENAI_OPTIONS[scheme].get("prune_lm_head"))
    root = linked_copy(onnx_export.root, tmp_path / "art")
    changed = {**onnx_int8.GENAI_OPTIONS["int4"], "block_size": 64, "prune_lm_head": False}
    monkeypatch.setitem(onnx_int8.GENAI_OPTIONS, "int4", changed)
    st = status(export_(onnx_export.recipe, root))
    assert st.pop(f"{LLM}/rk3576/int4") == "built"
    assert set(st.values()) == {"up to date"}, st
    folder = root / LLM / "rk3576" / "int4"
    assert json.loads((folder / "manifest.json").read_text())["builder_options"] == changed
    assert graph_facts(folder) == ({64}, False)


def _kv_graph(folder: Path, pruned: bool, v: int = 7, h: int = 4) -> None:
    """A one-layer decoder shaped like genai's (input_ids, attention_mask, past_key_values.0.key/value ->
    logits, present.0.key/value) whose logits at each position depend on every earlier token through the
    KV cache: h_t = sum of the embeddings up to t, logits = h @ W; pruned: the last position only."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array(rng.standard_normal((50, h)).astype(np.float32), "E"),
             numpy_helper.from_array(rng.standard_normal((h, v)).astype(np.float32), "W"),
             numpy_helper.from_array(np.array(1, np.int64), "one"), numpy_helper.from_array(np.array(2, np.int64), "two"),
             numpy_helper.from_array(np.array([1], np.int64), "axes1"),
             numpy_helper.from_array(np.array(-1, np.int64), "/model/constants/INT64/-1")]
    nodes = [helper.make_node("Gather", ["E", "input_ids"], ["emb"]),                      # [1, n, h]
             helper.make_node("Unsqueeze", ["emb", "axes1"], ["emb4"]),                    # [1, 1, n, h]
             helper.make_node("Concat", ["past_key_values.0.key", "emb4"], ["present.0.key"], axis=2),
             helper.make_node("Identity", ["present.0.key"], ["present.0.value"]),
             helper.make_node("ReduceSum", ["past_key_values.0.key", "axes1"], ["_p1"], keepdims=0),   # [1, P, h]
             helper.make_node("ReduceSum", ["_p1", "axes1"], ["prev"], keepdims=1),         # [1, 1, h]
             helper.make_node("CumSum", ["emb", "one"], ["cum"]),
             helper.make_node("Add", ["cum", "prev"], ["hidden"])]                          # [1, n, h]
    src = "hidden"
    if pruned:
        nodes += [helper.make_node("Gather", [src, "/model/constants/INT64/-1"], ["g"], name="/lm_head/prune/Gather",
                                   axis=1),
                  helper.make_node("Unsqueeze", ["g", "axes1"], ["u"], name="/lm_head/prune/Unsqueeze")]
        src = "u"
    nodes.append(helper.make_node("MatMul", [src, "W"], ["logits"], name="/lm_head/MatMul"))
    kv = [1, 1, "past_sequence_length", h]
    graph = helper.make_graph(
        nodes, "kv",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, "sequence_length"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, [1, "total_sequence_length"]),
         helper.make_tensor_value_info("past_key_values.0.key", TensorProto.FLOAT, kv),
         helper.make_tensor_value_info("past_key_values.0.value", TensorProto.FLOAT, kv)],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 1 if pruned else "sequence_length", v]),
         helper.make_tensor_value_info("present.0.key", TensorProto.FLOAT, [1, 1, "total_sequence_length", h]),
         helper.make_tensor_value_info("present.0.value", TensorProto.FLOAT, [1, 1, "total_sequence_length", h])],
        inits)
    folder.mkdir()
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(folder / "model.onnx"))


def test_board_logprobs_of_a_pruned_graph_go_one_token_at_a_time(tmp_path):
    """The board's plain-onnxruntime log-probs (no onnx package there) of a last-position-only graph: one
    run per token with the KV cache gives every position, equal to the full-logits graph's single pass."""
    from board.backends.onnxruntime import OnnxRuntimeBackend

    ids = [3, 14, 15, 9, 26, 5]
    out = {}
    for pruned in (False, True):
        folder = tmp_path / ("pruned" if pruned else "full")
        _kv_graph(folder, pruned)
        be = OnnxRuntimeBackend()
        be.load(str(folder), {"manifest": {"format": "onnx-genai"}, "threads": 1, "engine": "ort"})
        assert be._impl.last_only is pruned
        out[pruned] = be.logprobs(ids)
        gen = []
        be.generate(ids, 3, gen.append)     # the greedy loop reads the last row either way
        out[pruned, "gen"] = gen
    assert out[True].shape == out[False].shape == (len(ids), 7)
    np.testing.assert_allclose(out[True], out[False], rtol=1e-5, atol=1e-5)
    assert out[True, "gen"] == out[False, "gen"]
