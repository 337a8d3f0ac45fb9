"""`rkdeploy check`: every problem knowable before loading weights, one line each, fast."""

from __future__ import annotations

import json
import shutil
import time

import pytest


def _errors(proc) -> list[str]:
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert "Traceback" not in proc.stderr
    assert all(ln.startswith("rkdeploy: error: ") for ln in lines), proc.stderr
    return [ln.removeprefix("rkdeploy: error: ") for ln in lines]


@pytest.fixture(autouse=True)
def _models(builtin_models):
    return builtin_models


def test_scheme_not_allowed_names_allowed_schemes_fast(rk):
    t0 = time.monotonic()
    proc = rk("check", "--target", "rk3588", "--scheme", "w4a16")
    elapsed = time.monotonic() - t0
    assert proc.returncode == 1
    errs = _errors(proc)
    assert len(errs) == 1
    assert "'w4a16' is not allowed for rkllm on rk3588" in errs[0]
    assert "allowed: w8a8, w8a8-g128, w8a8-g256, w8a8-g512" in errs[0]
    assert elapsed < 30.0, f"check took {elapsed:.2f}s"  # order of magnitude; goal < 3 s: bench/speed_goals.py


def test_unknown_target_names_known_targets(rk):
    proc = rk("check", "--target", "rk3566")
    assert proc.returncode == 1
    (err,) = _errors(proc)
    assert "unknown target 'rk3566'" in err
    assert "known: rk3562, rk3576, rk3588, rv1126b" in err


def test_grouped_scheme_that_fits_passes(rk):
    proc = rk("check", "--target", "rk3576", "--scheme", "w4a16-g64")
    assert proc.returncode == 0, proc.stderr
    assert "ok:" in proc.stdout


def test_group_size_not_dividing_a_layer_is_named(rk):
    # SmolLM2-135M is 576/192 wide: 128 does not divide it; the layer and the fitting schemes are named.
    proc = rk("check", "--target", "rk3576", "--scheme", "w4a16-g128")
    assert proc.returncode == 1
    (err,) = _errors(proc)
    assert "group size 128 does not divide layer model.layers.0." in err
    assert "576 % 128 = 64" in err
    assert "w4a16-g32, w4a16-g64" in err


def test_default_recipe_passes_for_both_targets(rk):
    for target in ("rk3576", "rk3588"):
        proc = rk("check", "--target", target)
        assert proc.returncode == 0, proc.stderr


def test_many_problems_reported_together(rk, make_recipe):
    def edit(d):
        llm = d["models"][0]
        llm["max_context"] = 5000
        llm["rkllm"] = {"algorithm": "grq", "num_npu_core": 3}
        llm["targets"]["rk3576"] = ["w8a8"]

    proc = rk("check", "--recipe", make_recipe(edit), "--target", "rk3576")
    assert proc.returncode == 1
    errs = _errors(proc)
    assert any("max_context 5000 must be a positive multiple of 32" in e for e in errs)
    assert any("num_npu_core 3 is out of range for rk3576 (1..2)" in e for e in errs)
    assert any("algorithm 'grq' only works with w4a16 schemes, not 'w8a8'" in e for e in errs)
    assert len(errs) == 3


def test_max_context_above_limit(rk, make_recipe):
    proc = rk("check", "--recipe", make_recipe(lambda d: d["models"][0].update(max_context=16416)), "--target", "rk3588")
    errs = _errors(proc)
    assert any("max_context 16416 must be a positive multiple of 32 and at most 16384" in e for e in errs)
    # the model's own limit is named too (SmolLM2: 8192 positions)
    assert any("max_position_embeddings 8192" in e for e in errs)


def test_missing_model_folder(rk, make_recipe, tmp_path):
    missing = tmp_path / "nope"
    proc = rk("check", "--recipe", make_recipe(lambda d: d["models"][1].update(source=str(missing))), "--target", "rk3588")
    assert proc.returncode == 1
    (err,) = _errors(proc)
    assert f"model folder {missing} does not exist" in err


def test_missing_files_and_corrupt_safetensors(rk, make_recipe, tmp_path, encoder_dir):
    folder = tmp_path / "enc"
    shutil.copytree(encoder_dir, folder)
    (folder / "tokenizer.json").unlink()
    weights = folder / "model.safetensors"
    with open(weights, "r+b") as f:      # truncate: tensors now point past the end of the file
        f.truncate(weights.stat().st_size // 2)
    proc = rk("check", "--recipe", make_recipe(lambda d: d["models"][1].update(source=str(folder))), "--target", "rk3588")
    errs = _errors(proc)
    assert any("corrupt safetensors file" in e and "model.safetensors" in e for e in errs)
    assert any("no tokenizer.json" in e for e in errs)


def test_unknown_recipe_key_names_key(rk, make_recipe):
    proc = rk("check", "--recipe", make_recipe(lambda d: d["models"][0].update(quantise="w8a8")), "--target", "rk3588")
    assert proc.returncode == 1
    (err,) = _errors(proc)
    assert "models.0.quantise: unknown key 'quantise' in recipe" in err


def test_missing_calibration_file(rk, make_recipe, tmp_path):
    proc = rk("check", "--recipe", make_recipe(lambda d: d["models"][0].update(calibration=str(tmp_path / "c.json"))),
              "--target", "rk3588")
    (err,) = _errors(proc)
    assert "calibration file" in err and "rkdeploy calib build" in err


def test_overlapping_heldin_heldout(rk, make_recipe, default_recipe_data):
    proc = rk("check", "--recipe", make_recipe(lambda d: d["text"].update(heldout=d["text"]["heldin"])), "--target", "rk3588")
    (err,) = _errors(proc)
    assert "held-out text shares" in err


def test_schema_command_prints_json_schema(rk):
    proc = rk("schema")
    assert proc.returncode == 0
    schema = json.loads(proc.stdout)
    assert schema["recipe"]["title"] == "Recipe"
    assert "ModelSpec" in schema["recipe"]["$defs"]
    assert "targets" in schema["targets"]["properties"]
