"""ONNX kind: ``sensitive_layers`` matching (patterns, graph nodes, the manifest record) and the recipe-level
check (``host.build.registry``: ``recipe_problems``, before any build). ``host.build.onnx_int8`` re-exports these."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from host.errors import BuildError

if TYPE_CHECKING:
    from host.config import Recipe

def recipe_problems(recipe: Recipe, schemes: list[str] | None = None) -> list[str]:
    """Every ``sensitive_layers`` pattern of a model building a scheme that uses it must match a linear layer."""
    import re

    from host.build.onnx_int8 import SENSITIVE_SCHEMES
    from host.errors import ModelError
    from host.models import check_model_folder, gguf_source_ready, is_gguf_source, linear_shapes, resolve_model

    problems = []
    for m in recipe.models:
        uses = [s for s in SENSITIVE_SCHEMES[m.kind] if s in m.onnx and (schemes is None or s in schemes)]
        if m.kind == "llm" and m.sensitive_layers != "auto" and "int4-mixed" in m.onnx and \
                (schemes is None or "int4-mixed" in schemes):
            uses.append("int4-mixed")          # its listed layers stay int8
        if not uses or not m.float_layers or not m.sensitive_layers_required:
            continue
        if is_gguf_source(m) and not gguf_source_ready(m):
            continue  # host.targets.check dequantizes it once the rest of the model is right (or says why not)
        try:
            folder = resolve_model(m)
        except ModelError:
            continue  # reported by host.targets.check
        if check_model_folder(folder):
            continue
        layers = linear_shapes(folder)
        if "int4-mixed" in uses:
            layers.setdefault("lm_head", (0, 0))   # a tied head has no weight of its own, but its own int8 MatMul
        for pat in m.float_layers:
            if not sensitive_matches(layers, [pat]):
                kinds = sorted({re.sub(r"\.\d+\.", ".*.", name) for name in layers})
                problems.append(f"{m.name}: sensitive_layers entry {pat!r} matches no linear layer of the model "
                                f"(a pattern matches the end of a layer name, '*' = one name component; "
                                f"layers: {', '.join(kinds)})")
        if "int4-mixed" in uses and m.budget is not None:
            from host.build.mixed import listed_mix
            from host.gptq import rounding_symmetric

            _nodes, ratio = listed_mix(folder, m.float_layers, symmetric=rounding_symmetric(m))
            if ratio > m.budget:
                problems.append(f"{m.name}: int4-mixed with sensitive_layers {m.float_layers} at int8 is "
                                f"{ratio:.4f}x fp32, over the budget {m.budget:g} (name fewer layers or raise it)")
    return problems


def layer_of_node(node_name: str) -> str | None:
    """``/m/model/layers.0/mlp/down_proj/MatMul`` → ``model.layers.0.mlp.down_proj`` (TorchScript scopes)."""
    parts = [p for p in node_name.split("/") if p]
    if len(parts) < 2 or not parts[-1].startswith("MatMul"):
        return None
    if parts[0] == "m":
        parts = parts[1:]
    return ".".join(parts[:-1])


def pattern_matches(name: str, pattern: str) -> bool:
    """A ``sensitive_layers`` pattern matches the END of a dotted layer name, component by component.

    ``*`` (or any fnmatch wildcard) stays inside one component, never across a dot:
    ``down_proj`` → ``model.layers.3.mlp.down_proj``; ``layer.*.output.dense`` → ``encoder.layer.3.output.dense``
    but not ``encoder.layer.3.attention.output.dense`` (there the component before ``output`` is ``attention``).
    """
    from fnmatch import fnmatchcase

    want, have = pattern.split("."), name.split(".")
    return len(want) <= len(have) and all(fnmatchcase(h, w) for h, w in zip(have[-len(want):], want, strict=True))


def sensitive_matches(layers, patterns) -> list[str]:
    """Linear layer names matched by any of the recipe's ``sensitive_layers`` patterns (see ``pattern_matches``)."""
    return sorted(name for name in layers if any(pattern_matches(name, p) for p in patterns))


def sensitive_nodes(onnx_path: Path, patterns, *, required: bool = True) -> list[str]:
    """Names of the weight MatMuls (B an initializer: linear layers) of an exported graph whose layer
    name (``layer_of_node``) is matched by any of ``patterns`` (none matched: an error when ``required``)."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    weights = {i.name for i in graph.initializer}
    nodes = [n.name for n in graph.node if n.op_type == "MatMul" and n.input[1] in weights
             and (layer := layer_of_node(n.name)) and any(pattern_matches(layer, p) for p in patterns)]
    if patterns and not nodes and required:
        raise BuildError(f"sensitive_layers {list(patterns)} matched no MatMul node of the exported graph")
    return nodes


def exclusions(patterns, nodes: list[str], why: str) -> dict:
    """The manifest's record of the MatMuls a quantized artifact keeps in float, and why."""
    return {"rule": f"linear layers matched by any of {list(patterns)} stay float (recipe field sensitive_layers: "
                    f"a pattern matches the end of a layer name, `*` = one component; {why})",
            "patterns": list(patterns), "nodes": nodes, "count": len(nodes)}
