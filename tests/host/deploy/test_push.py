"""Content-addressed push against a real sshd: skip, resume, atomicity, preflight, faults, many boards."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from host.deploy import push, remote
from host.deploy.push import PushDir, artifact_dir, push_board, push_boards, runner_dir, safe_relpath
from host.deploy.ssh import SshTransport
from host.errors import DeployError
from host.testing.deploy import board_for, write_artifact
from host.testing.sshd import sshd_available

pytestmark = pytest.mark.skipif(not sshd_available(), reason="needs OpenSSH sshd (apt install openssh-server)")
MiB = 1 << 20
from tests.conftest import ROOT  # noqa: E402


def real_python(minor: str) -> str | None:
    """A real interpreter binary of that version on this machine (pyenv's build or the system's; never a
    pyenv shim, which fails for versions that are not active)."""
    found = sorted((Path.home() / ".pyenv" / "versions").glob(f"{minor}.*/bin/python{minor}"))
    found += [p for p in (Path("/usr/bin") / f"python{minor}",) if p.exists()]
    return str(found[0]) if found else None


@pytest.fixture
def arts(tmp_path):
    root = tmp_path / "artifacts"
    write_artifact(root / "tiny-llm" / "rk3588" / "int8-dyn",
                   {"model.onnx": os.urandom(3 * MiB), "tokenizer.json": b'{"v": 1}', "sub/extra.txt": b"x"})
    write_artifact(root / "tiny-llm" / "rk3588" / "w8a8", {"model.rkllm": os.urandom(MiB)}, artifact_kind="rkllm")
    return root


def _dirs(root: Path) -> list[PushDir]:
    folders = sorted(m.parent for m in root.glob("*/rk3588/*/manifest.json"))
    return [runner_dir(), *(artifact_dir(f, root) for f in folders)]


def _tree(workdir: Path, rel: str) -> dict[str, str]:
    base = workdir / rel
    return {p.relative_to(base).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(base.rglob("*")) if p.is_file() and "__pycache__" not in p.parts}


def _local(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and "__pycache__" not in p.parts}


def test_push_installs_verified_folders_and_repush_sends_nothing(sshd, known, arts, tmp_path):
    wd = tmp_path / "wd"
    board = board_for(sshd, workdir=wd)
    dirs = _dirs(arts)
    with SshTransport(board, known_hosts=[known]) as t:
        first = push_board(t, dirs)
    total = sum(f.size for d in dirs for f in d.files.values())
    assert first.sent == total and first.skipped == 0
    assert set(first.installed.values()) == {"installed"}
    for d in ("int8-dyn", "w8a8"):
        assert _tree(wd, f"artifacts/tiny-llm/rk3588/{d}") == _local(arts / "tiny-llm" / "rk3588" / d)
    assert _tree(wd, "runner/board") == _local(push.BOARD_PACKAGE)
    model = wd / "artifacts/tiny-llm/rk3588/int8-dyn/model.onnx"
    sha = hashlib.sha256(model.read_bytes()).hexdigest()
    assert model.stat().st_ino == (wd / "blobs" / sha).stat().st_ino  # a hard link to its blob
    assert not list((wd / "blobs").glob(".partial-*"))

    t0 = time.monotonic()
    again = push_boards([board], _dirs(arts), transport=lambda b: SshTransport(b, known_hosts=[known]),
                        show_progress=False)[0]
    assert again.ok, again.status
    assert again.sent == 0 and again.skipped == total
    assert set(again.installed.values()) == {"unchanged"}
    assert time.monotonic() - t0 < 20  # order of magnitude (two interpreter starts over SSH); goal: bench/speed_goals.py

    # One changed file: only its bytes travel; the folder is swapped atomically.
    write_artifact(arts / "tiny-llm" / "rk3588" / "w8a8", {"model.rkllm": os.urandom(MiB)}, artifact_kind="rkllm")
    with SshTransport(board, known_hosts=[known]) as t:
        third = push_board(t, _dirs(arts))
    assert third.sent == MiB + (arts / "tiny-llm/rk3588/w8a8/manifest.json").stat().st_size
    assert third.installed["artifacts/tiny-llm/rk3588/w8a8"] == "installed"
    assert _tree(wd, "artifacts/tiny-llm/rk3588/w8a8") == _local(arts / "tiny-llm" / "rk3588" / "w8a8")


def test_paramiko_stream_fallback(sshd, known, arts, tmp_path):
    wd = tmp_path / "wd"
    with SshTransport(board_for(sshd, workdir=wd), known_hosts=[known], use_system_ssh=False) as t:
        res = push_board(t, _dirs(arts))
    assert res.sent > 4 * MiB
    assert _tree(wd, "artifacts/tiny-llm/rk3588/int8-dyn") == _local(arts / "tiny-llm" / "rk3588" / "int8-dyn")


@pytest.mark.parametrize("name", ["../evil", "/etc/passwd", "a/../../b", "nul\0byte", "", "a//b", "./x"])
def test_names_escaping_the_workdir_are_rejected(name, tmp_path):
    with pytest.raises(DeployError, match="not allowed|escape"):
        safe_relpath(name)
    folder = write_artifact(tmp_path / "m" / "rk3588" / "s", {"ok.bin": b"1"})
    m = (folder / "manifest.json").read_text().replace('"ok.bin"', '"../../../../etc/cron.d/x"')
    (folder / "manifest.json").write_text(m)
    with pytest.raises(DeployError, match="etc/cron.d/x.*not allowed: names must be relative paths inside"):
        artifact_dir(folder, tmp_path)     # the manifest's own validation (board.manifest), before any file is read


@pytest.mark.parametrize("system_ssh", [True, False], ids=["openssh", "paramiko"])
def test_connection_killed_mid_transfer_resumes_without_visible_partial(sshd, known, tmp_path, system_ssh):
    size = 48 * MiB
    root = tmp_path / "artifacts"
    folder = write_artifact(root / "big" / "rk3588" / "fp16", {"weights.bin": os.urandom(size)})
    wd = tmp_path / "wd"
    board = board_for(sshd, workdir=wd)
    dirs = [artifact_dir(folder, root)]
    seen = [0]

    def kill_midway(n: int) -> None:
        seen[0] += n
        if seen[0] >= 12 * MiB:
            for pid in sshd.session_pids():  # drop every connection of this sshd, for real
                os.kill(pid, 9)

    with pytest.raises(DeployError, match="cut off|lost the SSH connection"):
        with SshTransport(board, known_hosts=[known], use_system_ssh=system_ssh) as t:
            push_board(t, dirs, on_bytes=kill_midway)
    assert not (wd / "artifacts").exists()  # nothing visible
    partials = list((wd / "blobs").glob(".partial-*"))
    assert len(partials) == 1 and 0 < partials[0].stat().st_size < size
    assert not [p for p in (wd / "blobs").iterdir() if not p.name.startswith(".")]

    have = partials[0].stat().st_size
    with SshTransport(board, known_hosts=[known], use_system_ssh=system_ssh) as t:
        res = push_board(t, dirs)
    assert res.skipped >= have and res.sent <= size - have + MiB
    assert _tree(wd, "artifacts/big/rk3588/fp16") == _local(folder)
    assert not list((wd / "blobs").glob(".partial-*"))


def test_corrupt_partial_is_not_trusted(sshd, known, tmp_path):
    root = tmp_path / "artifacts"
    data = os.urandom(4 * MiB)
    folder = write_artifact(root / "m" / "rk3588" / "fp16", {"w.bin": data})
    wd = tmp_path / "wd"
    sha = hashlib.sha256(data).hexdigest()
    (wd / "blobs").mkdir(parents=True)
    (wd / "blobs" / f".partial-{sha}").write_bytes(b"\0" * MiB)  # same length as a prefix, wrong bytes
    with SshTransport(board_for(sshd, workdir=wd), known_hosts=[known]) as t:
        res = push_board(t, [artifact_dir(folder, root)])
    # The board hashes a resumed prefix once, while the rest streams in (no hashing up front): a corrupt
    # partial costs the rest of the file once more, then the whole file is sent again from 0.
    assert res.sent == 3 * MiB + len(data) + (folder / "manifest.json").stat().st_size
    assert res.skipped == 0 and res.ok
    assert res.notes == ["w.bin: the partial copy on the board was corrupt; re-sent from the start"]
    assert (wd / "artifacts/m/rk3588/fp16/w.bin").read_bytes() == data
    assert not list((wd / "blobs").glob(".partial-*"))


def test_file_changed_since_manifest_is_refused_on_the_board(sshd, known, tmp_path):
    root = tmp_path / "artifacts"
    folder = write_artifact(root / "m" / "rk3588" / "fp16", {"w.bin": b"a" * 1000})
    (folder / "w.bin").write_bytes(b"b" * 1000)  # same size, different bytes
    wd = tmp_path / "wd"
    with SshTransport(board_for(sshd, workdir=wd), known_hosts=[known]) as t, \
            pytest.raises(DeployError, match="does not match the sha256"):
        push_board(t, [artifact_dir(folder, root)])
    assert not (wd / "artifacts").exists()


@pytest.fixture
def small_fs(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_too_small_fails_in_preflight_and_sends_nothing(sshd, known, tmp_path, small_fs):
    root = tmp_path / "artifacts"
    folder = write_artifact(root / "m" / "rk3588" / "fp16", {"w.bin": os.urandom(12 * MiB)})
    board = board_for(sshd, workdir=small_fs / "wd")
    with SshTransport(board, known_hosts=[known]) as t, pytest.raises(DeployError, match="not enough free disk") as ei:
        push_board(t, [artifact_dir(folder, root)])
    assert "nothing was sent" in str(ei.value)
    assert list((small_fs / "wd" / "blobs").iterdir()) == []


def test_disk_full_during_transfer_is_clear_and_leaves_nothing(sshd, known, tmp_path, small_fs):
    root = tmp_path / "artifacts"
    folder = write_artifact(root / "m" / "rk3588" / "fp16", {"w.bin": os.urandom(6 * MiB)})
    board = board_for(sshd, workdir=small_fs / "wd")

    def fill_disk(_n: int) -> None:  # someone else fills the board's disk after preflight
        fd = os.open(small_fs / "filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:  # unbuffered: closing must not raise ENOSPC again into the push
            with pytest.raises(OSError):
                while True:
                    os.write(fd, b"\0" * 65536)
        finally:
            os.close(fd)

    with SshTransport(board, known_hosts=[known]) as t, pytest.raises(DeployError, match="No space left on device"):
        push_board(t, [artifact_dir(folder, root)], on_bytes=fill_disk)
    assert not (small_fs / "wd" / "artifacts").exists()
    assert list((small_fs / "wd" / "blobs").iterdir()) == []


def test_old_python_on_the_board_is_refused_before_sending(sshd, known, tmp_path, arts):
    fake = tmp_path / "python3.6"
    fake.write_text("#!/bin/sh\necho 3.6.9\n")
    fake.chmod(0o755)
    wd = tmp_path / "wd"
    with SshTransport(board_for(sshd, workdir=wd, python=str(fake)), known_hosts=[known]) as t, \
            pytest.raises(DeployError, match=r"Python 3\.6\.9; the board runner needs Python >= 3\.8"):
        push_board(t, _dirs(arts))
    assert not wd.exists()
    with SshTransport(board_for(sshd, workdir=wd, python="/nonexistent/python3"), known_hosts=[known]) as t, \
            pytest.raises(DeployError, match="cannot run Python"):
        push_board(t, _dirs(arts))


@pytest.mark.parametrize("minor", ["2.7", "3.6", "3.7"])
def test_real_old_python_on_the_board_is_named_and_nothing_is_sent(sshd, known, tmp_path, arts, minor):
    py = real_python(minor)
    if py is None:
        pytest.skip(f"no python{minor} on this machine")
    wd = tmp_path / "wd"
    with SshTransport(board_for(sshd, workdir=wd, python=py), known_hosts=[known]) as t, \
            pytest.raises(DeployError, match=rf"Python {minor}\.\d+; the board runner needs Python >= 3\.8"):
        push_board(t, _dirs(arts))
    assert not wd.exists()


@pytest.mark.skipif(real_python("3.8") is None, reason="no python3.8 on this machine")
def test_board_side_on_python_3_8_push_resume_install(sshd, known, tmp_path, arts):
    """The board's oldest supported Python runs the probe, the receiver (incl. resume) and the install."""
    wd = tmp_path / "wd"
    board = board_for(sshd, workdir=wd, python=real_python("3.8"))
    dirs = _dirs(arts)
    model = dirs[1].files["model.onnx"]
    (wd / "blobs").mkdir(parents=True)
    (wd / "blobs" / f".partial-{model.sha256}").write_bytes(model.path.read_bytes()[:MiB])  # a real prefix
    with SshTransport(board, known_hosts=[known]) as t:
        first = push_board(t, dirs)
        again = push_board(t, dirs)
    total = sum(f.size for d in dirs for f in d.files.values())
    assert first.skipped == MiB and first.sent == total - MiB
    assert again.sent == 0 and set(again.installed.values()) == {"unchanged"}
    assert _tree(wd, "artifacts/tiny-llm/rk3588/int8-dyn") == _local(arts / "tiny-llm" / "rk3588" / "int8-dyn")
    assert not list((wd / "blobs").glob(".partial-*"))


def test_board_side_scripts_need_only_python_3_8(tmp_path):
    vermin = shutil.which("vermin") or str(ROOT / ".venv" / "bin" / "vermin")
    if not Path(vermin).exists():
        pytest.skip("vermin is not installed")
    for name in ("PROBE", "INSTALL", "RECEIVER", "LOCKED_EXEC"):
        (tmp_path / f"{name.lower()}.py").write_text(getattr(remote, name))
    p = subprocess.run([vermin, "-t=3.8-", "--violations", "--no-tips", str(tmp_path)], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr


def test_unwritable_workdir_is_refused(sshd, known, tmp_path, arts):
    ro = tmp_path / "ro"
    ro.write_text("a file, not a folder")
    with SshTransport(board_for(sshd, workdir=ro / "wd"), known_hosts=[known]) as t, \
            pytest.raises(DeployError, match="not writable"):
        push_board(t, _dirs(arts))


def test_many_boards_in_parallel_one_failing(sshd, known, tmp_path, arts):
    good = [board_for(sshd, name=f"b{i}", workdir=tmp_path / f"wd{i}") for i in range(3)]
    bad = board_for(sshd, name="gone", host="127.0.0.2", port=1)
    results = push_boards([*good, bad], _dirs(arts), jobs=2, show_progress=False,
                          transport=lambda b: SshTransport(b, known_hosts=[known]))
    assert [r.board for r in results] == ["b0", "b1", "b2", "gone"]
    assert all(r.ok and r.sent > 4 * MiB for r in results[:3]), results
    assert not results[3].ok and "127.0.0.2:1" in results[3].status
    for i in range(3):
        assert _tree(tmp_path / f"wd{i}", "artifacts/tiny-llm/rk3588/w8a8") == _local(arts / "tiny-llm/rk3588/w8a8")
    table = push.summary_table(results)
    assert [c.header for c in table.columns] == ["board", "sent", "skipped", "seconds", "MB/s", "status"]


def test_failure_row_reports_the_bytes_actually_sent(sshd, known, tmp_path):
    root = tmp_path / "artifacts"
    folder = write_artifact(root / "big" / "rk3588" / "fp16", {"weights.bin": os.urandom(48 * MiB)})
    wd = tmp_path / "wd"
    stop = threading.Event()

    def cut_when_board_has(n: int) -> None:  # drop every connection once the board holds n bytes
        while not stop.is_set():
            for p in (wd / "blobs").glob(".partial-*") if (wd / "blobs").exists() else []:
                with contextlib.suppress(OSError):
                    if p.stat().st_size >= n:
                        for pid in sshd.session_pids():
                            os.kill(pid, 9)
                        return
            time.sleep(0.01)

    cutter = threading.Thread(target=cut_when_board_has, args=(12 * MiB,))
    cutter.start()
    try:
        row = push_boards([board_for(sshd, workdir=wd)], [artifact_dir(folder, root)], show_progress=False,
                          transport=lambda b: SshTransport(b, known_hosts=[known]))[0]
    finally:
        stop.set()
        cutter.join()
    assert not row.ok and "cut off" in row.status
    assert 12 * MiB <= row.sent < 48 * MiB, row
