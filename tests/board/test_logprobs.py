"""``python3 -m board logprobs`` and the backends' ``logprobs(ids)``: inputs checked with one-line errors;
the rkllm binding gets logits through RKLLM_INFER_GET_LOGITS (from the shim: made-up numbers, labelled so);
rknnlite says log-probs do not apply to encoders."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from board.backends import BackendError
from board.logprobs import LogprobsError, read_windows
from board.testing.artifacts import write_fake_artifact
from tests.conftest import ROOT


def _board(*args, stdin: str = ""):
    return subprocess.run([sys.executable, "-m", "board", "logprobs", *args], input=stdin, capture_output=True,
                          text=True, cwd=ROOT, timeout=60)


@pytest.mark.parametrize("text, says", [
    ("nope", "not JSON"), ("[]", "non-empty list"), ("[[1, -2]]", "not a token id"), ("[[1, true]]", "not a token id"),
    ("[[1, 2], [3]]", "one length"),
])
def test_windows_are_checked(text, says):
    with pytest.raises(LogprobsError, match=says):
        read_windows(text, "ids.json")


def test_non_llm_and_missing_artifacts_get_one_line(tmp_path):
    enc = write_fake_artifact(str(tmp_path / "enc"), model_kind="encoder", encode_ms=1)
    r = _board("--artifact", enc, "--ids", "-", "--out", str(tmp_path / "o.f16"), stdin="[[1, 2, 3]]")
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "not an LLM artifact" in r.stderr, r.stderr
    r = _board("--artifact", str(tmp_path / "gone"), "--ids", "-", "--out", str(tmp_path / "o.f16"), stdin="[[1]]")
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "does not exist" in r.stderr, r.stderr
    r = _board("--artifact", enc, "--ids", str(tmp_path / "none.json"), "--out", str(tmp_path / "o.f16"))
    assert r.returncode == 1 and "--ids" in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert not (tmp_path / "o.f16").exists()


def test_rknnlite_says_logprobs_do_not_apply():
    from board.backends.rknnlite import RknnLiteBackend

    with pytest.raises(BackendError, match="encoder .rknn .*do not apply"):
        RknnLiteBackend().logprobs([1, 2, 3])


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc for the librkllmrt shim")
def test_rkllm_logits_through_the_binding_are_labelled_shim_output(tmp_path, monkeypatch):
    import numpy as np

    from board.backends.rkllm import RkllmBackend
    from board.testing.rkllm import build_shim, write_rkllm_artifact

    lib = build_shim(str(tmp_path / "shim"), "1.3.0")
    art = write_rkllm_artifact(str(tmp_path / "art"), "1.3.0")
    monkeypatch.setenv("RKLLM_SHIM_PREFILL_MS", "1")
    monkeypatch.setenv("RKLLM_SHIM_VOCAB", "64")
    manifest = json.loads((tmp_path / "art" / "manifest.json").read_text())
    be = RkllmBackend()
    be.load(art, {"manifest": manifest, "rkllm_lib": lib, "rkllm_log": str(tmp_path / "rt.log")})
    try:
        ids = [5, 9, 13, 40]
        lp = be.logprobs(ids)
        assert lp.shape == (4, 64)
        np.testing.assert_allclose(np.exp(lp).sum(-1), 1.0, rtol=1e-5)
        assert list(lp.argmax(-1)) == [(t * 31 + 7) % 64 for t in ids]   # the shim's made-up rule
        assert "shim output" in be.info()["logits"]
    finally:
        be.close()
