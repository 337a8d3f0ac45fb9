"""The board-side programs (board/remote/) run here, as the deployer runs them on a board:
``python3 -c <source> ARGS`` with JSON on stdin/stdout. No sshd, no exports."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from board.remote import PROGRAMS, lib, source
from board.remote.locked_exec import LOCK_BUSY_EXIT

PYTHON2 = sorted((Path.home() / ".pyenv" / "versions").glob("2.7.*/bin/python2.7"))
PYTHON38 = sorted((Path.home() / ".pyenv" / "versions").glob("3.8.*/bin/python3.8"))
#: This interpreter, and the board's oldest supported one when this machine has it.
PYTHONS = [sys.executable, *(str(p) for p in PYTHON38[:1])]


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _run(name: str, *args: str, stdin: dict | None = None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", source(name), *args], input=json.dumps(stdin or {}),
                          capture_output=True, text=True, timeout=60, **kw)


class Receiver:
    """The host's half of the receiver dialogue, minimal."""

    def __init__(self, wd: Path, stall: float = 5, python: str = sys.executable):
        self.p = subprocess.Popen([python, "-c", source("receiver"), str(wd), str(stall)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def send(self, obj: dict, body: bytes = b"") -> None:
        self.p.stdin.write(json.dumps(obj).encode() + b"\n" + body)
        self.p.stdin.flush()

    def answer(self) -> dict:
        while True:
            line = self.p.stdout.readline()
            assert line, self.p.stderr.read().decode()
            msg = json.loads(line)
            if "beat" not in msg and msg.get("status") != "wait":
                return msg

    def close(self) -> int:
        self.p.stdin.close()
        rc = self.p.wait(timeout=30)
        self.p.stdout.close()
        self.p.stderr.close()
        return rc


def test_every_program_is_self_contained_and_compiles():
    for name in PROGRAMS:
        text = source(name)
        assert "from board.remote" not in text, name
        compile(text, name, "exec")
    assert source("receiver").startswith("# rkdeploy receiver\n")  # how tests find receivers in /proc
    with pytest.raises(ValueError, match="unknown board program"):
        source("nope")


@pytest.mark.skipif(not PYTHON2, reason="no python2.7 (pyenv) on this machine")
def test_probe_parses_on_python_2_and_names_its_version(tmp_path):
    p = subprocess.run([str(PYTHON2[0]), "-c", source("probe")], input="{}", capture_output=True, text=True)
    assert p.returncode == 0 and p.stdout.startswith("2.7."), p.stderr


def test_probe_reports_present_partial_and_quarantines_corrupt(tmp_path):
    wd = tmp_path / "wd"
    good, bad, part = b"good" * 100, b"bad" * 100, b"partial" * 100
    (wd / "blobs").mkdir(parents=True)
    (wd / "blobs" / _sha(good)).write_bytes(good)
    (wd / "blobs" / _sha(bad)).write_bytes(b"not the bytes it is named after")
    (wd / "blobs" / f".partial-{_sha(part)}").write_bytes(part[:10])
    req = {"workdir": str(wd), "blobs": {_sha(good): len(good), _sha(bad): len(b"not the bytes it is named after"),
                                         _sha(part): len(part), "f" * 64: 5}}
    p = _run("probe", stdin=req)
    assert p.returncode == 0, p.stderr
    version, out = p.stdout.splitlines()[0], json.loads(p.stdout.splitlines()[-1])
    assert version == ".".join(map(str, sys.version_info[:3]))
    assert out["writable"] and out["free"] > 0 and out["workdir"] == str(wd)
    assert out["blobs"][_sha(good)] == {"have": len(good)}
    assert out["blobs"][_sha(part)] == {"partial": 10}
    assert out["blobs"][_sha(bad)]["quarantined"].startswith("blobs/.quarantine/" + _sha(bad))
    assert "f" * 64 not in out["blobs"]
    assert not (wd / "blobs" / _sha(bad)).exists()
    assert json.loads((wd / "blobs" / ".verified.json").read_text())[_sha(good)][2] == len(good)  # cached


def test_probe_names_an_unwritable_workdir(tmp_path):
    (tmp_path / "file").write_text("x")
    p = _run("probe", stdin={"workdir": str(tmp_path / "file" / "wd"), "blobs": {}})
    out = json.loads(p.stdout.splitlines()[-1])
    assert p.returncode == 0 and not out["writable"] and "Not a directory" in out["error"]


@pytest.mark.parametrize("python", PYTHONS)
def test_receiver_sends_verifies_resumes_and_installs(tmp_path, python):
    wd = tmp_path / "wd"
    a, b, c = os.urandom(3000), os.urandom(5000), b"tiny"
    (wd / "blobs").mkdir(parents=True)
    (wd / "blobs" / f".partial-{_sha(b)}").write_bytes(b[:1234])  # a real prefix: resumed
    r = Receiver(wd, python=python)
    r.send({"sha256": _sha(a), "size": len(a)})
    assert r.answer() == {"sha256": _sha(a), "status": "send", "offset": 0, "quarantined": None, "why": None}
    r.p.stdin.write(a)
    r.p.stdin.flush()
    assert r.answer()["status"] == "ok"
    r.send({"sha256": _sha(b), "size": len(b)})
    assert r.answer()["offset"] == 1234
    r.p.stdin.write(b[1234:])
    r.p.stdin.flush()
    assert r.answer() == {"sha256": _sha(b), "status": "ok", "offset": 1234}
    r.send({"sha256": _sha(c), "size": len(c), "eager": True}, c)
    assert r.answer()["status"] == "send" and r.answer()["status"] == "ok"
    r.send({"sha256": _sha(a), "size": len(a)})
    assert r.answer() == {"sha256": _sha(a), "status": "have"}
    dirs = [{"path": "artifacts/m/t/s", "files": {"a.bin": _sha(a), "sub/b.bin": _sha(b)}},
            {"path": "runner", "files": {"c": _sha(c)}}]
    r.send({"install": dirs})
    assert r.answer() == {"install": {"artifacts/m/t/s": "installed", "runner": "installed"}}
    r.send({"install": dirs})
    assert r.answer() == {"install": {"artifacts/m/t/s": "unchanged", "runner": "unchanged"}}
    assert r.close() == 0
    folder = wd / "artifacts" / "m" / "t" / "s"
    assert (folder / "a.bin").read_bytes() == a and (folder / "sub" / "b.bin").read_bytes() == b
    assert (folder / "a.bin").stat().st_ino == (wd / "blobs" / _sha(a)).stat().st_ino  # a hard link
    assert not list((wd / "blobs").glob(".partial-*"))
    assert set(json.loads((wd / "blobs" / ".verified.json").read_text())) == {_sha(a), _sha(b), _sha(c)}


def test_receiver_refuses_wrong_bytes_and_keeps_a_short_partial(tmp_path):
    wd = tmp_path / "wd"
    data = os.urandom(4096)
    r = Receiver(wd)
    r.send({"sha256": _sha(data), "size": len(data)})
    assert r.answer()["status"] == "send"
    r.p.stdin.write(os.urandom(4096))
    r.p.stdin.flush()
    msg = r.answer()
    assert msg["status"] == "mismatch" and msg["got"] != _sha(data)
    assert not (wd / "blobs" / _sha(data)).exists() and not (wd / "blobs" / f".partial-{_sha(data)}").exists()
    r.send({"sha256": _sha(data), "size": len(data)})
    r.answer()
    r.p.stdin.write(data[:1000])
    r.p.stdin.close()  # the stream is cut off: the partial stays for the next push
    assert json.loads(r.p.stdout.readline()) == {"sha256": _sha(data), "status": "short", "have": 1000, "offset": 0}
    assert r.p.wait(timeout=30) == 3
    r.p.stdout.close()
    r.p.stderr.close()
    assert (wd / "blobs" / f".partial-{_sha(data)}").read_bytes() == data[:1000]


def test_receiver_rejects_a_bad_header_and_an_unsafe_install(tmp_path):
    r = Receiver(tmp_path / "wd")
    r.send({"sha256": "../../etc/passwd", "size": 1})
    assert r.answer()["status"] == "error"
    assert r.close() == 2
    r = Receiver(tmp_path / "wd")
    r.send({"install": [{"path": "../escape", "files": {}}]})
    msg = r.answer()
    assert msg["install"] is None and "unsafe path" in msg["error"]
    assert r.close() == 5


def test_receiver_says_busy_when_the_lock_holder_stands_still(tmp_path):
    wd = tmp_path / "wd"
    data = b"x" * 100
    fd = lib.try_lock(lib.lock_path(str(wd), f"blob-{_sha(data)}.lock"))  # another push, stopped
    try:
        r = Receiver(wd, stall=1)
        t0 = time.monotonic()
        r.send({"sha256": _sha(data), "size": len(data)})
        msg = r.answer()
        assert msg["status"] == "busy" and msg["holder"].startswith(f"pid {os.getpid()}")
        assert time.monotonic() - t0 >= 1
        assert r.close() == 0
    finally:
        os.close(fd)


def test_install_program_links_verified_blobs_only(tmp_path):
    wd = tmp_path / "wd"
    data = b"manifest"
    (wd / "blobs").mkdir(parents=True)
    (wd / "blobs" / _sha(data)).write_bytes(data)
    req = {"workdir": str(wd), "dirs": [{"path": "artifacts/x", "files": {"manifest.json": _sha(data)}}]}
    p = _run("install", stdin=req)
    assert p.returncode == 0 and json.loads(p.stdout) == {"install": {"artifacts/x": "installed"}}, p.stderr
    missing = {"workdir": str(wd), "dirs": [{"path": "artifacts/y", "files": {"m": "0" * 64}}]}
    p = _run("install", stdin=missing)
    assert p.returncode == 1 and "is missing; push again to repair it" in p.stderr
    assert not (wd / "artifacts" / "y").exists()


def test_locked_exec_runs_the_command_or_says_busy(tmp_path):
    lock = tmp_path / "sub" / ".bench.lock"
    p = _run("locked_exec", str(lock), "nowait", sys.executable, "-c", "print('ran')")
    assert p.returncode == 0 and p.stdout == "ran\n"
    fd = lib.try_lock(str(lock))
    try:
        p = _run("locked_exec", str(lock), "nowait", "true")
        assert p.returncode == LOCK_BUSY_EXIT and p.stderr.startswith("rkdeploy-lock: busy: another benchmark holds")
    finally:
        os.close(fd)


def test_check_blob_caches_by_inode_and_catches_a_changed_file(tmp_path):
    bd = tmp_path / "blobs"
    bd.mkdir()
    data = b"hello"
    (bd / _sha(data)).write_bytes(data)
    cache: dict = {}
    assert lib.check_blob(str(tmp_path), str(bd), cache, _sha(data), 5)[0] == "ok"
    assert _sha(data) in cache
    assert lib.check_blob(str(tmp_path), str(bd), cache, _sha(data), 6)[:2] == ("corrupt", "5 bytes instead of 6")
    (bd / _sha(data)).write_bytes(b"HELLO")  # same size, new mtime: hashed again
    state, why, st = lib.check_blob(str(tmp_path), str(bd), cache, _sha(data), 5)
    assert state == "corrupt" and why.startswith("sha256 ")
    moved = lib.quarantine(str(bd), cache, _sha(data), st)
    assert moved.startswith("blobs/.quarantine/") and not (bd / _sha(data)).exists()
    assert lib.check_blob(str(tmp_path), str(bd), cache, _sha(data), 5)[0] == "missing"
    assert lib.good_sha(_sha(data)) and not lib.good_sha("A" * 64) and not lib.good_sha("0" * 63)
