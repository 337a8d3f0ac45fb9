"""How far a row runs from the memory and compute limits of its chip (``configs/targets.yaml``).

Decode: every generated token reads the artifact's weights once, so
``weights GB/s = decode tok/s × weight bytes`` (``model_size``: the artifact's weight files, as llama-bench's
``model_size``; tokenizer and config files are not read per token: ``board.manifest.Manifest.weights_size``) and
``% DDR peak = weights GB/s ÷ ddr.bandwidth_gbs``. KV cache and activations are not counted: the true
traffic is higher, so the percentage is a lower bound. Prefill (NPU backends only):
``ops/token ≈ 2 × params``, params ≈ weight bytes × 8 ÷ the scheme's weight bits, against the chip's
``npu_tops_int8`` where targets.yaml carries it.

A percentage of a chip's peak is shown only for rows measured on that chip (``env.cpu.soc`` names
the target, not emulated): a row from this host's CPU or from qemu gets weights GB/s alone.
"""

from __future__ import annotations

import re
from functools import lru_cache

from board.rows import ResultRow
from host.errors import RkdeployError

NPU_BACKENDS = ("rkllm", "rknnlite")
#: Weight bits per scheme family (the leading w<bits> of rkllm/rknn names; ONNX names by their dtype).
_ONNX_BITS = {"fp32": 32, "fp16": 16, "int8": 8, "int8-dyn": 8, "int8-qdq": 8, "int4": 4, "int4-mixed": 4}
HEADERS = {
    "roofline_weight_gbs": "weights GB/s (decode × weight bytes)",
    "roofline_ddr_pct": "% DDR peak (weight bytes/token)",
    "roofline_npu_pct": "% NPU peak (prefill, 2×params ops/token)",
}
DIGITS = {"roofline_weight_gbs": 2, "roofline_ddr_pct": 1, "roofline_npu_pct": 1}


def weight_bits(scheme: str | None) -> int | None:
    if not scheme:
        return None
    m = re.match(r"w(\d+)a\d+", scheme)
    return int(m.group(1)) if m else _ONNX_BITS.get(scheme)


@lru_cache(maxsize=4)
def target_limits(name: str) -> tuple[float | None, float | None]:
    """(DDR GB/s, NPU int8 TOPS) of a target; (None, None) when unknown or targets.yaml is unreadable."""
    from host.targets import get_target

    try:
        t = get_target(name)
    except RkdeployError:
        return None, None
    return t.ddr.bandwidth_gbs, getattr(t, "npu_tops_int8", None)


def on_target(row: ResultRow) -> bool:
    """The row was measured on its target chip: the device tree names it and nothing emulates it."""
    env = row.env or {}
    soc = str(((env.get("cpu") or {}).get("soc")) or "").lower()
    return bool(row.target) and not env.get("emulated") and row.target.lower() in soc


def weight_gbs(row: ResultRow) -> float | None:
    if row.decode_tps is None or not row.model_size:
        return None
    return row.decode_tps * row.model_size / 1e9


def ddr_pct(row: ResultRow) -> float | None:
    gbs = weight_gbs(row)
    if gbs is None or not on_target(row):
        return None
    bw, _tops = target_limits(row.target or "")
    return 100.0 * gbs / bw if bw else None


def npu_pct(row: ResultRow) -> float | None:
    bits = weight_bits(row.scheme)
    if row.backend not in NPU_BACKENDS or row.prefill_tps is None or not row.model_size or not bits or not on_target(row):
        return None
    _bw, tops = target_limits(row.target or "")
    if not tops:
        return None
    params = row.model_size * 8 / bits
    return 100.0 * row.prefill_tps * 2 * params / (tops * 1e12)


DERIVED = {"roofline_weight_gbs": weight_gbs, "roofline_ddr_pct": ddr_pct, "roofline_npu_pct": npu_pct}


def derived_cell(name: str, row: ResultRow) -> str:
    v = DERIVED[name](row)
    return "" if v is None else f"{v:.{DIGITS[name]}f}"
