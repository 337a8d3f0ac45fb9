"""Test artifacts for the board runner (used by tests and bench/runner_overhead.py)."""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Optional


def write_fake_artifact(path: str, *, prefill_ms: float = 200.0, token_ms: float = 25.0, encode_ms: float = 5.0,
                        model_kind: str = "llm", vocab_size: int = 1000, fail: Optional[str] = None,
                        model: str = "fake-model", target: str = "rk3588", scheme: str = "fp16",
                        extra: Optional[Dict[str, Any]] = None) -> str:
    """A folder the ``fake`` backend runs: manifest.json + one small weights file."""
    os.makedirs(path, exist_ok=True)
    data = b"fake weights\n" * 64
    with open(os.path.join(path, "weights.bin"), "wb") as f:
        f.write(data)
    manifest: Dict[str, Any] = {
        "schema": 1, "model": model, "model_kind": model_kind, "target": target, "scheme": scheme,
        "artifact_kind": "fake", "format": "fake", "entry": "weights.bin",
        "files": {"weights.bin": {"sha256": "0" * 64, "size": len(data)}},
        "inputs": {"batch": 1, "seq_len": 16} if model_kind == "encoder" else {},
        "fake": {"prefill_ms": prefill_ms, "token_ms": token_ms, "encode_ms": encode_ms, "vocab_size": vocab_size},
    }
    if fail:
        manifest["fake"]["fail"] = fail
    manifest.update(extra or {})
    with open(os.path.join(path, "manifest.json"), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1)
    return path
