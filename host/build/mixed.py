"""Sensitivity-driven mixed precision for the ONNX int4 LLM under a size budget.

``plan_mixed`` picks, from a per-node KLD sensitivity (``host.quality.sensitivity`` under the int4
scheme, ``w4a16-g32`` = MatMulNBits block 32), which MatMuls of the genai graph go to int8 so the
artifact stays within ``budget`` × the fp32 weight bytes: greedy by predicted KLD saved per extra
byte (Unsloth / llama.cpp ``--imatrix`` spirit: the most damaging layers get the bits). It returns
the whole frontier it walked (predicted KLD is the sum of the per-group increases: an estimate,
labelled so), and ``build_genai_mixed`` builds the chosen mix with onnxruntime-genai's builder
(per-node ``weights.overrides``; same worker, log and error line as ``host.build.genai``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from host.errors import BuildError

BLOCK = 32
INT4_BYTES = 0.5 + 4 / BLOCK     # int4 + one fp32 scale per block of 32 (symmetric: no zero point)
INT8_BYTES = 1.0 + 4 / BLOCK
LM_HEAD = "/lm_head/MatMul"


def onnx_node(hf_linear: str) -> str:
    """The genai builder's MatMul node for a transformers linear name (q/k/v are packed into qkv_proj)."""
    if hf_linear.endswith("lm_head"):
        return LM_HEAD
    m = re.search(r"layers\.(\d+)\.(self_attn|mlp)\.(\w+)$", hf_linear)
    if not m:
        raise ValueError(f"no genai node for linear {hf_linear!r}")
    i, block, proj = m.groups()
    if block == "self_attn":
        return f"/model/layers.{i}/attn/{'qkv_proj' if proj in ('q_proj', 'k_proj', 'v_proj') else proj}/MatMul"
    return f"/model/layers.{i}/mlp/{proj}/MatMul"


@dataclass
class Unit:
    """One decision: a set of ONNX MatMul nodes that get the same bits (a layer type × depth bucket)."""

    name: str                  # sensitivity group, e.g. down_proj@0-9
    nodes: tuple[str, ...]
    params: int                # weights in those nodes
    kld_int4: float            # KLD increase when only this unit is int4 (from the sensitivity report)


@dataclass
class Plan:
    int8_nodes: tuple[str, ...]
    bytes: float               # predicted quantized weight bytes (linears incl. lm_head)
    fp32_bytes: float          # every parameter in fp32 (the "× fp32" denominator)
    predicted_kld: float       # sum of kld_int4 over units left at int4 (an additive estimate)
    frontier: list[dict]       # every step the greedy walk took: {"units", "ratio", "predicted_kld"}


def units_from_sensitivity(model, groups: list[dict]) -> list[Unit]:
    """Disjoint units (ONNX nodes of one type × depth bucket, and ``lm_head``) from a
    ``sensitivity(...)["groups"]`` list; q/k/v of one bucket are one unit (one packed qkv MatMul)."""
    from host.fakequant import layer_groups, linear_layers

    layers = linear_layers(model)
    members = layer_groups(list(layers), _buckets(groups))
    merged: dict[tuple, Unit] = {}
    bucketed = any("@" in g["group"] and not g["group"].endswith("@all") for g in groups)
    for g in groups:
        name = g["group"]
        if name.endswith("@all") and bucketed:
            continue
        lin = members.get(name, [])
        nodes = tuple(sorted({onnx_node(n) for n in lin}))
        params = sum(layers[n].weight.numel() for n in lin)
        kld = max(0.0, g["kld_increase"])
        if nodes in merged:
            u = merged[nodes]
            merged[nodes] = Unit(f"{u.name}+{name}", nodes, u.params + params, u.kld_int4 + kld)
        else:
            merged[nodes] = Unit(name, nodes, params, kld)
    return list(merged.values())


def _buckets(groups: list[dict]) -> int:
    spans = {g["group"].split("@")[1] for g in groups if "@" in g["group"] and not g["group"].endswith("@all")}
    return max(1, len(spans))   # 1: only "X@all" groups (a sensitivity run with buckets=1)


def plan_mixed(units: list[Unit], *, fp32_bytes: float, budget: float, other_bytes: float = 0.0) -> Plan:
    """Greedy: start all-int4, move to int8 the unit with the most predicted KLD saved per extra byte
    while the predicted size stays within ``budget × fp32_bytes``. Nodes shared by two units (q/k/v
    packed into one qkv MatMul) follow the unit that upgrades them first."""
    limit = budget * fp32_bytes
    size = other_bytes + sum(u.params for u in units) * INT4_BYTES
    if size > limit:
        raise BuildError(f"budget {budget}: even all-int4 needs {size / fp32_bytes:.3f}x fp32; raise the budget")
    kld = sum(u.kld_int4 for u in units)
    chosen: set[str] = set()
    frontier = [{"units": [], "ratio": round(size / fp32_bytes, 4), "predicted_kld": round(kld, 5)}]
    left = sorted(units, key=lambda u: -u.kld_int4 / max(1, u.params))
    for u in left:
        extra = u.params * (INT8_BYTES - INT4_BYTES)
        if u.kld_int4 <= 0 or size + extra > limit:
            continue
        size += extra
        kld -= u.kld_int4
        chosen.update(u.nodes)
        frontier.append({"units": [*frontier[-1]["units"], u.name], "ratio": round(size / fp32_bytes, 4),
                         "predicted_kld": round(kld, 5)})
    return Plan(tuple(sorted(chosen)), size, fp32_bytes, kld, frontier)


def overrides_json(int8_nodes, *, symmetric: bool = True, method: str = "default") -> str:
    """``--target_options`` for onnxruntime-genai's builder: the listed MatMuls int8, the rest int4
    (``symmetric=False``: uint4/uint8 with a zero point per block; ``method``: the builder's rounding,
    ``default`` = round-to-nearest, ``k_quant`` = onnxruntime's k-quant scale/min search)."""
    ov = [{"match": {"name": n}, "type": "int8"} for n in int8_nodes]
    # The embedding is quantized too (int4 GatherBlockQuantized, the only width it has): with lm_head
    # at int8 the tied matrix is no longer shared, and a float embedding alone would be 0.21x fp32.
    return json.dumps({"quant_config": {"weights": {"op_types": ["MatMul", "Gather"], "symmetric": symmetric, "method": method,
                                                    "overrides": ov}}})


def build_genai_mixed(src: Path, out_dir: Path, int8_nodes, log, *, threads: int, board_threads: int,
                      symmetric: bool = True, method: str = "default") -> dict:
    """onnxruntime-genai builder ``-p int4`` with ``int8_nodes`` as int8 MatMulNBits (block 32)."""
    from host.build.genai import run_builder

    args = ["--target_options", overrides_json(int8_nodes, symmetric=symmetric, method=method)]
    if LM_HEAD in int8_nodes:   # genai 0.18 shares a tied matrix only at one width: it referenced a missing
        args += ["--extra_options", "shared_embeddings=false"]   # lm_head int8 initializer (invalid graph)
    run_builder(src, out_dir, "int4", log, threads=threads, board_threads=board_threads, extra_args=args,
                what=f"{len(int8_nodes)} MatMuls int8")
    graph = (f"onnxruntime-genai model builder -p int4 -e cpu (MatMulNBits block 32, {method}, "
             f"{'symmetric' if symmetric else 'asymmetric'}; {len(int8_nodes)} MatMuls int8 by sensitivity)")
    return {"format": "onnx-genai", "graph": graph, "int8_nodes": list(int8_nodes), "weights_symmetric": symmetric,
            "weights_method": method}
