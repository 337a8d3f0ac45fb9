"""SSH host keys: verify against known_hosts, refuse unknown and changed keys, record on request.

Keys are read from ``~/.ssh/known_hosts`` (never written) and the project's own file
(``$RKDEPLOY_KNOWN_HOSTS`` or ``configs/known_hosts``), which ``rkdeploy boards trust NAME``
appends to. A changed key is never overwritten: the user removes the old line by hand.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import socket
from pathlib import Path

import paramiko

from host.deploy.inventory import Board
from host.errors import DeployError, HostKeyError
from host.fsutil import atomic_write_text

# paramiko logs a traceback from its transport thread before the error reaches us (e.g. "no
# acceptable host key"); every such failure becomes one clear line here, so keep its log quiet
# unless the user configured logging (--debug).
logging.getLogger("paramiko").addHandler(logging.NullHandler())


def project_known_hosts() -> Path:
    env = os.environ.get("RKDEPLOY_KNOWN_HOSTS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "configs" / "known_hosts"


def known_hosts_files() -> list[Path]:
    return [Path.home() / ".ssh" / "known_hosts", project_known_hosts()]


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH's ``SHA256:...`` fingerprint (as ``ssh-keygen -l`` prints it)."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")


def load_host_keys(files: list[Path]) -> paramiko.HostKeys:
    keys = paramiko.HostKeys()
    for f in files:
        if f.exists():
            try:
                keys.load(str(f))
            except (OSError, ValueError, paramiko.SSHException) as e:
                why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
                raise HostKeyError(f"known_hosts file {f} cannot be read: {why}; it must be an OpenSSH known_hosts "
                                   "text file (one 'host keytype base64key' line per key)") from None
    return keys


def files_knowing(name: str, files: list[Path]) -> list[Path]:
    """The files (existing, each once) that hold a key for ``name``; all existing ones if none does."""
    existing: list[Path] = []
    for f in files:
        if f.is_file() and f.resolve() not in {e.resolve() for e in existing}:
            existing.append(f)
    holding = []
    for f in existing:
        try:
            if load_host_keys([f]).lookup(name):
                holding.append(f)
        except HostKeyError:
            continue
    return holding or existing


def unknown_key_error(board: Board, key: paramiko.PKey) -> HostKeyError:
    return HostKeyError(
        f"board {board.name}: host key of {board.known_hosts_name} is not known "
        f"({key.get_name()} {fingerprint(key)}); if that fingerprint is the board's, accept it with: "
        f"rkdeploy boards trust {board.name}")


def changed_key_error(board: Board, got: paramiko.PKey, expected: paramiko.PKey, files: list[Path]) -> HostKeyError:
    holding = files_knowing(board.known_hosts_name, files)
    where = " and ".join(str(f) for f in holding) or "your known_hosts"
    offered = f"{got.get_name()} {fingerprint(got)}" if got.get_name() != expected.get_name() else fingerprint(got)
    return HostKeyError(
        f"board {board.name}: HOST KEY CHANGED for {board.known_hosts_name}: known {expected.get_name()} "
        f"{fingerprint(expected)}, offered {offered}; refusing to connect (possible impersonation). "
        f"If the board was reinstalled, remove the old line from {where} "
        f"(ssh-keygen -R '{board.known_hosts_name}' -f {holding[0] if len(holding) == 1 else 'FILE'}) "
        f"and run: rkdeploy boards trust {board.name}")


class RefuseUnknownPolicy(paramiko.MissingHostKeyPolicy):
    """paramiko policy: an unknown key is an error naming its fingerprint and the trust command."""

    def __init__(self, board: Board):
        self.board = board

    def missing_host_key(self, client, hostname, key) -> None:
        raise unknown_key_error(self.board, key)


def scan_host_key(board: Board, *, timeout: float = 10.0, key_types: list[str] | None = None) -> paramiko.PKey | None:
    """Open an SSH connection far enough to read the server's host key (no login). None when
    ``key_types`` is given and the server offers none of them."""
    try:
        sock = socket.create_connection((board.host, board.port), timeout=timeout)
    except OSError as e:
        raise DeployError(f"board {board.name}: cannot connect to {board.host}:{board.port}: {e}") from None
    t = paramiko.Transport(sock)
    try:
        t.banner_timeout = timeout
        if key_types:
            t.get_security_options().key_types = key_types
        t.start_client(timeout=timeout)
        return t.get_remote_server_key()
    except paramiko.IncompatiblePeer:
        if not key_types:
            raise DeployError(f"board {board.name}: the SSH server at {board.host}:{board.port} offers no host key "
                              "type this client supports") from None
        return None  # the caller asks again without the restriction, to name what the board offers
    except (paramiko.SSHException, OSError, EOFError) as e:
        raise DeployError(f"board {board.name}: no SSH server answered at {board.host}:{board.port}: {e}") from None
    finally:
        t.close()


def trust_board(board: Board, *, files: list[Path] | None = None, record_to: Path | None = None) -> tuple[str, bool]:
    """Record the board's current host key in the project known_hosts. Returns (fingerprint, newly added).

    Refuses (``HostKeyError``) when a different key of the same type is already recorded anywhere.
    """
    files = files if files is not None else known_hosts_files()
    record_to = record_to or project_known_hosts()
    known = load_host_keys([*files, record_to]).lookup(board.known_hosts_name) or {}
    # Once any key is known, only a key of a known type may be compared (no silent type switch).
    key = scan_host_key(board, key_types=list(known.keys()) or None)
    if key is None:  # the board offers none of the known types any more: a changed key
        offered = scan_host_key(board)
        raise changed_key_error(board, offered, next(iter(known.values())), [*files, record_to])
    old = known.get(key.get_name())
    if old is not None:
        if old.asbytes() == key.asbytes():
            return fingerprint(key), False
        raise changed_key_error(board, key, old, [*files, record_to])
    line = f"{board.known_hosts_name} {key.get_name()} {key.get_base64()}\n"
    text = record_to.read_text() if record_to.exists() else ""
    if text and not text.endswith("\n"):
        text += "\n"
    atomic_write_text(record_to, text + line)
    return fingerprint(key), True
