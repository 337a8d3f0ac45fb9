"""Issue 16 part A (real): a recipe with ``transform:`` exports an ONNX int4 artifact built from the
transformed checkpoint, whose manifest, quality row (measured, the board's onnxruntime backend) and the
simulated row of the vendor scheme it serves all name the transform. Real SmolLM2-135M, real
transformers + onnxruntime-genai builder + onnxruntime; a small search (grid [0.5], 64 rows, 2
calibration items) and a 256-token evaluation keep it short (time in the test's docstring)."""

from __future__ import annotations

import json

AWQ = {"awq": {"scheme": "w4a16-g64", "grid": [0.5], "samples": 64}}


def test_export_with_transform_names_it_in_manifest_and_rows(make_recipe, default_recipe_data, builtin_models,
                                                            tmp_path, monkeypatch):
    """~2.5 min on the 2-core Xeon at load ~2 (transform ~40 s, int4 build ~60 s, quality ~40 s); cached
    transformed checkpoint under ~/.cache/rkdeploy/transformed afterwards."""
    from host.config import load_recipe
    from host.export import export
    from host.quality.evaluate import evaluate
    from host.quality.table import quality_table
    from host.results import ResultStore
    from host.ui import console

    calib = tmp_path / "calib.json"
    full = json.loads(open(default_recipe_data["models"][0]["calibration"]).read())
    calib.write_text(json.dumps(full[:2]))

    def edit(d):
        m = d["models"][0]
        m.update(onnx=["int4"], transform=AWQ, calibration=str(calib), targets={"rk3576": ["w4a16-g64"]})
        m.pop("gguf", None)
        d["models"] = [m]
        d["quality"] = {"eval_tokens": 256, "window": 129, "sentences": 8}

    recipe = make_recipe(edit)
    monkeypatch.setenv("RKDEPLOY_QUALITY_CACHE", str(tmp_path / "qc"))
    store = tmp_path / "results.sqlite"
    rep = export(recipe, "rk3576", only=("int4",), root=tmp_path / "art", progress=False, store=store)
    assert [r.status for r in rep.results] == ["built"], [r.reason for r in rep.results]
    folder = tmp_path / "art" / "smollm2-135m-instruct" / "rk3576" / "int4"
    man = json.loads((folder / "manifest.json").read_text())
    tr = man["transform"]
    assert tr["label"] == "awq(w4a16-g64)" and tr["awq"]["samples"] == 64 and tr["scaled"] > 0
    ckpt = next(p for p in (builtin_models["smollm2-135m-instruct"].parent.parent / "transformed").iterdir()
                if p.name.endswith(tr["key"][:16]))
    assert json.loads((ckpt / "rkdeploy-transform.json").read_text())["key"] == tr["key"]

    rows = evaluate(load_recipe(recipe), "rk3576", root=tmp_path / "art", store=store)
    by = {(r["scheme"], r["method"]): r for r in rows}
    measured, simulated = by[("int4", "measured")], by[("w4a16-g64", "simulated")]
    assert measured["transform"] == "awq(w4a16-g64)" and measured["artifact_sha256"]
    assert simulated["transform"] == "awq(w4a16-g64)"
    assert measured["ppl_ratio"] < 1.6 and simulated["ppl_ratio"] < 2.5     # the int4 / w4a16-g bands hold
    with ResultStore(store) as st:
        assert {r.transform for r in st.rows(kind="quality")} == {"awq(w4a16-g64)"}
    with console.capture() as cap:
        console.print(quality_table(rows))
    assert "awq(w4a16-g64)" in cap.get()

    # a second export with nothing changed is up to date (the cache key of a changed transform: the fast tier)
    again = export(recipe, "rk3576", only=("int4",), root=tmp_path / "art", progress=False, store=store)
    assert [r.status for r in again.results] == ["up to date"]
