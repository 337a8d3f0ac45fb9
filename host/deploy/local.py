"""``LocalTransport``: this machine is the board (its workdir is a local folder).

The same board-side programs run, as local processes: ``run`` and ``stream`` start the command
directly (an argv, no shell), ``put`` feeds the board receiver (``board/remote/receiver.py``) through
a ``ProcessPipe`` and speaks the same dialogue as over SSH, ``get`` copies a file atomically. Useful
for tests and for a host that is itself an RK3588 board.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path, PurePosixPath

from host.deploy import remote
from host.deploy.dialogue import put_through
from host.deploy.inventory import Board
from host.deploy.pipes import ProcessPipe
from host.deploy.transport import (
    COMMAND_TIMEOUT,
    STALL_TIMEOUT,
    PutReport,
    RemoteCommandFailed,
    RunResult,
    Upload,
    short_command,
)
from host.errors import DeployError
from host.fsutil import atomic_write_bytes
from host.ui import sanitize


class LocalTransport:
    """Run the board's side on this machine (``board.host`` is not used)."""

    def __init__(self, board: Board, *, stall_timeout: float | None = None):
        self.board = board
        self.stall_timeout = STALL_TIMEOUT if stall_timeout is None else stall_timeout

    def __enter__(self) -> LocalTransport:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        pass

    def _cwd(self, cwd: PurePosixPath | None) -> str | None:
        return None if cwd is None else os.path.expanduser(str(cwd))

    def run(self, argv: Sequence[str], *, input: bytes | None = None, timeout: float | None = COMMAND_TIMEOUT,
            cwd: PurePosixPath | None = None, check: bool = True, silent_ok: bool = False) -> RunResult:
        """Run ``argv`` here; ``timeout`` bounds it in all (a local process cannot stop answering)."""
        try:
            p = subprocess.run([str(a) for a in argv], input=input or b"", capture_output=True, timeout=timeout,
                               cwd=self._cwd(cwd))
        except subprocess.TimeoutExpired:
            raise DeployError(f"board {self.board.name}: `{short_command(argv)}` did not finish within {timeout:g}s") from None
        except OSError as e:  # what a shell says as exit 126/127 over SSH
            p = subprocess.CompletedProcess(argv, 127, b"", f"{argv[0]}: {e.strerror or e}\n".encode())
        res = RunResult(tuple(argv), p.returncode, p.stdout.decode("utf-8", "replace"),
                        p.stderr.decode("utf-8", "replace"))
        return res.check(self.board.name) if check else res

    def stream(self, argv: Sequence[str], *, cwd: PurePosixPath | None = None,
               on_stderr: Callable[[str], None] | None = None) -> Iterator[str]:
        """Yield stdout lines as they arrive; a non-zero exit raises ``RemoteCommandFailed`` at the end."""
        try:
            proc = subprocess.Popen([str(a) for a in argv], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, cwd=self._cwd(cwd))
        except OSError as e:
            raise RemoteCommandFailed(self.board.name, argv, 127, sanitize(f"{argv[0]}: {e.strerror or e}")) from None
        err_tail: list[str] = []

        def read_err() -> None:
            for raw in proc.stderr:
                text = sanitize(raw.decode("utf-8", "replace").rstrip("\n"))
                err_tail[:] = [*err_tail[-4:], text]
                if on_stderr is not None:
                    on_stderr(text)

        reader = threading.Thread(target=read_err, daemon=True)
        reader.start()
        try:
            for raw in proc.stdout:
                yield raw.decode("utf-8", "replace").rstrip("\n")
            rc = proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            reader.join()
            with contextlib.suppress(OSError):
                proc.stdout.close()
        if rc != 0:
            raise RemoteCommandFailed(self.board.name, argv, rc, " | ".join(t for t in err_tail if t))

    def get(self, remote_path: PurePosixPath, local: Path) -> None:
        try:
            data = Path(os.path.expanduser(str(remote_path))).read_bytes()
        except OSError as e:
            raise DeployError(f"board {self.board.name}: cannot read {remote_path}: {e}") from None
        atomic_write_bytes(local, data)

    def put(self, uploads: Sequence[Upload], workdir: PurePosixPath, *, on_bytes: Callable[[int], None] | None = None,
            install: list[dict] | None = None) -> PutReport:
        """The board receiver as a local process, fed through a pipe (the same dialogue as over SSH)."""
        argv = [self.board.python, "-c", remote.RECEIVER, str(workdir), f"{self.stall_timeout:g}"]
        try:
            pipe = ProcessPipe(argv, self.stall_timeout)
        except OSError as e:
            raise DeployError(f"board {self.board.name}: cannot start {self.board.python}: {e.strerror or e}") from None
        return put_through(self.board, pipe, uploads, stall=self.stall_timeout, on_bytes=on_bytes, install=install)
