#!/usr/bin/env python3
"""Why an int8-dyn ONNX LLM gives other log-probs on aarch64 than on x86 (same onnxruntime, same file).

    python bench/int8_arm_vs_x86.py vboard --artifact artifacts/M/T/int8-dyn   # all of it, against vrk3588 (root)
    python bench/int8_arm_vs_x86.py self --artifact DIR [--artifact FP32_DIR]   # this host only
    python bench/int8_arm_vs_x86.py run --artifact DIR --out FILE.npz           # any machine: numpy + onnxruntime
    python bench/int8_arm_vs_x86.py compare --artifact DIR X86.npz ARM.npz      # this host: onnx for the weights

``run`` (stdlib + numpy + onnxruntime, Python >= 3.8: copy it to a real board as it is) runs the artifact
on one fixed window (17 held-out tokens of the default recipe) with every ``DynamicQuantizeLinear``
input/outputs and every ``MatMulInteger`` output added as graph outputs (appended to the ModelProto
bytes: protobuf merges a repeated field, no ``onnx`` package needed), and ``--ops DIR`` runs the small
op graphs ``vboard`` builds from the artifact's first weight (DynamicQuantizeLinear → MatMulInteger →
Cast → Mul, which onnxruntime fuses to ``DynamicQuantizeMatMul`` at ORT_ENABLE_ALL) at ENABLE_ALL and
DISABLE_ALL. ``compare`` checks every quantized op of each side against the ONNX spec computed here
in numpy on that side's OWN inputs (DynamicQuantizeLinear: ``s = (max(0, x) - min(0, x)) / 255``,
``z = round(-min / s)``, ``q = sat(round(x / s) + z)``, ties to even; MatMulInteger: the int64 sum of
``(q - z)(w - zw)``), then prints the first op whose inputs make the two sides quantize differently.
``self`` runs the artifact on this host alone, ORT_ENABLE_ALL vs ORT_DISABLE_ALL (other float kernels,
the same integer ops): the size of the difference that float rounding alone makes.

Measured 2026-12-03 (Intel Xeon AVX-512/VNNI/AMX host, onnxruntime 1.32.0 x86_64 vs the 1.32.0 aarch64
wheel on vrk3588 under qemu-user 7.2, CPU models ``max`` (SVE, i8mm) and ``cortex-a76`` (RK3588's big core:
dot product, no i8mm); the u8u8 int8-dyn SmolLM2-135M artifact, the 17 tokens above): the op graphs are
bitwise equal to the host's and to the spec; in the whole graph every DynamicQuantizeLinear (91) and
MatMulInteger (181) is spec-exact on both sides; the float ops between them differ in the last bits (x86
vs ARM kernels; ``max`` vs ``cortex-a76`` too), and the first rounding that flips is layer 3's input norm
at (0, 6, 260): x = 2.0061123 (x/s = 72.5000226, q = 179) on x86, 2.0061116 (72.4999967, q = 178) on
``max``, 2.0061109 (72.4999757, q = 178) on ``cortex-a76``. Then the flips multiply: 1, 63, 129, 193, 673,
... per quantizer, thousands of 9792 from layer 5. Logits x86 vs ``max``: KLD 0.0701, top-1 0.8125, max
|Δ log p| 5.74 (what ``quality --board`` measures); vs ``cortex-a76``: 0.0707, 0.75, 5.41. This host alone,
ENABLE_ALL vs DISABLE_ALL: KLD 0.0320, top-1 0.8125, max |Δ log p| 4.54 (fp32 artifact: 8e-12, 1.0, 4e-5).
Neither onnxruntime's ARM kernels nor qemu is wrong: int8-dyn's per-tensor dynamic activation
quantization amplifies any float rounding difference to the size of its own quantization noise.
Speed, side by side at load average ~9 (``board logprobs``, 3 tokens): 53 s under ``cortex-a76``, 90 s under
``max`` (the vboard's default CPU model, which also offers SVE/i8mm that RK3588 lacks).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

#: The first 17-token window of the default recipe's held-out text (SmolLM2 tokenizer), as quality uses it.
IDS = [40298, 2353, 523, 2151, 1296, 282, 4617, 506, 7415, 7908, 690, 260, 1867, 827, 2009, 30, 39220]
FLOAT, UINT8, INT32 = 1, 2, 6
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --- the run half: stdlib + numpy + onnxruntime ---------------------------------------------------------

def _varint(buf, i):
    shift = result = 0
    while True:
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7


def _fields(buf, start=0, end=None):
    """(field, wire type, value or (start, end) of a length-delimited field) of one protobuf message."""
    i, end = start, len(buf) if end is None else end
    while i < end:
        key, i = _varint(buf, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            v, i = _varint(buf, i)
            yield field, wire, v
        elif wire == 2:
            n, i = _varint(buf, i)
            yield field, wire, (i, i + n)
            i += n
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")


def quant_nodes(buf):
    """[(op_type, name, inputs, outputs)] of the DynamicQuantizeLinear / MatMulInteger nodes, in graph order."""
    out = []
    for f, _w, span in _fields(buf):
        if f != 7:   # ModelProto.graph
            continue
        for gf, _gw, nspan in _fields(buf, *span):
            if gf != 1:   # GraphProto.node
                continue
            node = {1: [], 2: [], 3: [""], 4: [""]}
            for nf, nw, v in _fields(buf, *nspan):
                if nf in node and nw == 2:
                    node[nf].append(bytes(buf[v[0]:v[1]]).decode())
            if node[4][-1] in ("DynamicQuantizeLinear", "MatMulInteger"):
                out.append((node[4][-1], node[3][-1], node[1], node[2]))
    return out


def _ld(field, payload):
    n, head = len(payload), [field << 3 | 2]
    while True:
        head.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            break
    return bytes(head) + payload


def with_outputs(buf, outputs):
    """The model bytes with ``[(name, elem_type)]`` appended to graph.output (protobuf merge of ModelProto)."""
    vis = b"".join(_ld(12, _ld(1, name.encode()) + _ld(2, _ld(1, bytes([1 << 3 | 0, et]))))
                   for name, et in outputs)
    return bytes(buf) + _ld(7, vis)


def _session(model, level, threads=1):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads, so.log_severity_level = threads, 1, 3
    so.graph_optimization_level = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
                                   "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}[level]
    return ort.InferenceSession(model, sess_options=so, providers=["CPUExecutionProvider"])


def _feeds(sess, artifact, ids):
    import numpy as np

    dec = {}
    cfg = os.path.join(artifact, "genai_config.json")
    if os.path.exists(cfg):
        with open(cfg, encoding="utf-8") as f:
            dec = json.load(f)["model"]["decoder"]
    x = np.asarray(ids, dtype=np.int64)[None]
    feeds = {"input_ids": x, "attention_mask": np.ones_like(x), "position_ids": np.arange(x.shape[1])[None]}
    for i in sess.get_inputs():
        if i.name.startswith("past_key_values."):
            feeds[i.name] = np.zeros((1, dec["num_key_value_heads"], 0, dec["head_size"]), np.float32)
    return feeds


def cmd_run(a):
    import numpy as np
    import onnxruntime as ort

    res, t0 = {}, time.monotonic()
    if a.ops:
        data = dict(np.load(os.path.join(a.ops, "inputs.npz")))
        for name in ("dql", "pattern"):
            for level in ("all", "none"):
                s = _session(os.path.join(a.ops, name + ".onnx"), level)
                for o, v in zip([o.name for o in s.get_outputs()], s.run(None, {"x": data["x"]}), strict=True):
                    res[f"ops|{name}|{level}|{o}"] = v
                if name == "pattern":   # the spec, computed on the host: float(exact int32) * (s * ws), bitwise
                    ref = np.load(os.path.join(a.ops, "pattern_ref.npy"))
                    res[f"opsref|{level}"] = np.array(np.array_equal(res[f"ops|pattern|{level}|y"], ref))
    if a.artifact:
        with open(os.path.join(a.artifact, "model.onnx"), "rb") as f:
            buf = f.read()
        outs = [("logits", None)]
        for op, _name, ins, o in quant_nodes(buf):
            outs += ([(ins[0], FLOAT), (o[0], UINT8), (o[1], FLOAT), (o[2], UINT8)] if op == "DynamicQuantizeLinear"
                     else [(o[0], INT32)])
        outs = list(dict(outs).items())
        model = with_outputs(buf, [(n, t) for n, t in outs if t is not None])
        del buf
        sess = _session(model, a.level, a.threads)
        names = [n for n, _t in outs]
        for n, v in zip(names, sess.run(names, _feeds(sess, a.artifact, a.ids)), strict=True):
            res["graph|" + n.replace("/", "\\")] = v
    import platform

    np.savez(a.out, **res)
    print(json.dumps({"machine": platform.machine(), "onnxruntime": ort.__version__, "level": a.level,
                      "arrays": len(res), "seconds": round(time.monotonic() - t0, 1)}))


# --- the host half ---------------------------------------------------------------------------------------

def _load(path):
    import numpy as np

    return {k.replace("\\", "/"): v for k, v in np.load(path).items()}


def dql_ref(x):
    import numpy as np

    x = np.asarray(x, np.float32)
    lo, hi = np.float32(min(0.0, float(x.min()))), np.float32(max(0.0, float(x.max())))
    s = np.float32((hi - lo) / np.float32(255))
    z = np.uint8(np.clip(np.rint(-lo / s), 0, 255))
    return np.clip(np.rint(x / s) + np.float32(z), 0, 255).astype(np.uint8), s, z


def log_softmax(x):
    import numpy as np

    x = np.asarray(x, np.float64)
    m = x.max(-1, keepdims=True)
    return x - (m + np.log(np.exp(x - m).sum(-1, keepdims=True)))


def vs(a, b):
    """KLD(a ‖ b), top-1 agreement, max |Δ log p| over the scored positions (all but the last), as quality does."""
    import numpy as np

    h, g = log_softmax(a)[..., :-1, :].reshape(-1, a.shape[-1]), log_softmax(b)[..., :-1, :].reshape(-1, b.shape[-1])
    return {"kld_mean": float((np.exp(h) * (h - g)).sum(-1).mean()), "top1_agree": float((h.argmax(-1) == g.argmax(-1)).mean()),
            "max_abs_logprob_diff": float(np.abs(h - g).max())}


def _fmt(d):
    return ", ".join(f"{k} {v:.4g}" for k, v in d.items())


def compare(artifact, pa, pb, tags=("x86", "arm")):
    """Per quantized op: spec-exact on each side, where the two sides' inputs first quantize differently."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    A, B = _load(pa), _load(pb)
    ok = True
    ops = sorted({k.split("|")[1] + "|" + k.split("|")[2] for k in A if k.startswith("ops|")})
    for key in ops:
        same = all(np.array_equal(A[k], B[k]) for k in A if k.startswith("ops|" + key + "|"))
        print(f"op graph {key:14s} {tags[0]} vs {tags[1]}: {'bitwise equal' if same else 'DIFFERENT'}")
        ok &= same
    for k in sorted(k for k in A if k.startswith("opsref|")):
        spec = bool(A[k]) and bool(B[k])
        print(f"op graph pattern|{k.split('|')[1]:6s} both sides equal the numpy spec bitwise: {spec}")
        ok &= spec
    if not any(k.startswith("graph|") for k in A):
        return ok
    m = onnx.load(os.path.join(artifact, "model.onnx"))
    inits = {t.name: t for t in m.graph.initializer}
    G = [{k[6:]: v for k, v in R.items() if k.startswith("graph|")} for R in (A, B)]
    n_dql = n_mmi = 0
    first = None
    for node in m.graph.node:
        if node.op_type == "DynamicQuantizeLinear":
            n_dql += 1
            x, q, s, z = node.input[0], *node.output
            for t, R in zip(tags, G, strict=True):
                qr, sr, zr = dql_ref(R[x])
                if not (np.array_equal(qr, R[q]) and sr == R[s] and zr == R[z]):
                    ok = False
                    print(f"{t}: {node.name} NOT spec-exact ({int((qr != R[q]).sum())} q differ)")
            flips = int((G[0][q] != G[1][q]).sum())
            if first is None and flips:
                first = (node, flips)
        elif node.op_type == "MatMulInteger":
            n_mmi += 1
            w = numpy_helper.to_array(inits[node.input[1]]).astype(np.int64)
            wz = numpy_helper.to_array(inits[node.input[3]]).astype(np.int64)
            for t, R in zip(tags, G, strict=True):
                ref = (R[node.input[0]].astype(np.int64) - int(R[node.input[2]])) @ (w - wz)
                if not np.array_equal(ref, R[node.output[0]]):
                    ok = False
                    print(f"{t}: {node.name} NOT exact int32")
    print(f"spec check on each side's own inputs: {n_dql} DynamicQuantizeLinear, {n_mmi} MatMulInteger: "
          f"{'all exact on both' if ok else 'SEE ABOVE'}")
    if first is not None:
        node, flips = first
        x, q, s = node.input[0], node.output[0], node.output[1]
        rel = float(np.abs(G[0][x].astype(np.float64) - G[1][x]).max() / np.abs(G[0][x]).max())
        print(f"first quantizer whose values differ: {node.name} ({flips} of {G[0][q].size}; its float input differs "
              f"by up to {rel:.2g} relative)")
        for i in np.argwhere(G[0][q] != G[1][q])[:4]:
            i = tuple(int(v) for v in i)
            print(f"  at {i}: " + " | ".join(f"{t} x={float(R[x][i])!r} x/s={float(R[x][i]) / float(R[s]):.7f} q={int(R[q][i])}"
                                             for t, R in zip(tags, G, strict=True)))
        per = []
        for node in m.graph.node:
            if node.op_type == "DynamicQuantizeLinear":
                per.append(int((G[0][node.output[0]] != G[1][node.output[0]]).sum()))
        print("values quantized differently, per DynamicQuantizeLinear in graph order:", per)
    print(f"logits {tags[0]} vs {tags[1]} (instrumented graph): {_fmt(vs(G[0]['logits'], G[1]['logits']))}")
    return ok


def make_ops(artifact, out):
    """Small graphs from the artifact's first MatMulInteger weight: DQL alone, and DQL → MatMulInteger → Cast → Mul."""
    import numpy as np
    import onnx
    from onnx import TensorProto as T
    from onnx import helper as h
    from onnx import numpy_helper

    m = onnx.load(os.path.join(artifact, "model.onnx"))
    inits = {t.name: t for t in m.graph.initializer}
    mmi = next(n for n in m.graph.node if n.op_type == "MatMulInteger")
    w, wz = (numpy_helper.to_array(inits[n]) for n in (mmi.input[1], mmi.input[3]))
    ws = numpy_helper.to_array(inits[mmi.input[1].replace("_quantized", "_scale")]).astype(np.float32)  # quantize_dynamic's names
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((1, len(IDS), w.shape[0])) * 0.5).astype(np.float32)
    x[0, 3, 17] = 9.0
    os.makedirs(out, exist_ok=True)

    def vi(n, t):
        return h.make_tensor_value_info(n, t, None)

    def save(name, nodes, outs, init):
        g = h.make_graph(nodes, name, [h.make_tensor_value_info("x", T.FLOAT, list(x.shape))], outs, initializer=init)
        mm = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
        mm.ir_version = 8
        onnx.save(mm, os.path.join(out, name + ".onnx"))

    save("dql", [h.make_node("DynamicQuantizeLinear", ["x"], ["q", "s", "z"])],
         [vi("q", T.UINT8), vi("s", T.FLOAT), vi("z", T.UINT8)], [])
    save("pattern", [h.make_node("DynamicQuantizeLinear", ["x"], ["q", "s", "z"]),
                     h.make_node("MatMulInteger", ["q", "W", "z", "WZ"], ["yi"]),
                     h.make_node("Cast", ["yi"], ["yf"], to=T.FLOAT),
                     h.make_node("Mul", ["s", "WS"], ["sc"]), h.make_node("Mul", ["yf", "sc"], ["y"])],
         [vi("y", T.FLOAT)], [numpy_helper.from_array(w, "W"), numpy_helper.from_array(wz, "WZ"),
                              numpy_helper.from_array(ws, "WS")])
    np.savez(os.path.join(out, "inputs.npz"), x=x)
    # the spec, here: the fused graph must give float(exact int32) * (s * ws) bitwise
    q, s, z = dql_ref(x)
    ref = ((q.astype(np.int64) - int(z)) @ (w.astype(np.int64) - wz.astype(np.int64))).astype(np.float32) * (s * ws)
    np.save(os.path.join(out, "pattern_ref.npy"), ref)


def cmd_self(a):
    import numpy as np

    for art in a.artifact:
        lps = {}
        for level in ("all", "none"):
            s = _session(os.path.join(art, "model.onnx"), level)
            lps[level] = s.run(["logits"], _feeds(s, art, IDS))[0]
        print(f"{art} on this host, ORT_ENABLE_ALL vs ORT_DISABLE_ALL: {_fmt(vs(lps['all'], lps['none']))}")
        assert np.isfinite(lps["all"]).all()


def cmd_vboard(a):
    import tempfile

    sys.path.insert(0, ROOT)
    from host import vboard

    st = vboard.status()
    if not st["running"]:
        sys.exit("vrk3588 is not up: python -m host.vboard up")
    root = os.path.join(st["state"], "root")
    py = "/home/rock/rkdeploy/venv/bin/python"
    art = os.path.abspath(a.artifact[0])
    with tempfile.TemporaryDirectory(prefix="i8-", dir=os.path.join(root, "tmp")) as tmp:
        inner = "/tmp/" + os.path.basename(tmp)
        subprocess.run(["cp", "-r", art, os.path.join(tmp, "art")], check=True)
        subprocess.run(["cp", os.path.abspath(__file__), os.path.join(tmp, "i8.py")], check=True)
        make_ops(art, os.path.join(tmp, "ops"))
        common = ["--ops", "%s/ops", "--artifact", "%s/art", "--level", a.level]
        here = [sys.executable, __file__, "run"] + [c % tmp if "%s" in c else c for c in common] + ["--out", tmp + "/x86.npz"]
        print("x86_64:", subprocess.run(here, check=True, capture_output=True, text=True).stdout.strip())
        for cpu in a.cpu:
            board = (["chroot", root, "env", "QEMU_CPU=" + cpu, py, inner + "/i8.py", "run"]
                     + [c % inner if "%s" in c else c for c in common] + ["--out", f"{inner}/{cpu}.npz"])
            r = subprocess.run(board, capture_output=True, text=True)
            if r.returncode:
                sys.exit("board run failed: " + r.stderr.strip().splitlines()[-1])
            print(f"aarch64 (qemu-user -cpu {cpu}): {r.stdout.strip().splitlines()[-1]}")
            ok = compare(os.path.join(tmp, "art"), tmp + "/x86.npz", f"{tmp}/{cpu}.npz", ("x86", "arm-" + cpu))
            print(f"=> onnxruntime's quantized ops on aarch64 ({cpu}): {'spec-exact' if ok else 'NOT EXACT'}")
    a.artifact = [art] + a.artifact[1:]
    cmd_self(a)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run the instrumented artifact / op graphs here (numpy + onnxruntime)")
    r.add_argument("--artifact")
    r.add_argument("--ops", help="folder of op graphs written by make_ops")
    r.add_argument("--out", required=True)
    r.add_argument("--level", choices=("all", "none"), default="all")
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--ids", type=lambda s: [int(t) for t in s.split(",")], default=IDS)
    c = sub.add_parser("compare", help="spec check of both runs, first divergence")
    c.add_argument("--artifact", required=True)
    c.add_argument("npz", nargs=2)
    s = sub.add_parser("self", help="this host alone: ORT_ENABLE_ALL vs ORT_DISABLE_ALL")
    s.add_argument("--artifact", action="append", required=True)
    v = sub.add_parser("vboard", help="everything against the running vrk3588 (root: chroot into it)")
    v.add_argument("--artifact", action="append", required=True, help="int8-dyn folder (a second: fp32, for self)")
    v.add_argument("--level", choices=("all", "none"), default="all")
    v.add_argument("--cpu", action="append", help="qemu-user CPU models (default: max, cortex-a76)")
    a = ap.parse_args(argv)
    if a.cmd == "vboard" and not a.cpu:
        a.cpu = ["max", "cortex-a76"]
    if a.cmd == "run":
        return cmd_run(a)
    if a.cmd == "compare":
        return 0 if compare(a.artifact, *a.npz) else 1
    if a.cmd == "self":
        return cmd_self(a)
    return cmd_vboard(a)


if __name__ == "__main__":
    sys.exit(main())
