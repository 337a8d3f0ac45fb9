"""host.build.mixed: the budgeted int4/int8 planner and the genai node names (pure Python, fast)."""

from __future__ import annotations

import json

import pytest

from host.build.mixed import INT4_BYTES, INT8_BYTES, LM_HEAD, Unit, onnx_node, overrides_json, plan_mixed
from host.errors import BuildError


def test_onnx_node_names_follow_the_genai_graph():
    assert onnx_node("model.layers.3.self_attn.k_proj") == "/model/layers.3/attn/qkv_proj/MatMul"
    assert onnx_node("model.layers.3.self_attn.o_proj") == "/model/layers.3/attn/o_proj/MatMul"
    assert onnx_node("model.layers.12.mlp.down_proj") == "/model/layers.12/mlp/down_proj/MatMul"
    assert onnx_node("lm_head") == LM_HEAD
    with pytest.raises(ValueError, match="no genai node for linear 'vision.proj'"):
        onnx_node("vision.proj")


def _units():
    return [Unit("lm_head", (LM_HEAD,), 1000, 0.30),          # 3e-4 KLD per weight
            Unit("down_proj@0-9", ("/d0",), 500, 0.20),        # 4e-4
            Unit("up_proj@0-9", ("/u0",), 500, 0.01),          # 2e-5
            Unit("o_proj@0-9", ("/o0",), 200, 0.0)]            # nothing to gain


def test_plan_takes_most_kld_per_byte_first_and_stays_in_budget():
    fp32 = 4.0 * 2200
    all4 = 2200 * INT4_BYTES
    # room for down_proj (500 weights) and lm_head (1000) at int8, not for up_proj too
    budget = (all4 + 1500 * (INT8_BYTES - INT4_BYTES) + 10) / fp32
    p = plan_mixed(_units(), fp32_bytes=fp32, budget=budget)
    assert p.int8_nodes == tuple(sorted(("/d0", LM_HEAD)))
    assert p.bytes <= budget * fp32
    assert [f["units"][-1] for f in p.frontier[1:]] == ["down_proj@0-9", "lm_head"]
    assert p.predicted_kld == pytest.approx(0.01)
    assert p.frontier[0]["predicted_kld"] == pytest.approx(0.51)
    # a tighter budget: lm_head no longer fits, up_proj (cheap) still does
    tight = (all4 + 500 * (INT8_BYTES - INT4_BYTES) + 300 * (INT8_BYTES - INT4_BYTES)) / fp32
    assert plan_mixed(_units(), fp32_bytes=fp32, budget=tight).int8_nodes == ("/d0",)


def test_plan_refuses_a_budget_below_all_int4():
    with pytest.raises(BuildError, match=r"budget 0.1: even all-int4 needs 0.156x fp32; raise the budget"):
        plan_mixed(_units(), fp32_bytes=4.0 * 2200, budget=0.1)


def test_overrides_json_names_each_int8_node_and_quantizes_the_embedding():
    d = json.loads(overrides_json([LM_HEAD, "/d0"]))["quant_config"]["weights"]
    assert d["op_types"] == ["MatMul", "Gather"]
    assert d["overrides"] == [{"match": {"name": LM_HEAD}, "type": "int8"}, {"match": {"name": "/d0"}, "type": "int8"}]
    assert d["symmetric"] is True and json.loads(overrides_json([], symmetric=False))["quant_config"]["weights"]["symmetric"] is False


def test_units_from_sensitivity_merge_qkv_into_one_packed_node():
    torch = pytest.importorskip("torch")
    from host.build.mixed import units_from_sensitivity

    def layer():
        attn = torch.nn.Module()
        for n, o in (("q_proj", 8), ("k_proj", 4), ("v_proj", 4), ("o_proj", 8)):
            setattr(attn, n, torch.nn.Linear(8, o, bias=False))
        mlp = torch.nn.Module()
        mlp.down_proj = torch.nn.Linear(16, 8, bias=False)
        blk = torch.nn.Module()
        blk.self_attn, blk.mlp = attn, mlp
        return blk

    model = torch.nn.Module()
    model.model = torch.nn.Module()
    model.model.layers = torch.nn.ModuleList([layer(), layer()])
    model.lm_head = torch.nn.Linear(8, 32, bias=False)
    groups = [{"group": g, "kld_increase": k} for g, k in (("down_proj@all", 0.3), ("lm_head", 0.2), ("v_proj@all", 0.1),
                                                           ("q_proj@all", 0.05), ("k_proj@all", -0.01),
                                                           ("o_proj@all", 0.0))]
    units = {u.name: u for u in units_from_sensitivity(model, groups)}
    qkv = units["v_proj@all+q_proj@all+k_proj@all"]
    assert qkv.nodes == ("/model/layers.0/attn/qkv_proj/MatMul", "/model/layers.1/attn/qkv_proj/MatMul")
    assert qkv.params == 2 * 8 * (8 + 4 + 4) and qkv.kld_int4 == pytest.approx(0.15)   # a negative increase counts 0
    assert units["lm_head"].nodes == (LM_HEAD,) and units["down_proj@all"].params == 2 * 16 * 8


def _tiny_checkpoint(folder, tied=True):
    """A two-layer Llama-shaped safetensors file (headers are all listed_mix reads)."""
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    t = {"model.embed_tokens.weight": torch.zeros(100, 32), "model.norm.weight": torch.zeros(32)}
    for i in range(2):
        p = f"model.layers.{i}"
        t.update({f"{p}.self_attn.q_proj.weight": torch.zeros(32, 32), f"{p}.self_attn.k_proj.weight": torch.zeros(16, 32),
                  f"{p}.self_attn.v_proj.weight": torch.zeros(16, 32), f"{p}.self_attn.o_proj.weight": torch.zeros(32, 32),
                  f"{p}.mlp.gate_proj.weight": torch.zeros(64, 32), f"{p}.mlp.up_proj.weight": torch.zeros(64, 32),
                  f"{p}.mlp.down_proj.weight": torch.zeros(32, 64), f"{p}.input_layernorm.weight": torch.zeros(32)})
    if not tied:
        t["lm_head.weight"] = torch.zeros(100, 32)
    folder.mkdir(exist_ok=True)
    save_file(t, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"hidden_size": 32, "num_attention_heads": 4, "num_hidden_layers": 2,
                                                    "max_position_embeddings": 16}))
    return t


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("symmetric", [True, False])
def test_listed_mix_names_the_packed_nodes_and_predicts_the_size_by_hand(tmp_path, tied, symmetric):
    from host.build.mixed import BLOCK, GRAPH_BYTES_PER_LAYER, listed_mix

    t = _tiny_checkpoint(tmp_path / "m", tied)
    nodes, ratio = listed_mix(tmp_path / "m", ["lm_head", "v_proj", "layers.1.mlp.down_proj"], symmetric=symmetric)
    assert nodes == ("/lm_head/MatMul", "/model/layers.0/attn/qkv_proj/MatMul", "/model/layers.1/attn/qkv_proj/MatMul",
                     "/model/layers.1/mlp/down_proj/MatMul")
    i4 = INT4_BYTES + (0 if symmetric else 0.5 / BLOCK)
    i8 = INT8_BYTES
    qkv, o, gu, down, head, emb, norms = 64 * 32, 32 * 32, 2 * 64 * 32, 32 * 64, 100 * 32, 100 * 32, 2 * 32 + 32
    extras = 2 * 16 * 4 * 4 + 2 * GRAPH_BYTES_PER_LAYER   # cos + sin caches [16, head_dim 8 / 2] fp32; the graph
    want = 2 * qkv * i8 + 2 * o * i4 + 2 * gu * i4 + down * i4 + down * i8 + head * i8 + emb * i4 + 4 * norms + extras
    total = sum(v.numel() for v in t.values())
    assert ratio == pytest.approx(want / (4 * total))
    # nothing named: a tied head at int4 IS the int4 embedding table (counted once), an untied one its own
    nodes0, r0 = listed_mix(tmp_path / "m", ["no_such_layer"], symmetric=symmetric)
    want0 = (2 * (qkv + o + gu + down)) * i4 + emb * i4 + (0 if tied else head * i4) + 4 * norms + extras
    assert nodes0 == () and r0 == pytest.approx(want0 / (4 * total))


def test_listed_int4_mixed_recipe_loads_and_keys_on_its_list(make_recipe):
    from host.build.mixed import listed, mix_inputs
    from host.config import load_recipe
    from host.errors import ConfigError

    def edit(**fields):
        def f(d):
            d["models"][0].update(fields)
        return f

    r = load_recipe(make_recipe(edit(onnx=["int4-mixed", "int8-dyn"], sensitive_layers=["lm_head", "down_proj"],
                                     budget=0.25)))
    m = r.models[0]
    assert listed(m) and m.float_layers == ["lm_head", "down_proj"]
    assert mix_inputs(m, r) == {"budget": 0.25, "sensitive_layers": ["down_proj", "lm_head"], "version": 3}
    r2 = load_recipe(make_recipe(edit(onnx=["int4-mixed"], sensitive_layers=["down_proj"])))
    assert r2.models[0].budget is None and mix_inputs(r2.models[0], r2)["sensitive_layers"] == ["down_proj"]
    for fields, text in ((dict(onnx=["int4-mixed"], sensitive_layers=[]), "models.0.sensitive_layers: onnx scheme "
                          "int4-mixed needs sensitive_layers: auto"),
                         (dict(onnx=["int4"], sensitive_layers=["down_proj"], budget=0.25),
                          "models.0.budget: is read only by the onnx scheme int4-mixed")):
        with pytest.raises(ConfigError) as e:
            load_recipe(make_recipe(edit(**fields)))
        assert len(str(e.value).splitlines()) == 1 and text in str(e.value), str(e.value)


def test_a_row_of_a_listed_mix_says_its_int8_count_without_a_budget(tmp_path):
    from host.quality.table import prep_cell

    assert prep_cell({"int8_nodes": 31}) == "31 MatMuls int8"
    assert prep_cell({"transform": "awq(w4a16-g64)", "budget": 0.25, "int8_nodes": 31}) == \
        "awq(w4a16-g64); budget 0.25x fp32, 31 MatMuls int8"


@pytest.mark.slow
def test_symmetric_int8_drops_the_zero_points_and_onnxruntime_runs_the_float_weights_rounded(tmp_path):
    """An asymmetric int8 MatMulNBits node (as genai builds the int8 layers of an asymmetric mix) becomes the
    symmetric one of the checkpoint's float weights: no zero points, a smaller data file, same output."""
    import numpy as np
    import onnx
    import onnxruntime as ort

    from host.build.mixed import symmetric_int8
    from host.gptq import Grid, dequantize, rtn
    from tests.host.build.test_gptq import _ort_quantized
    from tests.host.quality.tiny_models import tiny_model

    model = tiny_model("llama")
    src = tmp_path / "src"
    model.save_pretrained(str(src))
    w = model.model.layers[1].mlp.down_proj.weight.detach()          # [N=64, K=128]
    m = _ort_quantized(w.numpy(), symmetric=False, bits=8)["model"]
    node = next(nd for nd in m.graph.node if nd.op_type == "MatMulNBits")
    assert node.input[3]                                              # built with zero points
    node.name = "/model/layers.1/mlp/down_proj/MatMul_Q8"
    art = tmp_path / "art"
    art.mkdir()
    onnx.save_model(m, str(art / "model.onnx"), save_as_external_data=True, location="model.onnx.data",
                    size_threshold=0)
    before = (art / "model.onnx.data").stat().st_size
    assert symmetric_int8(art, src, lambda *_a: None) == 1
    assert (art / "model.onnx.data").stat().st_size == before - 64 * 4    # one zero-point byte per block of 32
    out = onnx.load(str(art / "model.onnx"))
    nd = next(x for x in out.graph.node if x.op_type == "MatMulNBits")
    assert len(nd.input) == 3 and not any("zero_point" in i.name for i in out.graph.initializer)
    assert not [p for p in art.iterdir() if p.name.startswith(".")]
    q, s, z = rtn(w, Grid(8, 32, True))
    x = np.random.default_rng(0).standard_normal((1, 128)).astype(np.float32)
    sess = ort.InferenceSession(str(art / "model.onnx"), providers=["CPUExecutionProvider"])
    y = sess.run(None, {"x": x})[0]
    np.testing.assert_allclose(y, x @ dequantize(q, s, z, Grid(8, 32, True)).numpy().T, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(y, x @ w.numpy().T, rtol=0, atol=0.02 * float(np.abs(x @ w.numpy().T).max()))
    assert symmetric_int8(art, src, lambda *_a: None) == 0             # nothing left to change
