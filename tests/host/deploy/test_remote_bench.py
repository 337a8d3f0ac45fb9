"""Remote bench and doctor over a real sshd: rows like the local bench, board name, lock, doctor."""

from __future__ import annotations

import fcntl
import json
import os
import threading
import time

import pytest

from board.testing.artifacts import write_fake_artifact
from host.bench import BenchParams, bench_local
from host.deploy.remote_bench import bench_boards, doctor_boards, doctor_table
from host.deploy.ssh import SshTransport
from host.errors import DeployError
from host.results import ResultStore
from host.testing.deploy import board_for, rehash_manifest
from host.testing.sshd import sshd_available
from tests.conftest import DEFAULT_RECIPE

pytestmark = pytest.mark.skipif(not sshd_available(), reason="needs OpenSSH sshd (apt install openssh-server)")
LLM = "smollm2-135m-instruct"
ENC = "all-minilm-l6-v2"
QUICK = BenchParams(n_prompt=16, n_gen=4, reps=2, warmup=0)


@pytest.fixture
def root(tmp_path):
    root = tmp_path / "artifacts"
    for scheme, kw in (("int8", {"prefill_ms": 10, "token_ms": 2}), ("fp32", {"prefill_ms": 20, "token_ms": 4})):
        rehash_manifest(write_fake_artifact(str(root / LLM / "rk3576" / scheme), model=LLM, target="rk3576",
                                            scheme=scheme, **kw))
    rehash_manifest(write_fake_artifact(str(root / ENC / "rk3576" / "int8-dyn"), model_kind="encoder", encode_ms=2,
                                        model=ENC, target="rk3576", scheme="int8-dyn"))
    return root


def _transport(known):
    return lambda b: SshTransport(b, known_hosts=[known])


def test_remote_bench_rows_match_local_bench_with_board_name(sshd, known, root, tmp_path):
    board = board_for(sshd, workdir=tmp_path / "wd")
    seen: list[str] = []
    out = bench_boards([board], recipe=DEFAULT_RECIPE, target="rk3576", params=QUICK, store=tmp_path / "r.sqlite",
                       artifacts_root=root, transport=_transport(known), log=seen.append)
    rows = out["local-ssh"].rows
    assert sorted(r.scheme for r in rows) == ["fp32", "int8", "int8-dyn"]
    assert all(r.status == "ok" and r.board == "local-ssh" and r.backend == "fake" for r in rows), rows
    local = bench_local(recipe=DEFAULT_RECIPE, target="rk3576", params=QUICK, store=tmp_path / "l.sqlite",
                        artifacts_root=root, log=lambda m: None).rows
    assert {k for r in rows for k, v in r.to_dict().items() if v is not None} == \
        {k for r in local for k, v in r.to_dict().items() if v is not None}
    assert all(any(c["name"] for c in r.env["doctor"]) for r in rows)  # doctor recorded with the run
    with ResultStore(tmp_path / "r.sqlite") as s:
        assert [r.to_dict() for r in s.rows(board="local-ssh")] == [r.to_dict() for r in rows]
    saved = list((tmp_path / "doctor").glob("local-ssh-*.json"))
    assert len(saved) == 1 and json.loads(saved[0].read_text())["checks"]
    assert any("pushed" in s for s in seen)


def _hold_lock(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.pwrite(fd, b"pid 4242 since test", 0)
    return fd


def test_busy_board_fails_at_once_with_no_wait(sshd, known, root, tmp_path):
    board = board_for(sshd, workdir=tmp_path / "wd")
    fd = _hold_lock(tmp_path / "wd" / ".bench.lock")
    try:
        t0 = time.monotonic()
        with pytest.raises(DeployError, match=r"busy: another benchmark holds .*\.bench\.lock"):
            bench_boards([board], recipe=DEFAULT_RECIPE, target="rk3576", params=QUICK, store=tmp_path / "r.sqlite",
                         artifacts_root=root, transport=_transport(known), wait=False, log=lambda m: None)
        assert time.monotonic() - t0 < 15
    finally:
        os.close(fd)


def test_second_benchmark_waits_for_the_lock(sshd, known, root, tmp_path):
    board = board_for(sshd, workdir=tmp_path / "wd")
    fd = _hold_lock(tmp_path / "wd" / ".bench.lock")
    seen: list[str] = []
    released: list[float] = []

    def log(msg: str) -> None:  # the other benchmark finishes a moment after we said we wait
        seen.append(msg)
        if "waiting" in msg and not released:
            released.append(time.monotonic())
            threading.Timer(0.5, os.close, args=(fd,)).start()

    try:
        out = bench_boards([board], recipe=DEFAULT_RECIPE, target="rk3576", params=QUICK,
                           store=tmp_path / "r.sqlite", artifacts_root=root, transport=_transport(known), log=log)
    finally:
        if not released:
            os.close(fd)
    assert any("waiting" in s and "pid 4242" in s for s in seen), seen
    assert len(out["local-ssh"].rows) == 3 and all(r.status == "ok" for r in out["local-ssh"].rows)


def test_doctor_on_boards_one_table(sshd, known, tmp_path):
    good = board_for(sshd, workdir=tmp_path / "wd")
    bad = board_for(sshd, name="gone", host="127.0.0.2", port=1)
    reports = doctor_boards([good, bad], transport=_transport(known))
    assert reports[0].error is None and {c["status"] for c in reports[0].checks} <= {"ok", "warn", "fail", "skip"}
    assert "127.0.0.2:1" in reports[1].error
    assert len(doctor_table(reports).rows) == len(reports[0].checks) + 1
