"""Hostile conditions for push against a real sshd: overlapping pushes killed at random, one board under
two names, corrupt blobs, a stopped receiver / sshd child (stall deadline), a push waiting on a stopped one."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from host.deploy.push import artifact_dir, push_board, push_boards, runner_dir
from host.deploy.ssh import SshTransport, StalledError
from host.errors import DeployError
from host.testing.deploy import blob_problems, board_for, push_artifacts, receiver_pids, write_artifact
from host.testing.sshd import sshd_available

pytestmark = pytest.mark.skipif(not sshd_available(), reason="needs OpenSSH sshd (apt install openssh-server)")
MiB = 1 << 20
from tests.conftest import ROOT  # noqa: E402

STALL = 3.0


def _tree(base: Path) -> dict[str, str]:
    return {p.relative_to(base).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(base.rglob("*")) if p.is_file() and "__pycache__" not in p.parts}


def _wait_gone(workdir: Path, timeout: float = 15.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while receiver_pids(workdir) and time.monotonic() < deadline:
        time.sleep(0.1)
    return receiver_pids(workdir)


@pytest.fixture
def big(tmp_path):
    root = tmp_path / "artifacts"
    folder = write_artifact(root / "big" / "rk3588" / "fp16", {"weights.bin": os.urandom(64 * MiB)})
    return root, folder


def _stopper(pids_of, after: int, stopped: list[int], when: list[float]):
    seen = [0]

    def on_bytes(n: int) -> None:
        seen[0] += n
        if seen[0] >= after and not stopped:
            pids = pids_of()
            assert pids, "nothing to stop"
            for pid in pids:
                os.kill(pid, signal.SIGSTOP)
            stopped.extend(pids)
            when.append(time.monotonic())

    return on_bytes


@pytest.mark.parametrize("system_ssh", [True, False], ids=["openssh", "paramiko"])
def test_stopped_receiver_fails_within_the_deadline_then_resumes(sshd, known, tmp_path, big, system_ssh):
    root, folder = big
    wd = tmp_path / "wd"
    board = board_for(sshd, workdir=wd)
    stopped: list[int] = []
    when: list[float] = []
    try:
        with SshTransport(board, known_hosts=[known], stall_timeout=STALL, use_system_ssh=system_ssh) as t, \
                pytest.raises(StalledError) as ei:
            push_board(t, [artifact_dir(folder, root)],
                       on_bytes=_stopper(lambda: receiver_pids(wd), 8 * MiB, stopped, when))
        waited = time.monotonic() - when[0]
    finally:
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
    msg = str(ei.value)
    assert msg.startswith("board local-ssh stopped answering (no progress for 3 s) while sending weights.bin"), msg
    assert STALL - 0.5 <= waited < STALL + 8, waited   # the deadline counts from the last progress
    assert _wait_gone(wd) == []  # woken up, the receiver sees the end of its stream and exits
    partial = next((wd / "blobs").glob(".partial-*"))
    have = partial.stat().st_size
    assert have > 0
    with SshTransport(board, known_hosts=[known], stall_timeout=STALL, use_system_ssh=system_ssh) as t:
        res = push_board(t, [artifact_dir(folder, root)])
    assert res.ok and res.skipped >= have
    assert _tree(wd / "artifacts/big/rk3588/fp16") == _tree(folder)
    assert blob_problems(wd) == []


def test_stopped_sshd_child_fails_within_the_deadline(sshd, known, tmp_path, big):
    root, folder = big
    wd = tmp_path / "wd"
    stopped: list[int] = []
    when: list[float] = []
    t0 = time.monotonic()
    try:
        with SshTransport(board_for(sshd, workdir=wd), known_hosts=[known], stall_timeout=STALL) as t, \
                pytest.raises(StalledError, match=r"^board local-ssh stopped answering \(no progress for 3 s\)"):
            push_board(t, [artifact_dir(folder, root)], on_bytes=_stopper(sshd.session_pids, 8 * MiB, stopped, when))
        waited = time.monotonic() - when[0]
    finally:
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
    # the deadline counts from the last progress, which can be a little before the stop was sent
    assert STALL - 0.5 <= waited < STALL + 8, (waited, time.monotonic() - t0)
    assert _wait_gone(wd) == []
    with SshTransport(board_for(sshd, workdir=wd), known_hosts=[known]) as t:
        assert push_board(t, [artifact_dir(folder, root)]).ok
    assert _tree(wd / "artifacts/big/rk3588/fp16") == _tree(folder)


def test_push_behind_a_stopped_push_says_who_holds_the_blob(sshd, known, tmp_path, big):
    root, folder = big
    wd = tmp_path / "wd"
    board = board_for(sshd, workdir=wd)
    stopped: list[int] = []
    try:
        with SshTransport(board, known_hosts=[known], stall_timeout=STALL) as t, pytest.raises(StalledError):
            push_board(t, [artifact_dir(folder, root)], on_bytes=_stopper(lambda: receiver_pids(wd), 8 * MiB, stopped, []))
        # The stopped receiver still holds weights.bin's lock: a second push waits, sees no progress, says so.
        t0 = time.monotonic()
        with SshTransport(board, known_hosts=[known], stall_timeout=STALL) as t, pytest.raises(DeployError) as ei:
            push_board(t, [artifact_dir(folder, root)])
        assert time.monotonic() - t0 < STALL + 10
        assert f"another push to this board (pid {stopped[0]} since" in str(ei.value)
        assert "holds weights.bin and made no progress for 3 s" in str(ei.value)
    finally:
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
    assert _wait_gone(wd) == []
    with SshTransport(board, known_hosts=[known]) as t:
        assert push_board(t, [artifact_dir(folder, root)]).ok
    assert _tree(wd / "artifacts/big/rk3588/fp16") == _tree(folder)


def test_one_board_under_two_names_pushed_at_once(sshd, known, tmp_path, big):
    root, folder = big
    wd = tmp_path / "wd"
    boards = [board_for(sshd, name="alias-a", workdir=wd), board_for(sshd, name="alias-b", workdir=wd)]
    dirs = [runner_dir(), artifact_dir(folder, root)]
    results = push_boards(boards, dirs, jobs=2, show_progress=False,
                          transport=lambda b: SshTransport(b, known_hosts=[known]))
    assert all(r.ok for r in results), [r.status for r in results]
    total = sum(f.size for d in dirs for f in d.files.values())
    # One of them waited for the other's copy of each blob instead of writing it a second time.
    assert sum(r.sent for r in results) < 1.5 * total, [(r.sent, r.notes) for r in results]
    assert _tree(wd / "artifacts/big/rk3588/fp16") == _tree(folder)
    assert blob_problems(wd) == []


def test_corrupt_blob_is_quarantined_resent_and_the_row_says_so(sshd, known, tmp_path):
    root = tmp_path / "artifacts"
    data = os.urandom(6 * MiB)
    folder = write_artifact(root / "m" / "rk3588" / "fp16", {"w.bin": data, "t.json": b"{}"})
    wd = tmp_path / "wd"
    board = board_for(sshd, workdir=wd)
    with SshTransport(board, known_hosts=[known]) as t:
        push_board(t, [artifact_dir(folder, root)])
    sha = hashlib.sha256(data).hexdigest()
    blob = wd / "blobs" / sha
    cache = json.loads((wd / "blobs" / ".verified.json").read_text())
    st = blob.stat()
    assert cache[sha] == [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns]  # verified once, by inode/mtime

    verified = (wd / "blobs" / ".verified.json").stat().st_mtime_ns
    with SshTransport(board, known_hosts=[known]) as t:  # unchanged: nothing sent, nothing re-hashed
        again = push_board(t, [artifact_dir(folder, root)])
    assert again.sent == 0 and again.notes == []
    assert (wd / "blobs" / ".verified.json").stat().st_mtime_ns == verified  # a hash would have been recorded

    os.truncate(blob, 4 * MiB)  # what the old overlapping pushes did: a truncated blob under its final name
    with SshTransport(board, known_hosts=[known]) as t:
        res = push_board(t, [artifact_dir(folder, root)])
    assert res.ok and res.sent == len(data)
    assert len(res.notes) == 1 and res.notes[0].startswith(
        f"w.bin: corrupt copy on the board ({4 * MiB} bytes instead of {len(data)}) moved to blobs/.quarantine/{sha}.")
    assert (wd / "artifacts/m/rk3588/fp16/w.bin").read_bytes() == data
    assert [p.stat().st_size for p in (wd / "blobs" / ".quarantine").iterdir()] == [4 * MiB]

    # Same size, other bytes (mtime moves): the cache no longer vouches for it; found and replaced.
    with open(blob, "r+b") as f:
        f.write(b"\0" * 4096)
    with SshTransport(board, known_hosts=[known]) as t:
        res = push_board(t, [artifact_dir(folder, root)])
    assert res.ok and "sha256" in res.notes[0] and "instead of" in res.notes[0]
    assert (wd / "artifacts/m/rk3588/fp16/w.bin").read_bytes() == data
    assert blob_problems(wd) == []


class _ForkedPush:
    """A push in a forked copy of this process (everything already imported: starts at once); SIGKILL-able."""

    def __init__(self, *args):
        self.r, w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:  # the child: push, write the rows, leave without running any cleanup of pytest's
            code = 3
            try:
                os.close(self.r)
                rows = push_artifacts(*args)
                os.write(w, json.dumps([dataclasses.asdict(r) for r in rows]).encode())
                code = 0 if all(r.ok for r in rows) else 1
            except BaseException as e:  # noqa: BLE001 - reported to the parent
                os.write(w, repr(e).encode())
            finally:
                os._exit(code)
        os.close(w)
        self.rc: int | None = None

    def poll(self) -> int | None:
        if self.rc is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.rc = os.waitstatus_to_exitcode(status)
        return self.rc

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)

    def wait(self, timeout: float = 120) -> tuple[int, str]:
        deadline = time.monotonic() + timeout
        while self.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        if self.rc is None:
            self.kill()
            raise AssertionError(f"push {self.pid} did not end within {timeout} s")
        with os.fdopen(self.r) as f:
            return self.rc, f.read()


def test_overlapping_pushes_killed_at_random_leave_every_blob_intact(sshd, known, tmp_path):
    """Start push A, start an identical push B shortly after, SIGKILL one of them at a random point; the other
    must succeed, and every blob on the board must hash to its name. Then a later push repairs anything."""
    root = tmp_path / "artifacts"
    folders = [write_artifact(root / "m" / "rk3588" / "fp16", {"model.onnx": os.urandom(24 * MiB), "t.json": b"{}"}),
               write_artifact(root / "m" / "rk3588" / "int8", {"model.onnx": os.urandom(8 * MiB)})]
    wd = tmp_path / "wd"
    inv = sshd.write_inventory(tmp_path / "boards.yaml", workdir=str(wd))
    rng = random.Random(int(os.environ.get("RKDEPLOY_TEST_SEED", "11")))
    big_blobs = [json.loads((f / "manifest.json").read_text())["files"]["model.onnx"]["sha256"] for f in folders]
    overlapped, i = 0, -1
    # At least 10 rounds, and on until 5 of them had both pushes on the board at once (on a loaded machine
    # push B may start only after A finished): the kill lands in an overlap often enough to mean something.
    while (i := i + 1) < 10 or (overlapped < 5 and i < 40):
        for sha in big_blobs:  # make each round send something: drop finished blobs (partials stay)
            if rng.random() < 0.8:
                (wd / "blobs" / sha).unlink(missing_ok=True)
        a = _ForkedPush(inv, "all", root, "rk3588", known, 10.0)
        time.sleep(rng.uniform(0.0, 0.5))
        b = _ForkedPush(inv, "all", root, "rk3588", known, 10.0)
        deadline = time.monotonic() + 10  # until both have a receiver on the board (or one is done)
        while len(receiver_pids(wd)) < 2 and a.poll() is None and b.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        overlapped += len(receiver_pids(wd)) >= 2
        victim, other = (a, b) if rng.random() < 0.5 else (b, a)
        time.sleep(rng.uniform(0.0, 0.8))
        victim.kill()
        victim.wait()
        rc, out = other.wait()
        assert rc == 0, f"round {i}: {out}"
        assert blob_problems(wd) == [], f"round {i}"
        assert not (wd / "blobs" / ".quarantine").exists(), f"round {i}: a push found a corrupt blob"
        for f in folders:
            assert _tree(wd / "artifacts/m/rk3588" / f.name) == _tree(f), f"round {i}"
    assert _wait_gone(wd) == []
    assert overlapped >= 5, f"only {overlapped} of {i} rounds had both pushes on the board at once"

    # Whatever is left (partials of killed pushes, a missing blob, a damaged one), the next push repairs it.
    (wd / "blobs" / big_blobs[0]).unlink(missing_ok=True)
    with contextlib.suppress(FileNotFoundError):
        os.truncate(wd / "blobs" / big_blobs[1], MiB)
    r = subprocess.run([sys.executable, "-m", "host.testing.deploy", "push", str(inv), "all", str(root), "rk3588",
                        str(known)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert blob_problems(wd) == []
    for f in folders:
        assert _tree(wd / "artifacts/m/rk3588" / f.name) == _tree(f)


def test_killed_pushes_leave_no_known_hosts_file(sshd, known, tmp_path):
    root = tmp_path / "artifacts"
    write_artifact(root / "big" / "rk3588" / "fp16", {"weights.bin": os.urandom(32 * MiB)})
    wd = tmp_path / "wd"
    inv = sshd.write_inventory(tmp_path / "boards.yaml", workdir=str(wd))
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    p = subprocess.Popen([sys.executable, "-m", "host.testing.deploy", "push", str(inv), "all", str(root), "rk3588",
                          str(known)], cwd=ROOT, env={**os.environ, "TMPDIR": str(tmpdir)},
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not receiver_pids(wd) and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.2)
    p.kill()  # SIGKILL: no exit path of ours runs
    p.wait()
    assert _wait_gone(wd) == []
    r = subprocess.run([sys.executable, "-m", "host.testing.deploy", "push", str(inv), "all", str(root), "rk3588",
                        str(known)], cwd=ROOT, env={**os.environ, "TMPDIR": str(tmpdir)}, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert list(tmpdir.iterdir()) == []
