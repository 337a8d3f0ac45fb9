"""``SshTransport``: the ``Transport`` of a real board over SSH.

Control traffic goes over one paramiko connection per board (verified host key, keys/agent
only, connect/command timeouts, keepalive). Bulk data (``put``) streams through the system
OpenSSH client when it exists -- its C AES-GCM is ~2.5x paramiko's pure-Python packet path on
loopback -- pinned to the host key paramiko just verified; otherwise through a paramiko
channel. Either way the board runs ``board/remote/receiver.py`` (``host.deploy.dialogue`` speaks
to it). Every remote argument is quoted with ``shlex.quote``; secrets are never logged.

Deadlines: connecting has ``CONNECT_TIMEOUT``; after that, every command and transfer fails with
"board X stopped answering (no progress for N s)" once the board neither takes bytes nor says
anything (the board-side programs print heartbeats while they work) for ``stall_timeout`` s
(``RKDEPLOY_STALL_TIMEOUT``, default 30).

Older import paths keep working: the records and errors of ``host.deploy.transport`` are
re-exported here.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path, PurePosixPath

import paramiko

from host.deploy import hostkeys, remote
from host.deploy.dialogue import put_through
from host.deploy.inventory import Board
from host.deploy.pipes import ParamikoPipe, ProcessPipe, Watch, close_channel, receive
from host.deploy.transport import (
    COMMAND_TIMEOUT,
    STALL_TIMEOUT,
    PutReport,
    RemoteCommandFailed,
    RunResult,
    StalledError,
    Transport,
    Upload,
    quote_command,
    short_command,
    stalled,
)
from host.errors import DeployError
from host.fsutil import atomic_write_bytes
from host.ui import sanitize

__all__ = ["COMMAND_TIMEOUT", "CONNECT_TIMEOUT", "SSH_CIPHERS", "STALL_TIMEOUT", "PutReport", "RemoteCommandFailed",
           "RunResult", "SshTransport", "StalledError", "Transport", "Upload", "quote_command", "stalled",
           "system_ssh_options"]

CONNECT_TIMEOUT = float(os.environ.get("RKDEPLOY_SSH_TIMEOUT", "10"))
KEEPALIVE_S = 15
# Strongest-and-fastest first: AES-GCM uses AES-NI / ARMv8 crypto on both ends.
SSH_CIPHERS = "aes128-gcm@openssh.com,aes256-gcm@openssh.com,chacha20-poly1305@openssh.com,aes128-ctr,aes256-ctr"


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
        self._pending: ProcessPipe | ParamikoPipe | None = None
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
            raise self._lost(e) from None
        return chan

    def _lost(self, e: BaseException) -> DeployError:
        return DeployError(f"board {self.board.name}: lost the SSH connection to {self.board.address}: {e}")

    def run(self, argv: Sequence[str], *, input: bytes | None = None, timeout: float | None = COMMAND_TIMEOUT,
            cwd: PurePosixPath | None = None, check: bool = True, silent_ok: bool = False) -> RunResult:
        """Run ``argv`` on the board. Fails after ``timeout`` s in all, or once the command printed nothing
        for ``stall_timeout`` s (the board programs print heartbeats while they work); with ``silent_ok``
        only once the board does not answer over SSH either. ``check``: a non-zero exit raises
        ``RemoteCommandFailed``."""
        chan = self._channel(quote_command(argv, cwd))
        out, err = bytearray(), bytearray()
        deadline = None if timeout is None else time.monotonic() + timeout
        watch = Watch(self.stall_timeout)
        try:
            if input:
                chan.sendall(input)
            chan.shutdown_write()
            for o, e in receive(chan, watch, poll=0.2):
                out += o
                err += e
                if deadline is not None and time.monotonic() > deadline:
                    raise DeployError(f"board {self.board.name}: `{short_command(argv)}` did not finish within {timeout:g}s")
                self._check_stall(watch, argv, silent_ok)
            rc = chan.recv_exit_status()
        except (paramiko.SSHException, OSError, EOFError) as e:
            raise self._lost(e) from None
        finally:
            close_channel(chan)
        res = RunResult(tuple(argv), rc, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"))
        return res.check(self.board.name) if check else res

    def _check_stall(self, watch: Watch, argv: Sequence[str], silent_ok: bool) -> None:
        if watch.left() <= 0:
            if not silent_ok or not self._alive():
                raise stalled(self.board, self.stall_timeout, f" running `{short_command(argv)}`")
            watch.bump()  # silent, but the board answered over SSH

    def stream(self, argv: Sequence[str], *, cwd: PurePosixPath | None = None,
               on_stderr: Callable[[str], None] | None = None) -> Iterator[str]:
        """Yield stdout lines as they arrive; stderr lines go to ``on_stderr``. Non-zero exit raises
        ``RemoteCommandFailed`` after the last line (``returncode``: the status). A command may stay
        silent (a long benchmark) as long as the board answers over SSH; one that does not answer for
        ``stall_timeout`` s has stopped."""
        chan = self._channel(quote_command(argv, cwd))
        chan.shutdown_write()
        buf, ebuf, err_tail = b"", b"", []
        watch = Watch(self.stall_timeout)
        try:
            for o, e in receive(chan, watch, poll=0.5):
                self._check_stall(watch, argv, True)
                buf += o
                ebuf += e
                *lines, buf = buf.split(b"\n")
                yield from (ln.decode("utf-8", "replace") for ln in lines)
                *elines, ebuf = ebuf.split(b"\n")
                for ln in elines:
                    text = sanitize(ln.decode("utf-8", "replace"))
                    err_tail = [*err_tail[-4:], text]
                    if on_stderr is not None:
                        on_stderr(text)
            if buf:
                yield buf.decode("utf-8", "replace")
            rc = chan.recv_exit_status()
        except (paramiko.SSHException, OSError, EOFError) as e:
            raise self._lost(e) from None
        finally:
            close_channel(chan)
        if rc != 0:
            raise RemoteCommandFailed(self.board.name, argv, rc, " | ".join(t for t in err_tail if t))

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
        """Copy the board's file ``remote_path`` to ``local`` (SFTP; written atomically)."""
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

    def _open_pipe(self, workdir: PurePosixPath) -> ProcessPipe | ParamikoPipe:
        command = quote_command([self.board.python, "-c", remote.RECEIVER, str(workdir), f"{self.stall_timeout:g}"])
        if self.use_system_ssh:
            return self._system_ssh_pipe(command)
        return ParamikoPipe(self._channel(command), self.stall_timeout)

    def put(self, uploads: Sequence[Upload], workdir: PurePosixPath, *, on_bytes: Callable[[int], None] | None = None,
            install: list[dict] | None = None) -> PutReport:
        """Send every upload through one receiver stream (see ``dialogue.put_through``)."""
        pipe, self._pending = self._pending or self._open_pipe(workdir), None
        return put_through(self.board, pipe, uploads, stall=self.stall_timeout, on_bytes=on_bytes, install=install)

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

    def _system_ssh_pipe(self, command: str) -> ProcessPipe:
        """OpenSSH pinned to the verified key. The one-line known_hosts lives in a memfd that dies with
        this process (ssh opens it as /proc/<pid>/fd/N), so a killed push leaves no file behind;
        without memfd, a temp file removed when the stream ends."""
        key = self.client.get_transport().get_remote_server_key()
        if hasattr(os, "memfd_create") and Path(f"/proc/{os.getpid()}/fd").is_dir():
            fd = os.memfd_create("rkdeploy-known-hosts", os.MFD_CLOEXEC)
            os.write(fd, self._known_hosts_line(key).encode())
            argv = ["ssh", *self.openssh_options(Path(f"/proc/{os.getpid()}/fd/{fd}"), key), "--", self.board.host, command]
            return ProcessPipe(argv, self.stall_timeout, close_fds=[fd])
        kh, key = self.pinned_known_hosts()
        argv = ["ssh", *self.openssh_options(kh, key), "--", self.board.host, command]
        return ProcessPipe(argv, self.stall_timeout, cleanup=[kh])


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
