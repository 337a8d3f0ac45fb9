"""Host bench: runner subprocess per artifact, rows streamed into the store, transport-agnostic."""

from __future__ import annotations

import sys

import pytest

from board.testing.artifacts import write_fake_artifact
from host.bench import BenchParams, bench_artifact, bench_local, local_run_stream
from host.results import ResultStore
from tests.conftest import DEFAULT_RECIPE, run_cli

LLM = "smollm2-135m-instruct"
ENC = "all-minilm-l6-v2"
QUICK = BenchParams(n_prompt=16, n_gen=4, reps=2, warmup=0)


def fake_tree(root, target="rk3576"):
    """Artifacts laid out as `rkdeploy export` does, runnable by the fake backend."""
    write_fake_artifact(str(root / LLM / target / "int8"), prefill_ms=10, token_ms=2, model=LLM, target=target,
                        scheme="int8")
    write_fake_artifact(str(root / LLM / target / "fp32"), prefill_ms=20, token_ms=4, model=LLM, target=target,
                        scheme="fp32")
    write_fake_artifact(str(root / ENC / target / "int8-dyn"), model_kind="encoder", encode_ms=2, model=ENC,
                        target=target, scheme="int8-dyn")
    # a vendor artifact this machine cannot run: skipped, not an error
    write_fake_artifact(str(root / LLM / target / "w8a8"), model=LLM, target=target, scheme="w8a8",
                        extra={"format": "rkllm"})
    return root


@pytest.mark.slow  # several runner processes
def test_bench_local_streams_rows_into_the_store(tmp_path):
    root = fake_tree(tmp_path / "artifacts")
    seen = []
    summary = bench_local(recipe=DEFAULT_RECIPE, target="rk3576", params=QUICK, store=tmp_path / "r.sqlite",
                          artifacts_root=root, log=seen.append)
    assert sorted(r.scheme for r in summary.rows) == ["fp32", "int8", "int8-dyn"]
    assert all(r.status == "ok" and r.board == "local" and r.backend == "fake" for r in summary.rows)
    from board.sysinfo import _cpu

    here = _cpu("/")   # the arithmetic path: CPU vendor/arch and the ISA features that change int8/fp16 kernels
    for r in summary.rows:
        assert {k: r.env["cpu"][k] for k in ("arch", "vendor", "isa")} == {k: here[k] for k in ("arch", "vendor", "isa")}
        assert isinstance(r.env["cpu"]["isa"], list) and r.env["packages"]
    # the skip says why, in the backend's own words (a pushed llama.cpp driver refused on an A72 reads the same way)
    assert any("w8a8: format rkllm needs backend rkllm, not available on local (librkllmrt.so not found" in s
               for s in summary.skipped), summary.skipped
    assert any("not built" in s and "int4" in s for s in seen)
    with ResultStore(tmp_path / "r.sqlite") as s:
        assert [r.to_dict() for r in s.rows()] == [r.to_dict() for r in summary.rows]
    # one artifact identity on both sides: the runner's row and the host's manifest (quality rows) agree
    from host.manifest import load_artifact

    for r in summary.rows:
        assert r.artifact_sha256 == load_artifact(root / r.model / "rk3576" / r.scheme).sha256


def test_run_stream_is_the_only_transport(tmp_path):
    """A remote transport supplies run_stream(argv); the same argv reaches it."""
    art = write_fake_artifact(str(tmp_path / "a"), prefill_ms=5, token_ms=1)
    calls = []

    def recording(argv):
        calls.append(argv)
        yield from local_run_stream(argv)

    rows = list(bench_artifact(art, "fake", run_stream=recording, params=BenchParams(n_gen=4, reps=2, threads=3,
                                                                                      options={"engine": "ort"}),
                               board="rock5b"))
    assert calls[0][1:] == ["-m", "board", "bench", "--artifact", art, "--backend", "fake", "--board", "rock5b",
                            "--n-prompt", "128", "--n-gen", "4", "--reps", "2", "--warmup", "1", "--threads", "3",
                            "--opt", "engine=ort"]
    assert len(rows) == 1 and rows[0].status == "ok" and rows[0].board == "rock5b" and rows[0].threads == 3


def test_runner_crash_becomes_an_error_row(tmp_path):
    art = write_fake_artifact(str(tmp_path / "a"))
    crash = (sys.executable, "-c", "import sys; print('{\"type\": \"hello\", \"schema_version\": 1}'); "
             "sys.stderr.write('Segmentation fault\\n'); sys.exit(139)")
    rows = list(bench_artifact(art, "fake", run_stream=local_run_stream, params=QUICK, board="local", runner=crash))
    assert len(rows) == 1 and rows[0].status == "error"
    assert "exited with code 139: Segmentation fault" in rows[0].error and rows[0].model == "fake-model"


def test_error_row_from_runner_is_stored(tmp_path):
    art = write_fake_artifact(str(tmp_path / "a"), fail="generate")
    rows = list(bench_artifact(art, "fake", run_stream=local_run_stream, params=QUICK, board="local"))
    assert rows[0].status == "error" and "injected generate failure" in rows[0].error


@pytest.mark.slow  # rkdeploy bench + report processes
def test_cli_bench_then_report(tmp_path):
    root = fake_tree(tmp_path / "artifacts")
    env = {"RKDEPLOY_ARTIFACTS": str(root)}
    store = tmp_path / "r.sqlite"
    p = run_cli("bench", "--board", "local", "--target", "rk3576", "--reps", "2", "--n-prompt", "16", "--n-gen", "4",
                "--store", store, env=env)
    assert p.returncode == 0, p.stderr
    assert "3 ok, 0 error rows" in p.stdout
    md = run_cli("report", "--store", store).stdout
    assert "| smollm2-135m-instruct | rk3576 | int8 | fake |" in md and "### Encoder" in md
    p = run_cli("bench", "--target", "rk3588", "--store", store, env=env)
    assert p.returncode == 1 and "nothing benchmarked for rk3588" in p.stderr
