"""host.gptq: GPTQ rounding on the builder's grid and MatMulNBits packing.

Fast tier: torch + numpy on random layers, onnxruntime's own blockwise quantizer on a tiny in-memory
MatMul graph (the packing parity). ``slow``: a tiny random Llama checkpoint, a one-node MatMulNBits
artifact with external data rewritten by ``gptq_artifact`` and run in onnxruntime (~6 s unloaded).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from host.errors import BuildError
from host.gptq import (
    Grid,
    dequantize,
    gptq,
    hf_linears_of,
    pack_b,
    pack_zero_points,
    rtn,
    unpack_b,
    unpack_zero_points,
    weighted_error,
)


def _layer(n=48, k=128, rows=1024, seed=0):
    """A weight and the Hessian of correlated inputs with a few outlier channels (like an LLM's)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * 0.05
    mix = torch.randn(k, k, generator=g) / k ** 0.5 + torch.eye(k)
    x = torch.randn(rows, k, generator=g) @ mix
    x[:, :4] *= 8
    return w, (x.T @ x / rows).double()


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_beats_round_to_nearest_on_the_hessian_weighted_error(symmetric, act_order):
    w, h = _layer()
    grid = Grid(4, 32, symmetric)
    q, s, z = gptq(w, h, grid, act_order=act_order)
    assert q.min() >= 0 and q.max() <= 15
    if symmetric:
        assert torch.equal(z, torch.full_like(z, 8.0))
    else:
        assert torch.equal(z, z.round()) and z.min() >= 0 and z.max() <= 15
    e_gptq = weighted_error(w, dequantize(q, s, z, grid), h)
    e_rtn = weighted_error(w, dequantize(*rtn(w, grid), grid), h)
    assert e_gptq < 0.8 * e_rtn, (e_gptq, e_rtn)


def test_gptq_with_an_identity_hessian_is_round_to_nearest():
    """No correlation between inputs: nothing to compensate, GPTQ must give RTN's codes."""
    w, _h = _layer(n=16, k=64)
    grid = Grid(4, 32, True)
    q, s, z = gptq(w, torch.eye(64, dtype=torch.float64), grid)
    q0, s0, z0 = rtn(w, grid)
    assert torch.equal(q, q0) and torch.allclose(s, s0)


@pytest.mark.parametrize("symmetric", [True, False])
def test_searched_scales_never_lose_to_the_builders_and_win_on_outlier_columns(symmetric):
    """The search's objective is the diag(H)-weighted error; the builder's scale is one candidate, so it never
    does worse per block, and with a few high-energy input channels it does clearly better."""
    from host.gptq import searched_params, searched_rtn

    w, h = _layer(k=96)   # 3 blocks of 32
    grid = Grid(4, 32, symmetric)
    hd = torch.diag(h).float()
    q0, s0, z0 = rtn(w, grid)
    q1, s1, z1 = searched_rtn(w, hd, grid)
    assert q1.min() >= 0 and q1.max() <= 15 and torch.equal(z1, z1.round())

    def per_block(q, s, z):
        d = (w - dequantize(q, s, z, grid)) ** 2 * hd
        return d.reshape(w.shape[0], -1, 32).sum(-1)

    assert (per_block(q1, s1, z1) <= per_block(q0, s0, z0) * (1 + 1e-6) + 1e-12).all()
    assert per_block(q1, s1, z1).sum() < 0.9 * per_block(q0, s0, z0).sum()
    # unweighted on a padded K (K = 80: the last block has 16 real columns)
    s, z = searched_params(w[:, :80], None, grid)
    assert s.shape == (w.shape[0], 3) and torch.isfinite(s).all()


@pytest.mark.parametrize("symmetric", [True, False])
def test_gptq_on_searched_grids_beats_gptq_on_the_builders(symmetric):
    w, h = _layer(k=128)
    grid = Grid(4, 32, symmetric)
    e = {}
    for kind in ("builder", "search"):
        q, s, z = gptq(w, h, grid, act_order=True, grid_scales=kind)
        assert q.min() >= 0 and q.max() <= 15 and torch.equal(z, z.round())
        e[kind] = weighted_error(w, dequantize(q, s, z, grid), h)
    assert e["search"] < e["builder"], e
    with pytest.raises(ValueError, match="grid_scales 'mse'"):
        gptq(w, h, grid, grid_scales="mse")


def test_gptq_on_fixed_grids_keeps_them_and_beats_their_round_to_nearest():
    """``fixed``: a given static grid whose codes need not span a power of two (a toolkit's -7..7, groups of 64)."""
    w, h = _layer(k=128)
    blk = w.reshape(w.shape[0], 2, 64)
    s = blk.abs().amax(-1) / 7
    z = torch.full_like(s, 7.0)
    q, s2, z2 = gptq(w, h, Grid(4, 64, True), act_order=True, fixed=(s, z, 14))
    assert torch.equal(s2.float(), s) and torch.equal(z2.float(), z) and q.min() >= 0 and q.max() <= 14
    g = Grid(4, 64, True)
    rtn_q = ((blk / s[..., None]).round().clamp(-7, 7) + 7).reshape(w.shape)
    assert weighted_error(w, dequantize(q, s, z, g), h) < 0.8 * weighted_error(w, dequantize(rtn_q, s, z, g), h)


def _ort_quantized(w_nk: np.ndarray, symmetric: bool, bits: int = 4, block: int = 32) -> dict:
    """onnxruntime's MatMulNBitsQuantizer on a one-MatMul graph with weight ``w_nk.T`` ([K, N], ONNX MatMul's B)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    n, k = w_nk.shape
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])],
        [numpy_helper.from_array(np.ascontiguousarray(w_nk.T), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    quant = MatMulNBitsQuantizer(model, bits=bits, block_size=block, is_symmetric=symmetric)
    quant.process()
    out = quant.model.model
    node = next(nd for nd in out.graph.node if nd.op_type == "MatMulNBits")
    inits = {i.name: numpy_helper.to_array(i) for i in out.graph.initializer}
    ins = list(node.input)
    onnx.checker.check_model(out)
    return {"B": inits[ins[1]], "scales": inits[ins[2]],
            "zp": inits[ins[3]] if len(ins) > 3 and ins[3] else None, "model": out}


@pytest.mark.parametrize("symmetric", [True, False])
def test_packing_matches_onnxruntimes_own_quantizer(symmetric):
    """K = 80: a padded last block; 3 blocks: an odd count of 4-bit zero points per row."""
    g = torch.Generator().manual_seed(3)
    w = torch.randn(24, 80, generator=g) * 0.1
    w[0, :32] = 0.0                                 # an all-zero block (scale 0)
    grid = Grid(4, 32, symmetric)
    ort = _ort_quantized(w.numpy(), symmetric)
    q, s, z = rtn(w, grid)
    assert ort["B"].shape == (24, 3, 16)
    ours = pack_b(q.numpy(), grid)
    # the same bytes, bit for bit (B with its padding, scales, zero points with their padding nibble)
    codes_ort = unpack_b(ort["B"], 80, grid).astype(np.int64)
    assert np.array_equal(ours, ort["B"])
    assert np.array_equal(ort["scales"].reshape(24, 3), s.numpy())
    if symmetric:
        assert ort["zp"] is None
    else:
        assert ort["zp"].size == 24 * 2
        assert np.array_equal(unpack_zero_points(ort["zp"], 24, 3, grid), z.numpy().astype(np.uint8))
        assert np.array_equal(pack_zero_points(z.numpy(), grid).reshape(-1), ort["zp"].reshape(-1))
    # round trips of our own packing
    assert np.array_equal(unpack_b(ours, 80, grid), q.numpy())
    # onnxruntime runs the graph on what it packed; our dequantization of its tensors gives the same product
    import onnxruntime as ortrt

    sess = ortrt.InferenceSession(ort["model"].SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((1, 80)).astype(np.float32)
    zt = (torch.from_numpy(unpack_zero_points(ort["zp"], 24, 3, grid).astype(np.float32)) if not symmetric
          else torch.full((24, 3), 8.0))
    wq = dequantize(torch.from_numpy(codes_ort), torch.from_numpy(ort["scales"].reshape(24, 3).copy()), zt, grid)
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], x @ wq.numpy().T, rtol=1e-4, atol=1e-4)


def test_eight_bit_packing_round_trips():
    grid = Grid(8, 32, False)
    q = np.random.default_rng(1).integers(0, 256, (5, 70))
    b = pack_b(q, grid)
    assert b.shape == (5, 3, 32) and np.array_equal(unpack_b(b, 70, grid), q)
    z = np.random.default_rng(2).integers(0, 256, (5, 3))
    assert np.array_equal(unpack_zero_points(pack_zero_points(z, grid), 5, 3, grid), z)


def test_genai_nodes_map_to_transformers_linears_in_packing_order():
    assert hf_linears_of("/model/layers.3/attn/qkv_proj/MatMul_Q4") == [
        "model.layers.3.self_attn.q_proj", "model.layers.3.self_attn.k_proj", "model.layers.3.self_attn.v_proj"]
    assert hf_linears_of("/model/layers.0/mlp/down_proj/MatMul_Q4") == ["model.layers.0.mlp.down_proj"]
    assert hf_linears_of("/lm_head/MatMul_Q4") == ["lm_head"]
    with pytest.raises(BuildError, match="not one of genai's decoder linears"):
        hf_linears_of("/model/vision/MatMul_Q4")


# ---------------------------------------------------------------- real: a one-node artifact rewritten

@pytest.mark.slow
@pytest.mark.parametrize("symmetric, grid_scales", [(True, "builder"), (False, "builder"), (False, "search")])
def test_gptq_artifact_rewrites_the_node_and_onnxruntime_runs_what_torch_dequantizes(tmp_path, monkeypatch, symmetric,
                                                                                    grid_scales):
    import shutil

    import onnx
    import onnxruntime as ortrt
    import transformers
    from onnx import numpy_helper

    from host.gptq import gptq_artifact
    from tests.host.quality.test_transforms import TINY, _tiny, _tokenizer

    model = _tiny("llama")
    src = tmp_path / "src"
    model.save_pretrained(str(src))
    transformers.PreTrainedTokenizerFast(tokenizer_object=_tokenizer()).save_pretrained(str(src))
    calib = tmp_path / "calib.json"
    calib.write_text(json.dumps([{"input": " ".join("abcdefghijklmnopqrstuvwxyz"[i:] * 3), "target": "x y"}
                                 for i in range(8)]))
    w = model.model.layers[1].mlp.down_proj.weight.detach()          # [N=64, K=128]
    art = tmp_path / "art"
    art.mkdir()
    m = _ort_quantized(w.numpy(), symmetric)["model"]
    node = next(nd for nd in m.graph.node if nd.op_type == "MatMulNBits")
    node.name = "/model/layers.1/mlp/down_proj/MatMul_Q4"
    onnx.save_model(m, str(art / "model.onnx"), save_as_external_data=True, location="model.onnx.data",
                    size_threshold=0)
    shutil.copytree(art, tmp_path / "art2")
    monkeypatch.setenv("RKDEPLOY_CACHE", str(tmp_path / "cache"))
    before = (art / "model.onnx.data").read_bytes()
    rec = gptq_artifact(art, src, calib, act_order=grid_scales == "search", grid_scales=grid_scales,
                        log=lambda *_a: None)
    assert rec["nodes"] == 1 and rec["skipped"] == [] and rec["weighted_error_ratio_max"] < 1.0
    assert (rec["scales"], rec["symmetric"]) == (grid_scales, symmetric)
    after = (art / "model.onnx.data").read_bytes()
    assert len(after) == len(before) and after != before
    assert not list(art.glob(".*tmp"))
    assert len(list((tmp_path / "cache" / "gptq-hessians").glob("*.pt"))) == 1
    lines = []                                                       # the same artifact again: cached Hessians,
    gptq_artifact(tmp_path / "art2", src, calib, act_order=grid_scales == "search", grid_scales=grid_scales,
                  log=lines.append)                                # the same bytes
    assert any("Hessians from" in ln for ln in lines)
    assert (tmp_path / "art2" / "model.onnx.data").read_bytes() == after

    out = onnx.load(str(art / "model.onnx"))       # with its external data
    nd = next(x for x in out.graph.node if x.op_type == "MatMulNBits")
    inits = {i.name: numpy_helper.to_array(i) for i in out.graph.initializer}
    grid = Grid(4, 32, symmetric)
    codes = torch.from_numpy(unpack_b(inits[nd.input[1]], 128, grid).astype(np.int64))
    scales = torch.from_numpy(inits[nd.input[2]].reshape(64, 4).astype(np.float32))
    zps = (torch.from_numpy(unpack_zero_points(inits[nd.input[3]], 64, 4, grid).astype(np.float32))
           if not symmetric else torch.full((64, 4), 8.0))
    wq = dequantize(codes, scales, zps, grid)
    q0, s0, z0 = rtn(w, grid)
    assert not torch.equal(codes, q0)                                # GPTQ moved codes off round-to-nearest
    assert (wq - w).abs().max() < 4 * s0.abs().max()                 # ... by a few steps at most
    sess = ortrt.InferenceSession(str(art / "model.onnx"), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((1, 128)).astype(np.float32)
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], x @ wq.numpy().T, rtol=1e-4, atol=1e-4)
    assert TINY["hidden_size"] == 64
    with pytest.raises(BuildError, match="not .* rounded to its grid"):   # an artifact it rewrote already
        gptq_artifact(art, src, calib, log=lambda *_a: None)


def test_gptq_artifact_refuses_a_missing_calibration_before_any_work(tmp_path):
    from host.errors import ConfigError
    from host.gptq import gptq_artifact

    with pytest.raises(ConfigError, match="calibration file .*nope.json does not exist"):
        gptq_artifact(tmp_path, tmp_path, tmp_path / "nope.json")
    with pytest.raises(ConfigError, match="damp 2"):
        gptq_artifact(tmp_path, tmp_path, tmp_path / "nope.json", damp=2)


@pytest.mark.parametrize("value, fragment", [
    ("gptqq", "rounding: expected rtn, gptq or"),
    ({"gptq": {"damp": 0}}, r"rounding.gptq.damp: a fraction .* got 0"),
    ({"gptq": {"damp": True}}, r"rounding.gptq.damp"),
    ({"gptq": {"act_order": "yes"}}, r"rounding.gptq.act_order: true or false; got 'yes'"),
    ({"gptq": {"blocks": 4}}, r"rounding.gptq: allowed keys are damp, act_order, scales, symmetric, text_tokens; "
                              r"got 'blocks'"),
    ({"gptq": {"text_tokens": -5}}, r"rounding.gptq.text_tokens: tokens of the recipe's held-in text .* got -5"),
    ({"gptq": {"scales": "mse"}}, r"rounding.gptq.scales: builder or search; got 'mse'"),
    ({"gptq": {"symmetric": "no"}}, r"rounding.gptq.symmetric: true \(signed int4\) or false"),
    ({"gptq": 1, "rtn": 2}, "rounding: expected"),
])
def test_bad_rounding_is_one_line_naming_the_field(value, fragment):
    from host.errors import ConfigError
    from host.gptq import parse_rounding

    with pytest.raises(ConfigError, match=fragment):
        parse_rounding(value)


def test_rounding_forms_and_their_cache_key_entry():
    from host.gptq import GPTQ_VERSION, parse_rounding

    assert parse_rounding(None) is None and parse_rounding("rtn") is None
    r = parse_rounding({"gptq": {"damp": 0.05, "act_order": False, "scales": "builder", "symmetric": False}})
    assert r.to_dict() == {"method": "gptq", "damp": 0.05, "act_order": False, "scales": "builder",
                           "symmetric": False, "text_tokens": 16384, "version": GPTQ_VERSION}
    d = parse_rounding("gptq")      # the defaults: act-order on searched grids, the builder's signed int4
    assert (d.damp, d.act_order, d.scales, d.symmetric, d.text_tokens) == (0.01, True, "search", True, 16384)
    assert parse_rounding({"gptq": None}) == d and parse_rounding(d.recipe_form()) == d
    t = parse_rounding({"gptq": {"text_tokens": 0}})       # the calibration JSON alone: another key
    assert t.to_dict()["text_tokens"] == 0 != d.to_dict()["text_tokens"] and parse_rounding(t.recipe_form()) == t


def _rounding_recipe(make_recipe, value, **fields):
    def edit(d):
        d["models"][0].update({"rounding": value, **fields})
    return make_recipe(edit)


@pytest.mark.parametrize("value, fields, text", [
    ("gptqq", {}, "models.0.rounding: expected rtn, gptq or"),
    ({"gptq": {"damp": 1.5}}, {}, "models.0.rounding: gptq.damp: a fraction"),
    ("gptq", {"onnx": ["fp32", "int8"]}, "models.0.rounding: is read only by the onnx schemes int4, int4-mixed"),
])
def test_recipe_rounding_is_validated_at_load_in_one_line(make_recipe, value, fields, text):
    from host.config import load_recipe
    from host.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        load_recipe(_rounding_recipe(make_recipe, value, **fields))
    assert len(str(e.value).splitlines()) == 1 and text in str(e.value), str(e.value)


def test_recipe_rounding_changes_only_the_int4_artifacts_cache_key(make_recipe):
    """rounding: gptq is in int4's inputs (method, damp, act_order, version, calibration sha256), not int8's or fp32's."""
    from host.build import registry
    from host.config import load_recipe
    from host.export import job_inputs
    from host.manifest import inputs_hash
    from tests.host.build.test_transform_recipe import _job

    def hashes(value):
        r = load_recipe(_rounding_recipe(make_recipe, value, onnx=["fp32", "int8", "int4"]))
        b = registry.get("onnx").builder()
        return {s: inputs_hash(job_inputs(_job(r, s), b, "sha")) for s in ("fp32", "int8", "int4")}, r

    (rtn, _r), (g, r), (g_act, _r2) = hashes("rtn"), hashes("gptq"), hashes({"gptq": {"act_order": False}})
    assert rtn["int4"] != g["int4"] != g_act["int4"] != rtn["int4"]
    text, r3 = hashes({"gptq": {"text_tokens": 4096}})     # the held-in text's token count and sha256 are in it
    assert text["int4"] != g["int4"] and text["int8"] == g["int8"]
    from host.errors import ConfigError
    from host.fsutil import sha256_file
    from host.gptq import rounding_inputs

    assert rounding_inputs(r3.models[0], "int4", r3.text.heldin)["text_sha256"] == sha256_file(r3.text.heldin)
    r0 = load_recipe(_rounding_recipe(make_recipe, {"gptq": {"text_tokens": 0}}, onnx=["int4"]))
    assert "text_sha256" not in rounding_inputs(r0.models[0], "int4", r0.text.heldin)
    with pytest.raises(ConfigError, match="text_tokens reads the recipe's held-in text, and none is not a file"):
        rounding_inputs(r3.models[0], "int4")
    assert {s: g[s] for s in ("fp32", "int8")} == {s: rtn[s] for s in ("fp32", "int8")}
    from host.build import onnx_int8

    rec = onnx_int8.inputs(_job(r, "int4"))["rounding"]
    assert rec["method"] == "gptq" and rec["damp"] == 0.01 and len(rec["calibration_sha256"]) == 64
    assert "rounding" not in onnx_int8.inputs(_job(r, "int8"))
