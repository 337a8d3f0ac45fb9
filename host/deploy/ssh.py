"""The ``Transport`` protocol (run, stream, put, get) and its SSH implementation.

Control traffic goes over one paramiko connection per board (verified host key, keys/agent
only, connect/command timeouts, keepalive). Bulk data (``put``) streams through the system
OpenSSH client when it exists -- its C AES-GCM is ~2.5x paramiko's pure-Python packet path on
loopback -- pinned to the host key paramiko just verified; otherwise through a paramiko
channel. Either way the board runs ``remote.RECEIVER``, a dialogue per blob: the board takes the
blob's lock and says where to start (0, the end of a partial it will hash once, or nothing to
send); it writes ``blobs/.partial-<sha>``, hashes while writing, and only renames to
``blobs/<sha>`` when the sha256 matches. Every remote argument is quoted with ``shlex.quote``.

Deadlines: connecting has ``CONNECT_TIMEOUT``; after that, every command and transfer fails with
"board X stopped answering (no progress for N s)" once the board neither takes bytes nor says
anything (the board-side programs print heartbeats while they work) for ``stall_timeout`` s.
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import json
import math
import os
import queue
import select
import shlex
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
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
#: A board that takes no bytes and says nothing for this long has stopped answering.
STALL_TIMEOUT = float(os.environ.get("RKDEPLOY_STALL_TIMEOUT", "30"))
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
    """``path`` (``size`` bytes) is to become ``<workdir>/blobs/<sha256>`` on the board; the board says
    from which offset to send (it may hold a partial, or another push may have finished it)."""

    path: Path
    sha256: str
    size: int
    eager: bool = False  # small and not partly there: send at once, without waiting for the board's answer


@dataclass
class PutReport:
    """What ``put`` did besides sending: folders installed, bytes the board already had, notes."""

    installed: dict[str, str] = field(default_factory=dict)
    resumed: int = 0  # bytes of partials the board resumed from
    already: int = 0  # bytes of blobs another push finished while this one ran
    notes: list[str] = field(default_factory=list)


class StalledError(DeployError):
    """The board took no bytes and said nothing for the stall deadline."""


def stalled(board: Board, seconds: float, doing: str = "") -> StalledError:
    return StalledError(f"board {board.name} stopped answering (no progress for {seconds:g} s){doing}")


class _NoProgress(Exception):
    """Raised by a data pipe when its stall deadline passed (``put`` turns it into ``StalledError``)."""


class _Watch:
    """When the board last showed progress (took bytes or said something)."""

    def __init__(self, stall: float | None):
        self.stall = stall
        self.last = time.monotonic()

    def bump(self) -> None:
        self.last = time.monotonic()

    def left(self) -> float:
        return math.inf if self.stall is None else self.stall - (time.monotonic() - self.last)

    def check(self) -> float:
        left = self.left()
        if left <= 0:
            raise _NoProgress
        return left


class Transport(Protocol):
    board: Board

    def run(self, argv: Sequence[str], *, input: bytes | None = None, timeout: float | None = COMMAND_TIMEOUT,
            cwd: PurePosixPath | None = None, check: bool = True, silent_ok: bool = False) -> RunResult: ...

    def stream(self, argv: Sequence[str], *, cwd: PurePosixPath | None = None,
               on_stderr: Callable[[str], None] | None = None) -> Iterator[str]: ...

    def put(self, uploads: Sequence[Upload], workdir: PurePosixPath, *, on_bytes: Callable[[int], None] | None = None,
            install: list[dict] | None = None) -> PutReport: ...

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
                 use_system_ssh: bool | None = None, stall_timeout: float | None = None):
        self.board = board
        self.known_hosts = known_hosts if known_hosts is not None else hostkeys.known_hosts_files()
        self.connect_timeout = connect_timeout
        self.stall_timeout = STALL_TIMEOUT if stall_timeout is None else stall_timeout
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
        except paramiko.IncompatiblePeer as e:
            client.close()
            if "host key" in str(e):  # the board offers none of the known key types any more
                known = hostkeys.load_host_keys(self.known_hosts).lookup(b.known_hosts_name) or {}
                offered = hostkeys.scan_host_key(b, timeout=t)
                if known and offered is not None:
                    raise hostkeys.changed_key_error(b, offered, next(iter(known.values())), self.known_hosts) from None
            raise DeployError(f"board {b.name}: SSH to {b.host}:{b.port} failed: {e}") from None
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
            cwd: PurePosixPath | None = None, check: bool = True, silent_ok: bool = False) -> RunResult:
        """Run ``argv`` on the board. Fails after ``timeout`` s in all, or once the command printed nothing
        for ``stall_timeout`` s (the board programs print heartbeats while they work); with ``silent_ok``
        only once the board does not answer over SSH either."""
        chan = self._channel(quote_command(argv, cwd))
        out, err = bytearray(), bytearray()
        deadline = None if timeout is None else time.monotonic() + timeout
        watch = _Watch(self.stall_timeout)
        try:
            if input:
                chan.sendall(input)
            chan.shutdown_write()
            while True:
                while chan.recv_ready():
                    out += chan.recv(65536)
                    watch.bump()
                while chan.recv_stderr_ready():
                    err += chan.recv_stderr(65536)
                    watch.bump()
                if chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready():
                    break
                if deadline is not None and time.monotonic() > deadline:
                    raise DeployError(f"board {self.board.name}: `{_short(argv)}` did not finish within {timeout:g}s")
                if watch.left() <= 0 and (not silent_ok or not self._alive()):
                    raise stalled(self.board, self.stall_timeout, f" running `{_short(argv)}`")
                if watch.left() <= 0:
                    watch.bump()  # silent, but the board answered over SSH
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
        ``DeployError`` after the last line (its ``returncode`` attribute holds the status). A command
        may stay silent (a long benchmark) as long as the board answers over SSH; one that does not
        answer for ``stall_timeout`` s has stopped."""
        chan = self._channel(quote_command(argv, cwd))
        chan.shutdown_write()
        buf, ebuf, err_tail = b"", b"", []
        watch = _Watch(self.stall_timeout)
        try:
            while True:
                if watch.left() <= 0:
                    if not self._alive():
                        raise stalled(self.board, self.stall_timeout, f" running `{_short(argv)}`")
                    watch.bump()
                got = False
                while chan.recv_ready():
                    buf += chan.recv(65536)
                    got = True
                while chan.recv_stderr_ready():
                    ebuf += chan.recv_stderr(65536)
                    got = True
                if got:
                    watch.bump()
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

    def _alive(self) -> bool:
        """Does the board's SSH server still answer (a keepalive request, which OpenSSH answers at once)
        within ``stall_timeout`` s? paramiko's request has no timeout of its own: it runs in a thread
        that ends when the connection closes."""
        transport = self.client.get_transport()
        done = threading.Event()

        def ping() -> None:
            with contextlib.suppress(paramiko.SSHException, OSError, EOFError):
                transport.global_request("keepalive@openssh.com", wait=True)
            done.set()

        threading.Thread(target=ping, daemon=True).start()
        return done.wait(self.stall_timeout)

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
        command = quote_command([self.board.python, "-c", remote.RECEIVER, str(workdir), f"{self.stall_timeout:g}"])
        if self.use_system_ssh:
            return self._system_ssh_pipe(command)
        return _ParamikoPipe(self._channel(command), self.stall_timeout)

    def put(self, uploads: Sequence[Upload], workdir: PurePosixPath, *, on_bytes: Callable[[int], None] | None = None,
            install: list[dict] | None = None) -> PutReport:
        """Send every upload through one receiver stream; each lands as ``workdir/blobs/<sha256>``
        only after its sha256 matched on the board. A dropped stream leaves ``.partial-<sha>``
        files that a later ``put`` resumes (the board picks the offset, under the blob's lock).
        ``install`` (folders of blobs, see ``remote.install``) is applied last, in the same stream."""
        pipe, self._pending = self._pending or self._open_pipe(workdir), None
        dialogue = _Dialogue(self.board, pipe, uploads, on_bytes)
        broken: BaseException | None = None
        try:
            dialogue.run(install)
        except _NoProgress:
            pipe.kill()
            raise stalled(self.board, self.stall_timeout, dialogue.doing()) from None
        except (ConnectionError, OSError, paramiko.SSHException, EOFError) as e:
            broken = e
        except BaseException:
            pipe.kill()
            raise
        rc, err = pipe.finish()
        dialogue.drain()
        if broken is not None or dialogue.eof:
            dialogue.explain(rc, err, broken)  # raises
        return dialogue.report

    def pinned_known_hosts(self) -> tuple[Path, paramiko.PKey]:
        """A temp known_hosts file holding only the host key paramiko verified (caller deletes it)."""
        key = self.client.get_transport().get_remote_server_key()
        kh = tempfile.NamedTemporaryFile("w", prefix="rkdeploy-kh-", suffix=".txt", delete=False)  # noqa: SIM115
        kh.write(self._known_hosts_line(key))
        kh.close()
        return Path(kh.name), key

    def _known_hosts_line(self, key: paramiko.PKey) -> str:
        return f"{self.board.known_hosts_name} {key.get_name()} {key.get_base64()}\n"

    def openssh_options(self, known_hosts: Path, key: paramiko.PKey, *, ciphers: str | None = SSH_CIPHERS) -> list[str]:
        return system_ssh_options(self.board, user=self.user, known_hosts=known_hosts, key=key,
                                  connect_timeout=self.connect_timeout, ciphers=ciphers)

    def _system_ssh_pipe(self, command: str) -> _ProcessPipe:
        """OpenSSH pinned to the verified key. The one-line known_hosts lives in a memfd that dies with
        this process (ssh opens it as /proc/<pid>/fd/N), so a killed push leaves no file behind;
        without memfd, a temp file removed when the stream ends."""
        key = self.client.get_transport().get_remote_server_key()
        if hasattr(os, "memfd_create") and Path(f"/proc/{os.getpid()}/fd").is_dir():
            fd = os.memfd_create("rkdeploy-known-hosts", os.MFD_CLOEXEC)
            os.write(fd, self._known_hosts_line(key).encode())
            argv = ["ssh", *self.openssh_options(Path(f"/proc/{os.getpid()}/fd/{fd}"), key), "--", self.board.host, command]
            return _ProcessPipe(argv, self.stall_timeout, close_fds=[fd])
        kh, key = self.pinned_known_hosts()
        argv = ["ssh", *self.openssh_options(kh, key), "--", self.board.host, command]
        return _ProcessPipe(argv, self.stall_timeout, cleanup=[kh])


class _Dialogue:
    """The host's half of ``remote.RECEIVER``'s dialogue over one data pipe."""

    RETRIES = 2  # a resumed blob whose sha256 does not match is sent again from 0

    def __init__(self, board: Board, pipe: _ProcessPipe | _ParamikoPipe, uploads: Sequence[Upload],
                 on_bytes: Callable[[int], None] | None):
        self.board, self.pipe, self.on_bytes = board, pipe, on_bytes
        self.uploads = {u.sha256: u for u in uploads}
        self.report = PutReport()
        self.done: dict[str, dict] = {}  # sha -> the board's last word on it (ok/mismatch/short/error)
        self.errors: list[dict] = []
        self.tries: dict[str, int] = {}
        self.retry: list[Upload] = []
        self.current: Upload | None = None
        self.waiting_for: str | None = None
        self.eof = False
        self.waited: set[str] = set()

    def doing(self) -> str:
        if self.current is not None:
            return (f" while sending {self.current.path.name}; the bytes already sent are kept and the next push "
                    "resumes from them")
        return f" while {self.waiting_for}" if self.waiting_for else ""

    def run(self, install: list[dict] | None) -> None:
        todo = list(self.uploads.values())
        while todo:
            for up in todo:
                self._send(up)
                if self.eof:
                    return
            todo, self.retry = self.retry, []
            self.waiting_for = "the board verified the last file"
            while not self.eof and any(sha not in self.done for sha in self.tries):
                self._handle(self._next())
            if self.eof:
                return
            todo, self.retry = todo + self.retry, []
        if install is not None:
            self.waiting_for = "installing folders"
            self.pipe.send(json.dumps({"install": install}).encode() + b"\n")
            while not self.eof:
                msg = self._next()
                if msg is not None and "install" in msg:
                    if msg["install"] is None:
                        raise DeployError(f"board {self.board.name}: installing folders under {self.board.workdir} "
                                          f"failed: {sanitize(str(msg.get('error')))}")
                    self.report.installed = dict(msg["install"])
                    break
                self._handle(msg)
        self.waiting_for = None

    def _send(self, up: Upload) -> None:
        self.tries[up.sha256] = self.tries.get(up.sha256, 0) + 1
        self.done.pop(up.sha256, None)
        eager = up.eager and self.tries[up.sha256] == 1
        self.waiting_for = f"waiting for the board to accept {up.path.name}"
        self.pipe.send(json.dumps({"sha256": up.sha256, "size": up.size, "eager": eager}).encode() + b"\n")
        if eager:  # the board's answer is handled when it comes (_handle)
            self._send_bytes(up, 0)
            return
        while True:
            msg = self._next()
            if msg is None:
                return
            if msg.get("sha256") == up.sha256 and msg.get("status") in ("have", "send", "busy"):
                break
            self._handle(msg)
        self._accepted(up, msg)

    def _accepted(self, up: Upload, msg: dict) -> None:
        """The board's answer to a blob header: have / send from offset / busy."""
        status = msg["status"]
        if status == "busy":
            raise DeployError(f"board {self.board.name}: another push to this board ({sanitize(str(msg.get('holder')))}) "
                              f"holds {up.path.name} and made no progress for {float(msg.get('idle') or 0):g} s; it is stopped or "
                              "stalled: let it end (or kill it) and push again")
        if status == "have":
            self.report.already += up.size
            self.done[up.sha256] = msg
            return
        offset = int(msg.get("offset") or 0)
        if msg.get("quarantined"):
            self.report.notes.append(f"{up.path.name}: corrupt copy on the board ({sanitize(str(msg.get('why')))}) "
                                     f"moved to {sanitize(str(msg['quarantined']))}, re-sent")
        self.report.resumed += offset
        if not msg.get("eager"):
            self._send_bytes(up, offset)

    def _send_bytes(self, up: Upload, offset: int) -> None:
        self.current = up
        with open(up.path, "rb") as f:
            self.pipe.send_file(f, offset, up.size - offset, self.on_bytes)
        self.current = None

    def _next(self) -> dict | None:
        """The board's next message (heartbeats only count as progress); None at end of stream."""
        while True:
            line = self.pipe.readline()
            if line is None:
                self.eof = True
                return None
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if not isinstance(msg, dict) or "beat" in msg:
                continue
            if msg.get("status") == "wait":
                what = str(msg.get("what", ""))
                if what not in self.waited:
                    self.waited.add(what)
                    doing = f"writing {self._name(what.rpartition(' ')[2])}" if what.startswith("blob ") else \
                        "installing folders"
                    self.report.notes.append(f"waited for another push ({sanitize(str(msg.get('holder')))}) {doing}")
                continue
            return msg

    def _name(self, sha: str) -> str:
        up = self.uploads.get(sha)
        return up.path.name if up else sha[:16]

    def _handle(self, msg: dict | None) -> None:
        if msg is None:
            return
        sha, status = msg.get("sha256"), msg.get("status")
        if sha not in self.uploads:
            if status == "error":
                self.errors.append(msg)
            return
        up = self.uploads[sha]
        if status in ("have", "send", "busy"):  # the answer to an eager header
            self._accepted(up, {**msg, "eager": True})
            return
        self.done[sha] = msg
        if status == "mismatch" and int(msg.get("offset") or 0) > 0 and self.tries.get(sha, 0) <= self.RETRIES:
            self.report.notes.append(f"{up.path.name}: the partial copy on the board was corrupt; re-sent from the start")
            self.report.resumed -= int(msg["offset"])
            self.retry.append(up)
        elif status in ("mismatch", "short", "error"):
            self._fail(up, msg)

    def _fail(self, up: Upload, msg: dict) -> None:
        b = self.board
        if msg.get("status") == "mismatch":
            raise DeployError(f"board {b.name}: {up.path} does not match the sha256 recorded for it "
                              f"({up.sha256[:16]}…, board computed {str(msg.get('got'))[:16]}…); rebuild the artifact")
        if msg.get("status") == "short":
            raise DeployError(f"board {b.name}: transfer of {up.path.name} to {b.address} was cut off after "
                              f"{msg.get('have')} of {up.size} bytes; push again to resume")
        raise DeployError(f"board {b.name}: writing {up.path.name} under {b.workdir} failed on the board: "
                          f"{sanitize(str(msg.get('error')))}; nothing was installed")

    def drain(self) -> None:
        """Read what the board said after the stream ended (errors explain a broken pipe)."""
        for line in self.pipe.rest():
            with contextlib.suppress(ValueError):
                msg = json.loads(line)
                if isinstance(msg, dict) and msg.get("status") in ("error", "short", "mismatch"):
                    if msg.get("sha256") in self.uploads:
                        self.done[msg["sha256"]] = msg
                    else:
                        self.errors.append(msg)

    def explain(self, rc: int, err: str, broken: BaseException | None) -> None:
        for sha, msg in self.done.items():
            if msg.get("status") in ("error", "short", "mismatch"):
                self._fail(self.uploads[sha], msg)
        if self.errors:
            raise DeployError(f"board {self.board.name}: the receiver under {self.board.workdir} failed: "
                              f"{sanitize(str(self.errors[0].get('error')))}")
        up = self.current or next((self.uploads[s] for s in self.tries if s not in self.done), None)
        why = _tail(err) or (f"{type(broken).__name__}: {broken}" if broken else f"receiver exited {rc}")
        if up is not None:
            raise DeployError(f"board {self.board.name}: transfer of {up.path.name} to {self.board.address} was cut off "
                              f"({why}); the bytes already sent are kept and the next push resumes from them")
        raise DeployError(f"board {self.board.name}: the receiver on {self.board.address} stopped before installing "
                          f"(exit {rc}): {why}")


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
    """Feed the OpenSSH client's stdin (non-blocking, so a stalled board is noticed); file bodies go
    in with ``os.sendfile`` (no Python copy). The board's lines arrive through a queue."""

    def __init__(self, argv: list[str], stall: float | None, *, cleanup: Sequence[Path] = (),
                 close_fds: Sequence[int] = ()):
        self.cleanup = list(cleanup)
        self._release_lock = threading.Lock()
        self._close_later = list(close_fds)  # ssh opens them through /proc/<our pid>/fd while it logs in
        self.watch = _Watch(stall)
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        except OSError:
            self._release()
            raise
        self.fd = self.proc.stdin.fileno()
        with contextlib.suppress(OSError):
            fcntl.fcntl(self.fd, F_SETPIPE_SZ, 1 << 20)
        os.set_blocking(self.fd, False)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self._eof = False
        self._err: list[bytes] = []
        self._readers = [threading.Thread(target=self._read_lines, args=(self.proc.stdout,), daemon=True),
                         threading.Thread(target=self._drain, args=(self.proc.stderr, self._err), daemon=True)]
        for t in self._readers:
            t.start()

    def _read_lines(self, f) -> None:
        buf = b""
        for chunk in iter(lambda: f.read1(65536), b""):
            self.watch.bump()
            if self._close_later or self.cleanup:  # the board speaks: ssh is past its host key check
                self._release()
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for ln in lines:
                self.lines.put(ln.decode("utf-8", "replace"))
        if buf:
            self.lines.put(buf.decode("utf-8", "replace"))
        self.lines.put(None)

    def _drain(self, f, sink: list[bytes]) -> None:
        for chunk in iter(lambda: f.read1(65536), b""):
            self.watch.bump()
            sink.append(chunk)

    def _wait_writable(self) -> None:
        left = self.watch.check()
        select.select([], [self.fd], [], min(left, 0.5))

    def send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                n = os.write(self.fd, view)
            except BlockingIOError:
                self._wait_writable()
                continue
            view = view[n:]
            self.watch.bump()

    def send_file(self, f, offset: int, count: int, on_bytes: Callable[[int], None] | None) -> None:
        end = offset + count
        while offset < end:
            try:
                n = os.sendfile(self.fd, f.fileno(), offset, min(CHUNK, end - offset))
            except BlockingIOError:
                self._wait_writable()
                continue
            if n == 0:
                raise DeployError(f"{f.name} is shorter than its manifest says")
            offset += n
            self.watch.bump()
            if on_bytes is not None:
                on_bytes(n)

    def readline(self) -> str | None:
        """The board's next line; None once the stream ended. Raises ``_NoProgress`` at the deadline."""
        while not self._eof:
            try:
                line = self.lines.get(timeout=min(self.watch.check(), 0.5))
            except queue.Empty:
                continue
            if line is None:
                self._eof = True
            return line
        return None

    def rest(self) -> list[str]:
        out = []
        while not self._eof:
            try:
                line = self.lines.get_nowait()
            except queue.Empty:
                break
            if line is None:
                self._eof = True
            else:
                out.append(line)
        return out

    def kill(self) -> None:
        self.proc.kill()
        self.finish()

    def finish(self) -> tuple[int, str]:
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        try:
            rc = self.proc.wait(timeout=max(self.watch.left(), 1.0) if self.watch.stall else None)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        for t in self._readers:
            t.join()
        self._release()
        return rc, b"".join(self._err).decode("utf-8", "replace")

    def _release(self) -> None:
        with self._release_lock:  # the reader thread and finish() may both get here
            fds, self._close_later = self._close_later, []
            paths, self.cleanup = self.cleanup, []
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        for p in paths:
            p.unlink(missing_ok=True)


class _ParamikoPipe:
    """The same stream over a paramiko channel (used when no OpenSSH client is installed)."""

    def __init__(self, chan: paramiko.Channel, stall: float | None):
        self.chan = chan
        self.watch = _Watch(stall)
        self.buf = b""
        self.err = bytearray()
        self._eof = False
        chan.settimeout(0.5)

    def _pump_err(self) -> None:
        while self.chan.recv_stderr_ready():
            self.err += self.chan.recv_stderr(65536)
            self.watch.bump()

    def _drain(self) -> None:
        """Read what the board said meanwhile into ``buf`` (``readline`` parses it): an answer is progress."""
        self._pump_err()
        while self.chan.recv_ready():
            b = self.chan.recv(65536)
            if not b:
                self._eof = True
                break
            self.buf += b
            self.watch.bump()

    def send(self, data: bytes) -> None:
        pos = 0
        while pos < len(data):
            try:
                n = self.chan.send(data[pos:pos + 65536])
            except TimeoutError:
                self._drain()   # a board waiting on another push's lock says so while our window is full
                self.watch.check()
                continue
            if n <= 0:
                raise EOFError("the channel was closed")
            pos += n
            self.watch.bump()

    def kill(self) -> None:
        _close(self.chan)

    def send_file(self, f, offset: int, count: int, on_bytes: Callable[[int], None] | None) -> None:
        f.seek(offset)
        left = count
        while left:
            block = f.read(min(CHUNK, left))
            if not block:
                raise DeployError(f"{f.name} is shorter than its manifest says")
            self.send(block)
            left -= len(block)
            if on_bytes is not None:
                on_bytes(len(block))

    def readline(self) -> str | None:
        while b"\n" not in self.buf and not self._eof:
            self._pump_err()
            try:
                b = self.chan.recv(65536)
            except TimeoutError:
                self.watch.check()
                continue
            if not b:
                self._eof = True
            self.buf += b
            self.watch.bump()
        if not self.buf:
            return None
        line, _, self.buf = self.buf.partition(b"\n")
        return line.decode("utf-8", "replace")

    def rest(self) -> list[str]:
        lines = self.buf.decode("utf-8", "replace").splitlines()
        self.buf = b""
        return lines

    def finish(self) -> tuple[int, str]:
        try:
            self.chan.shutdown_write()
            while True:
                self._pump_err()
                try:
                    b = self.chan.recv(65536)
                except TimeoutError:
                    if self.chan.exit_status_ready() or self.watch.left() <= 0:
                        break
                    continue
                if not b:
                    break
                self.buf += b
                self.watch.bump()
            self._pump_err()
            rc = self.chan.recv_exit_status() if self.chan.exit_status_ready() else 255
        except (OSError, paramiko.SSHException, EOFError):
            rc = 255
        finally:
            _close(self.chan)
        return rc, self.err.decode("utf-8", "replace")
