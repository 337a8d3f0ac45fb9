"""Recipe-level checks of the ONNX kind (``host.build.registry``: ``recipe_problems``), before any build."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from host.config import Recipe

def recipe_problems(recipe: Recipe, schemes: list[str] | None = None) -> list[str]:
    """Every ``sensitive_layers`` pattern of a model building a scheme that uses it must match a linear layer."""
    import re

    from host.build.onnx_int8 import SENSITIVE_SCHEMES, sensitive_matches
    from host.errors import ModelError
    from host.models import check_model_folder, linear_shapes, resolve_model

    problems = []
    for m in recipe.models:
        uses = [s for s in SENSITIVE_SCHEMES[m.kind] if s in m.onnx and (schemes is None or s in schemes)]
        if not uses or not m.sensitive_layers or not m.sensitive_layers_required:
            continue
        try:
            folder = resolve_model(m)
        except ModelError:
            continue  # reported by host.targets.check
        if check_model_folder(folder):
            continue
        layers = linear_shapes(folder)
        for pat in m.sensitive_layers:
            if not sensitive_matches(layers, [pat]):
                kinds = sorted({re.sub(r"\.\d+\.", ".*.", name) for name in layers})
                problems.append(f"{m.name}: sensitive_layers entry {pat!r} matches no linear layer of the model "
                                f"(a pattern matches the end of a layer name, '*' = one name component; "
                                f"layers: {', '.join(kinds)})")
    return problems
