"""The ``Transport`` protocol -- how the deployer talks to a board -- and the records it trades in.

A transport runs a command (every argument quoted) and returns a typed ``RunResult``; streams a
command's stdout lines; sends blobs in bulk through the board's receiver (``put``); fetches a file
(``get``). Implementations: ``SshTransport`` (``host.deploy.ssh``: a real board), ``LocalTransport``
(``host.deploy.local``: this machine is the board), ``FakeTransport`` (``host.deploy.fake``: tests).

A command that exits non-zero raises ``RemoteCommandFailed`` (command, exit status, stderr tail);
a board that stops answering raises ``StalledError``. Both are ``DeployError``\\ s.

Public use, e.g. to run one board command and fetch a file::

    with SshTransport(board) as t:
        t.run(["python3", "-m", "board", "doctor", "--json"], cwd=board.workdir / "runner")
        t.get(board.workdir / "out.json", Path("out.json"))
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Protocol

from host.deploy.inventory import Board
from host.errors import DeployError
from host.ui import sanitize

COMMAND_TIMEOUT = 120.0
#: A board that takes no bytes and says nothing for this long has stopped answering.
STALL_TIMEOUT = float(os.environ.get("RKDEPLOY_STALL_TIMEOUT", "30"))


class StalledError(DeployError):
    """The board took no bytes and said nothing for the stall deadline."""


def stalled(board: Board, seconds: float, doing: str = "") -> StalledError:
    return StalledError(f"board {board.name} stopped answering (no progress for {seconds:g} s){doing}")


class RemoteCommandFailed(DeployError):
    """A command on a board exited non-zero. ``command`` is its argv, ``returncode`` the exit status,
    ``stderr_tail`` the last lines it printed (stripped of control characters), ``stdout``/``stderr``
    all of its output when it was collected (``run``; empty for ``stream``)."""

    def __init__(self, board: str, command: Sequence[str], returncode: int, stderr_tail: str, *,
                 stdout: str = "", stderr: str = ""):
        self.board, self.command, self.returncode, self.stderr_tail = board, tuple(command), returncode, stderr_tail
        self.stdout, self.stderr = stdout, stderr
        super().__init__(f"board {board}: `{short_command(command)}` exited {returncode}: {stderr_tail}")


@dataclass(frozen=True)
class RunResult:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    def check(self, board: str) -> RunResult:
        """This result, or ``RemoteCommandFailed`` when the command exited non-zero."""
        if self.returncode != 0:
            raise RemoteCommandFailed(board, self.argv, self.returncode, tail(self.stderr) or tail(self.stdout),
                                      stdout=self.stdout, stderr=self.stderr)
        return self


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


class Transport(Protocol):
    board: Board

    def run(self, argv: Sequence[str], *, input: bytes | None = None, timeout: float | None = COMMAND_TIMEOUT,
            cwd: PurePosixPath | None = None, check: bool = True, silent_ok: bool = False) -> RunResult:
        """Run ``argv`` on the board; ``check`` raises ``RemoteCommandFailed`` on a non-zero exit."""

    def stream(self, argv: Sequence[str], *, cwd: PurePosixPath | None = None,
               on_stderr: Callable[[str], None] | None = None) -> Iterator[str]:
        """Yield stdout lines as they arrive; a non-zero exit raises ``RemoteCommandFailed`` at the end."""

    def put(self, uploads: Sequence[Upload], workdir: PurePosixPath, *, on_bytes: Callable[[int], None] | None = None,
            install: list[dict] | None = None) -> PutReport:
        """Send blobs into ``workdir/blobs`` (verified by sha256 on the board), then install folders of them."""

    def get(self, remote_path: PurePosixPath, local: Path) -> None:
        """Copy one file from the board to ``local`` (atomically)."""

    def close(self) -> None: ...


def quote_command(argv: Sequence[str], cwd: PurePosixPath | None = None) -> str:
    """One shell command line: every argument quoted, ``cd`` into ``cwd`` first."""
    cmd = " ".join(shlex.quote(str(a)) for a in argv)
    return f"cd {shlex.quote(str(cwd))} && {cmd}" if cwd is not None else cmd


def tail(text: str, n: int = 3) -> str:
    """The last ``n`` non-empty lines, control characters stripped, joined with `` | ``."""
    lines = [ln for ln in sanitize(text).splitlines() if ln.strip()]
    return " | ".join(lines[-n:])


def short_command(argv: Sequence[str]) -> str:
    text = " ".join(str(a) for a in argv[:4])
    return text if len(text) < 80 else text[:77] + "..."
