"""The artifact-kind registry (host/build/registry.py): every kind complete; a toy kind needs no product edit."""

from __future__ import annotations

import copy

import pytest
import yaml

from host.build import registry
from tests.host.build import toykind

#: What host/export.py hashed before the registry (inputs_hash must not change: built artifacts stay up to date).
#: The ``gguf`` kind's recipe field is new (default []): leaving it out keeps every older hash as it was.
#: transform / budget / rounding (issue 16) are per scheme: each builder's inputs() records what serves its scheme.
_PER_SCHEME = set(registry.PER_SCHEME_FIELDS)
assert {"transform", "budget"} <= _PER_SCHEME
OLD_IRRELEVANT_FIELDS = {
    "onnx": {"targets", "onnx", "rkllm", "rknn", "calibration", "max_context", "sensitive_layers", "gguf"} | _PER_SCHEME,
    "rkllm": {"targets", "onnx", "rknn", "sensitive_layers", "seq_len", "batch", "gguf"} | _PER_SCHEME,
    "rknn": {"targets", "onnx", "rkllm", "calibration", "max_context", "sensitive_layers", "gguf"} | _PER_SCHEME,
    "gguf": {"targets", "onnx", "rkllm", "rknn", "gguf", "calibration", "max_context", "sensitive_layers",
             "seq_len", "batch"} | _PER_SCHEME,
}
#: Kinds the default recipe does not build (stated in the README); GGUF is in it since issue 15 (`make export`
#: builds llama.cpp first, ~20 min once).
NOT_IN_DEFAULT_RECIPE: set[str] = set()


def _check_kind(kind: registry.Kind, jobs) -> None:
    import board.backends as bb
    from board.manifest import MODEL_KINDS

    records = kind.schemes()
    assert records, f"{kind.name}: no scheme records"
    assert all(r.spelling is not None for r in records)
    assert set(kind.model_kinds) <= set(MODEL_KINDS) and kind.model_kinds
    assert kind.backend in bb.BACKENDS and bb.BACKENDS[kind.backend], f"{kind.name}: board backend {kind.backend!r}"
    for fmt in kind.formats:
        assert kind.backend in bb.BACKENDS_FOR_FORMAT[fmt], f"{kind.name}: format {fmt!r} not run by {kind.backend}"
    builder = kind.builder()
    assert callable(builder.inputs) and callable(builder.build)
    for job in jobs:
        assert isinstance(kind.check(job), list)
        for dep in kind.depends_on(job):
            assert dep.kind in registry.names() and dep.out_dir != job.out_dir


def _default_jobs(default_recipe_data, tmp_path):
    from host.config import load_recipe
    from host.plan import plan

    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(default_recipe_data))
    recipe = load_recipe(path)
    return [j for t in ("rk3576", "rk3588") for j in plan(recipe, t, root=tmp_path / "art")]


def test_every_registered_kind_is_complete(default_recipe_data, tmp_path):
    from host.config import ModelSpec
    from host.toolkits import TOOLKITS

    jobs = _default_jobs(copy.deepcopy(default_recipe_data), tmp_path)
    assert set(registry.names()) == {"onnx", "rkllm", "rknn", "gguf"}
    assert {j.kind for j in jobs} == set(registry.names()) - NOT_IN_DEFAULT_RECIPE, "the default recipe builds every kind"
    for kind in registry.kinds():
        _check_kind(kind, [j for j in jobs if j.kind == kind.name])
        assert kind.recipe_field in ModelSpec.model_fields
        assert kind.toolkit is None or kind.toolkit in TOOLKITS
        assert kind.irrelevant_fields() == OLD_IRRELEVANT_FIELDS[kind.name]


def test_schemes_carry_each_toolkit_spelling():
    spell = {k.name: {r.name: r.spelling for r in k.schemes()} for k in registry.kinds()}
    assert spell["rkllm"]["w4a16-g128"] == "w4a16_g128" and "fp16" not in spell["rkllm"]
    assert spell["rknn"]["fp16"] == {"quantized_dtype": None, "do_quantization": False}
    assert spell["rknn"]["w8a8"]["quantized_method"] == "channel"
    assert set(spell["onnx"]) == {"fp32", "int8", "int4", "int4-mixed", "int8-dyn", "int8-qdq"}
    assert spell["gguf"] == {"gguf-f16": "F16", "gguf-q8_0": "Q8_0", "gguf-q4_0": "Q4_0", "gguf-q4_k_m": "Q4_K_M"}


def test_rknn_depends_on_the_fp32_onnx_and_the_plan_puts_it_first(default_recipe_data, tmp_path):
    from host.config import load_recipe
    from host.plan import plan

    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(default_recipe_data))
    jobs = plan(load_recipe(path), "rk3576", root=tmp_path / "art", schemes=("w8a8",), with_deps=True)
    enc = [(j.kind, j.scheme, j.implied) for j in jobs if j.model.kind == "encoder"]
    assert enc == [("onnx", "fp32", True), ("rknn", "w8a8", False)]
    assert [j.scheme for j in plan(load_recipe(path), "rk3576", root=tmp_path / "art", schemes=("w8a8",))
            if j.model.kind == "encoder"] == ["w8a8"]


def test_one_model_target_schemes_function(default_recipe_data, tmp_path):
    """plan, export's --only and the targets check read registry.wanted (one function)."""
    from host.config import load_recipe
    from host.plan import plan
    from host.targets import listed_schemes

    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(default_recipe_data))
    recipe = load_recipe(path)
    for m in recipe.models:
        assert listed_schemes(m, "rk3588") == [s for _k, s in registry.wanted(m, "rk3588")]
        assert listed_schemes(m, "rk3588") == [j.scheme for j in plan(recipe, "rk3588", root=tmp_path)
                                               if j.model.name == m.name]


@pytest.fixture
def toy(monkeypatch):
    with toykind.registered_everywhere(monkeypatch):
        yield toykind


def test_toy_kind_is_complete(toy, default_recipe_data, tmp_path):
    _check_kind(registry.get(toy.KIND), [])
    assert registry.get(toy.KIND).irrelevant_fields() >= {"targets", "onnx", "rkllm", "rknn", "gguf"}
    assert registry.get("onnx").irrelevant_fields() == OLD_IRRELEVANT_FIELDS["onnx"] | {"toy"}


@pytest.mark.slow   # fakes only (a tiny model folder, the toy builder and backend), a few seconds: export + runner
def test_toy_kind_runs_plan_export_bench_report(toy, default_recipe_data, tmp_path, monkeypatch):
    """One builder + one board backend + registry lines, no product edit: plan → export → bench (local) → report."""
    from host.bench import BenchParams, bench_local
    from host.config import load_recipe
    from host.export import export
    from host.manifest import read_manifest
    from host.plan import plan
    from host.results import ResultStore, report

    store = tmp_path / "results.sqlite"
    monkeypatch.setenv("RKDEPLOY_RESULTS", str(store))
    data = copy.deepcopy(default_recipe_data)
    data["models"] = [m for m in data["models"] if m["kind"] == "llm"][:1]
    data["models"][0].update(onnx=[], gguf=[], targets={"rk3588": [toy.SCHEME]}, max_context=4096,
                             source=str(toy.write_tiny_model(tmp_path / "tiny-model")))
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(data))
    root = tmp_path / "art"

    jobs = plan(load_recipe(path), "rk3588", root=root)
    assert [(j.kind, j.scheme) for j in jobs] == [(toy.KIND, toy.SCHEME)]
    rep = export(path, "rk3588", root=root, progress=False)
    assert [(r.job.kind, r.status) for r in rep.results] == [(toy.KIND, "built")], [r.reason for r in rep.results]
    m = read_manifest(jobs[0].out_dir)
    assert (m.artifact_kind, m.format, m.scheme, m.version) == (toy.KIND, toy.FORMAT, toy.SCHEME, 1)
    assert export(path, "rk3588", root=root, progress=False).results[0].status == "up to date"

    summary = bench_local(recipe=path, target="rk3588", store=store, artifacts_root=root, runner=toy.RUNNER,
                          params=BenchParams(n_prompt=8, n_gen=4, reps=1, warmup=0), log=lambda _m: None)
    assert summary.skipped == [] and [(r.backend, r.status, r.scheme) for r in summary.rows] == [
        (toy.BACKEND, "ok", toy.SCHEME)], [r.error for r in summary.rows]
    assert summary.rows[0].artifact_sha256 == m.sha256
    with ResultStore(store) as st:
        quality = st.rows(kind="quality")
    assert [(q.backend, q.cos_mean, q.artifact_sha256) for q in quality] == [("toy-simulator", 0.9876, m.sha256)]
    text = report(store=store, fmt="md")
    assert toy.SCHEME in text and toy.BACKEND in text
