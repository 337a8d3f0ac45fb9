"""rknn builder with the REAL rknn-toolkit2 2.5.0 (its own venv) and its x86 simulator.

The three rk3576 encoder schemes (w8a8, w4a16, fp16) are built ONCE per module with
``export --only w8a8,w4a16,fp16`` into a temp artifacts root that has no fp32 ONNX yet (so the float
source is built as a dependency). Negative paths run no toolkit and come first in the file.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from host.build import rknn as R
from host.errors import BuildError, CheckError
from host.toolkits import toolkit_info
from tests.conftest import run_cli

SCHEMES = ("w8a8", "w4a16", "fp16")
ENC = "all-minilm-l6-v2"

pytestmark = [pytest.mark.real,  # the rknn-toolkit2 venv and the built-in encoder
              pytest.mark.skipif(toolkit_info("rknn") is None, reason="rknn-toolkit2 venv missing: run `make setup`")]


def encoder_recipe(default_recipe_data, path: Path, edit=None) -> Path:
    """The default recipe's encoder alone (the LLM's rkllm checks need its calibration JSON)."""
    data = copy.deepcopy(default_recipe_data)
    data["models"] = [m for m in data["models"] if m["name"] == ENC]
    data["quality"] = {**data.get("quality", {}), "sentences": 32}
    data["models"][0]["rknn"] = {**data["models"][0].get("rknn", {}), "calib_samples": 16}
    if edit:
        edit(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _job(recipe_path, target, scheme, root):
    from host.config import load_recipe
    from host.plan import plan

    return next(j for j in plan(load_recipe(recipe_path), target, root=root, kinds=("rknn",)) if j.scheme == scheme)


@pytest.fixture(scope="module")
def built(tmp_path_factory, default_recipe_data, builtin_models):
    from types import SimpleNamespace

    from host.export import export

    base = tmp_path_factory.mktemp("rknn")
    recipe = encoder_recipe(default_recipe_data, base / "recipe.yaml")
    mp = pytest.MonkeyPatch()
    mp.setenv("RKDEPLOY_RESULTS", str(base / "results.sqlite"))
    adb_before = R.adb_pids()
    t0 = time.monotonic()
    rep = export(recipe, "rk3576", only=SCHEMES, root=base / "artifacts", progress=False)
    seconds = time.monotonic() - t0
    yield SimpleNamespace(base=base, recipe=recipe, root=base / "artifacts", report=rep, seconds=seconds,
                          adb_before=adb_before, adb_after=R.adb_pids(), store=base / "results.sqlite")
    mp.undo()


# --- negative paths: one clear line, before any work ------------------------------------------------

def test_scheme_not_supported_on_the_chip(default_recipe_data, tmp_path):
    recipe = encoder_recipe(default_recipe_data, tmp_path / "r.yaml",
                            lambda d: d["models"][0]["targets"].update(rk3588=["w8a8", "w4a16"]))
    want = f"{ENC}: scheme 'w4a16' is not allowed for rknn on rk3588 (allowed: w8a8, fp16)"
    with pytest.raises(CheckError) as e:                        # the builder's own preflight
        R.preflight(_job(recipe, "rk3588", "w4a16", tmp_path / "art"))
    assert str(e.value) == want
    p = run_cli("export", "--recipe", recipe, "--target", "rk3588", "--artifacts", tmp_path / "art", "--no-quality")
    assert p.returncode == 1 and f"rkdeploy: error: {want}" in p.stderr
    assert not (tmp_path / "art").exists()


def test_input_shapes_missing(default_recipe_data, tmp_path):
    recipe = encoder_recipe(default_recipe_data, tmp_path / "r.yaml", lambda d: d["models"][0].pop("seq_len"))
    with pytest.raises(BuildError, match=f"^{ENC}: input shapes missing: set seq_len"):
        R.preflight(_job(recipe, "rk3576", "w8a8", tmp_path / "art"))
    t0 = time.monotonic()
    p = run_cli("export", "--recipe", recipe, "--target", "rk3576", "--only", "w8a8", "--artifacts", tmp_path / "art",
                "--no-quality", env={"RKDEPLOY_RESULTS": str(tmp_path / "r.sqlite")})
    assert p.returncode == 1 and "input shapes missing" in p.stdout
    assert not (tmp_path / "art" / ENC / "rk3576" / "fp32").exists()  # failed before building its source
    assert time.monotonic() - t0 < 60


def test_onnx_input_checks(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    with pytest.raises(BuildError, match="^m: ONNX file .*missing.onnx not found$"):
        R.onnx_input_shapes(tmp_path / "missing.onnx", "m", batch=1, seq_len=8)

    def graph(opset, dims):
        x = helper.make_tensor_value_info("input_ids", TensorProto.INT64, dims)
        y = helper.make_tensor_value_info("y", TensorProto.INT64, dims)
        m = helper.make_model(helper.make_graph([helper.make_node("Identity", ["input_ids"], ["y"])], "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", opset)])
        path = tmp_path / f"g{opset}-{len(dims)}.onnx"
        onnx.save(m, str(path))
        return path

    assert R.onnx_input_shapes(graph(17, ["b", "s"]), "m", batch=2, seq_len=8) == (["input_ids"], [[2, 8]])
    with pytest.raises(BuildError, match="opset 20; rknn-toolkit2 reads opset <= 19"):
        R.onnx_input_shapes(graph(20, ["b", "s"]), "m", batch=1, seq_len=8)
    with pytest.raises(BuildError, match="input shapes missing: ONNX input 'input_ids' dim 2 is dynamic"):
        R.onnx_input_shapes(graph(17, ["b", "s", "h"]), "m", batch=1, seq_len=8)


def test_onnx_file_absent(default_recipe_data, tmp_path):
    recipe = encoder_recipe(default_recipe_data, tmp_path / "r.yaml")
    job = _job(recipe, "rk3576", "w8a8", tmp_path / "art")
    with pytest.raises(BuildError, match=r"float ONNX .*fp32/model.onnx not found \(rknn converts it\); run "
                                         r"`rkdeploy export --target rk3576 --only fp32` first"):
        R.source_onnx(job, log=print, ensure=False)


def test_toolkit_venv_missing_names_the_fix(default_recipe_data, tmp_path):
    recipe = encoder_recipe(default_recipe_data, tmp_path / "r.yaml")
    env = {"RKDEPLOY_VENVS": str(tmp_path / "no-venvs"), "RKDEPLOY_RESULTS": str(tmp_path / "r.sqlite")}
    args = ("export", "--recipe", recipe, "--target", "rk3576", "--only", "w8a8", "--artifacts", tmp_path / "art",
            "--no-quality")
    p = run_cli(*args, env=env)
    assert p.returncode == 0, p.stderr                          # a missing vendor toolkit skips its jobs ...
    out = " ".join(p.stdout.split())
    assert "skipped — rknn-toolkit2 not installed (run `make setup`, or scripts/setup_rknn.sh alone" in out
    p = run_cli(*args, "--require", "rknn", env=env)              # ... unless it is required
    assert p.returncode == 1 and "failed — rknn-toolkit2 not installed" in " ".join(p.stdout.split())
    assert not (tmp_path / "art" / ENC / "rk3576" / "fp32").exists()


def test_toolkit_refusal_is_one_line_with_the_log(tmp_path):
    """rknn-toolkit2 raises ValueError in config() for a dtype the chip lacks: the worker reports the step."""
    from host.toolkits import run_worker

    log = tmp_path / "w.log"
    job = {"onnx": str(tmp_path / "x.onnx"), "input_names": ["input_ids"], "input_shapes": [[1, 8]],
           "target_platform": "rk3588", "config": {"quantized_dtype": "w4a16"}, "do_quantization": True}
    (tmp_path / "x.onnx").write_bytes(b"")
    with pytest.raises(BuildError) as e:
        run_worker("rknn", R.WORKER, job, log)
    msg = str(e.value)
    assert re.match(r"rknn-toolkit2 \d+\.\d+\.\d+: config failed: ", msg) and "w4a16" in msg and f"(log: {log})" in msg
    assert "\n" not in msg and "Traceback" in log.read_text()


def test_adb_servers_started_inside_are_stopped_by_pid(tmp_path):
    """A process named adb started inside ``stopped_adb`` is stopped; one running before is left alone."""
    adb = tmp_path / "adb"
    shutil.copy2(shutil.which("sleep"), adb)
    before = subprocess.Popen([str(adb), "60"])
    lines = []
    try:
        with R.stopped_adb(lines.append):
            inside = subprocess.Popen([str(adb), "60"], start_new_session=True)
            time.sleep(0.2)
            assert {before.pid, inside.pid} <= R.adb_pids()
        assert inside.wait(timeout=5) is not None
        assert inside.pid not in R.adb_pids() and before.pid in R.adb_pids()
        assert lines == [f"stopped adb server started by rknn-toolkit2 (pid {inside.pid})"]
    finally:
        before.kill()
        before.wait()


# --- the real build ----------------------------------------------------------------------------------

def test_export_builds_the_float_source_then_three_rknn_artifacts(built):
    from host.manifest import is_up_to_date, read_manifest

    print(f"export of {', '.join(SCHEMES)} (+ fp32 source): {built.seconds:.1f} s")
    assert [(r.job.scheme, r.status) for r in built.report.results] == [(s, "built") for s in SCHEMES], \
        [r.reason for r in built.report.results]
    fp32 = built.root / ENC / "rk3576" / "fp32"
    src = read_manifest(fp32).to_dict()
    assert src["format"] == "onnx-encoder" and is_up_to_date(fp32, src["inputs_hash"])
    version = toolkit_info("rknn")["version"]
    for s in SCHEMES:
        d = built.root / ENC / "rk3576" / s
        m = read_manifest(d).to_dict()
        assert m["format"] == "rknn" and m["artifact_kind"] == "rknn" and (d / m["entry"]).stat().st_size > 1e6
        assert m["toolkit"] == {"name": "rknn-toolkit2", "version": version} and version == "2.5.0"
        assert m["inputs"]["names"] == ["input_ids", "attention_mask", "token_type_ids"]
        assert m["inputs"]["shapes"] == [[1, 128]] * 3 and m["npu_cores"] == 2
        assert m["rknn"]["target_platform"] == "rk3576"
        if s == "fp16":
            assert m["dtype"] == "float16" and m["rknn"]["do_quantization"] is False
        else:
            assert m["dtype"] == s and m["rknn"]["quantized_dtype"] == s
            assert m["rknn"]["quantized_algorithm"] == "normal" and m["rknn"]["quantized_method"] == "channel"
            assert m["rknn"]["auto_hybrid"] is True and m["rknn"]["auto_hybrid_cos_thresh"] == 0.998  # the recipe's
            assert m["calibration"]["samples"] == 16
        assert m["source_onnx"]["inputs_hash"] == src["inputs_hash"]
        assert m["source_onnx"]["graph_edits"] and "-> -20" in m["source_onnx"]["graph_edits"][0]
        assert m["accuracy"]["method"] == "simulator" and m["accuracy"]["n_sentences"] == 32
        # the toolkit's log and accuracy_analysis' per-layer report beside the artifact, tensor dumps dropped
        log = (d / m["log"]).read_text()
        assert "rkdeploy-worker: export_rknn" in log and "rkdeploy-worker: accuracy_analysis" in log
        assert "simulator_error" in (d / "accuracy" / "error_analysis.txt").read_text()
        assert sorted(p.name for p in (d / "accuracy").iterdir()) == sorted(R.ACCURACY_KEEP)
        assert {"model.rknn", "manifest.json", "rknn-build.log", "tokenizer.json"} <= {p.name for p in d.iterdir()}


def test_simulator_accuracy_is_plausible(built):
    """fp16 closer to float than w8a8, w8a8 closer than w4a16 (deterministic; measured 1.0000 / 0.9997 / 0.906).

    The default recipe builds w8a8 with ``rknn.auto_hybrid`` (cos threshold 0.998): rknn quantizes
    activations per tensor and the residual stream of all-MiniLM-L6-v2 has outlier channels, so plain
    w8a8 only reaches 0.90 (error_analysis.txt: the per-layer cosine drops at each output LayerNorm).
    w4a16 keeps float16 activations; its loss is the int4 weights alone and equals torch
    round-to-nearest per-channel int4 (`rkdeploy quality`'s simulated w4a16 row: 0.906).
    """
    from host.manifest import read_manifest

    acc = {s: read_manifest(built.root / ENC / "rk3576" / s).accuracy for s in SCHEMES}
    for s in SCHEMES:
        a = acc[s]
        print(f"{s}: sentence cos {a['cos_mean']:.4f} (min {a['cos_min']:.4f}), token cos {a['token_cos_mean']:.4f} "
              f"(min {a['token_cos_min']:.4f}), max abs err {a['max_abs_err']:.3g}, NN agree {a['nn_agree']:.3f}")
    fp16, w8, w4 = acc["fp16"], acc["w8a8"], acc["w4a16"]
    assert fp16["cos_mean"] > w8["cos_mean"] > w4["cos_mean"]
    assert fp16["token_cos_mean"] > w8["token_cos_mean"] > w4["token_cos_mean"]
    assert fp16["max_abs_err"] < w8["max_abs_err"] < w4["max_abs_err"]
    assert fp16["cos_min"] > 0.999 and fp16["nn_agree"] == 1.0
    assert w8["cos_mean"] >= 0.99 and w8["nn_agree"] >= 0.9
    assert 0.85 < w4["cos_mean"] < 0.97
    # per output: the one output, attended tokens of 32 sentences
    assert len(w8["per_output"]) == 1 and w8["per_output"][0]["n_vectors"] > 32


def test_rewritten_mask_keeps_the_float_graph(built, tmp_path):
    """The graph rknn gets (mask fill -20) computes what the float ONNX computes on the attended tokens."""
    import onnxruntime as ort

    src = built.root / ENC / "rk3576" / "fp32" / "model.onnx"
    dst = tmp_path / "rknn-src.onnx"
    edits = R.prepare_onnx(src, dst)
    assert len(edits) == 1 and "-3.4e+38 -> -20" in edits[0]
    ids = np.zeros((1, 128), np.int64)
    ids[0, :6] = [101, 7592, 2088, 2003, 2204, 102]
    feeds = {"input_ids": ids, "attention_mask": (ids > 0).astype(np.int64), "token_type_ids": np.zeros_like(ids)}
    a, b = (ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, feeds)[0] for p in (src, dst))
    assert np.abs(a - b)[0, :6].max() < 1e-5        # attended tokens (padded positions are never pooled)


def test_quality_rows_are_stored_and_shown_with_the_onnx_rows(built):
    from host.config import load_recipe
    from host.manifest import load_artifact
    from host.quality import vendor_rows
    from host.results import ResultStore

    with ResultStore(built.store) as st:
        rows = [r.to_dict() for r in st.rows(kind="quality")]
    sim = {r["scheme"]: r for r in rows if r["method"] == "simulator"}
    assert set(sim) == set(SCHEMES)
    for s, r in sim.items():
        art = load_artifact(built.root / ENC / "rk3576" / s)
        assert r["artifact_sha256"] == art.sha256 and r["model_size"] == art.weights_size  # .rknn, not tokenizer
        assert r["backend"] == "rknn-simulator" and r["runtime"] == "rknn-toolkit2 2.5.0 simulator"
        assert r["cos_mean"] == art.manifest.accuracy["cos_mean"] and r["test"] == "embedding"
    shown = vendor_rows(load_recipe(built.recipe), "rk3576", root=built.root, store=built.store)
    assert sorted(r["scheme"] for r in shown) == sorted(SCHEMES)
    # `rkdeploy quality` prints them next to the measured ONNX fp32 row of the same model
    p = run_cli("quality", "--recipe", built.recipe, "--target", "rk3576", "--artifacts", built.root,
                "--no-simulated", env={"RKDEPLOY_RESULTS": str(built.store)})
    assert p.returncode == 0, p.stderr
    known = {"fp32", "int8-dyn", "int8-qdq", *SCHEMES}
    shown_rows = []
    for ln in p.stdout.splitlines():                       # "scheme method cos ..." in table order
        toks = ln.replace("│", " ").split()
        shown_rows += [f"{a}/{b}" for a, b in zip(toks, toks[1:], strict=False)
                       if a in known and b in ("measured", "simulated", "simulator")][:1]
    assert shown_rows == ["fp32/measured"] + [f"{s}/simulator" for s in SCHEMES], p.stdout


def test_second_export_is_up_to_date_and_no_adb_survives(built):
    from host.export import export

    rep = export(built.recipe, "rk3576", only=SCHEMES, root=built.root, progress=False)
    assert [r.status for r in rep.results] == ["up to date"] * 3 and rep.seconds < 30
    assert built.adb_after <= built.adb_before, "an adb server started by rknn-toolkit2 survived the build"
    assert R.adb_pids() <= built.adb_before


def test_a_toolkit_failure_keeps_its_log_beside_the_artifact(built, monkeypatch, tmp_path):
    """build() on the real toolkit with a dtype it refuses: one-line BuildError naming the kept log."""
    job = _job(built.recipe, "rk3576", "w8a8", built.root)
    bad = {"config": {"quantized_dtype": "w3a3", "quantized_algorithm": "normal", "quantized_method": "channel"},
           "do_quantization": True, "auto_hybrid": False}
    monkeypatch.setattr(R, "_rknn_args", lambda _job: bad)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(BuildError) as e:
        R.build(job, out, log=lambda _line: None)
    kept = built.root / ENC / "rk3576" / "w8a8.rknn-build.log"
    msg = str(e.value)
    assert re.match(rf"{ENC}/rk3576/w8a8: rknn-toolkit2 \d+\.\d+\.\d+: config failed: ", msg) and msg.endswith(f"(log: {kept})")
    assert "\n" not in msg and "w3a3" in kept.read_text()
    kept.unlink()


def test_w4a16_simulator_matches_torch_fake_quant(built, monkeypatch):
    """Parity: rknn's w4a16 (int4 per-channel weights, float16 activations) in its simulator and our torch
    round-to-nearest fake-quant of the same scheme give the same sentence cosine on the same sentences."""
    from host.config import load_recipe
    from host.quality import evaluate

    monkeypatch.setenv("RKDEPLOY_QUALITY_CACHE", str(built.base / "quality-cache"))
    rows = evaluate(load_recipe(built.recipe), "rk3576", root=built.root, schemes=("w4a16",), store=built.store)
    by = {r["method"]: r for r in rows if r["scheme"] == "w4a16"}
    print(f"w4a16 sentence cosine: rknn simulator {by['simulator']['cos_mean']:.4f}, "
          f"torch fake-quant {by['simulated']['cos_mean']:.4f}")
    assert by["simulator"]["cos_mean"] == pytest.approx(by["simulated"]["cos_mean"], abs=0.01)
    assert by["simulator"]["nn_agree"] == pytest.approx(by["simulated"]["nn_agree"], abs=0.1)
