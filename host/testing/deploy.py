"""Helpers for deploy tests: artifact folders with a real manifest, boards pointing at a test sshd."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path, PurePosixPath

from host.deploy.inventory import Board
from host.fsutil import sha256_file
from host.testing.sshd import TestSshd


def write_artifact(folder: Path, files: dict[str, bytes], **manifest) -> Path:
    """An artifact folder whose ``manifest.json`` lists the files' real sha256 and size."""
    folder.mkdir(parents=True, exist_ok=True)
    table = {}
    for name, data in files.items():
        p = folder / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        table[name] = {"sha256": sha256_file(p), "size": len(data)}
    m = {"schema": 1, "model": folder.parts[-3], "target": folder.parts[-2], "scheme": folder.parts[-1],
         "model_kind": "llm", "artifact_kind": "onnx", "format": "onnx-genai", "entry": next(iter(files)),
         **manifest, "files": table}
    (folder / "manifest.json").write_text(json.dumps(m, indent=1, sort_keys=True))
    return folder


def board_for(sshd: TestSshd, name: str = "local-ssh", **overrides) -> Board:
    """A ``Board`` record for the test sshd (override any field, e.g. ``workdir=``, ``python=``)."""
    b = Board(name=name, host=sshd.host, port=sshd.port, user=sshd.user, key_file=sshd.client_key, soc="rk3588",
              workdir=PurePosixPath(sshd.dir / "board-workdir"), groups=("local",))
    if "workdir" in overrides:
        overrides["workdir"] = PurePosixPath(overrides["workdir"])
    return dataclasses.replace(b, **overrides)


def rehash_manifest(folder: Path | str) -> Path:
    """Rewrite ``manifest.json``'s file table with the real sha256/size (for doubles that write dummies)."""
    folder = Path(folder)
    mpath = folder / "manifest.json"
    m = json.loads(mpath.read_text())
    m["files"] = {n: {"sha256": sha256_file(folder / n), "size": (folder / n).stat().st_size} for n in m["files"]}
    mpath.write_text(json.dumps(m, indent=1, sort_keys=True))
    return folder
