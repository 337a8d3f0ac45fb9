"""The quality gate: the band a healthy artifact of each scheme falls in, and the verdict on a row.

A quality row outside its scheme's band gets ``status: degraded`` and ``gate`` = the reason (which
metric, its value, the limit), so a ruined artifact (e.g. an int8 graph whose host kernels saturate:
PPL ratio ×56) never prints as an ordinary row. ``rkdeploy export/quality --strict`` exit 1 on one.

The bands are deliberately loose: they separate "healthy for this kind of quantization" from "broken",
they are not targets. Each is the worst we measured on a healthy build of the default models (SmolLM2-135M,
all-MiniLM-L6-v2 — small models, which quantize worse than larger ones), plus a margin; the reason for
each is beside it. A scheme with no band is judged by nothing (``env.gate.verdict: no band``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: Row statuses: ``degraded`` = measured fine, but outside the healthy band of its scheme.
DEGRADED = "degraded"


@dataclass(frozen=True)
class Band:
    """Upper limits (``ppl_ratio``, ``kld_mean``) and lower limits (``top1_agree``, ``cos_mean``, ``nn_agree``)."""

    ppl_ratio: float | None = None
    kld_mean: float | None = None
    top1_agree: float | None = None
    cos_mean: float | None = None
    nn_agree: float | None = None
    why: str = ""


UPPER = ("ppl_ratio", "kld_mean")
LOWER = ("top1_agree", "cos_mean", "nn_agree")
LABEL = {"ppl_ratio": "PPL ratio", "kld_mean": "KLD", "top1_agree": "top-1", "cos_mean": "cos", "nn_agree": "NN agree"}

#: (test kind, scheme family) → band. ``test`` is ``ppl`` (LLM) or ``embedding`` (encoder); the family is
#: the scheme with any ``-gN`` group suffix written ``-g`` (w4a16-g64 → w4a16-g).
BANDS: dict[tuple[str, str], Band] = {
    ("ppl", "fp32"): Band(ppl_ratio=1.01, kld_mean=0.01, top1_agree=0.98, why="same weights: only float rounding"),
    ("ppl", "fp16"): Band(ppl_ratio=1.01, kld_mean=0.01, top1_agree=0.97, why="half precision: rounding only"),
    ("ppl", "int8"): Band(ppl_ratio=1.03, kld_mean=0.03, top1_agree=0.90, why="8-bit weights, float compute: 1.001"),
    ("ppl", "int8-dyn"): Band(ppl_ratio=1.10, kld_mean=0.20, top1_agree=0.75,
                             why="8-bit weights + activations, sensitive layers float: 1.06 measured"),
    ("ppl", "int8-qdq"): Band(ppl_ratio=1.10, kld_mean=0.20, top1_agree=0.75, why="as int8-dyn, static ranges"),
    ("ppl", "w8a8"): Band(ppl_ratio=1.10, kld_mean=0.20, top1_agree=0.75, why="vendor W8A8: 1.035 measured"),
    ("ppl", "w8a8-g"): Band(ppl_ratio=1.10, kld_mean=0.20, top1_agree=0.75, why="grouped W8A8: at least as good"),
    ("ppl", "int4"): Band(ppl_ratio=1.60, kld_mean=0.80, top1_agree=0.45, why="4-bit weights, block 32: 1.33"),
    ("ppl", "int4-mixed"): Band(ppl_ratio=1.60, kld_mean=0.80, top1_agree=0.45,
                                why="int4 with its most sensitive MatMuls int8: at least as good as int4"),
    ("ppl", "w4a16-g"): Band(ppl_ratio=2.50, kld_mean=1.20, top1_agree=0.35, why="grouped 4-bit: 1.75 (g64)"),
    ("ppl", "w4a16"): Band(ppl_ratio=4.00, kld_mean=1.80, top1_agree=0.25,
                           why="per-channel 4-bit on a small model: 3.09 measured"),
    ("embedding", "fp32"): Band(cos_mean=0.9999, why="same weights"),
    ("embedding", "fp16"): Band(cos_mean=0.999, why="half precision: 1.0000 measured"),
    ("embedding", "int8-dyn"): Band(cos_mean=0.98, nn_agree=0.80, why="0.996 measured"),
    ("embedding", "int8-qdq"): Band(cos_mean=0.97, nn_agree=0.75, why="0.990 measured"),
    ("embedding", "w8a8"): Band(cos_mean=0.97, nn_agree=0.75, why="rknn w8a8 (auto-hybrid): 0.9997"),
    ("embedding", "w4a16"): Band(cos_mean=0.85, why="rknn w4a16: 0.906 measured"),
}


def family(scheme: str | None) -> str:
    return re.sub(r"-g\d+$", "-g", scheme or "")


def band_for(test: str | None, scheme: str | None) -> Band | None:
    return BANDS.get((test or "", family(scheme)))


def verdict(row: dict) -> tuple[str, str | None]:
    """("healthy" | "degraded" | "no band", reason) of a quality row (a dict)."""
    band = band_for(row.get("test"), row.get("scheme"))
    if band is None:
        return "no band", None
    bad = []
    for name in UPPER + LOWER:
        limit, value = getattr(band, name), row.get(name)
        if limit is None or value is None:
            continue
        if (name in UPPER and value > limit) or (name in LOWER and value < limit):
            op = ">" if name in UPPER else "<"
            bad.append(f"{LABEL[name]} {value:.4g} {op} {limit:g}")
    if not bad:
        return "healthy", None
    return DEGRADED, f"{', '.join(bad)} (healthy {row.get('scheme')}: {band.why})"


def apply(row: dict) -> dict:
    """Judge a quality row in place (ok → degraded with ``gate``; error rows untouched); returns it."""
    if row.get("kind") != "quality" or row.get("status") not in ("ok", DEGRADED):
        return row
    v, reason = verdict(row)
    row["status"] = DEGRADED if v == DEGRADED else "ok"
    row["gate"] = reason
    env = row.get("env")
    if isinstance(env, dict):
        env["gate"] = v
    return row


def degraded(rows) -> list:
    """The rows (dicts or ResultRows) the gate marked degraded."""
    return [r for r in rows if (r.get("status") if isinstance(r, dict) else r.status) == DEGRADED]
