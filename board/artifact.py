"""Read and sanity-check an artifact folder's ``manifest.json`` (board side, stdlib only).

The manifest is untrusted input (the board also runs artifacts copied by hand): strict, bounded
JSON (``strictjson``), every field type checked, every file name kept inside the artifact folder.
Checks are cheap (existence and size of every listed file); sha256 is taken from the manifest,
the deployer has already verified it on upload.
"""

from __future__ import annotations

import os
from typing import Any, Dict

from .manifest import MANIFEST, MAX_MANIFEST_BYTES, MODEL_KINDS, Manifest, check_name, files_sha256
from .manifest import SUPPORTED_VERSIONS as SUPPORTED_MANIFEST_SCHEMAS
from .manifest import ManifestError as ArtifactError
from .manifest import validate as _validate

__all__ = ["MANIFEST", "MAX_MANIFEST_BYTES", "MODEL_KINDS", "SUPPORTED_MANIFEST_SCHEMAS", "ArtifactError", "Manifest",
           "artifact_sha256", "artifact_size", "check_backend", "check_name", "load_artifact", "read_artifact",
           "validate_manifest"]


def validate_manifest(manifest: Any, path: str) -> Dict[str, Any]:
    """Type and name checks of a parsed manifest (``board.manifest.validate``); returns it or raises ArtifactError."""
    return _validate(manifest, path)


def read_artifact(artifact_dir: str) -> Dict[str, Any]:
    """The validated manifest (as a dict) of ``artifact_dir``; every listed file present with its size."""
    return load_artifact(artifact_dir).to_dict()


def load_artifact(artifact_dir: str) -> Manifest:
    """The validated ``Manifest`` of ``artifact_dir``; every listed file present with its size."""
    if not isinstance(artifact_dir, str) or "\0" in artifact_dir or not os.path.isdir(artifact_dir):
        there = isinstance(artifact_dir, str) and "\0" not in artifact_dir and os.path.exists(artifact_dir)
        raise ArtifactError("artifact folder %r %s" % (artifact_dir, "is not a folder" if there else "does not exist"))
    m = Manifest.read(os.path.join(artifact_dir, MANIFEST))
    inside = os.path.join(os.path.realpath(artifact_dir), "")
    for name, info in sorted(m.files.items()):
        fp = os.path.join(artifact_dir, name)
        real = os.path.realpath(fp)
        # Names are checked as text by validate_manifest; links are checked here. Allowed outside the folder:
        # only the content-addressed blob the deployer links (``…/blobs/<this file's sha256>``).
        if not real.startswith(inside) and not (os.path.basename(real) == info.get("sha256")
                                                and os.path.basename(os.path.dirname(real)) == "blobs"):
            raise ArtifactError("%s: file %s resolves outside the artifact folder (to %s) through a link; "
                                "allowed: files inside it" % (artifact_dir, name, real[:200]))
        if not os.path.isfile(fp):
            raise ArtifactError("%s: file %s listed in the manifest is missing (or not a file); re-push the artifact"
                                % (artifact_dir, name))
        size = os.path.getsize(fp)
        if size != info["size"]:
            raise ArtifactError("%s: file %s is %d bytes, manifest says %d (truncated or corrupt); re-push it"
                                % (artifact_dir, name, size, info["size"]))
    return m


def check_backend(manifest: Any, backend: str, path: str = MANIFEST) -> None:
    """The chosen backend must be one that runs the manifest's ``format`` (a ``Manifest`` or its dict)."""
    from .backends import BACKENDS_FOR_FORMAT

    fmt = manifest.format if isinstance(manifest, Manifest) else manifest.get("format")
    if fmt is None:
        return
    runs = BACKENDS_FOR_FORMAT.get(fmt, ())
    if backend not in runs:
        raise ArtifactError("%s: format %r is run by backend %s, not %r" % (path, fmt, " or ".join(runs) or "none",
                                                                          backend))


def artifact_size(manifest: Dict[str, Any]) -> int:
    return sum(int(v.get("size") or 0) for v in (manifest.get("files") or {}).values() if isinstance(v, dict))


def artifact_sha256(manifest: Any) -> str:
    """THE artifact identity in every row (``board.manifest.files_sha256`` of the manifest's file table)."""
    if isinstance(manifest, Manifest):
        return manifest.sha256
    return files_sha256(manifest.get("files"))
