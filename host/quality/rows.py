"""Quality rows: built through the ONE row definition (``board.rows.ResultRow``), cached on disk by
what they measured, made a target's row, and added to the results store."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from board.rows import ResultRow, fields
from host import gate
from host.config import ModelSpec
from host.fsutil import atomic_write_text
from host.manifest import inputs_hash, now_rfc3339
from host.quality.reference import quality_cache, threads

#: The result fields a quality evaluation measures: ``ResultRow``'s quality fields but the labels.
ROW_METRICS = tuple(f.name for f in fields() if f.metadata["kind"] == "quality" and f.name not in ("method", "gate"))


@dataclass
class Pending:
    """One row to compute: a built artifact (``measured``) or a scheme simulated on the float model."""

    model: ModelSpec
    scheme: str
    method: str
    key: str
    artifact: object = None   # host.manifest.Artifact for measured rows
    transform: object = None  # host.transforms.Transform a simulated row's float model has folded in


def quality_row(model: ModelSpec, target: str, scheme: str, method: str, backend: str, metrics: dict, *,
                artifact=None, env: dict, transform: str | None = None) -> dict:
    """A ``ResultRow`` of kind ``quality`` as a dict holding the fields set (metrics with full digits)."""
    given = {"kind": "quality", "test": "ppl" if model.kind == "llm" else "embedding", "model": model.name,
             "target": target, "scheme": scheme, "backend": backend, "method": method, "status": "ok",
             "test_time": now_rfc3339(), "threads": threads(), "env": env}
    given.update({k: v for k, v in metrics.items() if k in ROW_METRICS})
    if artifact is not None:
        given["artifact_sha256"] = artifact.sha256
        given["model_size"] = artifact.weights_size
        transform = artifact.manifest.transform_label
        mix = artifact.manifest.mix or {}
        if mix:
            if mix.get("budget") is not None:
                given["budget"] = mix.get("budget")
            given["int8_nodes"] = mix.get("int8_node_count")
    if transform:
        given["transform"] = transform
    row = ResultRow(**given).to_dict()
    return gate.apply({k: row[k] for k in given})


class RowCache:
    """Finished quality rows on disk, keyed by what they measured."""

    def __init__(self) -> None:
        self.dir = quality_cache() / "rows"

    def get(self, key: str) -> dict | None:
        try:
            return json.loads((self.dir / f"{key}.json").read_text())
        except (OSError, ValueError):
            return None

    def put(self, key: str, row: dict) -> None:
        atomic_write_text(self.dir / f"{key}.json", json.dumps(row, indent=1, sort_keys=True))


def store_rows(rows: list[dict], store: Path | str | None = None) -> None:
    """Add rows to the results store (``host.results.ResultStore``) unless a row with the same key is there."""
    from host.results import ResultStore

    with ResultStore(store) as st:
        have = {(r.env or {}).get("quality_key") for r in st.rows(kind="quality")}
        for row in rows:
            if row["env"].get("quality_key") not in have:
                st.add(row)


def for_target(row: dict, p: Pending, target: str) -> dict:
    """A computed (or cached) row made this target's row; ``env.quality_key`` is what the store dedupes on."""
    row = json.loads(json.dumps(row))
    row["target"] = target
    row["env"]["quality_key"] = inputs_hash({"k": p.key, "t": target})
    row["env"]["compute_key"] = p.key
    if p.artifact is not None:
        row["env"]["artifact"] = str(p.artifact.path)
    return row


def split_cached(todo: list[Pending], cache: RowCache, target: str) -> tuple[dict, list[Pending]]:
    done, missing = {}, []
    for p in todo:
        row = cache.get(p.key)
        if row is None:
            missing.append(p)
        else:
            done[p.key] = for_target(row, p, target)
    return done, missing


def _note(m: ModelSpec, scheme: str) -> str | None:
    """The model's "dequantized from <type>" note (built-in or a recipe's GGUF source) on 4-bit rows."""
    from host.errors import ModelError
    from host.models import model_note, resolve_model
    from host.schemes import weight_bits

    if weight_bits(scheme) > 4:
        return None
    try:
        return model_note(resolve_model(m))
    except ModelError:
        return None


def row_env(p: Pending, target: str, extra: dict) -> dict:
    from host.fakequant import definition
    from host.schemes import describe

    env = {"definition": definition(p.scheme) if p.method == "simulated" else describe(p.scheme), **extra}
    note = _note(p.model, p.scheme)
    if note:
        env["note"] = note
    return env


def error_row(m: ModelSpec, target: str, p: Pending, error: str, backend: str = "torch-fakequant") -> dict:
    row = quality_row(m, target, p.scheme, p.method, backend, {}, artifact=p.artifact, env=row_env(p, target, {}),
                      transform=p.transform.label() if p.transform is not None else None)
    row.update(status="error", error=error)
    return for_target(row, p, target)
