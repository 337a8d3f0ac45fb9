"""A TEST-ONLY artifact kind: one builder (here) + one board backend (toykind_backend.py) + registry lines.

``registered_everywhere(monkeypatch)`` registers it for one test (host registry, board backend
tables); ``RUNNER`` runs the board runner with the toy backend registered too (``python -m
tests.host.build.toykind info|bench ...``). It proves that a new kind needs no edit to product code.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

KIND = "toy"
SCHEME = "toy-q8"
FORMAT = "toy"
BACKEND = "toy"
RUNNER = (sys.executable, "-m", "tests.host.build.toykind")


# --- the builder (host.build.registry.Builder) --------------------------------------------------

def inputs(job) -> dict:
    return {"builder": "toy/1", "scheme": job.scheme}


def check(job) -> list[str]:
    return [] if job.model.kind == "llm" else [f"{job.model.name}: the toy kind builds LLMs only"]


def build(job, out_dir, *, log) -> dict:
    (Path(out_dir) / "weights.bin").write_bytes(bytes(range(256)) * 4)
    log("toy: wrote weights.bin")
    return {"format": FORMAT, "entry": "weights.bin", "model_kind": job.model.kind, "inputs": {},
            "toolkit": {"name": "toy-toolkit", "version": "0.1"}, "scheme_definition": "toy 8-bit",
            "fake": {"prefill_ms": 2, "token_ms": 1, "encode_ms": 1, "vocab_size": 1000},
            "accuracy": {"method": "simulator", "cos_mean": 0.9876, "cos_min": 0.9}}


def rows(job, manifest) -> list:
    from board.rows import ResultRow

    acc = manifest.accuracy or {}
    return [ResultRow(kind="quality", test="embedding", model=job.model.name, target=job.target, scheme=job.scheme,
                      backend="toy-simulator", method="simulator", cos_mean=acc.get("cos_mean"),
                      cos_min=acc.get("cos_min"), artifact_sha256=manifest.sha256, model_size=manifest.size,
                      test_time=manifest.built_at, env={"quality_key": f"toy:{manifest.sha256}"})]


def kind():
    from host.build.registry import Kind

    return Kind(KIND, __name__, recipe_field="toy", model_kinds=("llm",), backend=BACKEND, formats=(FORMAT,),
                scheme_names=lambda: (SCHEME,), spell=lambda s: s.replace("-", "_"))


def write_tiny_model(folder: Path) -> Path:
    """A minimal Hugging Face folder (config, one safetensors tensor, tokenizer) that passes the checks."""
    import json
    import struct

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "max_position_embeddings": 8192,
                                                    "vocab_size": 1000}))
    header = json.dumps({"model.layers.0.mlp.down_proj.weight": {"dtype": "F32", "shape": [2, 2],
                                                                 "data_offsets": [0, 16]}}).encode()
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + bytes(16))
    (folder / "tokenizer.json").write_text(json.dumps({"model": {"type": "WordLevel", "vocab": {}}}))
    return folder


# --- the board backend: toykind_backend.py; registry lines ----------------------------------------

@contextlib.contextmanager
def registered_everywhere(monkeypatch):
    import board.backends as bb
    from host.build import registry

    monkeypatch.setitem(bb.BACKENDS, BACKEND, "tests.host.build.toykind_backend")
    monkeypatch.setitem(bb.BACKENDS_FOR_FORMAT, FORMAT, (BACKEND,))
    with registry.registered(kind()):
        yield


def main(argv: list[str]) -> int:
    import board.backends as bb
    from board.__main__ import main as board_main

    bb.BACKENDS[BACKEND] = "tests.host.build.toykind_backend"
    bb.BACKENDS_FOR_FORMAT[FORMAT] = (BACKEND,)
    return board_main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
