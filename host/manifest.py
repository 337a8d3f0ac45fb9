"""``manifest.json`` beside every artifact: what it is, what it was built from, and file hashes.

Also answers "is this artifact up to date?": a build's inputs are summarised in ``inputs_hash``;
a rebuild is skipped when the stored hash matches and every listed file is intact (size check;
``verify=True`` re-hashes).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from board.manifest import VERSION, Manifest, ManifestError
from host import __version__
from host.errors import BuildError
from host.fsutil import atomic_write_text, sha256_file

MANIFEST = "manifest.json"
SCHEMA_VERSION = VERSION   # the manifest version (``board.manifest``)


@dataclass(frozen=True)
class Artifact:
    """A built artifact folder and its manifest (``board.manifest.Manifest``)."""

    path: Path
    manifest: Manifest

    @property
    def size(self) -> int:
        return self.manifest.size

    @property
    def weights_size(self) -> int:
        """Bytes of the weight files (``board.manifest.Manifest.weights_size``; rows' ``model_size``)."""
        return self.manifest.weights_size

    @property
    def sha256(self) -> str:
        """One digest for the whole artifact: ``board.manifest.files_sha256``, the board runner's too."""
        return self.manifest.sha256


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
    """Hash every file in ``folder`` and write ``manifest.json`` atomically (last step of a build).

    The ONE writer: the fields go through ``Manifest.from_dict`` (the board's validation) first."""
    data = {"schema": SCHEMA_VERSION, "rkdeploy_version": __version__, "built_at": now_rfc3339(), **fields}
    data["files"] = file_table(folder)
    data = json.loads(json.dumps(data, default=str))     # what the file holds (paths as text)
    path = Path(folder) / MANIFEST
    try:
        manifest = Manifest.from_dict(data, str(path))
    except ManifestError as e:
        raise BuildError(f"builder wrote an invalid manifest: {e}") from None
    atomic_write_text(path, json.dumps(manifest.to_dict(), indent=2, sort_keys=True))
    return Artifact(Path(folder), manifest)


def read_manifest(folder: Path) -> Manifest:
    """The ONE host reader of ``manifest.json`` (``board.manifest.Manifest``; BuildError, one line)."""
    path = Path(folder) / MANIFEST
    if not path.exists():
        raise BuildError(f"{path}: no manifest (artifact not built; run `rkdeploy export`)")
    try:
        return Manifest.read(str(path))
    except ManifestError as e:
        raise BuildError(f"{e}; rebuild with this rkdeploy") from None


def load_artifact(folder: Path) -> Artifact:
    return Artifact(Path(folder), read_manifest(folder))


def is_up_to_date(folder: Path, expected_inputs_hash: str, *, verify: bool = False) -> bool:
    try:
        m = read_manifest(folder)
    except BuildError:
        return False
    if m.inputs_hash != expected_inputs_hash or not m.files:
        return False
    for name, meta in m.files.items():
        p = folder / name
        if not p.is_file() or p.stat().st_size != meta["size"]:
            return False
        if verify and sha256_file(p) != meta["sha256"]:
            return False
    return True


def sibling_with_hash(out_dir: Path, ih: str) -> Path | None:
    """An up-to-date artifact of the same model and scheme under another target with the same inputs
    (``<artifacts>/<model>/<target>/<scheme>``: a target-free kind's artifact is copied, not rebuilt)."""
    model_dir = out_dir.parent.parent
    if not model_dir.is_dir():
        return None
    for tdir in sorted(model_dir.iterdir()):
        cand = tdir / out_dir.name
        if tdir.name != out_dir.parent.name and is_up_to_date(cand, ih):
            return cand
    return None


def copy_artifact(src: Path, dst: Path) -> None:
    """Hard-link (or copy) every file of ``src`` but its manifest into ``dst``."""
    for p in sorted(src.rglob("*")):
        rel = p.relative_to(src)
        if p.name == MANIFEST and p.parent == src:
            continue
        if p.is_dir():
            (dst / rel).mkdir(parents=True, exist_ok=True)
            continue
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(p, dst / rel)
        except OSError:
            shutil.copy2(p, dst / rel)
