"""A real OpenSSH ``sshd`` on a free loopback port, for tests and ``bench/push_throughput.py``.

It runs as the current user with its own host key and one authorised client key, all in a
private folder, and is stopped by PID::

    with TestSshd.start(tmp_path) as sshd:
        sshd.write_inventory(tmp_path / "boards.yaml")        # a ``local-ssh`` board
        sshd.write_known_hosts(tmp_path / "known_hosts")      # trust its host key

The CLI form starts one in the background for demos and prints the inventory path::

    python -m host.testing.sshd start DIR     # writes DIR/boards.yaml, DIR/known_hosts, DIR/sshd.pid
    python -m host.testing.sshd stop DIR
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

SSHD = "/usr/sbin/sshd"
SFTP_SERVER_CANDIDATES = ("/usr/lib/openssh/sftp-server", "/usr/libexec/openssh/sftp-server", "/usr/libexec/sftp-server")


def sshd_available() -> bool:
    return Path(SSHD).exists() and shutil.which("ssh-keygen") is not None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def keygen(path: Path, kind: str = "ed25519") -> Path:
    """Create an unencrypted key pair at ``path`` / ``path.pub`` (replacing any old one)."""
    for p in (path, path.with_name(path.name + ".pub")):
        p.unlink(missing_ok=True)
    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", "rkdeploy-test", "-f", str(path)],
                   check=True, stdin=subprocess.DEVNULL)
    return path


def _config(d: Path, port: int, user: str, host_key: Path, listen: str = "127.0.0.1") -> str:
    sftp = next((p for p in SFTP_SERVER_CANDIDATES if Path(p).exists()), "internal-sftp")
    return "\n".join([
        f"Port {port}",
        f"ListenAddress {listen}",
        f"HostKey {host_key}",
        f"PidFile {d / 'sshd.pid'}",
        f"AuthorizedKeysFile {d / 'authorized_keys'}",
        f"AllowUsers {user}",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PubkeyAuthentication yes",
        "PermitRootLogin prohibit-password",
        "UsePAM no",
        "StrictModes no",
        "MaxStartups 64",
        "MaxSessions 64",
        "LogLevel ERROR",
        f"Subsystem sftp {sftp}",
        "",
    ])


@dataclass
class TestSshd:
    """One running sshd. ``client_key`` is the authorised private key; ``user`` the login."""

    __test__ = False  # not a pytest test class

    dir: Path
    port: int
    user: str
    client_key: Path
    host_key: Path
    proc: subprocess.Popen | None = field(default=None, repr=False)
    host: str = "127.0.0.1"

    # -- lifecycle -----------------------------------------------------------------------------
    @classmethod
    def start(cls, dir: Path | str, *, port: int | None = None, detach: bool = False,
              host_key_type: str = "ed25519", host: str = "127.0.0.1", netns: str | None = None) -> TestSshd:
        """``host_key_type`` (ed25519, rsa, ecdsa): the only host key this server offers. ``netns``: run it
        inside that network namespace (``ip netns exec``; root), listening on ``host`` there (give ``port``)."""
        d = Path(dir)
        d.mkdir(parents=True, exist_ok=True)
        user = getpass.getuser()
        host_key = d / f"host_{host_key_type}"
        if not host_key.exists():
            keygen(host_key, host_key_type)
        if not (d / "client_ed25519").exists():
            keygen(d / "client_ed25519")
        shutil.copy(d / "client_ed25519.pub", d / "authorized_keys")
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege-separation dir sshd wants as root
        last_err = ""
        for _attempt in range(5):
            p = port or free_port()
            (d / "sshd_config").write_text(_config(d, p, user, host_key, host))
            log = open(d / "sshd.log", "ab")  # noqa: SIM115 - handed to the child
            wrap = ["ip", "netns", "exec", netns] if netns else []  # exec: the PID stays sshd's
            proc = subprocess.Popen([*wrap, SSHD, "-D", "-e", "-f", str(d / "sshd_config")], stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=log, start_new_session=detach)
            log.close()
            sshd = cls(dir=d, port=p, user=user, client_key=d / "client_ed25519", host_key=host_key,
                       proc=proc, host=host)
            if sshd._wait_listening():
                (d / "sshd.pid").write_text(f"{proc.pid}\n")
                return sshd
            sshd.stop()
            last_err = (d / "sshd.log").read_text(errors="replace")[-2000:]
            if port:
                break
        raise RuntimeError(f"sshd did not start: {last_err}")

    def _wait_listening(self, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                return False
            with contextlib.suppress(OSError), socket.create_connection((self.host, self.port), timeout=1) as s:
                s.settimeout(2)
                if s.recv(4).startswith(b"SSH-"):
                    return True
            time.sleep(0.05)
        return False

    @property
    def pid(self) -> int:
        if self.proc is not None:
            return self.proc.pid
        return int((self.dir / "sshd.pid").read_text().split()[0])

    def session_pids(self) -> list[int]:
        """PIDs of the per-connection sshd processes (kill them to drop connections for real)."""
        parent: dict[int, int] = {}
        comm: dict[int, str] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                head, tail = stat.read_text().rsplit(")", 1)
                pid = int(stat.parent.name)
                parent[pid] = int(tail.split()[1])
                comm[pid] = head.split("(", 1)[1]
        out, frontier = [], [self.pid]
        while frontier:
            kids = [p for p, pp in parent.items() if pp in frontier]
            out += [p for p in kids if comm.get(p, "").startswith("sshd")]
            frontier = kids
        return out

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError, FileNotFoundError, ValueError):
            for child in self.session_pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGTERM)
            os.kill(self.pid, signal.SIGTERM)
        if self.proc is not None:
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def __enter__(self) -> TestSshd:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- files that point rkdeploy at it -----------------------------------------------------
    def host_key_line(self) -> str:
        """The ``known_hosts`` line for this server (``[127.0.0.1]:PORT ssh-ed25519 AAAA...``)."""
        kind, blob = Path(f"{self.host_key}.pub").read_text().split()[:2]
        return f"[{self.host}]:{self.port} {kind} {blob}\n"

    def write_known_hosts(self, path: Path | str) -> Path:
        path = Path(path)
        path.write_text(self.host_key_line())
        return path

    def board_vars(self, *, workdir: str | None = None, python: str | None = None) -> dict:
        hv = {"ansible_host": self.host, "ansible_port": self.port, "ansible_user": self.user,
              "ansible_ssh_private_key_file": str(self.client_key), "soc": "rk3588",
              "workdir": workdir or str(self.dir / "board-workdir")}
        if python:
            hv["python"] = python
        return hv

    def write_inventory(self, path: Path | str, *, name: str = "local-ssh", **kw) -> Path:
        """Write an Ansible-shaped inventory with one board ``name`` pointing at this sshd."""
        path = Path(path)
        inv = {"all": {"children": {"local": {"hosts": {name: self.board_vars(**kw)}}}}}
        path.write_text(yaml.safe_dump(inv, sort_keys=False))
        return path


def _main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("start", "stop"):
        print("usage: python -m host.testing.sshd start|stop DIR", file=sys.stderr)
        return 2
    d = Path(argv[1]).resolve()
    if argv[0] == "start":
        sshd = TestSshd.start(d, detach=True)
        sshd.write_inventory(d / "boards.yaml")
        sshd.write_known_hosts(d / "known_hosts")
        print(f"sshd pid {sshd.pid} on {sshd.host}:{sshd.port}")
        print(f"export RKDEPLOY_INVENTORY={d / 'boards.yaml'} RKDEPLOY_KNOWN_HOSTS={d / 'known_hosts'}")
        return 0
    pidfile = d / "sshd.pid"
    if pidfile.exists():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pidfile.read_text().split()[0]), signal.SIGTERM)
        pidfile.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
