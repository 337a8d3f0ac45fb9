"""Bulk data pipes to a board's receiver, and the one receive loop for paramiko channels.

``ProcessPipe`` feeds a local process's stdin (the OpenSSH client, or the receiver itself for a
local board) with ``os.sendfile``; ``ParamikoPipe`` does the same over a paramiko channel. Both
offer ``send``, ``send_file``, ``readline``, ``rest``, ``finish`` and ``kill``, and raise
``NoProgress`` once their stall deadline passed (``Watch``).

``receive`` is the only loop that reads a paramiko channel: ``SshTransport.run`` and ``stream``
and ``ParamikoPipe`` all consume it.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import queue
import select
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import paramiko

from host.errors import DeployError

CHUNK = 4 * 1024 * 1024
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


class NoProgress(Exception):
    """Raised by a data pipe when its stall deadline passed (``put`` turns it into ``StalledError``)."""


class Watch:
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
            raise NoProgress
        return left


def receive(chan: paramiko.Channel, watch: Watch, *, poll: float = 0.2) -> Iterator[tuple[bytes, bytes]]:
    """``(stdout, stderr)`` bytes as they arrive on ``chan`` (each arrival bumps ``watch``); an empty pair
    after waiting up to ``poll`` s with nothing new, so the caller can check its deadlines. Ends once the
    command exited and both streams are drained."""
    while True:
        out = err = b""
        while chan.recv_ready():
            b = chan.recv(65536)
            if not b:
                break
            out += b
        while chan.recv_stderr_ready():
            err += chan.recv_stderr(65536)
        if out or err:
            watch.bump()
            yield out, err
            continue
        if chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready():
            return
        select.select([chan], [], [], poll)
        yield b"", b""


def close_channel(chan: paramiko.Channel) -> None:
    with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
        chan.close()


class ProcessPipe:
    """Feed a local process's stdin (non-blocking, so a stalled board is noticed); file bodies go in
    with ``os.sendfile`` (no Python copy). The board's lines arrive through a queue. ``close_fds`` and
    ``cleanup`` (files) are released once the board first speaks (ssh is past its host key check)."""

    def __init__(self, argv: list[str], stall: float | None, *, cleanup: Sequence[Path] = (),
                 close_fds: Sequence[int] = ()):
        self.cleanup = list(cleanup)
        self._release_lock = threading.Lock()
        self._close_later = list(close_fds)  # ssh opens them through /proc/<our pid>/fd while it logs in
        self.watch = Watch(stall)
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
        """The board's next line; None once the stream ended. Raises ``NoProgress`` at the deadline."""
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


class ParamikoPipe:
    """The same stream over a paramiko channel (used when no OpenSSH client is installed)."""

    def __init__(self, chan: paramiko.Channel, stall: float | None):
        self.chan = chan
        self.watch = Watch(stall)
        self.buf = b""
        self.err = bytearray()
        self._eof = False
        self._rx = receive(chan, self.watch, poll=0.5)
        chan.settimeout(0.5)

    def _pull(self) -> bool:
        """One round of ``receive``: False once the board's side ended."""
        if self._eof:
            return False
        try:
            out, err = next(self._rx)
        except StopIteration:
            self._eof = True
            return False
        self.buf += out
        self.err += err
        return bool(out or err)

    def send(self, data: bytes) -> None:
        pos = 0
        while pos < len(data):
            try:
                n = self.chan.send(data[pos:pos + 65536])
            except TimeoutError:
                # a board waiting on another push's lock says so while our window is full: read it
                while self.chan.recv_ready() or self.chan.recv_stderr_ready():
                    self._pull()
                self.watch.check()
                continue
            if n <= 0:
                raise EOFError("the channel was closed")
            pos += n
            self.watch.bump()

    def kill(self) -> None:
        close_channel(self.chan)

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
            if not self._pull() and not self._eof:
                self.watch.check()
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
            while (self._pull() or not self._eof) and self.watch.left() > 0:
                pass
            rc = self.chan.recv_exit_status() if self.chan.exit_status_ready() else 255
        except (OSError, paramiko.SSHException, EOFError):
            rc = 255
        finally:
            close_channel(self.chan)
        return rc, self.err.decode("utf-8", "replace")
