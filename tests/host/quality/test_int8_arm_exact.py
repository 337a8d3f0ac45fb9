"""int8-dyn's integer ops on the virtual RK3588 (onnxruntime 1.32.0 aarch64 under qemu-user) are the host's
and the ONNX spec's, bit for bit: DynamicQuantizeLinear → MatMulInteger (u8u8, per-channel zero points, as
our artifacts store them) → Cast → Mul, which onnxruntime fuses to DynamicQuantizeMatMul at ORT_ENABLE_ALL,
at ENABLE_ALL and DISABLE_ALL, under qemu's ``max`` CPU (i8mm: onnxruntime's UMMLA kernels) and
``cortex-a76`` (RK3588's big core: dot product, the UDOT kernels).

Why a whole int8-dyn LLM still gives other log-probs there (KLD(host ‖ board) 0.07 on 16 tokens): the
float ops between the quantizers differ in the last bits between x86 and ARM kernels, and a quantizer
turns a last-bit difference at a rounding boundary into one integer step, which the next layers multiply
(``bench/int8_arm_vs_x86.py``; ``test_quality_board.py`` records the numbers).
"""

from __future__ import annotations

import base64
import io
import time

import numpy as np
import pytest

from tests.conftest import vboard_why_not

#: (K, N): SmolLM2-135M's q_proj and gate_proj shapes, and an odd one for the kernels' edge paths.
SHAPES = ((576, 576), (576, 1536), (37, 13))
TOKENS = 17

BOARD_CODE = r"""
import base64, io, sys
import numpy as np, onnxruntime as ort
data = np.load(io.BytesIO(base64.b64decode(sys.stdin.buffer.read())))
out = {}
for key in sorted(k for k in data.files if k.startswith("model|")):
    for level, lv in (("all", ort.GraphOptimizationLevel.ORT_ENABLE_ALL), ("none", ort.GraphOptimizationLevel.ORT_DISABLE_ALL)):
        so = ort.SessionOptions(); so.graph_optimization_level = lv; so.intra_op_num_threads = 1; so.log_severity_level = 3
        s = ort.InferenceSession(data[key].tobytes(), so, providers=["CPUExecutionProvider"])
        name = key.split("|", 1)[1]
        for o, v in zip([o.name for o in s.get_outputs()], s.run(None, {"x": data["x|" + name]})):
            out["%s|%s|%s" % (name, level, o)] = v
buf = io.BytesIO(); np.savez(buf, **out); sys.stdout.write(base64.b64encode(buf.getvalue()).decode())
"""


def _graphs():
    """``({name: model bytes}, {name: x}, {name|out: spec reference})`` for each shape."""
    from onnx import TensorProto as T
    from onnx import helper as h
    from onnx import numpy_helper

    rng = np.random.default_rng(7)
    models, xs, refs = {}, {}, {}
    for k, n in SHAPES:
        name = f"k{k}n{n}"
        w = rng.integers(0, 256, (k, n), dtype=np.uint8)            # int8 grid + 128, as int8_format stores it
        wz = np.full(n, 128, np.uint8)
        wz[::5] = rng.integers(100, 156, wz[::5].shape, dtype=np.uint8)   # per-channel zero points, some not 128
        ws = (rng.random(n) * 0.02 + 1e-3).astype(np.float32)
        x = (rng.standard_normal((1, TOKENS, k)) * 0.7).astype(np.float32)
        x[0, 0, 1] = 11.0                                             # an outlier sets the scale, as in the LLM
        outs = [h.make_tensor_value_info("q", T.UINT8, list(x.shape)), h.make_tensor_value_info("s", T.FLOAT, []),
                h.make_tensor_value_info("z", T.UINT8, []), h.make_tensor_value_info("y", T.FLOAT, [1, TOKENS, n])]
        # "ops": every step observable (MatMulInteger + Cast + Mul fuse to MatMulIntegerToFloat at most);
        # "fused": y alone, so ENABLE_ALL fuses the whole chain to DynamicQuantizeMatMul as in the artifact
        for variant, o in (("ops", outs), ("fused", outs[-1:])):
            g = h.make_graph(
                [h.make_node("DynamicQuantizeLinear", ["x"], ["q", "s", "z"]),
                 h.make_node("MatMulInteger", ["q", "W", "z", "WZ"], ["yi"]),
                 h.make_node("Cast", ["yi"], ["yf"], to=T.FLOAT),
                 h.make_node("Mul", ["s", "WS"], ["sc"]), h.make_node("Mul", ["yf", "sc"], ["y"])],
                name, [h.make_tensor_value_info("x", T.FLOAT, list(x.shape))], o,
                initializer=[numpy_helper.from_array(w, "W"), numpy_helper.from_array(wz, "WZ"),
                             numpy_helper.from_array(ws, "WS")])
            m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
            m.ir_version = 8
            models[f"{name}-{variant}"], xs[f"{name}-{variant}"] = m.SerializeToString(), x
        # the spec: s = (max(0, x) - min(0, x)) / 255, z = round(-min / s), q = sat(round(x / s) + z), ties to even
        lo, hi = np.float32(min(0.0, x.min())), np.float32(max(0.0, x.max()))
        s = np.float32((hi - lo) / np.float32(255))
        z = np.uint8(np.clip(np.rint(-lo / s), 0, 255))
        q = np.clip(np.rint(x / s) + np.float32(z), 0, 255).astype(np.uint8)
        acc = (q.astype(np.int64) - int(z)) @ (w.astype(np.int64) - wz.astype(np.int64))
        refs.update({f"{name}|q": q, f"{name}|s": s, f"{name}|z": z, f"{name}|y": acc.astype(np.float32) * (s * ws)})
    return models, xs, refs


def _run_here(models, xs):
    import onnxruntime as ort

    out = {}
    for name, blob in models.items():
        for level, lv in (("all", ort.GraphOptimizationLevel.ORT_ENABLE_ALL),
                          ("none", ort.GraphOptimizationLevel.ORT_DISABLE_ALL)):
            so = ort.SessionOptions()
            so.graph_optimization_level, so.intra_op_num_threads = lv, 1
            s = ort.InferenceSession(blob, so, providers=["CPUExecutionProvider"])
            for o, v in zip([o.name for o in s.get_outputs()], s.run(None, {"x": xs[name]}), strict=True):
                out[f"{name}|{level}|{o}"] = v
    return out


@pytest.mark.vboard
@pytest.mark.skipif(vboard_why_not() is not None, reason=vboard_why_not() or "")
def test_int8_ops_on_the_virtual_rk3588_are_bitwise_the_hosts_and_the_specs(vb):
    from host.deploy.ssh import SshTransport

    models, xs, refs = _graphs()
    here = _run_here(models, xs)
    buf = io.BytesIO()
    np.savez(buf, **{f"model|{k}": np.frombuffer(v, np.uint8) for k, v in models.items()},
             **{f"x|{k}": v for k, v in xs.items()})
    payload = base64.b64encode(buf.getvalue())
    with SshTransport(vb.board, known_hosts=[vb.known], stall_timeout=600) as t:
        for cpu in ("max", "cortex-a76"):
            t0 = time.monotonic()
            r = t.run(["env", f"QEMU_CPU={cpu}", vb.board.python, "-c", BOARD_CODE], input=payload, timeout=600)
            board = dict(np.load(io.BytesIO(base64.b64decode(r.stdout))))
            print(f"vrk3588 (qemu -cpu {cpu}): {len(board)} outputs in {time.monotonic() - t0:.1f} s")
            assert set(board) == set(here) and len(here) == len(SHAPES) * 2 * (4 + 1)
            for key, v in here.items():
                name, _level, out = key.split("|")
                name = name.rsplit("-", 1)[0]
                assert v.dtype == board[key].dtype and np.array_equal(v, board[key]), (cpu, key)   # board == host
                assert np.array_equal(v, refs[f"{name}|{out}"]), key                               # == the spec
