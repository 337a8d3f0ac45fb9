"""Read what rkdeploy needs from a GGUF file's header, without loading it: magic, version, the model's
architecture (``general.architecture``) and weight type (``general.file_type``).

A small bounded reader of the documented layout (ggml docs/gguf.md: magic ``GGUF``, uint32 version,
uint64 tensor count, uint64 key/value count, then typed key/value pairs), so a recipe's ``source:`` GGUF
is judged in milliseconds before any work, and a malformed file gets one line instead of a traceback from
a memory-mapped reader.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

MAGIC = b"GGUF"
VERSIONS = (2, 3)                 # v1 (32-bit counts) predates every model transformers' GGUF loader reads
MAX_KV = 1 << 20                  # sanity bounds on counts a corrupt header could claim
MAX_STRING = 1 << 24
MAX_ARRAY = 1 << 28
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
#: ``general.file_type`` (llama.cpp's ``llama_ftype``) values of the common types, for when the gguf package is absent.
_FILE_TYPES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K", 11: "Q3_K_S",
               12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K",
               32: "BF16"}
#: Weight types that are already float: the dequantized folder is the checkpoint itself (no rounding note).
FLOAT_TYPES = ("F32", "F16", "BF16")


class GgufHeaderError(ValueError):
    """The file is not a GGUF rkdeploy can read; the message says why (no path: the caller names it)."""


@dataclass(frozen=True)
class GgufInfo:
    version: int
    n_tensors: int
    architecture: str | None
    file_type: str | None          # "Q4_K_M", "Q8_0", "F16", … (None when the header does not say)


def file_type_name(value: int) -> str:
    try:
        from gguf import LlamaFileType

        name = LlamaFileType(value).name
        return name.split("_", 1)[1] if name.startswith(("MOSTLY_", "ALL_")) else name
    except (ImportError, ValueError):
        return _FILE_TYPES.get(value, f"file_type {value}")


class _Reader:
    def __init__(self, f, size: int):
        self.f, self.size = f, size

    def take(self, n: int) -> bytes:
        b = self.f.read(n)
        if len(b) < n:
            raise GgufHeaderError("truncated: the file ends inside its GGUF header")
        return b

    def skip(self, n: int) -> None:
        if self.f.tell() + n > self.size:
            raise GgufHeaderError("truncated: the file ends inside its GGUF header")
        self.f.seek(n, 1)

    def u32(self) -> int:
        return struct.unpack("<I", self.take(4))[0]

    def u64(self) -> int:
        return struct.unpack("<Q", self.take(8))[0]

    def string(self) -> str:
        n = self.u64()
        if n > MAX_STRING:
            raise GgufHeaderError(f"corrupt GGUF header: a string claims {n} bytes")
        try:
            return self.take(n).decode("utf-8")
        except UnicodeDecodeError:
            raise GgufHeaderError("a header string is not UTF-8") from None

    def value(self, vtype: int, *, keep: bool):
        if vtype in _SCALARS:
            fmt = _SCALARS[vtype]
            raw = self.take(struct.calcsize(fmt))
            return struct.unpack(fmt, raw)[0] if keep else None
        if vtype == _STRING:
            if keep:
                return self.string()
            self.skip(self.u64())
            return None
        if vtype == _ARRAY:
            etype, n = self.u32(), self.u64()
            if n > MAX_ARRAY:
                raise GgufHeaderError(f"corrupt GGUF header: an array claims {n} items")
            if etype in _SCALARS:
                self.skip(n * struct.calcsize(_SCALARS[etype]))
            else:
                for _ in range(n):
                    self.value(etype, keep=False)
            return None
        raise GgufHeaderError(f"unknown value type {vtype} in the header")


def read_gguf_info(path: Path | str) -> GgufInfo:
    """The header facts of ``path``; ``GgufHeaderError`` (a ``ValueError``) or ``OSError`` when unreadable."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(4)
        if head != MAGIC:
            raise GgufHeaderError(f"not a GGUF file (starts with {head!r}, expected {MAGIC!r})")
        r = _Reader(f, size)
        version = r.u32()
        if version not in VERSIONS:
            raise GgufHeaderError(f"GGUF version {version} (readable: {', '.join(map(str, VERSIONS))})")
        n_tensors, n_kv = r.u64(), r.u64()
        if n_kv > MAX_KV:
            raise GgufHeaderError(f"corrupt GGUF header: claims {n_kv} keys")
        found: dict[str, object] = {}
        for _ in range(n_kv):
            key = r.string()
            vtype = r.u32()
            wanted = key in ("general.architecture", "general.file_type")
            v = r.value(vtype, keep=wanted)
            if wanted:
                found[key] = v
                if len(found) == 2:
                    break
    arch = found.get("general.architecture")
    ftype = found.get("general.file_type")
    return GgufInfo(version=version, n_tensors=n_tensors, architecture=arch if isinstance(arch, str) else None,
                    file_type=file_type_name(ftype) if isinstance(ftype, int) and not isinstance(ftype, bool) else None)
