"""rkllm test doubles for the board side: compile the librkllmrt shim, write .rkllm artifacts.

``build_shim(out_dir, "1.3.0")`` compiles ``rkllm_shim.c`` with gcc for one ABI and returns the
library path; ``write_rkllm_artifact(dir, toolkit_version)`` writes a folder the rkllm backend
loads (a small fake ``.rkllm`` whose header names the toolkit version, as the fake toolkit writes).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from typing import Any, Dict, Optional

SHIM_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "rkllm_shim.c")
SHIM_ABIS = {"1.3.0": "RKLLM_ABI_1_3_0", "1.2.1": "RKLLM_ABI_1_2_1"}


def build_shim(out_dir: str, abi: str, cc: str = "gcc") -> str:
    """Compile the shim for ``abi`` (1.3.0 or 1.2.1) into ``out_dir/<abi>/librkllmrt.so``."""
    folder = os.path.join(out_dir, abi)
    os.makedirs(folder, exist_ok=True)
    lib = os.path.join(folder, "librkllmrt.so")
    subprocess.run([cc, "-std=c11", "-D_GNU_SOURCE", "-Wall", "-Wextra", "-Werror", "-O2", "-shared", "-fPIC",
                    "-D" + SHIM_ABIS[abi], SHIM_SOURCE, "-o", lib], check=True, capture_output=True, text=True)
    return lib


def write_rkllm_artifact(path: str, toolkit_version: str = "1.3.0", *, max_context: int = 4096,
                         vocab_size: int = 49152, target: str = "rk3588", scheme: str = "w8a8",
                         extra: Optional[Dict[str, Any]] = None) -> str:
    os.makedirs(path, exist_ok=True)
    entry = "model-%s-%s.rkllm" % (scheme, target)
    header = {"toolkit_version": toolkit_version, "dtype": scheme.replace("-", "_"), "target_platform": target}
    data = b"RKLLM-FAKE\n" + json.dumps(header, sort_keys=True).encode() + b"\n" + b"\0" * 256
    with open(os.path.join(path, entry), "wb") as f:
        f.write(data)
    manifest: Dict[str, Any] = {
        "schema": 1, "model": "fake-llm", "model_kind": "llm", "target": target, "scheme": scheme,
        "artifact_kind": "rkllm", "format": "rkllm", "entry": entry,
        "files": {entry: {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}},
        "toolkit": {"name": "rkllm-toolkit", "version": toolkit_version}, "vocab_size": vocab_size,
        "rkllm": {"max_context": max_context, "dtype": scheme.replace("-", "_")},
    }
    manifest.update(extra or {})
    with open(os.path.join(path, "manifest.json"), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1)
    return path
