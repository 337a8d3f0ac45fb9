"""The ``Transport`` protocol (run, stream, put, get) and its SSH implementation.

Control traffic goes over one paramiko connection per board (verified host key, keys/agent
only, connect/command timeouts, keepalive). Bulk data (``put``) streams through the system
OpenSSH client when it exists -- its C AES-GCM is ~2.5x paramiko's pure-Python packet path on
loopback -- pinned to the host key paramiko just verified; otherwise through a paramiko
channel. Either way the board runs ``remote.RECEIVER``: it writes ``blobs/.partial-<sha>``,
hashes while writing, and only renames to ``blobs/<sha>`` when the sha256 matches.
Every remote argument is quoted with ``shlex.quote``.
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import json
import os
import select
import shlex
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Protocol

import paramiko

from host.deploy import hostkeys, remote
from host.deploy.inventory import Board
from host.errors import DeployError
from host.fsutil import atomic_write_bytes
from host.ui import sanitize

CONNECT_TIMEOUT = float(os.environ.get("RKDEPLOY_SSH_TIMEOUT", "10"))
COMMAND_TIMEOUT = 120.0
KEEPALIVE_S = 15
CHUNK = 4 * 1024 * 1024
# Strongest-and-fastest first: AES-GCM uses AES-NI / ARMv8 crypto on both ends.
SSH_CIPHERS = "aes128-gcm@openssh.com,aes256-gcm@openssh.com,chacha20-poly1305@openssh.com,aes128-ctr,aes256-ctr"
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


@dataclass(frozen=True)
class RunResult:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


@dataclass(frozen=True)
class Upload:
    """Send ``path[offset:size]`` to become ``<remote_dir>/<sha256>`` on the board."""

    path: Path
    sha256: str
    size: int
    offset: int = 0


class Transport(Protocol):
    board: Board

    def run(self, argv: Sequence[str], *, input: bytes | None = None, timeout: float | None = COMMAND_TIMEOUT,
            cwd: PurePosixPath | None = None, check: bool = True) -> RunResult: ...

    def stream(self, argv: Sequence[str], *, cwd: PurePosixPath | None = None,
               on_stderr: Callable[[str], None] | None = None) -> Iterator[str]: ...

    def put(self, uploads: Sequence[Upload], workdir: PurePosixPath, *, on_bytes: Callable[[int], None] | None = None,
            install: list[dict] | None = None) -> dict | None: ...

    def get(self, remote_path: PurePosixPath, local: Path) -> None: ...

    def close(self) -> None: ...


def quote_command(argv: Sequence[str], cwd: PurePosixPath | None = None) -> str:
    cmd = " ".join(shlex.quote(str(a)) for a in argv)
    return f"cd {shlex.quote(str(cwd))} && {cmd}" if cwd is not None else cmd


def _tail(text: str, n: int = 3) -> str:
    lines = [ln for ln in sanitize(text).splitlines() if ln.strip()]
    return " | ".join(lines[-n:])


class SshTransport:
    """paramiko control connection + OpenSSH (or paramiko) data streams for one board."""

    def __init__(self, board: Board, *, known_hosts: list[Path] | None = None, connect_timeout: float = CONNECT_TIMEOUT,
                 use_system_ssh: bool | None = None):
        self.board = board
        self.known_hosts = known_hosts if known_hosts is not None else hostkeys.known_hosts_files()
        self.connect_timeout = connect_timeout
        self.user = board.user or getpass.getuser()
        self.use_system_ssh = shutil.which("ssh") is not None if use_system_ssh is None else use_system_ssh
        self._client: paramiko.SSHClient | None = None
        self._pending: _ProcessPipe | _ParamikoPipe | None = None
        self._lock = threading.Lock()

    # -- connection ----------------------------------------------------------------------------
    def connect(self) -> SshTransport:
        with self._lock:
            if self._client is not None and self._client.get_transport() and self._client.get_transport().is_active():
                return self
            self._client = self._open_client()
        return self

    def _open_client(self) -> paramiko.SSHClient:
        b = self.board
        client = paramiko.SSHClient()
        keys = hostkeys.load_host_keys(self.known_hosts)
        for name, entry in keys.items():
            for ktype, key in entry.items():
                client.get_host_keys().add(name, ktype, key)
        client.set_missing_host_key_policy(hostkeys.RefuseUnknownPolicy(b))
        if b.key_file is not None and not b.key_file.exists():
            raise DeployError(f"board {b.name}: ansible_ssh_private_key_file {b.key_file} does not exist")
        t = self.connect_timeout
        started = time.monotonic()
        try:
            client.connect(b.host, b.port, username=self.user, key_filename=str(b.key_file) if b.key_file else None,
                           look_for_keys=b.key_file is None, allow_agent=True, timeout=t, banner_timeout=t,
                           auth_timeout=t, channel_timeout=t)
        except paramiko.BadHostKeyException as e:
            client.close()
            raise hostkeys.changed_key_error(b, e.key, e.expected_key, self.known_hosts) from None
        except paramiko.PasswordRequiredException:
            client.close()
            raise DeployError(f"board {b.name}: key {b.key_file} is passphrase-protected; load it into ssh-agent "
                              "(ssh-add) -- rkdeploy never asks for passwords") from None
        except paramiko.AuthenticationException as e:
            client.close()
            how = f"key {b.key_file}" if b.key_file else "ssh-agent / ~/.ssh keys"
            raise DeployError(f"board {b.name}: login refused for {self.user}@{b.host}:{b.port} with {how} ({e}); "
                              "check ansible_user and ansible_ssh_private_key_file in the inventory") from None
        except TimeoutError:
            client.close()
            raise DeployError(f"board {b.name}: connection to {b.host}:{b.port} timed out after {t:g}s") from None
        except paramiko.SSHException as e:
            client.close()
            if time.monotonic() - started >= 0.9 * t or "banner" in str(e).lower():
                raise DeployError(f"board {b.name}: connection to {b.host}:{b.port} timed out after {t:g}s "
                                  f"waiting for the SSH server ({e})") from None
            raise DeployError(f"board {b.name}: SSH to {b.host}:{b.port} failed: {e}") from None
        except OSError as e:
            client.close()
            errors = list(getattr(e, "errors", {}).values())  # paramiko.NoValidConnectionsError: one per address
            why = "; ".join(x.strerror or str(x) for x in errors) if errors else (e.strerror or str(e))
            raise DeployError(f"board {b.name}: cannot connect to {b.host}:{b.port}: {why}") from None
        client.get_transport().set_keepalive(KEEPALIVE_S)
        return client

    @property
    def client(self) -> paramiko.SSHClient:
        self.connect()
        assert self._client is not None
        return self._client

    def close(self) -> None:
        self.cancel_put()
        with self._lock:
            if self._client is not None:
                with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
                    self._client.close()
                self._client = None

    def __enter__(self) -> SshTransport:
        return self.connect()

    def __exit__(self, *exc) -> None:
        self.close()

    # -- commands ------------------------------------------------------------------------------
    def _channel(self, command: str) -> paramiko.Channel:
        try:
            chan = self.client.get_transport().open_session(timeout=self.connect_timeout)
            chan.exec_command(command)
        except (paramiko.SSHException, OSError, EOFError) as e:
            raise DeployError(f"board {self.board.name}: lost the SSH connection to {self.board.address}: {e}") from None
        return chan

    def run(self, argv: Sequence[str], *, input: bytes | None = None, timeout: float | None = COMMAND_TIMEOUT,
            cwd: PurePosixPath | None = None, check: bool = True) -> RunResult:
        chan = self._channel(quote_command(argv, cwd))
        out, err = bytearray(), bytearray()
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            if input:
                chan.sendall(input)
            chan.shutdown_write()
            while True:
                while chan.recv_ready():
                    out += chan.recv(65536)
                while chan.recv_stderr_ready():
                    err += chan.recv_stderr(65536)
                if chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready():
                    break
                if deadline is not None and time.monotonic() > deadline:
                    raise DeployError(f"board {self.board.name}: `{_short(argv)}` did not finish within {timeout:g}s")
                select.select([chan], [], [], 0.2)
            rc = chan.recv_exit_status()
        except (paramiko.SSHException, OSError, EOFError) as e:
            raise DeployError(f"board {self.board.name}: lost the SSH connection to {self.board.address}: {e}") from None
        finally:
            _close(chan)
        res = RunResult(tuple(argv), rc, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"))
        if check and rc != 0:
            raise DeployError(f"board {self.board.name}: `{_short(argv)}` exited {rc}: {_tail(res.stderr) or _tail(res.stdout)}")
        return res

    def stream(self, argv: Sequence[str], *, cwd: PurePosixPath | None = None,
               on_stderr: Callable[[str], None] | None = None) -> Iterator[str]:
        """Yield stdout lines as they arrive; stderr lines go to ``on_stderr``. Non-zero exit raises
        ``DeployError`` after the last line (its ``returncode`` attribute holds the status)."""
        chan = self._channel(quote_command(argv, cwd))
        chan.shutdown_write()
        buf, ebuf, err_tail = b"", b"", []
        try:
            while True:
                got = False
                while chan.recv_ready():
                    buf += chan.recv(65536)
                    got = True
                while chan.recv_stderr_ready():
                    ebuf += chan.recv_stderr(65536)
                    got = True
                *lines, buf = buf.split(b"\n")
                yield from (ln.decode("utf-8", "replace") for ln in lines)
                *elines, ebuf = ebuf.split(b"\n")
                for ln in elines:
                    text = sanitize(ln.decode("utf-8", "replace"))
                    err_tail = [*err_tail[-4:], text]
                    if on_stderr is not None:
                        on_stderr(text)
                if not got and chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready():
                    break
                if not got:
                    select.select([chan], [], [], 0.5)
            if buf:
                yield buf.decode("utf-8", "replace")
            rc = chan.recv_exit_status()
        except (paramiko.SSHException, OSError, EOFError) as e:
            raise DeployError(f"board {self.board.name}: lost the SSH connection to {self.board.address}: {e}") from None
        finally:
            _close(chan)
        if rc != 0:
            err = DeployError(f"board {self.board.name}: `{_short(argv)}` exited {rc}: {' | '.join(t for t in err_tail if t)}")
            err.returncode = rc
            raise err

    def get(self, remote_path: PurePosixPath, local: Path) -> None:
        try:
            with self.client.open_sftp() as sftp, sftp.open(str(remote_path), "rb") as f:
                data = f.read()
        except (OSError, paramiko.SSHException) as e:
            raise DeployError(f"board {self.board.name}: cannot read {remote_path}: {e}") from None
        atomic_write_bytes(local, data)

    # -- bulk data -----------------------------------------------------------------------------
    def prepare_put(self, workdir: PurePosixPath) -> None:
        """Start the data stream now, so its login overlaps the caller's preflight."""
        if self._pending is None:
            self._pending = self._open_pipe(workdir)

    def cancel_put(self) -> None:
        if self._pending is not None:
            self._pending.kill()
            self._pending = None

    def _open_pipe(self, workdir: PurePosixPath) -> _ProcessPipe | _ParamikoPipe:
        command = quote_command([self.board.python, "-c", remote.RECEIVER, str(workdir)])
        return self._system_ssh_pipe(command) if self.use_system_ssh else _ParamikoPipe(self._channel(command))

    def put(self, uploads: Sequence[Upload], workdir: PurePosixPath, *, on_bytes: Callable[[int], None] | None = None,
            install: list[dict] | None = None) -> dict | None:
        """Send every upload through one receiver stream; each lands as ``workdir/blobs/<sha256>``
        only after its sha256 matched on the board. A dropped stream leaves ``.partial-<sha>``
        files that a later ``put`` resumes (the caller picks ``offset`` from ``remote.PROBE``).
        ``install`` (folders of blobs, see ``remote.install``) is applied last, in the same stream;
        its result is returned."""
        pipe, self._pending = self._pending or self._open_pipe(workdir), None
        broken = None
        try:
            for up in uploads:
                header = json.dumps({"sha256": up.sha256, "size": up.size, "offset": up.offset}).encode() + b"\n"
                pipe.send(header)
                with open(up.path, "rb") as f:
                    pipe.send_file(f, up.offset, up.size - up.offset, on_bytes)
            if install is not None:
                pipe.send(json.dumps({"install": install}).encode() + b"\n")
        except (BrokenPipeError, ConnectionError, OSError, paramiko.SSHException, EOFError) as e:
            broken = e
        rc, out, err = pipe.finish()
        self._check_receiver(uploads, rc, out, err, broken)
        if install is None:
            return None
        for line in out.splitlines():
            with contextlib.suppress(ValueError):
                msg = json.loads(line)
                if isinstance(msg, dict) and "install" in msg:
                    if msg["install"] is None:
                        raise DeployError(f"board {self.board.name}: installing folders under {self.board.workdir} "
                                          f"failed: {sanitize(str(msg.get('error')))}")
                    return msg["install"]
        raise DeployError(f"board {self.board.name}: the receiver on {self.board.address} stopped before installing "
                          f"(exit {rc}): {_tail(err) or 'no message'}")

    def _check_receiver(self, uploads: Sequence[Upload], rc: int, out: str, err: str, broken: BaseException | None) -> None:
        done: dict[str, dict] = {}
        for line in out.splitlines():
            with contextlib.suppress(ValueError):
                msg = json.loads(line)
                if isinstance(msg, dict) and "sha256" in msg:
                    done[msg["sha256"]] = msg
        b = self.board
        for up in uploads:
            msg = done.get(up.sha256)
            if msg is None:
                why = _tail(err) or (f"{type(broken).__name__}: {broken}" if broken else f"receiver exited {rc}")
                raise DeployError(f"board {b.name}: transfer of {up.path.name} to {b.address} was cut off ({why}); "
                                  "the bytes already sent are kept and the next push resumes from them")
            if msg.get("status") == "ok":
                continue
            if msg.get("status") == "mismatch":
                raise DeployError(f"board {b.name}: {up.path} does not match the sha256 recorded for it "
                                  f"({up.sha256[:16]}…, board computed {str(msg.get('got'))[:16]}…); rebuild the artifact")
            if msg.get("status") == "short":
                raise DeployError(f"board {b.name}: transfer of {up.path.name} to {b.address} was cut off after "
                                  f"{msg.get('have')} of {up.size} bytes; push again to resume")
            raise DeployError(f"board {b.name}: writing {up.path.name} under {b.workdir} failed on the board: "
                              f"{sanitize(str(msg.get('error')))}; nothing was installed")

    def pinned_known_hosts(self) -> tuple[Path, paramiko.PKey]:
        """A temp known_hosts file holding only the host key paramiko verified (caller deletes it)."""
        key = self.client.get_transport().get_remote_server_key()
        kh = tempfile.NamedTemporaryFile("w", prefix="rkdeploy-kh-", suffix=".txt", delete=False)  # noqa: SIM115
        kh.write(f"{self.board.known_hosts_name} {key.get_name()} {key.get_base64()}\n")
        kh.close()
        return Path(kh.name), key

    def openssh_options(self, known_hosts: Path, key: paramiko.PKey, *, ciphers: str | None = SSH_CIPHERS) -> list[str]:
        return system_ssh_options(self.board, user=self.user, known_hosts=known_hosts, key=key,
                                  connect_timeout=self.connect_timeout, ciphers=ciphers)

    def _system_ssh_pipe(self, command: str) -> _ProcessPipe:
        kh, key = self.pinned_known_hosts()
        argv = ["ssh", *self.openssh_options(kh, key), "--", self.board.host, command]
        return _ProcessPipe(argv, cleanup=[kh])


def _close(chan: paramiko.Channel) -> None:
    with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
        chan.close()


def _short(argv: Sequence[str]) -> str:
    text = " ".join(str(a) for a in argv[:4])
    return text if len(text) < 80 else text[:77] + "..."


def system_ssh_options(board: Board, *, user: str, known_hosts: Path, key: paramiko.PKey, connect_timeout: float,
                       ciphers: str | None = SSH_CIPHERS) -> list[str]:
    """OpenSSH client options (valid for ssh, scp and rsync -e): only the already-verified host
    key, no passwords, no user config. ``ciphers=None`` keeps OpenSSH's default order."""
    algs = "rsa-sha2-512,rsa-sha2-256" if key.get_name() == "ssh-rsa" else key.get_name()
    opts = ["-F", "/dev/null"]
    for o in (f"Port={board.port}", f"User={user}", "RequestTTY=no", f"UserKnownHostsFile={known_hosts}",
              "GlobalKnownHostsFile=/dev/null", "StrictHostKeyChecking=yes", "UpdateHostKeys=no",
              f"HostKeyAlgorithms={algs}", "BatchMode=yes", "PasswordAuthentication=no",
              "KbdInteractiveAuthentication=no", f"ConnectTimeout={int(max(1, connect_timeout))}",
              f"ServerAliveInterval={KEEPALIVE_S}", "ServerAliveCountMax=3", "Compression=no", "LogLevel=ERROR"):
        opts += ["-o", o]
    if ciphers:
        opts += ["-o", f"Ciphers={ciphers}"]
    if board.key_file is not None:
        opts += ["-i", str(board.key_file), "-o", "IdentitiesOnly=yes"]
    return opts


class _ProcessPipe:
    """Feed the OpenSSH client's stdin; file bodies go in with ``os.sendfile`` (no Python copy)."""

    def __init__(self, argv: list[str], cleanup: list[Path]):
        self.cleanup = cleanup
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.fd = self.proc.stdin.fileno()
        with contextlib.suppress(OSError):
            fcntl.fcntl(self.fd, F_SETPIPE_SZ, 1 << 20)
        self._out: list[bytes] = []
        self._err: list[bytes] = []
        self._readers = [threading.Thread(target=self._drain, args=(self.proc.stdout, self._out), daemon=True),
                         threading.Thread(target=self._drain, args=(self.proc.stderr, self._err), daemon=True)]
        for t in self._readers:
            t.start()

    @staticmethod
    def _drain(f, sink: list[bytes]) -> None:
        for chunk in iter(lambda: f.read1(65536), b""):
            sink.append(chunk)

    def send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]

    def send_file(self, f, offset: int, count: int, on_bytes: Callable[[int], None] | None) -> None:
        end = offset + count
        while offset < end:
            n = os.sendfile(self.fd, f.fileno(), offset, min(CHUNK, end - offset))
            if n == 0:
                raise DeployError(f"{f.name} is shorter than its manifest says")
            offset += n
            if on_bytes is not None:
                on_bytes(n)

    def kill(self) -> None:
        self.proc.kill()
        self.finish()

    def finish(self) -> tuple[int, str, str]:
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        rc = self.proc.wait()
        for t in self._readers:
            t.join()
        for p in self.cleanup:
            p.unlink(missing_ok=True)
        return rc, b"".join(self._out).decode("utf-8", "replace"), b"".join(self._err).decode("utf-8", "replace")


class _ParamikoPipe:
    """The same stream over a paramiko channel (used when no OpenSSH client is installed)."""

    def __init__(self, chan: paramiko.Channel):
        self.chan = chan

    def send(self, data: bytes) -> None:
        self.chan.sendall(data)

    def kill(self) -> None:
        _close(self.chan)

    def send_file(self, f, offset: int, count: int, on_bytes: Callable[[int], None] | None) -> None:
        f.seek(offset)
        left = count
        while left:
            block = f.read(min(CHUNK, left))
            if not block:
                raise DeployError(f"{f.name} is shorter than its manifest says")
            self.chan.sendall(block)
            left -= len(block)
            if on_bytes is not None:
                on_bytes(len(block))

    def finish(self) -> tuple[int, str, str]:
        out, err = bytearray(), bytearray()
        try:
            self.chan.shutdown_write()
            while True:
                while self.chan.recv_ready():
                    out += self.chan.recv(65536)
                while self.chan.recv_stderr_ready():
                    err += self.chan.recv_stderr(65536)
                if self.chan.exit_status_ready() and not self.chan.recv_ready() and not self.chan.recv_stderr_ready():
                    break
                select.select([self.chan], [], [], 0.2)
            rc = self.chan.recv_exit_status()
        except (OSError, paramiko.SSHException, EOFError):
            rc = 255
        finally:
            _close(self.chan)
        return rc, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")
