"""The board's int8 arithmetic on any x86 host: u8u8 weights are exact where u8s8 saturates, the rewrite
is exact, the fingerprint names the ISA, and doctor --host warns on hosts that compute differently."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from board.sysinfo import _cpu, int8_u8s8_exact
from board.testing.sysfs import X86_CPUINFO, make_rk3588_tree, write_cpuinfo
from host.build.int8_format import FORMAT, signed_weight_count, to_unsigned_weights
from host.hostdoctor import arithmetic_facts
from host.manifest import write_manifest


def _matmul_integer(k=256, n=48, zero_point=True):
    rng = np.random.default_rng(1)
    w = rng.integers(-128, 128, (k, n)).astype(np.int8)
    inits = [numpy_helper.from_array(w, "W"), numpy_helper.from_array(np.array(0, np.uint8), "a_zp")]
    inputs = ["A", "W", "a_zp"]
    if zero_point:
        inits.append(numpy_helper.from_array(rng.integers(-3, 4, n).astype(np.int8), "w_zp"))
        inputs.append("w_zp")
    node = helper.make_node("MatMulInteger", inputs, ["Y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("A", TensorProto.UINT8, [4, k])],
                              [helper.make_tensor_value_info("Y", TensorProto.INT32, [4, n])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("zero_point", [True, False])
def test_unsigned_rewrite_is_exact_int32(zero_point):
    """Activations near 255 and full-range weights: the worst case for VPMADDUBSW's int16 pairs."""
    model = _matmul_integer(zero_point=zero_point)
    w = numpy_helper.to_array(model.graph.initializer[0]).astype(np.int64)
    zp = numpy_helper.to_array(model.graph.initializer[2]).astype(np.int64) if zero_point else 0
    a = np.random.default_rng(2).integers(200, 256, (4, 256)).astype(np.uint8)
    exact = a.astype(np.int64) @ (w - zp)
    assert signed_weight_count(model) == 1
    assert to_unsigned_weights(model) == 1 and signed_weight_count(model) == 0
    onnx.checker.check_model(model)
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"A": a})[0]
    np.testing.assert_array_equal(got, exact)


def test_fingerprint_names_the_isa_of_both_host_families_and_the_board(tmp_path):
    amd = _cpu(write_cpuinfo(str(tmp_path / "amd"), X86_CPUINFO["amd-zen3"]))
    intel = _cpu(write_cpuinfo(str(tmp_path / "intel"), X86_CPUINFO["intel-spr"]))
    board = _cpu(make_rk3588_tree(str(tmp_path / "rk")))
    assert amd["arch"] == "x86_64" and amd["vendor"] == "AuthenticAMD" and amd["isa"] == ["avx2", "f16c"]
    assert {"avx512f", "avx512_vnni", "avx_vnni", "amx_int8"} <= set(intel["isa"])
    assert board["arch"] == "aarch64" and "asimddp" in board["isa"] and "i8mm" not in board["isa"]
    assert (int8_u8s8_exact(amd), int8_u8s8_exact(intel), int8_u8s8_exact(board)) == (False, True, True)


def _artifact(root, scheme, int8_weights):
    """A complete artifact as the builders write it (the doctor reads manifests through the typed Manifest)."""
    d = root / "m" / "rk3588" / scheme
    d.mkdir(parents=True)
    (d / "model.onnx").write_bytes(b"not a real graph: the doctor reads only the manifest")
    write_manifest(d, model="m", model_kind="llm", target="rk3588", scheme=scheme, artifact_kind="onnx",
                   format="onnx-genai", entry="model.onnx", **({"int8_weights": int8_weights} if int8_weights else {}))
    return d


def test_doctor_host_warns_where_this_host_computes_differently(tmp_path):
    arts = tmp_path / "artifacts"
    old = _artifact(arts, "int8-dyn", None)
    _artifact(arts, "int8-qdq", FORMAT)
    _artifact(arts, "fp32", None)
    amd = arithmetic_facts(write_cpuinfo(str(tmp_path / "amd"), X86_CPUINFO["amd-zen3"]), arts)
    by = {}
    for f in amd:
        by.setdefault(f["check"], []).append(f)
    assert by["int8"][0]["status"] == "warn" and "saturates" in by["int8"][0]["detail"]
    assert "rk3588" in by["int8"][0]["detail"]
    assert [f["detail"].split(":")[0] for f in by["artifact"]] == [str(old)]   # only the signed one
    assert "avx2" in by["cpu"][0]["detail"]
    intel = arithmetic_facts(write_cpuinfo(str(tmp_path / "intel"), X86_CPUINFO["intel-spr"]), arts)
    assert [f["status"] for f in intel if f["check"] == "int8"] == ["ok"]
    assert not [f for f in intel if f["check"] == "artifact"]


def test_qdq_weights_rewritten_only_where_they_feed_a_matmul():
    """DequantizeLinear of an int8 weight into a MatMul is rewritten (same dequantized values); one into
    another op (here Gather: an int8 embedding table) is left alone."""
    rng = np.random.default_rng(3)
    w = rng.integers(-128, 128, (16, 8)).astype(np.int8)
    emb = rng.integers(-128, 128, (10, 16)).astype(np.int8)
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.full(8, 0.02, np.float32), "w_s"),
             numpy_helper.from_array(np.zeros(8, np.int8), "w_zp"),
             numpy_helper.from_array(emb, "e"), numpy_helper.from_array(np.array(0.05, np.float32), "e_s"),
             numpy_helper.from_array(np.array(0, np.int8), "e_zp")]
    nodes = [helper.make_node("DequantizeLinear", ["w", "w_s", "w_zp"], ["wf"], axis=1),
             helper.make_node("DequantizeLinear", ["e", "e_s", "e_zp"], ["ef"]),
             helper.make_node("Gather", ["ef", "ids"], ["x"]),
             helper.make_node("MatMul", ["x", "wf"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, [3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    ids = np.array([1, 4, 9], np.int64)
    before = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"ids": ids})[0]
    assert to_unsigned_weights(model) == 1
    kinds = {t.name: t.data_type for t in model.graph.initializer}
    assert kinds["w"] == TensorProto.UINT8 and kinds["w_zp"] == TensorProto.UINT8
    assert kinds["e"] == TensorProto.INT8 and kinds["e_zp"] == TensorProto.INT8
    after = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"ids": ids})[0]
    np.testing.assert_array_equal(before, after)
