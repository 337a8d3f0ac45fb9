"""The board runner reads only files inside the artifact folder: links out of it are refused (a manifest
name is checked as text; a hand-copied artifact may still hold a link), except the content-addressed
blob the deployer links to."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from board.artifact import ArtifactError, read_artifact


def _artifact(d, files):
    os.makedirs(d, exist_ok=True)
    meta = {}
    for name, target in files.items():
        data = open(target, "rb").read()
        meta[name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    with open(os.path.join(d, "manifest.json"), "w") as f:
        json.dump({"schema": 1, "format": "onnx-encoder", "entry": next(iter(files)), "files": meta}, f)
    return meta


def test_a_link_out_of_the_folder_is_refused(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0\n")
    art = tmp_path / "art"
    _artifact(str(art), {"model.onnx": str(secret)})
    os.symlink(secret, art / "model.onnx")
    with pytest.raises(ArtifactError, match="resolves outside the artifact folder"):
        read_artifact(str(art))
    # a linked parent folder is the same escape
    art2 = tmp_path / "art2"
    _artifact(str(art2), {"sub/secret.txt": str(secret)})
    os.symlink(tmp_path, art2 / "sub")
    with pytest.raises(ArtifactError, match="resolves outside the artifact folder"):
        read_artifact(str(art2))


def test_links_inside_and_to_its_own_blob_are_fine(tmp_path):
    blobs = tmp_path / "wd" / "blobs"
    blobs.mkdir(parents=True)
    src = tmp_path / "weights.bin"
    src.write_bytes(b"\x01" * 4096)
    art = tmp_path / "wd" / "art"
    meta = _artifact(str(art), {"model.onnx": str(src)})
    blob = blobs / meta["model.onnx"]["sha256"]
    os.link(src, blob)
    os.symlink(blob, art / "model.onnx")          # the deployer's fallback when a hard link fails
    assert read_artifact(str(art))["entry"] == "model.onnx"
    os.symlink(art, tmp_path / "alias")            # the folder itself reached through a link
    assert read_artifact(str(tmp_path / "alias"))["entry"] == "model.onnx"
    wrong = blobs / ("0" * 64)                      # a blob, but not this file's
    os.link(src, wrong)
    os.unlink(art / "model.onnx")
    os.symlink(wrong, art / "model.onnx")
    with pytest.raises(ArtifactError, match="resolves outside"):
        read_artifact(str(art))
