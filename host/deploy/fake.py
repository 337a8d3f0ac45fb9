"""``FakeTransport``: a scripted board in memory, for unit tests (no sshd, no processes).

Commands are answered by ``on(prefix, reply)``: the longest registered argv prefix wins; a reply
is a ``RunResult``-like triple ``(returncode, stdout, stderr)`` or a function ``(argv, input) ->
triple``. An unknown command exits 127 as a shell would. Every call is recorded in ``calls``.
``put`` checks each upload's sha256 as the board does and keeps the blobs; ``install`` folders
and files given to ``files`` can be read back with ``get``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path, PurePosixPath

from host.deploy.inventory import Board
from host.deploy.transport import COMMAND_TIMEOUT, PutReport, RemoteCommandFailed, RunResult, Upload
from host.errors import DeployError
from host.fsutil import atomic_write_bytes

Reply = tuple[int, str, str]


class FakeTransport:
    def __init__(self, board: Board | None = None):
        self.board = board or Board(name="fake", host="fake.invalid")
        self.calls: list[tuple[str, ...]] = []
        self.blobs: dict[str, bytes] = {}
        self.files: dict[PurePosixPath, bytes] = {}
        self.puts = 0
        self._replies: dict[tuple[str, ...], Reply | Callable[[tuple[str, ...], bytes | None], Reply]] = {}

    def on(self, prefix: Sequence[str], reply: Reply | Callable[[tuple[str, ...], bytes | None], Reply]) -> FakeTransport:
        self._replies[tuple(prefix)] = reply
        return self

    def __enter__(self) -> FakeTransport:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        pass

    def _answer(self, argv: Sequence[str], input: bytes | None) -> RunResult:
        argv = tuple(str(a) for a in argv)
        self.calls.append(argv)
        keys = [k for k in self._replies if argv[:len(k)] == k]
        if not keys:
            return RunResult(argv, 127, "", f"sh: {argv[0] if argv else ''}: not found\n")
        reply = self._replies[max(keys, key=len)]
        rc, out, err = reply(argv, input) if callable(reply) else reply
        return RunResult(argv, rc, out, err)

    def run(self, argv: Sequence[str], *, input: bytes | None = None, timeout: float | None = COMMAND_TIMEOUT,
            cwd: PurePosixPath | None = None, check: bool = True, silent_ok: bool = False) -> RunResult:
        res = self._answer(argv, input)
        return res.check(self.board.name) if check else res

    def stream(self, argv: Sequence[str], *, cwd: PurePosixPath | None = None,
               on_stderr: Callable[[str], None] | None = None) -> Iterator[str]:
        res = self._answer(argv, None)
        yield from res.stdout.splitlines()
        errs = res.stderr.splitlines()
        for line in errs:
            if on_stderr is not None:
                on_stderr(line)
        if res.returncode != 0:
            raise RemoteCommandFailed(self.board.name, argv, res.returncode, " | ".join(errs[-5:]))

    def put(self, uploads: Sequence[Upload], workdir: PurePosixPath, *, on_bytes: Callable[[int], None] | None = None,
            install: list[dict] | None = None) -> PutReport:
        self.puts += 1
        report = PutReport()
        for up in uploads:
            if up.sha256 in self.blobs:
                report.already += up.size
                continue
            data = Path(up.path).read_bytes()
            if hashlib.sha256(data).hexdigest() != up.sha256 or len(data) != up.size:
                raise DeployError(f"board {self.board.name}: {up.path} does not match the sha256 recorded for it "
                                  f"({up.sha256[:16]}…); rebuild the artifact")
            self.blobs[up.sha256] = data
            if on_bytes is not None:
                on_bytes(len(data))
        for d in install or []:
            for name, sha in d["files"].items():
                if sha not in self.blobs:
                    raise DeployError(f"board {self.board.name}: installing folders under {workdir} failed: "
                                      f"blob {sha[:16]}... for {name} is missing")
                self.files[workdir / d["path"] / name] = self.blobs[sha]
            report.installed[d["path"]] = "installed"
        return report

    def get(self, remote_path: PurePosixPath, local: Path) -> None:
        if PurePosixPath(remote_path) not in self.files:
            raise DeployError(f"board {self.board.name}: cannot read {remote_path}: [Errno 2] No such file")
        atomic_write_bytes(local, self.files[PurePosixPath(remote_path)])
