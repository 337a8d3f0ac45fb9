"""``rkdeploy clean`` (dry run by default, sizes, a running build's temp kept), where results and artifacts
go by default (the current folder, one rule), ``--store`` on export/quality, and ``bench`` naming a failed
export instead of suggesting it again. Fast tier: files in tmp folders and the fake backend."""

from __future__ import annotations

import fcntl
import json

import pytest

from tests.conftest import DEFAULT_RECIPE, run_cli


@pytest.fixture
def caches(tmp_path, monkeypatch):
    q = tmp_path / "cache" / "quality"
    monkeypatch.setenv("RKDEPLOY_QUALITY_CACHE", str(q))
    monkeypatch.setenv("RKDEPLOY_CACHE", str(tmp_path / "cache"))
    (q / "float-aaaa").mkdir(parents=True)
    (q / "float-aaaa" / "logprobs.npy").write_bytes(b"\0" * 5000)
    (q / "embed-bbbb.npy").write_bytes(b"\0" * 300)
    (q / "rows").mkdir()
    (q / "rows" / "r.json").write_text("{}")
    return q


def _tree(root):
    t = root / "smollm2-135m-instruct" / "rk3588"
    for name in ("int8", "fp32"):
        (t / name).mkdir(parents=True)
        (t / name / "manifest.json").write_text("{}")
        (t / name / "model.onnx").write_bytes(b"\0" * 1000)
    (t / ".tmp-int8-abcd1234").mkdir()                     # left by a killed build of int8 (lock free)
    (t / ".tmp-int8-abcd1234" / "x").write_bytes(b"\0" * 700)
    (t / ".tmp-fp32-efgh5678").mkdir()                     # fp32 is being built now (lock held)
    (t / ".tmp-fp32-efgh5678" / "x").write_bytes(b"\0" * 900)
    return t


def test_clean_dry_run_then_yes(tmp_path, caches, rk):
    t = _tree(tmp_path / "artifacts")
    with open(t / ".lock-fp32", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)                     # an export building fp32 right now
        res = rk("clean", "--artifacts", tmp_path / "artifacts", "--jsonl", tmp_path / "c.jsonl")
        assert res.returncode == 0, res.stderr
        assert "dry run: 3 items" in res.stdout and "--yes" in res.stdout
        assert (caches / "float-aaaa").is_dir() and (t / ".tmp-int8-abcd1234").is_dir()   # nothing deleted
        items = [json.loads(ln) for ln in (tmp_path / "c.jsonl").read_text().splitlines()]
        assert {(i["what"], i["bytes"]) for i in items} == {("float-reference", 5000), ("float-reference", 300),
                                                           ("stale-temp", 700)}
        res = rk("clean", "--yes", "--artifacts", tmp_path / "artifacts")
        assert res.returncode == 0 and "removed 3 items, 6.0 KB freed" in res.stdout, res.stdout
    assert not (caches / "float-aaaa").exists() and not (caches / "embed-bbbb.npy").exists()
    assert (caches / "rows" / "r.json").is_file()                       # finished rows stay
    assert not (t / ".tmp-int8-abcd1234").exists()
    assert (t / ".tmp-fp32-efgh5678").is_dir()                           # the running build's temp stays
    assert (t / "int8" / "manifest.json").is_file()                      # artifacts only with --recipe


def test_clean_a_recipes_artifacts(tmp_path, caches, rk):
    t = _tree(tmp_path / "artifacts")
    (t / ".failed-w8a8.json").write_text("{}")
    (t / "w8a8").mkdir()
    (t / "w8a8" / "manifest.json").write_text("{}")
    with open(t / ".lock-fp32", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)                     # an export rebuilding fp32 right now: it stays
        res = rk("clean", "--keep-references", "-r", DEFAULT_RECIPE, "-t", "rk3588", "--artifacts",
                 tmp_path / "artifacts", "--yes")
    assert res.returncode == 0, res.stderr
    assert (t / "fp32" / "manifest.json").is_file()
    res = rk("clean", "--keep-references", "-r", DEFAULT_RECIPE, "-t", "rk3588", "--artifacts", tmp_path / "artifacts",
             "--yes")
    assert res.returncode == 0, res.stderr
    assert not (t / "int8").exists() and not (t / "fp32").exists() and not (t / "w8a8").exists()
    assert not (t / ".failed-w8a8.json").exists()
    assert (caches / "float-aaaa").is_dir()
    assert rk("clean", "-t", "rk3588").returncode == 2                           # --target alone: whose artifacts?


def test_default_results_and_artifacts_are_in_the_current_folder(tmp_path, monkeypatch):
    from host.plan import artifacts_root
    from host.results.store import default_store

    monkeypatch.delenv("RKDEPLOY_RESULTS", raising=False)
    monkeypatch.delenv("RKDEPLOY_ARTIFACTS", raising=False)
    monkeypatch.chdir(tmp_path)
    assert artifacts_root() == tmp_path / "artifacts"
    assert default_store() == tmp_path / "results" / "rkdeploy.sqlite"
    monkeypatch.setenv("RKDEPLOY_RESULTS", str(tmp_path / "elsewhere.sqlite"))
    assert default_store() == tmp_path / "elsewhere.sqlite"


@pytest.mark.parametrize("cmd", ["export", "quality", "bench"])
def test_store_option_says_where_results_go(cmd):
    p = run_cli(cmd, "--help", env={"COLUMNS": "200"})
    assert p.returncode == 0
    assert "--store" in p.stdout and "current folder" in p.stdout, p.stdout


@pytest.mark.slow  # runner processes (fake backend)
def test_bench_names_a_failed_export_and_rows_carry_the_model_note(tmp_path):
    from board.testing.artifacts import write_fake_artifact
    from host.bench import BenchParams, bench_local
    from host.config import load_recipe
    from host.export import JobResult, _record_outcome, failure_record
    from host.plan import plan

    root = tmp_path / "artifacts"
    note = "float weights dequantized from Q4_1 (GGUF x.gguf): 4-bit quality numbers start from Q4_1-rounded weights"
    write_fake_artifact(str(root / "smollm2-135m-instruct" / "rk3576" / "int8"), prefill_ms=5, token_ms=1,
                        model="smollm2-135m-instruct", target="rk3576", scheme="int8", extra={"model_note": note})
    jobs = {j.scheme: j for j in plan(load_recipe(DEFAULT_RECIPE), "rk3576", root=root)}
    _record_outcome(jobs["int4"], JobResult(jobs["int4"], "failed", "onnxruntime-genai 0.9: KeyError 'x'"),
                    root / ".logs" / "int4.log")
    assert failure_record(jobs["int4"].out_dir).is_file()
    said = []
    summary = bench_local(recipe=DEFAULT_RECIPE, target="rk3576", params=BenchParams(n_prompt=4, n_gen=2, reps=1,
                          warmup=0), store=tmp_path / "r.sqlite", artifacts_root=root, log=said.append)
    int4 = [s for s in summary.skipped if s.startswith(jobs["int4"].label)]
    assert len(int4) == 1 and "export failed" in int4[0] and "KeyError 'x'" in int4[0] and "int4.log" in int4[0]
    not_built = next(s for s in said if s.startswith("skip (not built"))
    assert jobs["int4"].label not in not_built and jobs["fp32"].label in not_built
    assert [r.env["model_note"] for r in summary.rows] == [note]
    # a later successful build clears the record
    _record_outcome(jobs["int4"], JobResult(jobs["int4"], "built"), root / ".logs" / "int4.log")
    assert not failure_record(jobs["int4"].out_dir).exists()
