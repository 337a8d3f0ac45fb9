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
                      symmetric: bool = True, method: str = "default", why: str = "by sensitivity") -> dict:
    """onnxruntime-genai builder ``-p int4`` with ``int8_nodes`` as int8 MatMulNBits (block 32)."""
    from host.build.genai import run_builder

    args = ["--target_options", overrides_json(int8_nodes, symmetric=symmetric, method=method)]
    if LM_HEAD in int8_nodes:   # genai 0.18 shares a tied matrix only at one width: it referenced a missing
        args += ["--extra_options", "shared_embeddings=false"]   # lm_head int8 initializer (invalid graph)
    run_builder(src, out_dir, "int4", log, threads=threads, board_threads=board_threads, extra_args=args,
                what=f"{len(int8_nodes)} MatMuls int8")
    graph = (f"onnxruntime-genai model builder -p int4 -e cpu (MatMulNBits block 32, {method}, "
             f"{'symmetric' if symmetric else 'asymmetric'}; {len(int8_nodes)} MatMuls int8 {why})")
    return {"format": "onnx-genai", "graph": graph, "int8_nodes": list(int8_nodes), "weights_symmetric": symmetric,
            "weights_method": method}


# --- the recipe's ``sensitive_layers: auto`` + ``budget``: sensitivity → plan → build ------------------

#: Bump when the sensitivity measurement or the plan for a recipe changes (rebuilds int4-mixed artifacts).
MIXED_VERSION = 3   # 2: every linear counted in the predicted size (a partial sensitivity undercounted)
#                     3: an asymmetric mix's int8 nodes symmetric (symmetric_int8); listed layers (their predicted
#                        size counts zero points, rotary caches and the graph); the built size recorded
#: The fake-quant scheme the sensitivity runs under: what MatMulNBits block 32 does to the weights.
SENSITIVITY_SCHEME = "w4a16-g32"
SENSITIVITY_BUCKETS = 3
#: Bump when the sensitivity measurement changes (its cached JSON is keyed by it; the plan by MIXED_VERSION).
SENSITIVITY_VERSION = 1


def listed(model) -> bool:
    """Does ``model`` name its int4-mixed artifact's int8 layers (a ``sensitive_layers`` list, not ``auto``)?"""
    return model.sensitive_layers != "auto"


#: genai's graph proto (model.onnx, without the weights) per decoder layer: SmolLM2 259,665 bytes / 30 layers.
GRAPH_BYTES_PER_LAYER = 9000


def listed_mix(folder: Path, patterns, *, symmetric: bool = True,
               original: Path | None = None) -> tuple[tuple[str, ...], float]:
    """``(int8 MatMul nodes, predicted artifact bytes / fp32 bytes)`` of an int4-mixed artifact of the checkpoint
    in ``folder`` keeping the linears matched by ``patterns`` at int8 (q/k/v are one packed MatMul: naming one
    of them keeps the three), the rest of the linears and the embedding int4, norms fp32, genai's rotary caches
    and graph (an estimate); from the safetensors headers only (no weights read). A tied ``lm_head`` at int8 is
    its own int8 copy beside the int4 embedding. The fp32 denominator is ``original``'s (the model the recipe
    names; a transform such as ``rotate`` may have untied its head), default ``folder``'s."""
    from host.build.onnx_checks import pattern_matches
    from host.build.onnx_int8 import _llm_dims

    numel = tensor_sizes(folder)
    emb = next((k for k in numel if k.endswith("embed_tokens.weight")), None)
    linears = {k[:-len(".weight")]: v for k, v in numel.items()
               if k.endswith("_proj.weight") or k.endswith("lm_head.weight")}
    if emb is not None and not any(k.endswith("lm_head") for k in linears):
        linears["lm_head"] = numel[emb]          # tied: genai writes lm_head's own MatMul
    zp4, zp8 = (0.0, 0.0) if symmetric else (0.5 / BLOCK, 0.0)   # int8 nodes end symmetric (symmetric_int8)
    nodes: set[str] = set()
    size = 0.0
    chosen = {n for n in linears if any(pattern_matches(n, p) for p in patterns)}
    chosen_nodes = {onnx_node(n) for n in chosen}
    for n, v in linears.items():
        node = onnx_node(n)
        if node in chosen_nodes:
            nodes.add(node)
            size += v * (INT8_BYTES + zp8)
        elif not (n == "lm_head" and emb is not None and "lm_head.weight" not in numel):
            size += v * (INT4_BYTES + zp4)   # a tied lm_head at int4 is the int4 embedding table itself
    others = sum(v for k, v in numel.items() if k[:-len(".weight")] not in linears and k != emb)
    size += (numel.get(emb, 0)) * (INT4_BYTES + zp4) + 4.0 * others + rotary_cache_bytes(folder)
    size += GRAPH_BYTES_PER_LAYER * _llm_dims(folder)[0]
    denominator = fp32_bytes(original) if original is not None else 4.0 * sum(numel.values())
    return tuple(sorted(nodes)), size / denominator


def rotary_cache_bytes(folder: Path) -> int:
    """genai's fp32 ``cos_cache`` + ``sin_cache`` initializers: ``[max positions, head_dim / 2]`` each."""
    from host.build.onnx_int8 import _llm_dims
    from host.models import read_config

    return 2 * int(read_config(Path(folder)).get("max_position_embeddings", 0)) * (_llm_dims(folder)[2] // 2) * 4


def tensor_sizes(folder: Path) -> dict[str, int]:
    """``{tensor name: element count}`` of the checkpoint's safetensors files (headers only)."""
    from math import prod

    from host.models import tensor_shapes

    return {name: prod(shape) for name, shape in tensor_shapes(folder).items()}


def fp32_bytes(folder: Path) -> int:
    """Every parameter of the checkpoint in fp32 (a tied matrix once): the "× fp32" denominator."""
    return 4 * sum(tensor_sizes(folder).values())


def weights_bytes(art: Path) -> int:
    """The built graph and its external data: what the artifact's weights take on disk."""
    return sum(f.stat().st_size for f in Path(art).iterdir() if f.name.startswith("model.onnx"))


def symmetric_int8(art: Path, src: Path, log) -> int:
    """genai's ``symmetric`` is one flag for every MatMulNBits: an asymmetric int4 mix gets asymmetric int8 nodes
    too, whose zero points (1 byte per block of 32) buy nothing at 8 bits. Requantize those nodes symmetric
    (onnxruntime's blockwise formula, from the float checkpoint's weights) and drop their zero points; the
    graph is rewritten with one external data file (temp files, fsync, rename). Returns the nodes changed."""
    import os
    import shutil
    import tempfile

    import onnx
    import torch
    from onnx import numpy_helper

    from host.gptq import (
        Grid,
        _module_names,
        _tensor_bytes,
        hf_linears_of,
        nbits_nodes,
        node_weights,
        pack_b,
        require_rounding_of,
        rtn,
    )
    from host.quality.reference import load_torch_llm

    art = Path(art)
    proto = onnx.load(str(art / "model.onnx"))            # with its external data
    nodes = [n for n in nbits_nodes(proto) if n.grid.bits == 8 and n.zero_points and not n.shared]
    if not nodes:
        return 0
    model = load_torch_llm(src)
    paths, mods = _module_names(model), dict(model.named_modules())
    inits = {t.name: t for t in proto.graph.initializer}
    by_name = {nd.name: nd for nd in proto.graph.node}
    for n in nodes:
        lins = hf_linears_of(n.name)
        if any(x not in paths for x in lins):
            raise BuildError(f"int4-mixed: {n.name}: no linear {lins[0]} in {src}")
        w = torch.cat([mods[paths[x]].weight.detach().float() for x in lins])
        old_b, old_s = numpy_helper.to_array(inits[n.b]), numpy_helper.to_array(inits[n.scales])
        old, _dtype = node_weights(n, *(_tensor_bytes(proto, art, t)[0] for t in (n.b, n.scales, n.zero_points)))
        require_rounding_of("int4-mixed", n, old, old_s, w, src)
        grid = Grid(8, n.grid.block_size, True)
        q, sc, _z = rtn(w, grid)
        b = pack_b(q.numpy(), grid).reshape(old_b.shape)
        inits[n.b].CopyFrom(numpy_helper.from_array(b.astype(old_b.dtype), n.b))
        inits[n.scales].CopyFrom(numpy_helper.from_array(sc.numpy().astype(old_s.dtype).reshape(old_s.shape), n.scales))
        node = by_name[n.name]
        del node.input[3:]
        proto.graph.initializer.remove(inits.pop(n.zero_points))
    tmp = Path(tempfile.mkdtemp(prefix=".symmetric-int8-", dir=art))
    try:
        onnx.save_model(proto, str(tmp / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                        location="model.onnx.data", size_threshold=0)
        for name in ("model.onnx.data", "model.onnx"):
            with open(tmp / name, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp / name, art / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"int4-mixed: {len(nodes)} int8 MatMuls made symmetric (zero points dropped)")
    return len(nodes)


def mix_inputs(model, recipe) -> dict:
    """What ``sensitive_layers: auto`` adds to an artifact's inputs: the budget, the plan version and everything
    the sensitivity measurement depends on (``sensitivity_of``: the evaluation's key = model, held-out text,
    window, token count, BOS; the fake-quant and measurement versions; scheme, buckets). The checkpoint's
    transform is in the artifact's inputs already."""
    from host.fakequant import FAKEQUANT_VERSION
    from host.quality.reference import SENSITIVITY_TOKENS, llm_eval

    if listed(model):
        return {"budget": model.budget, "sensitive_layers": sorted(model.sensitive_layers), "version": MIXED_VERSION}
    ev = llm_eval(recipe, model, eval_tokens=min(SENSITIVITY_TOKENS, recipe.quality.eval_tokens))
    return {"budget": model.budget, "sensitive_layers": "auto", "version": MIXED_VERSION,
            "sensitivity": {"scheme": SENSITIVITY_SCHEME, "tokens": SENSITIVITY_TOKENS,
                            "buckets": SENSITIVITY_BUCKETS, "eval": ev.key, "fakequant": FAKEQUANT_VERSION,
                            "version": SENSITIVITY_VERSION}}


def sensitivity_of(recipe, model, folder: Path, *, log=None) -> dict:
    """Per layer type × depth bucket: KLD(original float ‖ ``folder``'s model with only that group under
    ``SENSITIVITY_SCHEME``) minus ``folder``'s own float KLD, most damaging first (the same measurement as
    ``rkdeploy quality --sensitivity``, on the checkpoint the builder reads: the transformed one when the
    recipe has a transform). Cached as JSON under the quality cache, keyed by the evaluation, the
    checkpoint (its transform key) and the settings."""
    from host.fakequant import FAKEQUANT_VERSION
    from host.fsutil import atomic_write_text
    from host.manifest import inputs_hash
    from host.quality.reference import SENSITIVITY_TOKENS, llm_eval, quality_cache
    from host.quality.sensitivity import measure_groups

    ev = llm_eval(recipe, model, eval_tokens=min(SENSITIVITY_TOKENS, recipe.quality.eval_tokens))
    rec = Path(folder) / "rkdeploy-transform.json"
    ckpt = json.loads(rec.read_text())["key"] if rec.is_file() else "float"
    key = inputs_hash({"eval": ev.key, "checkpoint": ckpt, "scheme": SENSITIVITY_SCHEME,
                       "buckets": SENSITIVITY_BUCKETS, "fq": FAKEQUANT_VERSION, "v": SENSITIVITY_VERSION})
    cache = quality_cache() / "sensitivity" / f"{model.name}-mix-{key[:24]}.json"
    try:
        return {**json.loads(cache.read_text()), "cache": str(cache)}
    except (OSError, ValueError):
        pass
    res = {"model": model.name, "scheme": SENSITIVITY_SCHEME, "checkpoint": ckpt,
           **measure_groups(recipe, ev, SENSITIVITY_SCHEME, SENSITIVITY_BUCKETS, model_dir=Path(folder), full=False,
                            log=(lambda s: log(f"sensitivity {s}")) if log else None)}
    atomic_write_text(cache, json.dumps(res, indent=1))
    return {**res, "cache": str(cache)}


def plan_for_checkpoint(folder: Path, groups: list[dict], budget: float) -> Plan:
    """``plan_mixed`` for the checkpoint in ``folder`` from a sensitivity ``groups`` list: every distinct
    weight counted once (a tied lm_head is the embedding's matrix), the embedding int4 (GatherBlockQuantized)
    in every mix, norms fp32."""
    from host.quality.reference import load_torch_llm

    model = load_torch_llm(folder)
    return plan_for_model(model, groups, budget)


def plan_for_model(model, groups: list[dict], budget: float) -> Plan:
    """``plan_mixed`` for ``model``: a unit weighs every weight of its ONNX nodes (a packed qkv MatMul whole,
    even when the sensitivity names only q_proj), and the linears no sensitivity group names count as int4."""
    from dataclasses import replace

    from host.fakequant import linear_layers

    total = sum(p.numel() for p in model.parameters())
    emb = model.get_input_embeddings().weight
    node_params: dict[str, int] = {}
    for name, mod in linear_layers(model).items():
        if mod.weight is not emb:            # a tied lm_head is the embedding's matrix (counted below)
            node = onnx_node(name)
            node_params[node] = node_params.get(node, 0) + mod.weight.numel()
    units = [u if u.nodes == (LM_HEAD,) else replace(u, params=sum(node_params.get(n, 0) for n in u.nodes))
             for u in units_from_sensitivity(model, groups)]
    covered = {n for u in units for n in u.nodes}
    uncovered = sum(v for n, v in node_params.items() if n not in covered)
    other = (emb.numel() + uncovered) * INT4_BYTES + 4.0 * (total - sum(node_params.values()) - emb.numel())
    return plan_mixed(units, fp32_bytes=4.0 * total, budget=budget, other_bytes=other)


def frontier_lines(plan: Plan) -> list[str]:
    """The size-vs-predicted-KLD frontier the greedy walk chose from, one line per step."""
    out = ["size-vs-predicted-KLD frontier (predicted KLD = sum of the per-group int4 increases left: an "
           "estimate; the artifact's measured KLD is its quality row):"]
    for p in plan.frontier:
        out.append(f"  {p['ratio']:.3f}x fp32  predicted KLD {p['predicted_kld']:.4f}  "
                   f"+ {p['units'][-1] if p['units'] else '(all int4)'}")
    return out


def build_mixed_for_job(job, src: Path, out_dir: Path, log, *, threads: int, board_threads: int) -> dict:
    """``int4-mixed`` for ``job``: sensitivity of ``src`` (cached), the plan within ``job.model.budget``
    (its frontier printed to ``log``), the genai build; returns the manifest fields incl. ``mix``."""
    from host.gptq import rounding_symmetric
    from host.models import resolve_model

    budget = job.model.budget
    symmetric = rounding_symmetric(job.model)
    original = resolve_model(job.model)      # the "x fp32" denominator: the recipe's model, before any transform
    if listed(job.model):
        layers = list(job.model.sensitive_layers)
        nodes, ratio = listed_mix(src, layers, symmetric=symmetric, original=original)
        if not nodes:
            raise BuildError(f"{job.model.name}: sensitive_layers {layers} match no linear layer (int4-mixed keeps "
                             "the matched ones at int8)")
        if budget is not None and ratio > budget:
            raise BuildError(f"{job.model.name}: int4-mixed with {layers} at int8 is {ratio:.4f}x fp32, over the "
                             f"budget {budget:g}; name fewer layers or raise the budget")
        log(f"int4-mixed: {len(nodes)} MatMuls int8 ({', '.join(layers)}), predicted {ratio:.3f}x fp32"
            + (f" (budget {budget:g})" if budget is not None else ""))
        why, predicted = f"by the recipe's list {layers}", f"predicted {ratio:.4f}"
        mix = {"budget": budget, "layers": layers, "int8_node_count": len(nodes), "int8_nodes": list(nodes),
               "predicted_ratio": round(ratio, 4)}
    else:
        sens = sensitivity_of(job.recipe, job.model, src, log=log)
        log(f"sensitivity under {sens['scheme']} on {sens['n_tokens']} held-out tokens: {sens['cache']}")
        plan = plan_for_checkpoint(src, sens["groups"], budget)
        for line in frontier_lines(plan):
            log(line)
        log(f"chosen: {len(plan.int8_nodes)} MatMuls int8, predicted {plan.bytes / plan.fp32_bytes:.3f}x fp32 "
            f"(budget {budget})")
        nodes, why = plan.int8_nodes, "by sensitivity"
        predicted = f"plan {plan.bytes / plan.fp32_bytes:.4f}: linears and embedding only"
        mix = {"budget": budget, "int8_node_count": len(plan.int8_nodes), "int8_nodes": list(plan.int8_nodes),
               "predicted_ratio": round(plan.bytes / plan.fp32_bytes, 4),
               "predicted_kld": round(plan.predicted_kld, 5), "frontier": plan.frontier,
               "sensitivity": {"scheme": sens["scheme"], "n_tokens": sens["n_tokens"], "cache": sens["cache"]}}
    extra = build_genai_mixed(src, out_dir, nodes, log, threads=threads, board_threads=board_threads,
                              symmetric=symmetric, why=why)
    if not symmetric:
        extra["int8_symmetric"] = symmetric_int8(out_dir, src, log)
    built = weights_bytes(out_dir) / fp32_bytes(original)
    log(f"int4-mixed: built {built:.4f}x fp32 ({predicted})")
    if listed(job.model) and budget is not None and built > budget:
        raise BuildError(f"{job.model.name}: the built int4-mixed weights are {built:.4f}x fp32, over the budget "
                         f"{budget:g} ({predicted}); name fewer layers or raise the budget")
    extra["mix"] = {**mix, "built_ratio": round(built, 4), "version": MIXED_VERSION}
    return extra


def plan_share(job, model_dir: Path, log) -> tuple[float, dict]:
    """The budgeted plan for ``job``'s model read from ``model_dir`` (sensitivity cached, frontier logged):
    ``(share of the linear weights at int8, the manifest's mix record)`` — what an rkllm build's
    ``hybrid_rate`` expresses (``host.build.rkllm.mix_hybrid``)."""
    from host.quality.reference import load_torch_llm

    sens = sensitivity_of(job.recipe, job.model, model_dir, log=log)
    model = load_torch_llm(model_dir)
    plan = plan_for_model(model, sens["groups"], job.model.budget)
    share = int8_share(plan, model)
    for line in frontier_lines(plan):
        log(line)
    return share, {"budget": job.model.budget, "int8_node_count": len(plan.int8_nodes), "int8_share": round(share, 4),
                   "predicted_ratio": round(plan.bytes / plan.fp32_bytes, 4),
                   "sensitivity": {"scheme": sens["scheme"], "n_tokens": sens["n_tokens"], "cache": sens["cache"]},
                   "version": MIXED_VERSION}


def int8_share(plan: Plan, model) -> float:
    """Share of the linear weights (tied lm_head counted once) the plan moved to int8."""
    from host.fakequant import linear_layers

    emb = model.get_input_embeddings().weight
    chosen = set(plan.int8_nodes)
    sizes = [(onnx_node(n) in chosen, m.weight.numel()) for n, m in linear_layers(model).items() if m.weight is not emb]
    total = sum(n for _c, n in sizes)
    return sum(n for c, n in sizes if c) / total if total else 0.0
