"""`calib build --generator onnx` on the real SmolLM2 (real tier): onnxruntime-genai's int8 artifact (built once
into the cache, ~80 s on a fresh 2-core machine), a RIGHT-padded batch whose first token comes from each row's own
last prompt position. Asserts the batched answers equal the one-at-a-time ones (a left-padded or pad-column first
token gives different ones: measured before the fix) and the provenance names the generator. ~2-3 min."""

from __future__ import annotations

import json

from host.calib import build_calibration, provenance_path, validate_file
from host.config import load_recipe
from tests.conftest import DEFAULT_RECIPE


def test_onnx_generator_batched_equals_one_at_a_time(tmp_path, llm_dir):
    recipe = load_recipe(DEFAULT_RECIPE)
    runs = {}
    for b in (4, 1):
        out = build_calibration(recipe, out=tmp_path / f"b{b}.json", n_prompts=4, max_new_tokens=12, batch=b,
                                generator="onnx")
        runs[b] = json.loads(out.read_text())
        assert validate_file(out, recipe).n_items == 4
    lens = {len(it["input"]) for it in runs[4]}
    assert len(lens) == 4                              # prompts of unequal length: the batch was padded
    assert runs[4] == runs[1]
    assert all(it["target"] != "(no answer)" for it in runs[4])
    prov = json.loads(provenance_path(tmp_path / "b4.json").read_text())
    assert prov["generator"] == "onnx" and prov["batch"] == 4 and prov["runtime"].startswith("onnxruntime-genai ")
    assert len(prov["artifact_sha256"]) == 64 and "calib-gen" in prov["artifact"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b1.json", "b1.provenance.json", "b4.json",
                                                          "b4.provenance.json"]
