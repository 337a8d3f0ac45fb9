"""Issue 16 part A: the rkllm builder reads the transformed checkpoint and takes ``hybrid_rate`` from the
budgeted plan — against the recording rkllm-toolkit DOUBLE (host/testing/fake_rkllm; the real toolkit
cannot run here), with the real SmolLM2 checkpoint and a real (small) SmoothQuant search."""

from __future__ import annotations

import json

import pytest

from tests.host.build.test_rkllm_build import calib, calls, fake_tk  # noqa: F401 - fixtures

SQ = {"smoothquant": {"scheme": "w8a8", "grid": [0.5], "samples": 64}}


@pytest.fixture
def rkllm_recipe(make_recipe, calib, llm_dir):  # noqa: F811 - the imported fixture
    def make(**fields):
        def edit(d):
            llm = next(m for m in d["models"] if m["kind"] == "llm")
            llm.update(calibration=str(calib), onnx=[], gguf=[], **fields)
            d["models"] = [llm]
        return make_recipe(edit)
    return make


def test_rkllm_double_loads_the_transformed_checkpoint_of_the_scheme_it_serves(fake_tk, rkllm_recipe, llm_dir,  # noqa: F811
                                                                              tmp_path):
    """w8a8 gets smoothquant's checkpoint, w4a16 the original; the manifest names the transform
    (~40-90 s on the 2-core Xeon under load: the search on 2 calibration items, then two double builds)."""
    from host.export import export
    from host.manifest import read_manifest

    recipe = rkllm_recipe(transform=SQ, targets={"rk3576": ["w4a16", "w8a8"]})
    rep = export(recipe, "rk3576", root=tmp_path / "art", progress=False)
    assert {r.job.scheme: r.status for r in rep.results} == {"w4a16": "built", "w8a8": "built"}, \
        [r.reason for r in rep.results]
    loads = {c["kwargs"]["model"] for c in calls(fake_tk) if c["call"] == "load_huggingface"}
    art = tmp_path / "art" / "smollm2-135m-instruct" / "rk3576"
    w8, w4 = read_manifest(art / "w8a8"), read_manifest(art / "w4a16")
    assert w8.transform_label == "smoothquant(w8a8)" and w4.transform is None
    ckpt = w8.rkllm["load_args"]["model"]
    assert loads == {str(llm_dir), ckpt} and ckpt != str(llm_dir)
    assert json.loads(open(f"{ckpt}/rkdeploy-transform.json").read())["key"] == w8.transform["key"]
    assert w8.toolkit["test_double"] is True


def test_rkllm_hybrid_rate_comes_from_the_budgeted_plan(fake_tk, rkllm_recipe, tmp_path, monkeypatch):  # noqa: F811
    """``sensitive_layers: auto`` + budget on a plain w4a16 build: hybrid_rate = the plan's int8 share of the
    linear weights (sensitivity replaced by a saved per-type JSON here: the measurement is
    tests/host/build/test_transform_recipe.py's plan test and the int4-mixed export; ~30 s)."""
    from host.build import mixed
    from host.export import export
    from host.manifest import read_manifest

    saved = {"model": "smollm2-135m-instruct", "scheme": "w4a16-g32", "n_tokens": 1024, "cache": "saved",
             "groups": [{"group": "down_proj@all", "layers": 30, "kld_increase": 0.3},
                        {"group": "q_proj@all", "layers": 30, "kld_increase": -0.01}]}
    monkeypatch.setattr(mixed, "sensitivity_of", lambda *a, **k: saved)
    recipe = rkllm_recipe(sensitive_layers="auto", budget=0.25, targets={"rk3576": ["w4a16", "w4a16-g64"]})
    rep = export(recipe, "rk3576", root=tmp_path / "art", progress=False)
    assert {r.status for r in rep.results} == {"built"}, [r.reason for r in rep.results]
    builds = {c["kwargs"]["quantized_dtype"]: c["kwargs"] for c in calls(fake_tk) if c["call"] == "build"}
    rate = builds["w4a16"]["hybrid_rate"]
    # SmolLM2: every down_proj (30 x 1536 x 576) of the linears without the tied lm_head, within 0.25x fp32
    linear = 30 * (576 * 576 * 2 + 576 * 192 * 2 + 3 * 576 * 1536)
    assert rate == pytest.approx(30 * 1536 * 576 / linear, abs=1e-3)
    assert builds["w4a16_g64"]["hybrid_rate"] == 0.0          # grouped: hybrid_rate would trade accuracy for speed
    m = read_manifest(tmp_path / "art" / "smollm2-135m-instruct" / "rk3576" / "w4a16")
    assert m.mix["budget"] == 0.25 and m.mix["hybrid_rate"] == rate and m.rkllm["hybrid_rate"] == rate
