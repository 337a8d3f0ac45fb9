"""The ONE result-row definition. Runner, SQLite store and every renderer derive from it.

Field names follow llama-bench where the meaning is the same (``model_type``, ``model_size``,
``n_prompt``, ``n_gen``, ``avg_ns``, ``stddev_ns``, ``avg_ts``, ``stddev_ts``, ``samples_ns``,
``samples_ts``, ``test_time``). Each field carries its metadata: unit, display name, the table
formats that show it (``md``/``html``/``csv``; ``jsonl`` and SQLite always hold everything),
whether the store indexes it, the digits to print, and for a mean the field holding its stddev.

A row's ``kind`` is ``"bench"`` (board runner) or ``"quality"`` (host quality evaluation); both
kinds share this dataclass so there is one schema, one store table and one set of renderers.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional

# Bump when a field is added, renamed or removed or its meaning changes: ``from_dict`` refuses unknown
# fields, so a host older than the rows must be told "newer schema, upgrade rkdeploy" (the store and the
# runner's hello line carry it) rather than fail on a field name. Rows of older schemas still load.
# 2: transform, budget, int8_nodes (issue 16).
ROW_SCHEMA_VERSION = 2
#: ``degraded``: a quality row (or a bench row joined with one) outside its scheme's healthy band.
STATUSES = ("ok", "error", "degraded")

TABLES = ("md", "html")
ALL_FORMATS = ("md", "html", "csv")


def _f(default: Any = None, *, display: str = "", unit: str = "", formats: tuple = ("csv",),
       kind: str = "any", index: bool = False, digits: Optional[int] = None,
       pm: Optional[str] = None) -> Any:
    return dataclasses.field(default=default, metadata={
        "display": display, "unit": unit, "formats": tuple(formats), "kind": kind,
        "index": index, "digits": digits, "pm": pm,
    })


_ALL = ALL_FORMATS
_CSV = ("csv",)
_NONE: tuple = ()


@dataclasses.dataclass
class ResultRow:
    # identity and provenance
    kind: str = _f("bench", display="kind", index=True)
    test: Optional[str] = _f(display="test", formats=_CSV, index=True)
    model: Optional[str] = _f(display="model", formats=_ALL, index=True)
    target: Optional[str] = _f(display="target", formats=_ALL, index=True)
    scheme: Optional[str] = _f(display="scheme", formats=_ALL, index=True)
    backend: Optional[str] = _f(display="backend", formats=_ALL, index=True)
    # how the weights were prepared (the artifact manifest's transform / mix; null when none)
    transform: Optional[str] = _f(display="transform", formats=_ALL)        # e.g. awq(w4a16-g64)
    budget: Optional[float] = _f(display="size budget", unit="x fp32", formats=_ALL, digits=3)
    int8_nodes: Optional[int] = _f(display="int8 MatMuls", formats=_ALL)
    runtime: Optional[str] = _f(display="runtime", formats=_ALL, kind="bench")  # what ran, with its version
    model_type: Optional[str] = _f(display="model type")
    model_size: Optional[int] = _f(display="model size", unit="B")
    artifact_sha256: Optional[str] = _f(display="artifact sha256", index=True)
    test_time: Optional[str] = _f(display="test time", index=True)
    runner_version: Optional[str] = _f(display="runner version")
    # test parameters
    n_prompt: Optional[int] = _f(display="prompt tokens", kind="bench")
    n_gen: Optional[int] = _f(display="generated tokens", kind="bench")
    batch: Optional[int] = _f(display="batch", formats=_ALL, kind="bench")
    seq_len: Optional[int] = _f(display="seq len", formats=_ALL, kind="bench")
    threads: Optional[int] = _f(display="threads", formats=_ALL, kind="bench")
    reps: Optional[int] = _f(display="reps", kind="bench")
    warmup: Optional[int] = _f(display="warmup", kind="bench")
    # LLM results (vendor-table columns first)
    ttft_ms: Optional[float] = _f(display="TTFT", unit="ms", formats=_ALL, kind="bench", digits=1)
    ttft_stddev_ms: Optional[float] = _f(display="TTFT stddev", unit="ms", kind="bench", digits=2)
    prefill_tps: Optional[float] = _f(display="prefill", unit="tok/s", formats=_ALL, kind="bench", digits=1)
    prefill_stddev_tps: Optional[float] = _f(display="prefill stddev", unit="tok/s", kind="bench", digits=2)
    decode_tps: Optional[float] = _f(display="decode", unit="tok/s", formats=_ALL, kind="bench", digits=2,
                                     pm="decode_stddev_tps")
    decode_stddev_tps: Optional[float] = _f(display="decode stddev", unit="tok/s", kind="bench", digits=2)
    decode_cv: Optional[float] = _f(display="decode CV", kind="bench", digits=4)
    # encoder results
    latency_ms: Optional[float] = _f(display="latency", unit="ms", formats=_ALL, kind="bench", digits=2,
                                     pm="latency_stddev_ms")
    latency_stddev_ms: Optional[float] = _f(display="latency stddev", unit="ms", kind="bench", digits=2)
    latency_p50_ms: Optional[float] = _f(display="p50", unit="ms", formats=_ALL, kind="bench", digits=2)
    latency_p99_ms: Optional[float] = _f(display="p99", unit="ms", formats=_ALL, kind="bench", digits=2)
    seqs_per_s: Optional[float] = _f(display="seq/s", formats=_ALL, kind="bench", digits=1)
    # common
    wall_ms: Optional[float] = _f(display="wall", unit="ms", kind="bench", digits=1)
    peak_rss_mb: Optional[float] = _f(display="peak mem", unit="MB", formats=_ALL, kind="bench", digits=0)
    peak_rss_method: Optional[str] = _f(display="peak mem method", kind="bench")
    npu_load_pct: Optional[float] = _f(display="NPU load", unit="%", formats=_ALL, kind="bench", digits=0)
    board: Optional[str] = _f(display="board", formats=_ALL, index=True)
    # llama-bench aggregate fields: one test = prompt + generation (or one encode batch)
    avg_ns: Optional[int] = _f(display="avg", unit="ns", kind="bench")
    stddev_ns: Optional[int] = _f(display="stddev", unit="ns", kind="bench")
    avg_ts: Optional[float] = _f(display="avg", unit="t/s", kind="bench", digits=2)
    stddev_ts: Optional[float] = _f(display="stddev", unit="t/s", kind="bench", digits=2)
    samples_ns: Optional[List[int]] = _f(display="samples", unit="ns", kind="bench")
    samples_ts: Optional[List[float]] = _f(display="samples", unit="t/s", kind="bench")
    samples_ttft_ms: Optional[List[float]] = _f(display="TTFT samples", unit="ms", kind="bench")
    samples_decode_tps: Optional[List[float]] = _f(display="decode samples", unit="tok/s", kind="bench")
    samples_rss_mb: Optional[List[float]] = _f(display="per-rep peak mem", unit="MB", kind="bench")
    runtime_perf: Optional[Dict[str, Any]] = _f(display="runtime perf", kind="bench")
    # quality (host)
    ppl: Optional[float] = _f(display="PPL", formats=_CSV, kind="quality", digits=3)
    ppl_ratio: Optional[float] = _f(display="PPL ratio", formats=_ALL, kind="quality", digits=4)
    kld_mean: Optional[float] = _f(display="KLD", formats=_ALL, kind="quality", digits=4)
    kld_p99: Optional[float] = _f(display="KLD p99", formats=_CSV, kind="quality", digits=4)
    top1_agree: Optional[float] = _f(display="top-1", formats=_ALL, kind="quality", digits=3)
    n_tokens: Optional[int] = _f(display="eval tokens", kind="quality")
    cos_mean: Optional[float] = _f(display="cos", formats=_ALL, kind="quality", digits=4)
    cos_min: Optional[float] = _f(display="cos min", formats=_CSV, kind="quality", digits=4)
    nn_agree: Optional[float] = _f(display="NN agree", formats=_ALL, kind="quality", digits=3)
    method: Optional[str] = _f(display="method", formats=_ALL, kind="quality")
    gate: Optional[str] = _f(display="DEGRADED", formats=_ALL, kind="quality")  # why outside the scheme's band
    # outcome and environment
    status: str = _f("ok", display="status", index=True)
    error: Optional[str] = _f(display="error")
    env: Optional[Dict[str, Any]] = _f(display="environment")

    def to_dict(self) -> Dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> ResultRow:
        """Build a row from a dict; ``type`` (the JSONL framing key) is ignored.

        Unknown keys are an error naming the key (a newer runner must bump the schema).
        """
        names = field_names()
        unknown = sorted(k for k in data if k not in names and k != "type")
        if unknown:
            raise ValueError("unknown result-row field(s) %s; known: see board/rows.py ResultRow"
                             % ", ".join(unknown))
        row = cls(**{k: v for k, v in data.items() if k != "type"})
        if row.kind not in ("bench", "quality"):
            raise ValueError("result-row kind %r; allowed: bench, quality" % (row.kind,))
        if row.status not in STATUSES:
            raise ValueError("result-row status %r; allowed: %s" % (row.status, ", ".join(STATUSES)))
        return row


def fields() -> List[dataclasses.Field]:
    return list(dataclasses.fields(ResultRow))


def field_names() -> List[str]:
    return [f.name for f in dataclasses.fields(ResultRow)]


def meta(name: str) -> Dict[str, Any]:
    for f in dataclasses.fields(ResultRow):
        if f.name == name:
            return dict(f.metadata)
    raise KeyError(name)


def header(name: str) -> str:
    """Column header: display name plus unit, e.g. ``decode tok/s``."""
    m = meta(name)
    return ("%s %s" % (m["display"], m["unit"])).strip() if m["unit"] else m["display"]


def format_value(name: str, value: Any) -> str:
    """Text for one cell, with the field's digits; ``""`` for null."""
    if value is None:
        return ""
    digits = meta(name)["digits"]
    if isinstance(value, float) and digits is not None:
        return "%.*f" % (digits, value)
    return str(value)
