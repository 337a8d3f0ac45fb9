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
