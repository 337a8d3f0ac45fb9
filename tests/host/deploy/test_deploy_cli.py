"""The deploy commands end to end, as a user runs them, against the test sshd (``local-ssh``)."""

from __future__ import annotations

import json
import time

import pytest

from board.testing.artifacts import write_fake_artifact
from host.testing.deploy import rehash_manifest
from host.testing.sshd import TestSshd, sshd_available
from tests.conftest import run_cli

pytestmark = [pytest.mark.real,  # starts its own sshd
              pytest.mark.skipif(not sshd_available(), reason="needs OpenSSH sshd (apt install openssh-server)")]
LLM = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    d = tmp_path_factory.mktemp("deploycli")
    root = d / "artifacts"
    for scheme in ("int8", "fp32"):
        rehash_manifest(write_fake_artifact(str(root / LLM / "rk3588" / scheme), model=LLM, target="rk3588",
                                            scheme=scheme, prefill_ms=5, token_ms=1))
    with TestSshd.start(d / "sshd") as sshd:
        yield {"RKDEPLOY_INVENTORY": str(sshd.write_inventory(d / "boards.yaml", workdir=str(d / "wd"))),
               "RKDEPLOY_KNOWN_HOSTS": str(d / "known_hosts"), "RKDEPLOY_ARTIFACTS": str(root),
               "RKDEPLOY_RESULTS": str(d / "results" / "r.sqlite"), "SSH_AUTH_SOCK": "", "_dir": str(d)}


def test_trust_push_twice_doctor_bench(env):
    r = run_cli("boards", "list", env=env)
    assert r.returncode == 0 and "local-ssh" in r.stdout and "unknown" in r.stdout, r.stderr

    r = run_cli("push", "--boards", "local-ssh", "--target", "rk3588", env=env)
    assert r.returncode == 1 and "rkdeploy boards trust local-ssh" in r.stdout + r.stderr and "SHA256:" in r.stdout

    r = run_cli("boards", "trust", "local-ssh", env=env)
    assert r.returncode == 0 and "recorded host key SHA256:" in r.stdout, r.stderr

    r = run_cli("push", "--boards", "local-ssh", "--target", "rk3588", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "local-ssh" in r.stdout and "ok" in r.stdout and "skip (not built" in r.stderr

    t0 = time.monotonic()
    r = run_cli("push", "--boards", "local", "--target", "rk3588", env=env)
    elapsed = time.monotonic() - t0
    assert r.returncode == 0, r.stdout + r.stderr
    line = next(ln for ln in r.stdout.splitlines() if "local-ssh" in ln)
    assert "0.0 MiB" in line.split("│")[2], line  # sent
    assert elapsed < 35, elapsed  # order of magnitude; the push goal (< 2 s) is measured by bench/speed_goals.py

    r = run_cli("doctor", "--boards", "local-ssh", env=env)
    assert r.returncode == 0 and "board doctor" in r.stdout, r.stdout + r.stderr

    r = run_cli("bench", "--boards", "local-ssh", "--target", "rk3588", "--reps", "2", "--n-prompt", "8",
                "--n-gen", "4", "--warmup", "0", env=env)
    assert r.returncode == 0 and "2 ok" in r.stderr + r.stdout, r.stdout + r.stderr
    r = run_cli("report", "--format", "csv", env=env)
    assert r.returncode == 0 and r.stdout.count("local-ssh") == 2, r.stdout

    # The same benchmark here: the rows over SSH carry exactly the local rows' fields, board name set.
    r = run_cli("bench", "--target", "rk3588", "--reps", "2", "--n-prompt", "8", "--n-gen", "4", "--warmup", "0",
                env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    r = run_cli("report", "--format", "jsonl", env=env)
    rows = [json.loads(ln) for ln in r.stdout.splitlines() if ln.strip()]
    remote = [x for x in rows if x["board"] == "local-ssh"]
    local = [x for x in rows if x["board"] != "local-ssh"]
    assert len(remote) == 2 and len(local) == 2, rows
    assert all(x["status"] == "ok" for x in rows), rows
    fields = [{k for k, v in x.items() if v is not None} for x in rows]
    assert all(f == fields[0] for f in fields), fields


def test_target_must_match_board_soc(env):
    r = run_cli("push", "--boards", "local-ssh", "--target", "rk3576", env=env)
    assert r.returncode == 1 and "does not match the boards' soc (local-ssh is rk3588)" in r.stderr


def test_unknown_board_is_a_config_error(env):
    r = run_cli("push", "--boards", "nope", "--target", "rk3588", env=env)
    assert r.returncode == 1 and "no such board or group" in r.stderr and "local-ssh" in r.stderr
