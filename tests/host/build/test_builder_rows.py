"""Builders never write the results store: rknn's simulator metrics live in the manifest and
``Kind.rows`` turns them into the same quality row ``host/build/rknn.py`` used to store itself."""

from __future__ import annotations

import yaml

from board.manifest import Manifest, files_sha256
from board.rows import ResultRow
from host.build import registry

SHA = "ab" * 32
ACC = {"method": "simulator", "reference": "onnxruntime fp32 (same ONNX)", "text": "/x/heldout.txt",
       "token_cos_mean": 0.9991234567, "token_cos_min": 0.91, "max_abs_err": 0.0123456, "cos_mean": 0.99987654321,
       "cos_min": 0.9991, "nn_agree": 1.0, "n_sentences": 32, "per_output": [], "report": "accuracy/error_analysis.txt",
       "report_sample": 0, "seconds": 12.3}


def _old_simulator_row(model, target, scheme, manifest: dict, *, sha, size) -> dict:
    """The row host/build/rknn.py stored itself before the registry (copied verbatim, the reference)."""
    from host.manifest import inputs_hash, now_rfc3339

    acc = manifest["accuracy"]
    tk = manifest["toolkit"]
    key = inputs_hash({"rknn-simulator": 1, "artifact": sha, "heldout": acc["text"], "n": acc.get("n_sentences")})
    return {
        "kind": "quality", "test": "embedding", "model": model.name, "target": target,
        "scheme": scheme, "backend": "rknn-simulator", "runtime": f"{tk['name']} {tk['version']} simulator",
        "method": "simulator", "status": "ok", "test_time": manifest.get("built_at") or now_rfc3339(),
        "cos_mean": acc["cos_mean"], "cos_min": acc["cos_min"], "nn_agree": acc.get("nn_agree"),
        "seq_len": model.seq_len, "batch": model.batch, "artifact_sha256": sha, "model_size": size,
        "env": {"quality_key": key, "definition": manifest.get("scheme_definition"), "reference": acc["reference"],
                "max_abs_err": acc["max_abs_err"], "token_cos_mean": acc["token_cos_mean"],
                "token_cos_min": acc["token_cos_min"], "sentences": acc.get("n_sentences"), "text": acc["text"],
                "toolkit": tk, "rknn": manifest.get("rknn"), "seconds": acc.get("seconds")},
    }


def test_rknn_rows_come_from_the_manifest_with_the_same_fields_and_digits(default_recipe_data, tmp_path):
    from host.config import load_recipe
    from host.plan import plan

    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(default_recipe_data))
    job = next(j for j in plan(load_recipe(path), "rk3576", root=tmp_path / "art") if j.kind == "rknn")
    files = {"model.rknn": {"sha256": SHA, "size": 123456}, "tokenizer.json": {"sha256": SHA, "size": 7}}
    data = {"schema": 1, "files": files, "format": "rknn", "entry": "model.rknn", "artifact_kind": "rknn",
            "model": job.model.name, "target": job.target, "scheme": job.scheme, "built_at": "2026-01-01T00:00:00Z",
            "toolkit": {"name": "rknn-toolkit2", "version": "2.5.0"}, "scheme_definition": "int8 ...",
            "rknn": {"target_platform": "rk3576", "quantized_dtype": "w8a8"}, "accuracy": ACC}
    (row,) = registry.get("rknn").rows(job, Manifest.from_dict(data))
    old = ResultRow.from_dict(_old_simulator_row(job.model, job.target, job.scheme, data, sha=files_sha256(files),
                                                 size=123456))  # weight bytes: model.rknn, not tokenizer.json
    assert row.to_dict() == old.to_dict()
    assert row.cos_mean == 0.99987654321 and row.env["max_abs_err"] == 0.0123456   # the digits, untouched


def test_no_metrics_no_rows(default_recipe_data, tmp_path):
    from host.config import load_recipe
    from host.plan import plan

    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(default_recipe_data))
    job = next(j for j in plan(load_recipe(path), "rk3576", root=tmp_path / "art") if j.kind == "rknn")
    assert registry.get("rknn").rows(job, Manifest.from_dict({"schema": 1, "files": {}})) == []
    assert all(registry.get(k).rows(job, Manifest.from_dict({"schema": 1, "files": {}})) == []
               for k in registry.names())


def test_builders_never_write_the_results_store():
    import inspect

    for kind in registry.kinds():
        src = inspect.getsource(kind.builder())
        assert "ResultStore" not in src and "store_rows" not in src and "host.quality" not in src, kind.module
