"""recipe × target → the list of artifacts to build (``BuildJob``), nothing else."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from host.config import PROJECT_ROOT, ModelSpec, Recipe

ARTIFACT_KINDS = ("onnx", "rkllm", "rknn")


def artifacts_root(override: Path | str | None = None) -> Path:
    if override:
        return Path(override)
    return Path(os.environ.get("RKDEPLOY_ARTIFACTS", PROJECT_ROOT / "artifacts"))


@dataclass(frozen=True)
class BuildJob:
    """One artifact to build: ``artifacts/<model>/<target>/<scheme>/``."""

    model: ModelSpec
    target: str
    kind: str            # "onnx" | "rkllm" | "rknn"
    scheme: str
    out_dir: Path
    recipe: Recipe = field(repr=False, compare=False)

    @property
    def label(self) -> str:
        return f"{self.model.name}/{self.target}/{self.scheme}"


def plan(recipe: Recipe, target: str, *, root: Path | str | None = None,
         kinds: tuple[str, ...] = ARTIFACT_KINDS, schemes: tuple[str, ...] | None = None) -> list[BuildJob]:
    """Every artifact the recipe lists for ``target``: ONNX CPU schemes, then vendor schemes."""
    base = artifacts_root(root)
    jobs: list[BuildJob] = []
    for m in recipe.models:
        wanted = [("onnx", s) for s in m.onnx] + [(m.vendor_kind, s) for s in m.targets.get(target, [])]
        for kind, scheme in wanted:
            if kind not in kinds or (schemes is not None and scheme not in schemes):
                continue
            jobs.append(BuildJob(m, target, kind, scheme, base / m.name / target / scheme, recipe))
    seen: dict[Path, BuildJob] = {}
    for j in jobs:
        if j.out_dir in seen:
            raise ValueError(f"two artifacts of {j.model.name} map to {j.out_dir} ({seen[j.out_dir].kind} and {j.kind})")
        seen[j.out_dir] = j
    return jobs
