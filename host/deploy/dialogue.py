"""The host's half of the board receiver's dialogue (``board/remote/receiver.py``) over one data pipe.

Per blob: a header; the board answers have / send from offset / busy; the bytes; the board's
verdict (ok / mismatch / short / error). A resumed blob that does not match is sent again from 0.
Then the folders are installed in the same stream. ``put_through`` runs it all and turns a dead or
silent stream into a ``DeployError`` that says what was kept.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Sequence

import paramiko

from host.deploy.inventory import Board
from host.deploy.pipes import NoProgress, ParamikoPipe, ProcessPipe
from host.deploy.transport import PutReport, Upload, stalled, tail
from host.errors import DeployError
from host.ui import sanitize


def put_through(board: Board, pipe: ProcessPipe | ParamikoPipe, uploads: Sequence[Upload], *, stall: float,
                on_bytes: Callable[[int], None] | None = None, install: list[dict] | None = None) -> PutReport:
    """Send every upload through ``pipe`` (a receiver on the board); each lands as ``workdir/blobs/<sha256>``
    only after its sha256 matched on the board. A dropped stream leaves ``.partial-<sha>`` files that a
    later push resumes (the board picks the offset, under the blob's lock). ``install`` (folders of
    blobs) is applied last, in the same stream."""
    dialogue = Dialogue(board, pipe, uploads, on_bytes)
    broken: BaseException | None = None
    try:
        dialogue.run(install)
    except NoProgress:
        pipe.kill()
        raise stalled(board, stall, dialogue.doing()) from None
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


class Dialogue:
    """The host's half of ``remote.RECEIVER``'s dialogue over one data pipe."""

    RETRIES = 2  # a resumed blob whose sha256 does not match is sent again from 0

    def __init__(self, board: Board, pipe: ProcessPipe | ParamikoPipe, uploads: Sequence[Upload],
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
        why = tail(err) or (f"{type(broken).__name__}: {broken}" if broken else f"receiver exited {rc}")
        if up is not None:
            raise DeployError(f"board {self.board.name}: transfer of {up.path.name} to {self.board.address} was cut off "
                              f"({why}); the bytes already sent are kept and the next push resumes from them")
        raise DeployError(f"board {self.board.name}: the receiver on {self.board.address} stopped before installing "
                          f"(exit {rc}): {why}")
