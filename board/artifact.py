"""Read and sanity-check an artifact folder's ``manifest.json`` (board side, stdlib only).

The manifest is untrusted input (the board also runs artifacts copied by hand): strict, bounded
JSON (``strictjson``), every field type checked, every file name kept inside the artifact folder.
Checks are cheap (existence and size of every listed file); sha256 is taken from the manifest,
the deployer has already verified it on upload.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any, Dict

from . import strictjson

MANIFEST = "manifest.json"
# Manifest schema versions this runner reads (host/manifest.py writes them).
SUPPORTED_MANIFEST_SCHEMAS = (1,)
MAX_MANIFEST_BYTES = 16 * 1024 * 1024


class ArtifactError(Exception):
    """The artifact folder is missing, incomplete or corrupt (one line naming file and problem)."""


_HEX = set("0123456789abcdef")
# Optional top-level fields and the JSON types they must have when present (values go into rows
# and backends: a wrong type must be one line here, not a traceback there).
_FIELD_TYPES = {
    "model": str, "model_kind": str, "model_type": str, "target": str, "scheme": str, "artifact_kind": str,
    "format": str, "entry": str, "tokenizer": str, "inputs": dict, "toolkit": dict, "rkllm": dict, "fake": dict,
    "vocab_size": int, "npu_cores": int,
}
MODEL_KINDS = ("llm", "encoder")
_A = {str: "a string", dict: "an object", int: "a whole number"}


def _type_name(v: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null",
            int: "integer", float: "number"}.get(type(v), type(v).__name__)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_name(name: Any, where: str, what: str = "file name") -> str:
    """A file name from a manifest: relative, inside the artifact folder, printable. Else ArtifactError."""
    if not isinstance(name, str):
        raise ArtifactError("%s: %s must be a string, got %s" % (where, what, _type_name(name)))
    bad = [c for c in name if ord(c) < 32 or ord(c) == 127]
    parts = name.split("/")
    if not name or bad or name.startswith("/") or "\\" in name or len(name) > 4096 \
            or any(p in ("", ".", "..") for p in parts):
        raise ArtifactError("%s: %s %r is not allowed: names must be relative paths inside the artifact folder "
                            "(no '..', no leading '/', no empty parts, no backslash or control characters)"
                            % (where, what, name[:200]))
    return name


def validate_manifest(manifest: Any, path: str) -> Dict[str, Any]:
    """Type and name checks of a parsed manifest (untrusted input); returns it or raises ArtifactError."""
    from .backends import BACKENDS_FOR_FORMAT

    if not isinstance(manifest, dict):
        raise ArtifactError("%s: expected a JSON object, got %s" % (path, _type_name(manifest)))
    schema = manifest.get("schema")
    if not _is_int(schema) or schema not in SUPPORTED_MANIFEST_SCHEMAS:
        raise ArtifactError("%s: manifest schema %r; this runner reads %s — update the board runner (rkdeploy push)"
                            % (path, schema, ", ".join(map(str, SUPPORTED_MANIFEST_SCHEMAS))))
    for key, typ in sorted(_FIELD_TYPES.items()):
        v = manifest.get(key)
        if v is not None and not (isinstance(v, typ) and (typ is not int or _is_int(v))):
            raise ArtifactError("%s: field %r must be %s, got %s" % (path, key, _A[typ], _type_name(v)))
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise ArtifactError("%s: field 'files' must be an object of name -> {sha256, size}, got %s"
                            % (path, _type_name(files)))
    for name, info in files.items():
        check_name(name, path, "files entry")
        if not isinstance(info, dict):
            raise ArtifactError("%s: files[%r] must be an object {sha256, size}, got %s" % (path, name, _type_name(info)))
        size = info.get("size")
        if not _is_int(size) or size < 0:
            raise ArtifactError("%s: files[%r].size must be a whole number of bytes >= 0, got %s %r"
                                % (path, name, _type_name(size), size))
        sha = info.get("sha256")
        if sha is not None and not (isinstance(sha, str) and len(sha) == 64 and set(sha) <= _HEX):
            raise ArtifactError("%s: files[%r].sha256 must be 64 lowercase hex digits" % (path, name))
    for key in ("entry", "tokenizer"):
        if manifest.get(key) is not None:
            check_name(manifest[key], path, "field %r" % key)
    entry = manifest.get("entry")
    if entry is not None and entry not in files:
        raise ArtifactError("%s: entry %r is not listed in 'files'" % (path, entry))
    fmt = manifest.get("format")
    if fmt is not None and fmt not in BACKENDS_FOR_FORMAT:
        raise ArtifactError("%s: format %r is not one this runner knows (%s)"
                            % (path, fmt[:100], ", ".join(sorted(BACKENDS_FOR_FORMAT))))
    kind = manifest.get("model_kind")
    if kind is not None and kind not in MODEL_KINDS:
        raise ArtifactError("%s: model_kind %r; allowed: %s" % (path, kind[:100], ", ".join(MODEL_KINDS)))
    for key in ("vocab_size", "npu_cores"):
        if manifest.get(key) is not None and manifest[key] < 1:
            raise ArtifactError("%s: field %r must be >= 1, got %d" % (path, key, manifest[key]))
    inputs = manifest.get("inputs") or {}
    for key in ("batch", "seq_len"):
        v = inputs.get(key)
        if v is not None and (not _is_int(v) or not 1 <= v <= 1 << 20):
            raise ArtifactError("%s: inputs.%s must be a whole number >= 1, got %s %r" % (path, key, _type_name(v), v))
    return manifest


def read_artifact(artifact_dir: str) -> Dict[str, Any]:
    """The validated manifest of ``artifact_dir``; every listed file present with its size."""
    if not isinstance(artifact_dir, str) or "\0" in artifact_dir or not os.path.isdir(artifact_dir):
        there = isinstance(artifact_dir, str) and "\0" not in artifact_dir and os.path.exists(artifact_dir)
        raise ArtifactError("artifact folder %r %s" % (artifact_dir, "is not a folder" if there else "does not exist"))
    path = os.path.join(artifact_dir, MANIFEST)
    try:
        manifest = strictjson.read(path, max_bytes=MAX_MANIFEST_BYTES)
    except FileNotFoundError:
        raise ArtifactError("%s missing: not an rkdeploy artifact folder (rebuild it with `rkdeploy export`)"
                            % path) from None
    except strictjson.JSONInputError as e:
        raise ArtifactError("%s; rebuild the artifact" % e) from None
    except OSError as e:
        raise ArtifactError("%s: cannot read: %s" % (path, e.strerror or e)) from None
    validate_manifest(manifest, path)
    inside = os.path.join(os.path.realpath(artifact_dir), "")
    for name, info in sorted(manifest["files"].items()):
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
    return manifest


def check_backend(manifest: Dict[str, Any], backend: str, path: str = MANIFEST) -> None:
    """The chosen backend must be one that runs the manifest's ``format``."""
    from .backends import BACKENDS_FOR_FORMAT

    fmt = manifest.get("format")
    if fmt is None:
        return
    runs = BACKENDS_FOR_FORMAT.get(fmt, ())
    if backend not in runs:
        raise ArtifactError("%s: format %r is run by backend %s, not %r" % (path, fmt, " or ".join(runs) or "none",
                                                                          backend))


def artifact_size(manifest: Dict[str, Any]) -> int:
    return sum(int(v.get("size") or 0) for v in (manifest.get("files") or {}).values() if isinstance(v, dict))


def artifact_sha256(manifest: Dict[str, Any]) -> str:
    """THE artifact identity in every row, host and board alike: sha256 over the sorted
    ``name NUL file-sha256 LF`` lines of the manifest's files (any file changed = another artifact).
    Quality rows join bench rows on it (``host.results``)."""
    h = hashlib.sha256()
    for name, meta in sorted((manifest.get("files") or {}).items()):
        h.update(("%s\0%s\n" % (name, meta.get("sha256") if isinstance(meta, dict) else None)).encode())
    return h.hexdigest()
