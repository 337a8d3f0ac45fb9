""".rknn artifacts for the librknnrt shim (``rknn_shim.c``): the model file is the shim's text header,
written from the same manifest fields the rknnlite backend reads (inputs, batch, seq_len).

``write_shim_rknn_artifact(dir, ...)`` writes ``model.rknn`` + ``manifest.json``; the real
rknn-toolkit-lite2 wheel loads it (``load_rknn`` reads the bytes, ``init_runtime`` hands them to
``rknn_init``) and the shim answers with these shapes after ``run_ms`` per ``rknn_run``.
``build_shim(out_dir, cc)`` compiles the shim (gcc here, aarch64-linux-gnu-gcc for a board).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from typing import Any, Dict, List, Optional, Union

from board.manifest import Manifest, as_manifest

SHIM_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "rknn_shim.c")


def build_shim(out_dir: str, cc: str = "gcc") -> str:
    os.makedirs(out_dir, exist_ok=True)
    lib = os.path.join(out_dir, "librknnrt.so")
    subprocess.run([cc, "-std=c11", "-D_GNU_SOURCE", "-Wall", "-Wextra", "-Werror", "-O2", "-shared", "-fPIC",
                    SHIM_SOURCE, "-o", lib, "-lm"], check=True, capture_output=True, text=True)
    return lib


def shim_model(*, target: str, names: List[str], batch: int, seq_len: int, hidden: int, run_ms: float,
               npu_cores: int = 3) -> bytes:
    lines = ["RKNN-SHIM 1", "target %s" % target, "run_ms %g" % run_ms, "npu_cores %d" % npu_cores]
    lines += ["input %s int64 %d %d" % (n, batch, seq_len) for n in names]
    lines += ["output last_hidden_state float32 %d %d %d" % (batch, seq_len, hidden), "end", ""]
    return "\n".join(lines).encode()


def model_key(data: bytes) -> str:
    """FNV-1a 64 of a model's bytes, 16 hex digits: the shim looks a real model's spec up as
    ``$RKNN_SHIM_SPEC/<key>.spec`` when that variable names a folder (``fnv1a64`` in rknn_shim.c)."""
    h = 1469598103934665603
    for b in data:
        h = ((h ^ b) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return "%016x" % h


def spec_for_manifest(manifest: Union[Manifest, Dict[str, Any]], *, run_ms: float, hidden: int = 384) -> bytes:
    """The shim's header for a REAL .rknn, from the manifest the rknnlite backend reads (input names,
    batch, seq_len, target); ``hidden`` is the width of ``last_hidden_state`` (MiniLM-L6: 384)."""
    m = as_manifest(manifest)
    shape = m.inputs or {}
    names = list(shape.get("names") or ["input_ids", "attention_mask"])
    return shim_model(target=str(m.target), names=names, batch=int(shape.get("batch") or 1),
                      seq_len=int(shape["seq_len"]), hidden=hidden, run_ms=run_ms, npu_cores=int(m.npu_cores or 3))


def write_shim_rknn_artifact(path: str, *, model: str = "all-minilm-l6-v2", target: str = "rk3588",
                             scheme: str = "w8a8", npu_cores: int = 3, batch: int = 1, seq_len: int = 16,
                             hidden: int = 8, run_ms: float = 20.0, names: Optional[List[str]] = None,
                             model_target: Optional[str] = None, extra: Optional[Dict[str, Any]] = None) -> str:
    """An encoder ``.rknn`` artifact folder for the shim (``model_target`` != target: a mismatched model)."""
    os.makedirs(path, exist_ok=True)
    names = list(names or ["input_ids", "attention_mask", "token_type_ids"])
    data = shim_model(target=model_target or target, names=names, batch=batch, seq_len=seq_len, hidden=hidden,
                      run_ms=run_ms, npu_cores=npu_cores)
    with open(os.path.join(path, "model.rknn"), "wb") as f:
        f.write(data)
    manifest: Dict[str, Any] = {
        "schema": 1, "model": model, "model_kind": "encoder", "target": target, "scheme": scheme,
        "artifact_kind": "rknn", "format": "rknn", "entry": "model.rknn", "vocab_size": 1000, "npu_cores": npu_cores,
        "files": {"model.rknn": {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}},
        "toolkit": {"name": "rknn-toolkit2", "version": "2.5.0"},
        "inputs": {"batch": batch, "seq_len": seq_len, "names": names, "dtype": "int64"},
        "output": "last_hidden_state", "shim": {"run_ms": run_ms, "hidden": hidden},
    }
    manifest.update(extra or {})
    with open(os.path.join(path, "manifest.json"), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1)
    return path
