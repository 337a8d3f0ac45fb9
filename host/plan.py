"""recipe × target → the list of artifacts to build (``BuildJob``), nothing else.

Which kinds and schemes: ``host.build.registry.wanted`` (the one model × target → schemes function).
With ``with_deps`` the artifacts a job depends on (``Kind.depends_on``: the fp32 ONNX a ``.rknn``
is converted from) come before it, marked ``implied`` when the selection did not ask for them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from host.config import ModelSpec, Recipe


def artifacts_root(override: Path | str | None = None) -> Path:
    """``--artifacts``, else ``$RKDEPLOY_ARTIFACTS``, else ``./artifacts`` in the CURRENT folder (as ``--help``
    says; the results store follows the same rule, ``host.results.store.default_store``)."""
    if override:
        return Path(override)
    env = os.environ.get("RKDEPLOY_ARTIFACTS")
    return Path(env) if env else Path.cwd() / "artifacts"


@dataclass(frozen=True)
class BuildJob:
    """One artifact to build: ``artifacts/<model>/<target>/<scheme>/``."""

    model: ModelSpec
    target: str
    kind: str            # a registered artifact kind (host.build.registry)
    scheme: str
    out_dir: Path
    recipe: Recipe = field(repr=False, compare=False)
    implied: bool = field(default=False, compare=False)   # planned only because another job depends on it

    @property
    def label(self) -> str:
        return f"{self.model.name}/{self.target}/{self.scheme}"


def plan(recipe: Recipe, target: str, *, root: Path | str | None = None,
         kinds: tuple[str, ...] | None = None, schemes: tuple[str, ...] | None = None,
         with_deps: bool = False) -> list[BuildJob]:
    """Every artifact the recipe lists for ``target``, in registry order (target-free kinds first)."""
    from host.build import registry

    base = artifacts_root(root)
    jobs: list[BuildJob] = []
    for m in recipe.models:
        for kind, scheme in registry.wanted(m, target):
            if (kinds is not None and kind.name not in kinds) or (schemes is not None and scheme not in schemes):
                continue
            jobs.append(BuildJob(m, target, kind.name, scheme, base / m.name / target / scheme, recipe))
    if with_deps:
        jobs = _with_deps(jobs)
    seen: dict[Path, BuildJob] = {}
    for j in jobs:
        if j.out_dir in seen:
            raise ValueError(f"two artifacts of {j.model.name} map to {j.out_dir} ({seen[j.out_dir].kind} and {j.kind})")
        seen[j.out_dir] = j
    return jobs


def _with_deps(jobs: list[BuildJob]) -> list[BuildJob]:
    """``jobs`` with each job's dependencies placed before it (once; ``implied`` when not already listed)."""
    from dataclasses import replace

    from host.build import registry

    listed = {j.out_dir for j in jobs}
    out: list[BuildJob] = []
    placed: set[Path] = set()

    def place(j: BuildJob, implied: bool) -> None:
        if j.out_dir in placed:
            return
        for dep in registry.get(j.kind).depends_on(j):
            place(dep, dep.out_dir not in listed)
        placed.add(j.out_dir)
        out.append(replace(j, implied=implied))

    for j in jobs:
        place(j, False)
    return out
