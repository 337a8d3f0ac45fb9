"""The int8 weight format of our ONNX artifacts: unsigned weights, so every CPU computes the same numbers.

onnxruntime's int8 MatMul (``MatMulInteger`` from ``quantize_dynamic``, ``QLinearMatMul`` fused from QDQ)
multiplies uint8 activations by the weights. With **signed** weights (u8×s8) its x86 kernels without
VNNI/AMX use ``VPMADDUBSW``, which adds pairs of products into int16 and saturates: measured on an AMD
EPYC (Zen 3, AVX2) the default LLM int8-dyn scored PPL ratio ×56.7 there and ×1.06 on a VNNI Xeon. The
boards (Cortex-A55/A76, dot-product kernels) accumulate exactly in int32 — so a u8×s8 number computed
on the wrong x86 host is neither the board's nor reproducible.

Weights stored **unsigned with their zero point shifted by 128** (``w + 128``, ``zp + 128``) give the very
same integer products ``(a - za)(w - zw)`` and the same int32 sums, and onnxruntime runs u8×u8 through
kernels that widen to int16 before multiplying (exact) on every x86 ISA, and through the same ``UDOT``
kernel as u8×s8 on ARM64 (no cost on the board). The artifact's quality is then the board's on any host.
``to_unsigned_weights`` is applied by the builder and, for any artifact that still has signed weights
(an older build, a foreign file), by the quality evaluation before it opens a session.
"""

from __future__ import annotations

#: Recorded in manifests (``int8_weights``): what the int8 MatMuls of an artifact multiply.
FORMAT = "u8u8"
FORMAT_NOTE = ("uint8 weights (int8 grid + 128, zero point + 128): exact int32 accumulation on every CPU "
               "(x86 with or without VNNI, ARM dot product) - the board's arithmetic")

# (op type, weight input index, weight zero-point input index, scale input index or None)
_WEIGHT_INPUTS = (("MatMulInteger", 1, 3, None), ("DequantizeLinear", 0, 2, 1))


def _signed_uses(model):
    """(node, zp index, weight name, scale name) for every int8-initializer weight input of an int8 MatMul:
    ``MatMulInteger``'s B, and a ``DequantizeLinear`` of an int8 initializer whose output feeds only MatMuls
    (QDQ). Weights or zero points also read by any other node are left alone (the rewrite must stay local)."""
    from onnx import TensorProto

    inits = {t.name: t for t in model.graph.initializer}
    readers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    out = []
    for node in model.graph.node:
        for op, wi, zi, si in _WEIGHT_INPUTS:
            if node.op_type != op or len(node.input) <= wi:
                continue
            w = inits.get(node.input[wi])
            if w is None or w.data_type != TensorProto.INT8:
                continue
            if op == "DequantizeLinear" and not all(r.op_type == "MatMul" for r in readers.get(node.output[0], [])):
                continue
            zname = node.input[zi] if len(node.input) > zi else ""
            if any(r.op_type != op for n in (w.name, zname) if n for r in readers.get(n, [])):
                continue
            out.append((node, zi, w.name, node.input[si] if si is not None and len(node.input) > si else None))
    return out


def signed_weight_count(model) -> int:
    """How many int8 MatMul weight inputs are signed (0 for float graphs and for our u8u8 artifacts)."""
    return len(_signed_uses(model))


def to_unsigned_weights(model) -> int:
    """Rewrite signed int8 weights (and their zero points) to uint8 + 128, in place; returns the count.

    Exact: every dequantized value ``(w - zw) * scale`` and every integer product is unchanged.
    """
    import numpy as np
    from onnx import numpy_helper

    uses = _signed_uses(model)
    if not uses:
        return 0
    inits = {t.name: t for t in model.graph.initializer}

    def shifted(name: str):
        arr = numpy_helper.to_array(inits[name])
        return numpy_helper.from_array((arr.astype(np.int16) + 128).astype(np.uint8), name)

    done: set[str] = set()
    new_inits = {}
    for node, zi, wname, sname in uses:
        if wname not in done:
            new_inits[wname] = shifted(wname)
            done.add(wname)
        zname = node.input[zi] if len(node.input) > zi and node.input[zi] else None
        if zname is None:   # optional zero point omitted = 0: add one of 128 shaped like the scale
            shape = numpy_helper.to_array(inits[sname]).shape if sname in inits else ()
            zname = f"{wname}_u8_zero_point"
            while len(node.input) <= zi:
                node.input.append("")
            node.input[zi] = zname
            if zname not in done:
                new_inits[zname] = numpy_helper.from_array(np.full(shape, 128, np.uint8), zname)
        elif zname not in done:
            if zname not in inits:
                raise ValueError(f"int8 weight {wname}: zero point {zname} is not a constant")
            new_inits[zname] = shifted(zname)
        done.add(zname)
    kept = [t for t in model.graph.initializer if t.name not in new_inits]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept + list(new_inits.values()))
    return len(uses)


def convert_file(path, *, log=None) -> int:
    """``to_unsigned_weights`` on an ONNX file (single file, no external data), written atomically."""
    import os

    import onnx

    model = onnx.load(str(path))
    n = to_unsigned_weights(model)
    if n:
        tmp = f"{path}.u8.tmp"
        onnx.save(model, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        if log:
            log(f"int8 weights stored unsigned (u8u8, exact on every CPU): {n} MatMul weights")
    return n
