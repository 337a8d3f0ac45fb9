"""SshTransport against a real OpenSSH sshd on loopback: host keys, logins, timeouts, quoting."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from host.deploy import hostkeys
from host.deploy.ssh import SshTransport
from host.errors import DeployError, HostKeyError
from host.testing.deploy import board_for
from host.testing.sshd import TestSshd, keygen, sshd_available

pytestmark = pytest.mark.skipif(not sshd_available(), reason="needs OpenSSH sshd (apt install openssh-server)")


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    with TestSshd.start(tmp_path_factory.mktemp("sshd")) as s:
        yield s


@pytest.fixture(autouse=True)
def _no_agent(monkeypatch):
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)


@pytest.fixture
def known(sshd, tmp_path):
    return sshd.write_known_hosts(tmp_path / "known_hosts")


def _fp(pub) -> str:
    return subprocess.run(["ssh-keygen", "-lf", str(pub)], capture_output=True, text=True, check=True).stdout.split()[1]


def test_run_quotes_every_argument_and_sanitizes(sshd, known):
    with SshTransport(board_for(sshd), known_hosts=[known]) as t:
        res = t.run(["printf", "%s|", "$HOME", "a b", "; touch /tmp/rkdeploy-pwned", "`id`"])
        assert res.stdout == "$HOME|a b|; touch /tmp/rkdeploy-pwned|`id`|"
        lines = list(t.stream(["printf", "one\\n\\033[31mtwo\\n"]))
        assert lines == ["one", "\x1b[31mtwo"]  # raw lines for parsers ...
        with pytest.raises(DeployError, match="exited 3"):
            t.run(["sh", "-c", "echo boom >&2; exit 3"])
        with pytest.raises(DeployError, match="did not finish within"):
            t.run(["sleep", "5"], timeout=0.5)


def test_unknown_host_key_refused_with_fingerprint_then_trusted(sshd, tmp_path, monkeypatch):
    project = tmp_path / "known_hosts"
    monkeypatch.setenv("RKDEPLOY_KNOWN_HOSTS", str(project))
    board = board_for(sshd)
    with pytest.raises(HostKeyError) as ei:
        SshTransport(board, known_hosts=[project]).connect()
    msg = str(ei.value)
    assert _fp(sshd.dir / "host_ed25519.pub") in msg
    assert "rkdeploy boards trust local-ssh" in msg
    assert not project.exists()

    fp, added = hostkeys.trust_board(board, files=[], record_to=project)
    assert added and fp == _fp(sshd.dir / "host_ed25519.pub")
    assert project.read_text() == sshd.host_key_line()
    assert hostkeys.trust_board(board, files=[], record_to=project) == (fp, False)
    with SshTransport(board, known_hosts=[project]) as t:
        assert t.run(["echo", "ok"]).stdout == "ok\n"


def test_changed_host_key_refused_and_never_overwritten(sshd, tmp_path):
    other = keygen(tmp_path / "other_host")
    kind, blob = (tmp_path / "other_host.pub").read_text().split()[:2]
    kh = tmp_path / "known_hosts"
    kh.write_text(f"[127.0.0.1]:{sshd.port} {kind} {blob}\n")
    before = kh.read_bytes()
    board = board_for(sshd)
    with pytest.raises(HostKeyError, match="HOST KEY CHANGED") as ei:
        SshTransport(board, known_hosts=[kh]).connect()
    assert _fp(sshd.dir / "host_ed25519.pub") in str(ei.value) and _fp(f"{other}.pub") in str(ei.value)
    with pytest.raises(HostKeyError, match="HOST KEY CHANGED"):
        hostkeys.trust_board(board, files=[], record_to=kh)
    assert kh.read_bytes() == before


def test_wrong_user_and_wrong_key_are_clear_errors(sshd, known, tmp_path):
    with pytest.raises(DeployError, match=r"login refused for nosuchuser@127\.0\.0\.1"):
        SshTransport(board_for(sshd, user="nosuchuser"), known_hosts=[known]).connect()
    wrong = keygen(tmp_path / "wrong_key")
    with pytest.raises(DeployError, match=f"login refused .* key {wrong}"):
        SshTransport(board_for(sshd, key_file=wrong), known_hosts=[known]).connect()
    with pytest.raises(DeployError, match="does not exist"):
        SshTransport(board_for(sshd, key_file=tmp_path / "missing"), known_hosts=[known]).connect()


def test_closed_port_names_the_address(sshd, known):
    with socket.socket() as s:
        s.bind(("127.0.0.2", 0))
        port = s.getsockname()[1]
    with pytest.raises(DeployError, match=rf"cannot connect to 127\.0\.0\.2:{port}: .*refused"):
        SshTransport(board_for(sshd, host="127.0.0.2", port=port), known_hosts=[known]).connect()


def test_unresponsive_host_times_out_naming_the_address(sshd, known):
    # A listener whose accept queue is full drops new SYNs: a real TCP connect timeout.
    with socket.socket() as srv, socket.socket() as filler:
        srv.bind(("127.0.0.1", 0))
        srv.listen(0)
        port = srv.getsockname()[1]
        filler.connect(("127.0.0.1", port))
        t0 = time.monotonic()
        with pytest.raises(DeployError, match=rf"127\.0\.0\.1:{port} timed out after 1s"):
            SshTransport(board_for(sshd, port=port), known_hosts=[known], connect_timeout=1).connect()
        assert time.monotonic() - t0 < 10  # a 1 s timeout: order-of-magnitude bound


def test_silent_server_times_out_waiting_for_banner(sshd, known):
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(8)
        port = srv.getsockname()[1]
        with pytest.raises(DeployError, match=rf"127\.0\.0\.1:{port} timed out"):
            SshTransport(board_for(sshd, port=port), known_hosts=[known], connect_timeout=1).connect()


@pytest.mark.real  # starts its own sshd
def test_board_now_offering_another_key_type_is_one_line_naming_both_keys(tmp_path, capfd):
    other = keygen(tmp_path / "old_ed25519")  # what known_hosts remembers: an ed25519 key
    kind, blob = Path(f"{other}.pub").read_text().split()[:2]
    with TestSshd.start(tmp_path / "rsa-sshd", host_key_type="rsa") as rsa:  # the board now offers only RSA
        kh = tmp_path / "known_hosts"
        kh.write_text(f"[127.0.0.1]:{rsa.port} {kind} {blob}\n")
        before = kh.read_bytes()
        board = board_for(rsa)
        missing = tmp_path / "no-such-known_hosts"
        with pytest.raises(HostKeyError) as by_connect:
            SshTransport(board, known_hosts=[missing, kh, kh]).connect()
        with pytest.raises(HostKeyError) as by_trust:
            hostkeys.trust_board(board, files=[missing, kh], record_to=kh)
    for ei in (by_connect, by_trust):
        msg = str(ei.value)
        assert "HOST KEY CHANGED" in msg and "\n" not in msg
        assert f"known ssh-ed25519 {_fp(f'{other}.pub')}" in msg
        assert f"offered ssh-rsa {_fp(rsa.dir / 'host_rsa.pub')}" in msg
        assert msg.count(str(kh)) == 2 and str(missing) not in msg  # "remove the old line from KH (ssh-keygen ... -f KH)"
    assert kh.read_bytes() == before
    assert "Traceback" not in capfd.readouterr().err  # paramiko's transport thread stays quiet


def test_changed_key_advice_names_only_files_that_hold_the_host(sshd, tmp_path):
    other = keygen(tmp_path / "other_host")
    kind, blob = Path(f"{other}.pub").read_text().split()[:2]
    project = tmp_path / "project_known_hosts"
    project.write_text(f"[127.0.0.1]:{sshd.port} {kind} {blob}\n")
    user = tmp_path / "user_known_hosts"
    user.write_text("unrelated.example ssh-ed25519 " + blob + "\n")
    missing = tmp_path / "home" / ".ssh" / "known_hosts"
    with pytest.raises(HostKeyError) as ei:
        SshTransport(board_for(sshd), known_hosts=[missing, user, project]).connect()
    msg = str(ei.value)
    assert f"remove the old line from {project} (ssh-keygen -R '[127.0.0.1]:{sshd.port}' -f {project})" in msg
    assert str(user) not in msg and str(missing) not in msg
    with pytest.raises(HostKeyError) as ei:
        hostkeys.trust_board(board_for(sshd), files=[missing, project], record_to=project)
    assert str(ei.value).count(str(project)) == 2 and str(missing) not in str(ei.value)


def test_silent_commands_live_while_the_board_answers_and_fail_when_it_stops(sshd, known):
    with SshTransport(board_for(sshd), known_hosts=[known], stall_timeout=1.5) as t:
        # Silent for 4 s, SSH answering: a long benchmark is not a stalled board.
        assert list(t.stream(["sh", "-c", "sleep 4; echo done"])) == ["done"]
        assert t.run(["sh", "-c", "sleep 4; echo done"], silent_ok=True).stdout == "done\n"
        with pytest.raises(DeployError, match=r"stopped answering \(no progress for 1.5 s\) running `sh -c"):
            t.run(["sh", "-c", "sleep 4; echo done"])  # the board programs print heartbeats; this prints nothing
        stopped = []
        try:
            lines = t.stream(["sh", "-c", "echo started; sleep 30"])
            assert next(lines) == "started"
            stopped = sshd.session_pids()
            for pid in stopped:
                os.kill(pid, signal.SIGSTOP)
            t0 = time.monotonic()
            with pytest.raises(DeployError, match=r"^board local-ssh stopped answering \(no progress for 1.5 s\)"):
                next(lines)
            assert time.monotonic() - t0 < 1.5 * 2 + 4
        finally:
            for pid in stopped:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
