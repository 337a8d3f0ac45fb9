"""board.manifest.Manifest: the one typed, versioned manifest definition (round trip, validation)."""

from __future__ import annotations

import json

import pytest

from board.manifest import MANIFEST, VERSION, Manifest, ManifestError, files_sha256
from tests.conftest import ROOT

SHA = "0" * 64


def _good() -> dict:
    return {"schema": 1, "model": "m", "model_kind": "llm", "target": "rk3588", "scheme": "fp16",
            "artifact_kind": "fake", "format": "fake", "entry": "w.bin", "files": {"w.bin": {"sha256": SHA, "size": 3}},
            "inputs": {}, "calibration_sha256": None, "exclusions": None, "build_seconds": 1.5,
            "accuracy": {"cos_mean": 0.99}}


def test_round_trip_keeps_every_key_nulls_and_extras():
    d = _good()
    m = Manifest.from_dict(d)
    assert m.to_dict() == d
    assert m.version == VERSION and m.model == "m" and m.extra["build_seconds"] == 1.5
    assert m.get("calibration_sha256") is None and "calibration_sha256" in m.to_dict()
    assert m.size == 3 and m.sha256 == files_sha256(d["files"])
    assert Manifest.from_dict(json.loads(json.dumps(m.to_dict()))) == m


def test_weights_size_leaves_out_tokenizer_and_config_files():
    d = _good()
    d["files"] = {"model.onnx": {"sha256": SHA, "size": 1000}, "model.onnx.data": {"sha256": SHA, "size": 90000},
                  "tokenizer.json": {"sha256": SHA, "size": 2000}, "genai_config.json": {"sha256": SHA, "size": 10}}
    d["entry"] = "model.onnx"
    m = Manifest.from_dict(d)
    assert (m.size, m.weights_size) == (93010, 91000)
    d["files"], d["entry"] = {"blob.xyz": {"sha256": SHA, "size": 7}, "notes.txt": {"sha256": SHA, "size": 5}}, "blob.xyz"
    assert Manifest.from_dict(d).weights_size == 12  # no known weight file: every file counts


def test_every_corpus_manifest_round_trips():
    good = ROOT / "tests" / "host" / "corpus" / "artifacts" / "good" / MANIFEST
    d = json.loads(good.read_text())
    assert Manifest.from_dict(d, str(good)).to_dict() == d


@pytest.mark.parametrize("patch, words", [
    ({"schema": 2}, "manifest schema 2"),
    ({"model": 5}, "field 'model' must be a string"),
    ({"files": []}, "field 'files' must be an object"),
    ({"entry": "../x"}, "is not allowed"),
    ({"vocab_size": True}, "field 'vocab_size' must be a whole number"),
    ({"accuracy": "high"}, "field 'accuracy' must be an object"),
])
def test_bad_input_is_one_line_naming_file_and_field(patch, words):
    with pytest.raises(ManifestError) as e:
        Manifest.from_dict({**_good(), **patch}, "art/manifest.json")
    assert words in str(e.value) and str(e.value).startswith("art/manifest.json") and "\n" not in str(e.value)


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(ManifestError, match="manifest.json missing"):
        Manifest.read(str(tmp_path / MANIFEST))
