"""Read and sanity-check an artifact folder's ``manifest.json`` (board side, stdlib only).

Checks are cheap (existence and size of every listed file); sha256 is taken from the manifest,
the deployer has already verified it on upload.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict

MANIFEST = "manifest.json"
# Manifest schema versions this runner reads (host/manifest.py writes them).
SUPPORTED_MANIFEST_SCHEMAS = (1,)


class ArtifactError(Exception):
    """The artifact folder is missing, incomplete or corrupt (one line naming file and problem)."""


def read_artifact(artifact_dir: str) -> Dict[str, Any]:
    if not os.path.isdir(artifact_dir):
        raise ArtifactError("artifact folder %s does not exist" % artifact_dir)
    path = os.path.join(artifact_dir, MANIFEST)
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except FileNotFoundError:
        raise ArtifactError("%s missing: not an rkdeploy artifact folder (rebuild it with `rkdeploy export`)"
                            % path) from None
    except (OSError, ValueError) as e:
        raise ArtifactError("%s is not valid JSON (%s); rebuild the artifact" % (path, str(e).splitlines()[0])) from None
    if not isinstance(manifest, dict):
        raise ArtifactError("%s: expected a JSON object" % path)
    schema = manifest.get("schema")
    if schema not in SUPPORTED_MANIFEST_SCHEMAS:
        raise ArtifactError("%s: manifest schema %r; this runner reads %s — update the board runner (rkdeploy push)"
                            % (path, schema, ", ".join(map(str, SUPPORTED_MANIFEST_SCHEMAS))))
    files = manifest.get("files") or {}
    if not isinstance(files, dict):
        raise ArtifactError("%s: field 'files' must be an object of name -> {sha256, size}" % path)
    for name, info in sorted(files.items()):
        fp = os.path.join(artifact_dir, name)
        try:
            size = os.path.getsize(fp)
        except OSError:
            raise ArtifactError("%s: file %s listed in the manifest is missing; re-push the artifact"
                                % (artifact_dir, name)) from None
        want = (info or {}).get("size") if isinstance(info, dict) else None
        if want is not None and size != want:
            raise ArtifactError("%s: file %s is %d bytes, manifest says %d (truncated or corrupt); re-push it"
                                % (artifact_dir, name, size, want))
    entry = manifest.get("entry")
    if entry and not os.path.exists(os.path.join(artifact_dir, entry)):
        raise ArtifactError("%s: entry file %s is missing" % (artifact_dir, entry))
    return manifest


def artifact_size(manifest: Dict[str, Any]) -> int:
    return sum(int((v or {}).get("size") or 0) for v in (manifest.get("files") or {}).values())


def entry_sha256(manifest: Dict[str, Any]) -> Any:
    entry = manifest.get("entry")
    info = (manifest.get("files") or {}).get(entry) if entry else None
    return (info or {}).get("sha256") if isinstance(info, dict) else None
