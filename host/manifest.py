"""``manifest.json`` beside every artifact: what it is, what it was built from, and file hashes.

Also answers "is this artifact up to date?": a build's inputs are summarised in ``inputs_hash``;
a rebuild is skipped when the stored hash matches and every listed file is intact (size check;
``verify=True`` re-hashes).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from board.artifact import artifact_sha256
from host import __version__
from host.errors import BuildError
from host.fsutil import atomic_write_text, sha256_file

MANIFEST = "manifest.json"
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Artifact:
    """A built artifact folder and its manifest."""

    path: Path
    manifest: dict

    @property
    def size(self) -> int:
        return sum(f["size"] for f in self.manifest.get("files", {}).values())

    @property
    def sha256(self) -> str:
        """One digest for the whole artifact: ``board.artifact.artifact_sha256``, the board runner's too."""
        return artifact_sha256(self.manifest)


def inputs_hash(inputs: dict) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()


def file_table(folder: Path) -> dict[str, dict]:
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name != MANIFEST and not p.name.startswith(".tmp"):
            out[str(p.relative_to(folder))] = {"sha256": sha256_file(p), "size": p.stat().st_size}
    return out


def now_rfc3339() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def write_manifest(folder: Path, **fields) -> Artifact:
    """Hash every file in ``folder`` and write ``manifest.json`` atomically (last step of a build)."""
    manifest = {"schema": SCHEMA_VERSION, "rkdeploy_version": __version__, "built_at": now_rfc3339(), **fields}
    manifest["files"] = file_table(folder)
    atomic_write_text(folder / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True, default=str))
    return Artifact(folder, manifest)


def read_manifest(folder: Path) -> dict:
    path = Path(folder) / MANIFEST
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise BuildError(f"{path}: no manifest (artifact not built; run `rkdeploy export`)") from None
    except ValueError as e:
        raise BuildError(f"{path}: manifest is not valid JSON ({e})") from None
    if data.get("schema") != SCHEMA_VERSION:
        raise BuildError(f"{path}: manifest schema {data.get('schema')!r} is not {SCHEMA_VERSION}; rebuild with this rkdeploy")
    return data


def load_artifact(folder: Path) -> Artifact:
    return Artifact(Path(folder), read_manifest(folder))


def is_up_to_date(folder: Path, expected_inputs_hash: str, *, verify: bool = False) -> bool:
    try:
        m = read_manifest(folder)
    except BuildError:
        return False
    if m.get("inputs_hash") != expected_inputs_hash or not m.get("files"):
        return False
    for name, meta in m["files"].items():
        p = folder / name
        if not p.is_file() or p.stat().st_size != meta["size"]:
            return False
        if verify and sha256_file(p) != meta["sha256"]:
            return False
    return True
