"""THE artifact manifest (``manifest.json``): one typed, versioned definition (stdlib only, Python >= 3.8).

The host writes it (``host.manifest.write_manifest``), the host and the board read it through
``Manifest.from_dict`` / ``Manifest.read``. A manifest is untrusted input on the board (artifacts
are also copied by hand): every field type is checked, every file name kept inside the artifact
folder, and each problem is ONE ``ManifestError`` line naming the file and the field.

Version: the JSON key ``schema`` (written in every manifest since the first one) is the manifest
version, ``Manifest.version``. A reader accepts ``SUPPORTED_VERSIONS``; a bump means a field was
renamed/removed or changed meaning (adding an optional field is compatible).

Round trip: ``Manifest.from_dict(d).to_dict() == d`` for every valid ``d`` (fields this module does
not type are kept in ``extra``, explicit nulls stay null, absent keys stay absent).
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, Dict, Optional, Tuple

MANIFEST = "manifest.json"
VERSION = 1
#: Manifest versions this code reads (host/manifest.py writes ``VERSION``).
SUPPORTED_VERSIONS = (1,)
MAX_MANIFEST_BYTES = 16 * 1024 * 1024
MODEL_KINDS = ("llm", "encoder")


class ManifestError(Exception):
    """The artifact folder or its manifest is missing, incomplete or corrupt (one line naming file and field)."""


_HEX = set("0123456789abcdef")
_A = {str: "a string", dict: "an object", int: "a whole number", float: "a number"}


def _type_name(v: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null",
            int: "integer", float: "number"}.get(type(v), type(v).__name__)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _ok(v: Any, typ: type) -> bool:
    if typ is int:
        return _is_int(v)
    if typ is float:
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    return isinstance(v, typ)


def check_name(name: Any, where: str, what: str = "file name") -> str:
    """A file name from a manifest: relative, inside the artifact folder, printable. Else ManifestError."""
    if not isinstance(name, str):
        raise ManifestError("%s: %s must be a string, got %s" % (where, what, _type_name(name)))
    bad = [c for c in name if ord(c) < 32 or ord(c) == 127]
    parts = name.split("/")
    if not name or bad or name.startswith("/") or "\\" in name or len(name) > 4096 \
            or any(p in ("", ".", "..") for p in parts):
        raise ManifestError("%s: %s %r is not allowed: names must be relative paths inside the artifact folder "
                            "(no '..', no leading '/', no empty parts, no backslash or control characters)"
                            % (where, what, name[:200]))
    return name


def _m(typ: type) -> Any:
    return dataclasses.field(default=None, metadata={"type": typ})


#: File name endings that hold weights (ONNX graphs and external data, GGUF, vendor blobs, checkpoints).
WEIGHT_SUFFIXES = (".onnx", ".onnx.data", ".onnx_data", ".data", ".gguf", ".rkllm", ".rknn", ".bin", ".safetensors")


@dataclasses.dataclass
class Manifest:
    """A parsed, validated ``manifest.json``. Typed fields are None when absent; the rest is in ``extra``."""

    version: int = VERSION                      # JSON key "schema"
    files: Dict[str, Dict[str, Any]] = dataclasses.field(default_factory=dict)
    # what it is
    model: Optional[str] = _m(str)
    model_kind: Optional[str] = _m(str)         # llm | encoder
    model_type: Optional[str] = _m(str)
    target: Optional[str] = _m(str)
    scheme: Optional[str] = _m(str)
    artifact_kind: Optional[str] = _m(str)      # a registered builder kind (host/build/registry.py)
    format: Optional[str] = _m(str)             # what the board runs (board/backends BACKENDS_FOR_FORMAT)
    entry: Optional[str] = _m(str)
    tokenizer: Optional[str] = _m(str)
    inputs: Optional[Dict[str, Any]] = _m(dict)
    toolkit: Optional[Dict[str, Any]] = _m(dict)
    rkllm: Optional[Dict[str, Any]] = _m(dict)
    fake: Optional[Dict[str, Any]] = _m(dict)
    vocab_size: Optional[int] = _m(int)
    npu_cores: Optional[int] = _m(int)
    # how it was built
    rkdeploy_version: Optional[str] = _m(str)
    built_at: Optional[str] = _m(str)
    inputs_hash: Optional[str] = _m(str)
    scheme_definition: Optional[str] = _m(str)
    #: simulator metrics a builder measured (rows are made from them by host.export, never by a builder)
    accuracy: Optional[Dict[str, Any]] = _m(dict)
    #: optional since rkdeploy 0.x (manifest version 1 still: absent in older manifests, which load unchanged).
    #: ``transform``: the transform folded into the float checkpoint the builder read (equivalent, or a ``gptq``
    #: pre-rounding onto the artifact's own grid)
    #: (``{"label": "awq(w4a16-g64)", "<method>": {...}, "version": N, "key": ...}``; host.build.source);
    #: ``mix``: the budgeted int4/int8 mix (``{"budget", "int8_node_count", ...}``; host.build.mixed)
    transform: Optional[Dict[str, Any]] = _m(dict)
    mix: Optional[Dict[str, Any]] = _m(dict)
    extra: Dict[str, Any] = dataclasses.field(default_factory=dict)
    _nulls: Tuple[str, ...] = dataclasses.field(default=(), repr=False, compare=False)

    # --- derived -----------------------------------------------------------------------------------
    @property
    def size(self) -> int:
        return sum(int(v.get("size") or 0) for v in self.files.values() if isinstance(v, dict))

    @property
    def weights_size(self) -> int:
        """Bytes of the files that hold weights (``WEIGHT_SUFFIXES``), as llama-bench's ``model_size`` means it:
        tokenizer, config and chat-template files are left out (a decode token reads the weights, not them).
        An artifact with no file of a known weight suffix counts all its files."""
        files = {n: v for n, v in self.files.items() if isinstance(v, dict)}
        weights = [v for n, v in files.items() if n.lower().endswith(WEIGHT_SUFFIXES)]
        return sum(int(v.get("size") or 0) for v in weights) if weights else self.size

    @property
    def sha256(self) -> str:
        """THE artifact identity in every row: see ``files_sha256``."""
        return files_sha256(self.files)

    @property
    def transform_label(self) -> Optional[str]:
        """``awq(w4a16-g64)`` when a transform was folded in, else None (rows' ``transform``)."""
        return (self.transform or {}).get("label")

    @property
    def toolkit_version(self) -> str:
        return str((self.toolkit or {}).get("version") or "")

    @property
    def built_by_test_double(self) -> bool:
        return bool((self.toolkit or {}).get("test_double"))

    def get(self, key: str, default: Any = None) -> Any:
        """A field by its JSON key (typed or extra); ``default`` when absent or null."""
        d = self.to_dict()
        v = d.get(key)
        return default if v is None else v

    # --- (de)serialisation -------------------------------------------------------------------------
    def to_dict(self) -> Dict[str, Any]:
        out: Dict[str, Any] = dict(self.extra)
        out["schema"] = self.version
        out["files"] = self.files
        for f in _typed_fields():
            v = getattr(self, f.name)
            if v is not None or f.name in self._nulls:
                out[f.name] = v
        return out

    @classmethod
    def from_dict(cls, data: Any, path: str = MANIFEST) -> Manifest:
        """Validate ``data`` (untrusted, parsed JSON) and type it; ManifestError (one line) on any problem."""
        validate(data, path)
        typed = {f.name: data[f.name] for f in _typed_fields() if f.name in data}
        nulls = tuple(k for k, v in typed.items() if v is None)
        extra = {k: v for k, v in data.items() if k not in typed and k not in ("schema", "files")}
        return cls(version=data["schema"], files=data["files"], extra=extra, _nulls=nulls, **typed)

    @classmethod
    def read(cls, path: str) -> Manifest:
        """Read and validate one ``manifest.json`` file (strict, bounded JSON)."""
        from . import strictjson

        try:
            data = strictjson.read(path, max_bytes=MAX_MANIFEST_BYTES)
        except FileNotFoundError:
            raise ManifestError("%s missing: not an rkdeploy artifact folder (rebuild it with `rkdeploy export`)"
                                % path) from None
        except strictjson.JSONInputError as e:
            raise ManifestError("%s; rebuild the artifact" % e) from None
        except OSError as e:
            raise ManifestError("%s: cannot read: %s" % (path, e.strerror or e)) from None
        return cls.from_dict(data, path)


def as_manifest(manifest: Any, path: str = MANIFEST) -> Manifest:
    """``manifest`` when it is a ``Manifest``, else its dict validated into one (``Manifest.from_dict``)."""
    return manifest if isinstance(manifest, Manifest) else Manifest.from_dict(manifest, path)


def _typed_fields() -> Tuple[dataclasses.Field, ...]:
    return tuple(f for f in dataclasses.fields(Manifest) if "type" in f.metadata)


def validate(manifest: Any, path: str = MANIFEST) -> Dict[str, Any]:
    """Type and name checks of a parsed manifest (untrusted input); returns it or raises ManifestError."""
    from .backends import BACKENDS_FOR_FORMAT

    if not isinstance(manifest, dict):
        raise ManifestError("%s: expected a JSON object, got %s" % (path, _type_name(manifest)))
    schema = manifest.get("schema")
    if not _is_int(schema) or schema not in SUPPORTED_VERSIONS:
        raise ManifestError("%s: manifest schema %r; this runner reads %s — update the board runner (rkdeploy push)"
                            % (path, schema, ", ".join(map(str, SUPPORTED_VERSIONS))))
    for f in sorted(_typed_fields(), key=lambda f: f.name):
        v = manifest.get(f.name)
        if v is not None and not _ok(v, f.metadata["type"]):
            raise ManifestError("%s: field %r must be %s, got %s" % (path, f.name, _A[f.metadata["type"]],
                                                                    _type_name(v)))
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise ManifestError("%s: field 'files' must be an object of name -> {sha256, size}, got %s"
                            % (path, _type_name(files)))
    for name, info in files.items():
        check_name(name, path, "files entry")
        if not isinstance(info, dict):
            raise ManifestError("%s: files[%r] must be an object {sha256, size}, got %s" % (path, name, _type_name(info)))
        size = info.get("size")
        if not _is_int(size) or size < 0:
            raise ManifestError("%s: files[%r].size must be a whole number of bytes >= 0, got %s %r"
                                % (path, name, _type_name(size), size))
        sha = info.get("sha256")
        if sha is not None and not (isinstance(sha, str) and len(sha) == 64 and set(sha) <= _HEX):
            raise ManifestError("%s: files[%r].sha256 must be 64 lowercase hex digits" % (path, name))
    for key in ("entry", "tokenizer"):
        if manifest.get(key) is not None:
            check_name(manifest[key], path, "field %r" % key)
    entry = manifest.get("entry")
    if entry is not None and entry not in files:
        raise ManifestError("%s: entry %r is not listed in 'files'" % (path, entry))
    fmt = manifest.get("format")
    if fmt is not None and fmt not in BACKENDS_FOR_FORMAT:
        raise ManifestError("%s: format %r is not one this runner knows (%s)"
                            % (path, fmt[:100], ", ".join(sorted(BACKENDS_FOR_FORMAT))))
    kind = manifest.get("model_kind")
    if kind is not None and kind not in MODEL_KINDS:
        raise ManifestError("%s: model_kind %r; allowed: %s" % (path, kind[:100], ", ".join(MODEL_KINDS)))
    for key in ("vocab_size", "npu_cores"):
        if manifest.get(key) is not None and manifest[key] < 1:
            raise ManifestError("%s: field %r must be >= 1, got %d" % (path, key, manifest[key]))
    _check_transform_mix(manifest, path)
    inputs = manifest.get("inputs") or {}
    for key in ("batch", "seq_len"):
        v = inputs.get(key)
        if v is not None and (not _is_int(v) or not 1 <= v <= 1 << 20):
            raise ManifestError("%s: inputs.%s must be a whole number >= 1, got %s %r" % (path, key, _type_name(v), v))
    return manifest


def _check_transform_mix(manifest: Dict[str, Any], path: str) -> None:
    """``transform.label`` (shown in rows and tables) and ``mix``'s numbers, checked as untrusted input."""
    label = (manifest.get("transform") or {}).get("label")
    if manifest.get("transform") is not None and (
            not isinstance(label, str) or not 0 < len(label) <= 120 or not label.isprintable()):
        raise ManifestError("%s: transform.label must be a printable string of 1-120 characters, e.g. "
                            "'awq(w4a16-g64)', got %s" % (path, _type_name(label)))
    mix = manifest.get("mix")
    if mix is None:
        return
    budget, count = mix.get("budget"), mix.get("int8_node_count")
    if budget is not None and not (_ok(budget, float) and 0 < budget <= 1):
        raise ManifestError("%s: mix.budget must be a number in (0, 1], got %s %r" % (path, _type_name(budget), budget))
    if count is not None and not (_is_int(count) and count >= 0):
        raise ManifestError("%s: mix.int8_node_count must be a whole number >= 0, got %s" % (path, _type_name(count)))


def files_sha256(files: Any) -> str:
    """THE artifact identity in every row, host and board alike: sha256 over the sorted
    ``name NUL file-sha256 LF`` lines of a manifest's file table (any file changed = another artifact)."""
    h = hashlib.sha256()
    for name, meta in sorted((files or {}).items()):
        h.update(("%s\0%s\n" % (name, meta.get("sha256") if isinstance(meta, dict) else None)).encode())
    return h.hexdigest()
