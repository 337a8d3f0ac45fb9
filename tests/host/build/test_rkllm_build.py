"""rkllm builder + worker against the recording rkllm-toolkit double (host/testing/fake_rkllm).

The real toolkit is not on PyPI and cannot run here; the double enforces the documented
constraints and records every call, so these tests pin the exact call sequence and arguments.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from host.errors import BuildError, ToolkitMissingError
from host.testing.fake_rkllm import FAKE_DIR, install_fake_toolkit
from tests.conftest import ROOT  # noqa: E402

CALIB = [
    {"input": "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
     "target": "The capital of France is Paris."},
    {"input": "<|im_start|>user\nName a prime number.<|im_end|>\n<|im_start|>assistant\n", "target": "Seven."},
]


@pytest.fixture
def fake_tk(tmp_path, monkeypatch) -> Path:
    """The fake toolkit installed as ``$RKDEPLOY_VENVS/rkllm``; returns the call-record JSONL path."""
    venvs = tmp_path / "venvs"
    record = tmp_path / "calls.jsonl"
    monkeypatch.setenv("RKDEPLOY_VENVS", str(venvs))
    monkeypatch.setenv("FAKE_RKLLM_RECORD", str(record))
    monkeypatch.setenv("RKDEPLOY_GPU", "0")
    monkeypatch.delenv("FAKE_RKLLM_FAIL", raising=False)
    install_fake_toolkit(venvs, "1.3.0")
    return record


@pytest.fixture
def calib(tmp_path) -> Path:
    p = tmp_path / "calib.json"
    p.write_text(json.dumps(CALIB))
    return p


@pytest.fixture
def llm_recipe(make_recipe, calib, llm_dir) -> Path:
    """The default recipe's LLM only (its rkllm jobs), with a small calibration file."""
    def edit(d):
        llm = next(m for m in d["models"] if m["kind"] == "llm")
        llm["calibration"] = str(calib)
        llm["onnx"] = []
        llm["gguf"] = []     # rkllm jobs only (GGUF needs llama.cpp: tests/host/build/test_gguf.py)
        d["models"] = [llm]
    return make_recipe(edit)


def calls(record: Path) -> list[dict]:
    return [json.loads(x) for x in record.read_text().splitlines()] if record.exists() else []


def jobs_for(recipe_path: Path, target: str, root: Path):
    from host.config import load_recipe
    from host.plan import plan

    return plan(load_recipe(recipe_path), target, root=root, kinds=("rkllm",))


NOTE = "no GPU on the build host"
EXPECTED = {
    "rk3576": {"w4a16": ("w4a16", "normal", True), "w4a16-g64": ("w4a16_g64", "normal", True),
               "w8a8": ("w8a8", "normal", False)},
    "rk3588": {"w8a8": ("w8a8", "normal", False)},
}
CORES = {"rk3576": 2, "rk3588": 3}


@pytest.mark.parametrize("target", ["rk3576", "rk3588"])
def test_export_default_recipe_rkllm_jobs_exact_calls(target, fake_tk, llm_recipe, calib, llm_dir, tmp_path):
    from host.export import export
    from host.manifest import read_manifest

    rep = export(llm_recipe, target, root=tmp_path / "art", progress=False)
    assert {r.job.scheme: r.status for r in rep.results} == dict.fromkeys(EXPECTED[target], "built")
    seq = calls(fake_tk)
    per_job = [seq[i:i + 4] for i in range(0, len(seq), 4)]
    assert len(per_job) == len(EXPECTED[target])
    for job_calls, (scheme, (dtype, algo, noted)) in zip(per_job, EXPECTED[target].items(), strict=True):
        assert [c["call"] for c in job_calls] == ["__init__", "load_huggingface", "build", "export_rkllm"]
        assert all(c.get("ret", 0) == 0 for c in job_calls)
        assert job_calls[1]["kwargs"] == {"model": str(llm_dir), "model_lora": None, "device": "cpu",
                                          "dtype": "float32", "custom_config": None, "load_weight": True}
        assert job_calls[2]["kwargs"] == {
            "do_quantization": True, "optimization_level": 0, "quantized_dtype": dtype, "quantized_algorithm": algo,
            "target_platform": target.upper(), "num_npu_core": CORES[target], "extra_qparams": None,
            "dataset": str(calib), "hybrid_rate": 0.0, "max_context": 4096}
        out = tmp_path / "art" / "smollm2-135m-instruct" / target / scheme
        m = read_manifest(out).to_dict()
        assert m["format"] == "rkllm" and m["artifact_kind"] == "rkllm"
        assert m["toolkit"] == {"name": "rkllm-toolkit", "version": "1.3.0", "test_double": True}
        r = m["rkllm"]
        assert (r["dtype"], r["algorithm"], r["num_npu_core"], r["max_context"], r["optimization_level"]) == (
            dtype, algo, CORES[target], 4096, 0)
        assert (NOTE in (r["algorithm_note"] or "")) is noted
        assert m["calibration_sha256"] == r["calibration_sha256"] and len(r["calibration_sha256"]) == 64
        assert m["vocab_size"] == 49152
        entry = out / m["entry"]
        assert entry.name == f"smollm2-135m-instruct-{scheme}-{target}.rkllm"
        assert json.loads(entry.read_bytes().split(b"\n")[1])["toolkit_version"] == "1.3.0"
        assert set(m["files"]) >= {m["entry"], "tokenizer.json"}
        # the export step's temp path is what the toolkit wrote, then renamed
        assert Path(job_calls[3]["kwargs"]["export_path"]).name.startswith(".tmp-")
        assert Path(m["build_log"]).is_file()
    # second run: nothing changed → up to date, the toolkit is not called again
    n = len(calls(fake_tk))
    rep2 = export(llm_recipe, target, root=tmp_path / "art", progress=False)
    assert {r.status for r in rep2.results} == {"up to date"}
    assert len(calls(fake_tk)) == n


def test_gpu_present_uses_grq_for_w4a16_only(fake_tk, llm_recipe, tmp_path, monkeypatch):
    from host.build import rkllm

    monkeypatch.setenv("RKDEPLOY_GPU", "1")
    jobs = {j.scheme: j for j in jobs_for(llm_recipe, "rk3576", tmp_path / "art")}
    for scheme, algo in (("w4a16", "grq"), ("w4a16-g64", "grq"), ("w8a8", "normal")):
        args = rkllm.toolkit_args(jobs[scheme])
        assert args["build"]["quantized_algorithm"] == algo and args["notes"] == []
        assert args["load"]["device"] == "cuda"
    out = tmp_path / "out"
    extra = rkllm.build(jobs["w4a16"], out, log=lambda _l: None)  # the fake accepts grq only with device cuda
    assert extra["rkllm"]["algorithm"] == "grq" and extra["rkllm"]["algorithm_note"] is None
    assert [c["kwargs"]["quantized_algorithm"] for c in calls(fake_tk) if c["call"] == "build"] == ["grq"]


@pytest.mark.parametrize("fail,step,says", [
    ("load_huggingface:-1", "load_huggingface", "load_huggingface returned -1"),
    ("load_huggingface:raise", "load_huggingface", "load_huggingface raised RuntimeError"),
    ("build:-1", "build", "build returned -1"),
    ("build:raise", "build", "build raised RuntimeError"),
    ("export_rkllm:-1", "export_rkllm", "export_rkllm returned -1"),
    ("export_rkllm:raise", "export_rkllm", "export_rkllm raised RuntimeError"),
])
def test_failures_fail_the_job_and_leave_no_partial_rkllm(fail, step, says, fake_tk, llm_recipe, tmp_path, monkeypatch):
    from host.export import export

    monkeypatch.setenv("FAKE_RKLLM_FAIL", fail)
    art = tmp_path / "art"
    rep = export(llm_recipe, "rk3588", root=art, progress=False)
    (res,) = rep.results
    assert res.status == "failed"
    assert says in res.reason and "smollm2-135m-instruct/rk3588/w8a8" in res.reason
    assert "injected failure" in res.reason  # the toolkit's own error line is quoted
    assert not list(art.rglob("*.rkllm")) and not list(art.rglob(".tmp*"))
    assert not (art / "smollm2-135m-instruct" / "rk3588" / "w8a8").exists()
    log = art / "smollm2-135m-instruct" / "rk3588" / "w8a8.rkllm-build.log"
    assert "injected failure" in log.read_text()  # the toolkit log survives the failure
    assert calls(fake_tk)[-1]["call"] == step


def test_missing_toolkit_skips_with_install_hint(llm_recipe, tmp_path, monkeypatch):
    from host.build import rkllm
    from host.export import export

    monkeypatch.setenv("RKDEPLOY_VENVS", str(tmp_path / "no-venvs"))
    rep = export(llm_recipe, "rk3576", root=tmp_path / "art", progress=False)
    assert {r.status for r in rep.results} == {"skipped"}
    for r in rep.results:
        assert "rkllm-toolkit not installed (make setup-rkllm WHEEL=" in r.reason
    rep = export(llm_recipe, "rk3576", root=tmp_path / "art", progress=False, require=("rkllm",))
    assert {r.status for r in rep.results} == {"failed"}
    job = jobs_for(llm_recipe, "rk3588", tmp_path / "art")[0]
    with pytest.raises(ToolkitMissingError, match=r"make setup-rkllm WHEEL="):
        rkllm.build(job, tmp_path / "out", log=lambda _l: None)
    assert not (tmp_path / "out").exists()  # raised before any work


def test_export_cli_lists_skipped_rkllm_jobs(rk, llm_recipe, tmp_path):
    res = rk("export", "--recipe", llm_recipe, "--target", "rk3588", "--artifacts", tmp_path / "art", "--no-quality",
             env={"RKDEPLOY_VENVS": str(tmp_path / "none")})
    assert res.returncode == 0, res.stderr
    assert "skipped" in res.stdout and "make setup-rkllm" in res.stdout


def test_group_size_violation_quotes_the_toolkit(fake_tk, llm_recipe, tmp_path):
    from host.build import rkllm
    from host.plan import BuildJob

    j = jobs_for(llm_recipe, "rk3576", tmp_path / "art")[0]
    job = BuildJob(j.model, "rk3576", "rkllm", "w4a16-g128", tmp_path / "art" / "g128", j.recipe)
    with pytest.raises(BuildError, match=r"build returned -1.*group size 128 does not divide") as e:
        rkllm.build(job, tmp_path / "out", log=lambda _l: None)
    assert not list((tmp_path / "out").glob("*.rkllm"))
    # one line naming the model family and the tool's version, and the kept log (issue 14)
    assert "(llama (LlamaForCausalLM)): rkllm-toolkit 1.3.0: " in str(e.value) and "(log: " in str(e.value)


def test_extra_cannot_override_typed_fields(fake_tk, make_recipe, calib, tmp_path):
    from host.build import rkllm
    from host.errors import ConfigError

    def edit(d):
        d["models"][0]["calibration"] = str(calib)
        d["models"][0]["rkllm"]["extra"] = {"max_context": 8192}
    (job,) = jobs_for(make_recipe(edit), "rk3588", tmp_path / "art")
    with pytest.raises(ConfigError, match="rkllm.extra sets max_context"):
        rkllm.toolkit_args(job)


def test_rkllm_logits_replays_the_artifact(fake_tk, llm_recipe, tmp_path, monkeypatch):
    import numpy as np

    from host.build.rkllm import rkllm_logits
    from host.export import export

    monkeypatch.setenv("FAKE_RKLLM_FLOAT_LOGITS", "0")  # synthetic logits: this test is about the plumbing
    export(llm_recipe, "rk3588", root=tmp_path / "art", progress=False)
    art = tmp_path / "art" / "smollm2-135m-instruct" / "rk3588" / "w8a8"
    before = len(calls(fake_tk))
    out = rkllm_logits(art, [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]], out=tmp_path / "q" / "logits.npy")
    arr = np.load(out)
    assert arr.shape == (2, 5, 49152) and arr.dtype == np.float32
    new = calls(fake_tk)[before:]
    assert [c["call"] for c in new] == ["__init__", "load_huggingface", "build", "get_logits", "get_logits"]
    assert new[2]["kwargs"]["quantized_dtype"] == "w8a8" and new[2]["kwargs"]["num_npu_core"] == 3
    # the vendor's documented call: {"input_ids": LongTensor[1, n]} → a tensor [1, n, vocab]
    assert [c["kwargs"] for c in new[3:]] == [{"input_ids": "torch.int64[1, 5]"}] * 2
    assert [c["ret"] for c in new[3:]] == ["torch.float32[1, 5, 49152]"] * 2
    monkeypatch.setenv("FAKE_RKLLM_FAIL", "get_logits:raise")
    with pytest.raises(BuildError, match="get_logits raised RuntimeError"):
        rkllm_logits(art, [[1, 2, 3]], out=tmp_path / "q2" / "logits.npy")
    assert not (tmp_path / "q2" / "logits.npy").exists()


def test_toolkit_lm_gives_measured_logprobs_close_to_float(fake_tk, llm_recipe, llm_dir, tmp_path):
    """The quality hook: a built artifact's quantized-model log-probs (here: float + the double's noise)."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    from host.build.rkllm import RkllmToolkitLm
    from host.export import export

    export(llm_recipe, "rk3588", root=tmp_path / "art", progress=False)
    art = tmp_path / "art" / "smollm2-135m-instruct" / "rk3588" / "w8a8"
    windows = [np.arange(100, 132, dtype=np.int64), np.arange(500, 532, dtype=np.int64)]
    lm = RkllmToolkitLm(art, windows)
    assert lm.backend == "rkllm-toolkit 1.3.0 (test double)"
    model = AutoModelForCausalLM.from_pretrained(str(llm_dir), dtype=torch.float32).eval()
    for w in windows:
        lp = lm.logprobs(w)
        assert lp.shape == (32, 49152)
        np.testing.assert_allclose(np.exp(lp).sum(-1), 1.0, rtol=1e-6)
        with torch.no_grad():
            ref = torch.log_softmax(model(torch.tensor(w[None])).logits[0].double(), -1).numpy()
        assert (lp.argmax(-1) == ref.argmax(-1)).mean() > 0.8  # small perturbation of the float model
    lm.close()
    assert not lm.path.exists()


# --- the double itself enforces the documented constraints --------------------------------------

@pytest.fixture
def fake_api(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(FAKE_DIR))
    monkeypatch.setenv("FAKE_RKLLM_RECORD", str(tmp_path / "direct.jsonl"))
    for mod in ("rkllm", "rkllm.api"):
        sys.modules.pop(mod, None)
    import rkllm.api

    yield rkllm.api
    for mod in ("rkllm", "rkllm.api"):
        sys.modules.pop(mod, None)


OK = dict(quantized_dtype="w8a8", quantized_algorithm="normal", target_platform="RK3588", num_npu_core=3,
          optimization_level=0, max_context=4096, hybrid_rate=0.0)


@pytest.mark.parametrize("change,msg", [
    ({"quantized_dtype": "w4a16"}, "not supported on rk3588"),
    ({"target_platform": "RK3576", "num_npu_core": 3}, "num_npu_core 3 out of range for rk3576"),
    ({"num_npu_core": 0}, "out of range"),
    ({"max_context": 4100}, "multiple of 32"),
    ({"max_context": 16416}, "<= 16384"),
    ({"quantized_algorithm": "grq"}, "only works with w4a16"),
    ({"target_platform": "RK3576", "num_npu_core": 2, "quantized_dtype": "w4a16", "quantized_algorithm": "grq"},
     "needs a GPU"),
    ({"target_platform": "RK3576", "num_npu_core": 2, "quantized_dtype": "w4a16_g128"}, "group size 128 does not divide"),
    ({"quantized_algorithm": "gdq"}, "removed in 1.3.0"),
    ({"hybrid_rate": 1.0}, "hybrid_rate"),
    ({"optimization_level": 2}, "optimization_level"),
    ({"dataset": "BAD"}, "keys input, target"),
    ({"target_platform": "RK3566"}, "not supported"),
])
def test_fake_toolkit_enforces_documented_constraints(change, msg, fake_api, llm_dir, calib, tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"prompt": "x"}]))
    llm = fake_api.RKLLM()
    assert llm.load_huggingface(model=str(llm_dir), device="cpu") == 0
    kw = dict(OK, dataset=str(calib))
    kw.update({k: (str(bad) if v == "BAD" else v) for k, v in change.items()})
    assert llm.build(**kw) == -1
    assert msg in capsys.readouterr().out
    assert llm.export_rkllm(str(tmp_path / "x.rkllm")) == -1  # nothing built
    assert llm.build(**dict(OK, dataset=str(calib))) == 0
    assert llm.export_rkllm(str(tmp_path / "x.rkllm")) == 0


def test_worker_and_double_run_on_the_toolkits_pythons():
    """The worker runs inside the toolkit venv (CPython 3.9-3.12): no newer syntax, stdlib + rkllm only."""
    files = [ROOT / "host/workers/rkllm_worker.py", FAKE_DIR / "rkllm" / "api.py", FAKE_DIR / "rkllm" / "__init__.py"]
    vermin = Path(sys.executable).with_name("vermin")
    res = subprocess.run([str(vermin), "-q", "--no-tips", "--violations", "-t=3.9-", *map(str, files)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    src = files[0].read_text()
    assert "import host" not in src and "from host" not in src


# --- get_logits: the documented call, and only that ----------------------------------------------

@pytest.fixture
def built_llm(fake_api, llm_dir, calib):
    llm = fake_api.RKLLM()
    assert llm.load_huggingface(model=str(llm_dir), device="cpu") == 0
    assert llm.build(**dict(OK, dataset=str(calib))) == 0
    return llm


def test_fake_get_logits_takes_the_documented_input(built_llm, monkeypatch):
    """{"input_ids": LongTensor[1, n]} (+ other HF keys, ignored) → float32 tensor [1, n, vocab], as the SDK shows."""
    import torch

    monkeypatch.setenv("FAKE_RKLLM_FLOAT_LOGITS", "0")
    ids = torch.tensor([[1, 2, 3, 4]], dtype=torch.long)
    out = built_llm.get_logits({"input_ids": ids})
    assert torch.is_tensor(out) and out.dtype == torch.float32 and tuple(out.shape) == (1, 4, 49152)
    assert out[:, :-1, :].shape == (1, 3, 49152)  # the SDK example's shift_logits
    again = built_llm.get_logits({"input_ids": ids, "attention_mask": torch.ones_like(ids), "top_k": 1})
    assert torch.equal(out, again)


@pytest.mark.parametrize("make,says", [
    (lambda t: [1, 2, 3, 4], "inputs must be a dict of Hugging Face model inputs like {'input_ids': "
                             "LongTensor[1, n]}, got list[4]"),
    (lambda t: {"input_ids": [1, 2, 3, 4]}, "input_ids must be a torch tensor"),
    (lambda t: {"ids": t.tensor([[1, 2]])}, "inputs has no 'input_ids' (keys: ids)"),
    (lambda t: {"input_ids": t.tensor([1, 2, 3, 4])}, "must be 2-D [batch, n] with n >= 1, got shape [4]"),
    (lambda t: {"input_ids": t.tensor([[1.0, 2.0]])}, "must be an integer tensor (torch.int64), got torch.float32"),
    (lambda t: {"input_ids": t.zeros((1, 0), dtype=t.long)}, "got shape [1, 0]"),
    (lambda t: {"input_ids": t.tensor([[1, 49152]])}, "out of range for vocab_size 49152"),
    (lambda t: {"input_ids": __import__("numpy").array([[1, 2]])}, "must be a torch tensor"),
])
def test_fake_get_logits_refuses_anything_else_with_the_documented_failure(make, says, built_llm, capsys):
    import torch

    assert built_llm.get_logits(make(torch)) is None  # the SDK's failure value: `if lm_logits is None`
    out = capsys.readouterr().out
    assert out.startswith("E rkllm: get_logits: ") and says in out, out


def test_worker_calls_get_logits_as_documented(fake_tk, llm_recipe, tmp_path, monkeypatch):
    """The worker hands the toolkit {"input_ids": LongTensor[1, n]}; a toolkit answer of another shape,
    or None, fails the run with the reason (no logits file)."""
    import numpy as np

    from host.build.rkllm import rkllm_logits
    from host.export import export

    monkeypatch.setenv("FAKE_RKLLM_FLOAT_LOGITS", "0")
    export(llm_recipe, "rk3588", root=tmp_path / "art", progress=False)
    art = tmp_path / "art" / "smollm2-135m-instruct" / "rk3588" / "w8a8"
    out = rkllm_logits(art, [[5, 6, 7]], out=tmp_path / "ok" / "logits.npy")
    assert np.load(out).shape == (1, 3, 49152)
    with pytest.raises(BuildError, match=r"token windows must be non-empty"):
        rkllm_logits(art, [[]], out=tmp_path / "e" / "logits.npy")
    with pytest.raises(BuildError, match=r"get_logits returned None .*toolkit said: E rkllm: get_logits: input_ids out "
                                         r"of range for vocab_size 49152"):
        rkllm_logits(art, [[1, 99999]], out=tmp_path / "none" / "logits.npy")
    assert not (tmp_path / "none" / "logits.npy").exists()


# --- a test double stays labelled as one ---------------------------------------------------------

def test_double_is_labelled_in_manifest_inputs_and_quality_rows_and_a_vendor_install_is_not(
        fake_tk, llm_recipe, tmp_path, monkeypatch):
    """Nothing records a flag: install_fake_toolkit writes no test_double field; the label comes from the
    marker the double's package carries (toolkit_info scans it, the worker reads it from the module)."""
    from host.build.rkllm import RkllmToolkitLm
    from host.export import export
    from host.manifest import read_manifest
    from host.toolkits import INFO_FILE, toolkit_info

    venvs = tmp_path / "venvs"
    assert "test_double" not in json.loads((venvs / "rkllm" / INFO_FILE).read_text())
    assert toolkit_info("rkllm")["test_double"] is True
    monkeypatch.setenv("FAKE_RKLLM_FLOAT_LOGITS", "0")
    art = tmp_path / "art"
    (first,) = export(llm_recipe, "rk3588", root=art, progress=False).results
    folder = art / "smollm2-135m-instruct" / "rk3588" / "w8a8"
    assert read_manifest(folder).toolkit["test_double"] is True
    assert "TEST DOUBLE" in Path(read_manifest(folder).to_dict()["build_log"]).read_text()
    lm = RkllmToolkitLm(folder, [[1, 2, 3]])
    assert lm.backend == "rkllm-toolkit 1.3.0 (test double)"
    lm.close()

    # the same version of "the vendor's" toolkit (the double without its marker): not labelled, and the
    # double's artifact is not "up to date" for it (the inputs hash differs), so it is rebuilt
    install_fake_toolkit(venvs, "1.3.0", marked=False)
    assert toolkit_info("rkllm")["test_double"] is False
    (second,) = export(llm_recipe, "rk3588", root=art, progress=False).results
    assert second.status == "built" and second.inputs_hash != first.inputs_hash
    assert read_manifest(folder).toolkit == {"name": "rkllm-toolkit", "version": "1.3.0", "test_double": False}
    lm = RkllmToolkitLm(folder, [[1, 2, 3]])
    assert lm.backend == "rkllm-toolkit 1.3.0"
    lm.close()


def test_installed_test_double_scans_the_package_not_a_flag(tmp_path):
    from host.toolkits import installed_test_double

    site = tmp_path / "v" / "lib" / "python3.11" / "site-packages" / "rkllm"
    site.mkdir(parents=True)
    (site / "__init__.py").write_text('"""RKDEPLOY_TEST_DOUBLE = in a docstring does not count"""\nX = 1\n')
    assert not installed_test_double(tmp_path / "v", "rkllm.api")
    (site / "__init__.py").write_text((FAKE_DIR / "rkllm" / "__init__.py").read_text())
    assert installed_test_double(tmp_path / "v", "rkllm.api")
    assert not installed_test_double(tmp_path / "none", "rkllm.api")
