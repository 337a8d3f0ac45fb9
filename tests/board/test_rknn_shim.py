"""The librknnrt shim (board/testing/rknn_shim.c) compiled for this host and driven through ctypes the
way rknn-toolkit-lite2 drives it (the calls and query commands the real wheel made on the virtual
board): struct sizes, the documented return codes, injected latency, outputs from the inputs."""

from __future__ import annotations

import ctypes
import json
import math
import os
import shutil
import time

import pytest

from board.testing.rknn_artifacts import build_shim, shim_model

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")


class TensorAttr(ctypes.Structure):
    _fields_ = [("index", ctypes.c_uint32), ("n_dims", ctypes.c_uint32), ("dims", ctypes.c_uint32 * 16),
                ("name", ctypes.c_char * 256), ("n_elems", ctypes.c_uint32), ("size", ctypes.c_uint32),
                ("fmt", ctypes.c_int), ("type", ctypes.c_int), ("qnt_type", ctypes.c_int), ("fl", ctypes.c_int8),
                ("zp", ctypes.c_int32), ("scale", ctypes.c_float), ("w_stride", ctypes.c_uint32),
                ("size_with_stride", ctypes.c_uint32), ("pass_through", ctypes.c_uint8), ("h_stride", ctypes.c_uint32)]


class Input(ctypes.Structure):
    _fields_ = [("index", ctypes.c_uint32), ("buf", ctypes.c_void_p), ("size", ctypes.c_uint32),
                ("pass_through", ctypes.c_uint8), ("type", ctypes.c_int), ("fmt", ctypes.c_int)]


class Output(ctypes.Structure):
    _fields_ = [("want_float", ctypes.c_uint8), ("is_prealloc", ctypes.c_uint8), ("index", ctypes.c_uint32),
                ("buf", ctypes.c_void_p), ("size", ctypes.c_uint32)]


INT64, QUERY_IN_OUT, QUERY_IN, QUERY_OUT, QUERY_PERF_RUN, QUERY_SDK, QUERY_DYN = 8, 0, 1, 2, 4, 5, 13


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    return ctypes.CDLL(build_shim(str(tmp_path_factory.mktemp("shim"))))


def _init(lib, model: bytes) -> tuple[int, ctypes.c_uint64]:
    ctx = ctypes.c_uint64(0)
    buf = ctypes.create_string_buffer(model, len(model))
    return lib.rknn_init(ctypes.byref(ctx), buf, len(model), 0, None), ctx


def test_struct_sizes_match_rknn_api_h():
    assert (ctypes.sizeof(TensorAttr), ctypes.sizeof(Input), ctypes.sizeof(Output)) == (376, 32, 24)


def test_wheel_call_sequence(lib, tmp_path, monkeypatch):
    echo = tmp_path / "calls.jsonl"
    monkeypatch.setenv("RKNN_SHIM_ECHO", str(echo))
    rc, ctx = _init(lib, shim_model(target="rk3588", names=["input_ids", "attention_mask"], batch=1, seq_len=4,
                                    hidden=3, run_ms=30, npu_cores=3))
    assert rc == 0
    c = ctx.value
    num = (ctypes.c_uint32 * 2)()
    assert lib.rknn_query(ctypes.c_uint64(c), QUERY_IN_OUT, num, 8) == 0 and list(num) == [2, 1]
    a = TensorAttr(index=1)
    assert lib.rknn_query(ctypes.c_uint64(c), QUERY_IN, ctypes.byref(a), ctypes.sizeof(a)) == 0
    assert (a.name, a.type, list(a.dims[:a.n_dims]), a.size) == (b"attention_mask", INT64, [1, 4], 32)
    o = TensorAttr(index=0)
    assert lib.rknn_query(ctypes.c_uint64(c), QUERY_OUT, ctypes.byref(o), ctypes.sizeof(o)) == 0
    assert list(o.dims[:o.n_dims]) == [1, 4, 3] and o.qnt_type == 2  # int8 affine natively, float on request
    assert lib.rknn_query(ctypes.c_uint64(c), QUERY_DYN, ctypes.byref(o), 33040) == -1  # static shapes
    sdk = ctypes.create_string_buffer(512)
    assert lib.rknn_query(ctypes.c_uint64(c), QUERY_SDK, sdk, 512) == 0 and b"rkdeploy shim" in sdk.value
    assert lib.rknn_set_core_mask(ctypes.c_uint64(c), 7) == 0 and lib.rknn_set_core_mask(ctypes.c_uint64(c), 5) == -5
    assert lib.rknn_run(ctypes.c_uint64(c), None) == -8  # no inputs yet
    ids = (ctypes.c_int64 * 4)(10, 11, 12, 13)
    ones = (ctypes.c_int64 * 4)(1, 1, 1, 1)
    short = (Input * 2)(Input(0, ctypes.addressof(ids), 16, 0, INT64, 3), Input(1, ctypes.addressof(ones), 32, 0, INT64, 3))
    assert lib.rknn_inputs_set(ctypes.c_uint64(c), 2, short) == -5  # 16 bytes for 4 int64
    ins = (Input * 2)(Input(0, ctypes.addressof(ids), 32, 0, INT64, 3), Input(1, ctypes.addressof(ones), 32, 0, INT64, 3))
    assert lib.rknn_inputs_set(ctypes.c_uint64(c), 2, ins) == 0
    t0 = time.perf_counter()
    assert lib.rknn_run(ctypes.c_uint64(c), None) == 0
    assert time.perf_counter() - t0 >= 0.030
    perf = ctypes.c_int64()
    assert lib.rknn_query(ctypes.c_uint64(c), QUERY_PERF_RUN, ctypes.byref(perf), 8) == 0 and perf.value >= 30000
    outs = (Output * 1)(Output(want_float=1, is_prealloc=0, index=0))
    assert lib.rknn_outputs_get(ctypes.c_uint64(c), 1, outs, None) == 0 and outs[0].size == 4 * 12
    vals = ctypes.cast(outs[0].buf, ctypes.POINTER(ctypes.c_float))
    assert abs(vals[3 * 2 + 1] - math.sin(12 * 2.0)) < 1e-5  # out[0, 2, 1] = sin(ids[2] * (1 + 1))
    assert lib.rknn_outputs_release(ctypes.c_uint64(c), 1, outs) == 0
    assert lib.rknn_destroy(ctypes.c_uint64(c)) == 0
    calls = [json.loads(x)["call"] for x in echo.read_text().splitlines()]
    assert calls[0] == "rknn_init" and calls[-1] == "rknn_destroy" and "rknn_outputs_get" in calls
    run = next(json.loads(x) for x in echo.read_text().splitlines() if json.loads(x)["call"] == "rknn_run" and json.loads(x)["ret"] == 0)
    assert run["t_exit_ms"] - run["t_enter_ms"] >= 30  # the shim's own clock spans its injected run_ms


def test_models_the_shim_refuses(lib, monkeypatch):
    monkeypatch.delenv("RKNN_SHIM_SPEC", raising=False)
    assert _init(lib, b"RKNN\x00real-model-bytes" + b"\0" * 64)[0] == -6  # not a shim model, no $RKNN_SHIM_SPEC
    assert _init(lib, b"RKNN-SHIM 1\ntarget rk3588\ninput x int64 1 4\n")[0] == -6  # no outputs, no end
    two = shim_model(target="rk3576", names=["input_ids"], batch=1, seq_len=4, hidden=2, run_ms=0, npu_cores=2)
    if os.path.exists("/proc/device-tree/compatible") or os.path.exists("/sys/firmware/devicetree/base/compatible"):
        pytest.skip("this host has a device tree: the shim checks the model's chip against it")
    rc, ctx = _init(lib, two)
    assert rc == 0  # no device tree on this host: the chip check is skipped
    assert lib.rknn_set_core_mask(ctypes.c_uint64(ctx.value), 4) == -5  # core 2 on a 2-core NPU
    assert lib.rknn_destroy(ctypes.c_uint64(ctx.value)) == 0


def test_a_real_model_gets_its_spec_from_a_folder_by_hash(lib, tmp_path, monkeypatch):
    """$RKNN_SHIM_SPEC as a folder: a real .rknn's shapes come from ``<fnv1a64 of its bytes>.spec``, written
    from its manifest (how the virtual board runs a .rknn built by the real rknn-toolkit2)."""
    from board.manifest import Manifest
    from board.testing.rknn_artifacts import model_key, spec_for_manifest

    real = b"RKNN\x00\x01" + bytes(range(256)) * 40
    (tmp_path / f"{model_key(real)}.spec").write_bytes(spec_for_manifest(
        Manifest(target="rk3588", inputs={"batch": 1, "seq_len": 4, "names": ["input_ids", "attention_mask"]}),
        run_ms=0, hidden=5))
    monkeypatch.setenv("RKNN_SHIM_SPEC", str(tmp_path))
    rc, ctx = _init(lib, real)
    assert rc == 0
    o = TensorAttr(index=0)
    assert lib.rknn_query(ctypes.c_uint64(ctx.value), QUERY_OUT, ctypes.byref(o), ctypes.sizeof(o)) == 0
    assert list(o.dims[:o.n_dims]) == [1, 4, 5]
    assert lib.rknn_destroy(ctypes.c_uint64(ctx.value)) == 0
    assert _init(lib, real + b"changed")[0] == -6  # another model: no spec under its hash
