"""The one receive loop and the paramiko data pipe on a scripted channel (no sshd)."""

from __future__ import annotations

import os

import pytest

from host.deploy.pipes import NoProgress, ParamikoPipe, Watch, receive


class ScriptedChannel:
    """Enough of ``paramiko.Channel``: stdout/stderr arrive in the scripted steps, one step per wait."""

    def __init__(self, steps: list[tuple[bytes, bytes]], exit_status: int = 0, *, exits: bool = True):
        self.steps, self.exit_status, self.exits = list(steps), exit_status, exits
        self.out, self.err, self.sent = b"", b"", b""
        self._r, self._w = os.pipe()
        os.write(self._w, b"x")  # always "readable": select never waits
        self.closed = False
        self._waited = True  # the next step arrives once the reader waited (select) for it

    def fileno(self) -> int:
        self._waited = True
        return self._r

    def _feed(self) -> None:
        if self._waited and self.steps and not self.out and not self.err:
            self.out, self.err = self.steps.pop(0)
            self._waited = False

    def recv_ready(self) -> bool:
        self._feed()
        return bool(self.out)

    def recv_stderr_ready(self) -> bool:
        self._feed()
        return bool(self.err)

    def recv(self, n: int) -> bytes:
        b, self.out = self.out[:n], self.out[n:]
        return b

    def recv_stderr(self, n: int) -> bytes:
        b, self.err = self.err[:n], self.err[n:]
        return b

    def exit_status_ready(self) -> bool:
        return self.exits and not self.steps

    def recv_exit_status(self) -> int:
        return self.exit_status

    def settimeout(self, t: float) -> None:
        pass

    def send(self, data: bytes) -> int:
        self.sent += data
        return len(data)

    def shutdown_write(self) -> None:
        pass

    def close(self) -> None:
        if not self.closed:
            os.close(self._r)
            os.close(self._w)
        self.closed = True


def test_receive_yields_what_arrives_then_ends_at_exit():
    chan = ScriptedChannel([(b"one\n", b""), (b"", b""), (b"", b"warn\n"), (b"two", b"")])
    watch = Watch(5)
    watch.last -= 3
    got = list(receive(chan, watch, poll=0))
    assert b"".join(o for o, _ in got) == b"one\ntwo" and b"".join(e for _, e in got) == b"warn\n"
    assert (b"", b"") in got  # the quiet round is reported, so callers check their deadlines
    assert watch.left() > 4.5  # what arrived counted as progress
    chan.close()


def test_paramiko_pipe_reads_lines_and_collects_stderr():
    chan = ScriptedChannel([(b'{"status": "send"', b""), (b', "offset": 0}\n{"beat": 5}\n', b"note\n")], exit_status=3)
    pipe = ParamikoPipe(chan, 5)
    pipe.send(b"header\n")
    assert chan.sent == b"header\n"
    assert pipe.readline() == '{"status": "send", "offset": 0}'
    assert pipe.readline() == '{"beat": 5}'
    assert pipe.readline() is None
    assert pipe.finish() == (3, "note\n")
    assert chan.closed


def test_paramiko_pipe_gives_up_when_the_board_stands_still():
    chan = ScriptedChannel([], exits=False)
    pipe = ParamikoPipe(chan, 0.3)
    with pytest.raises(NoProgress):
        pipe.readline()
    pipe.kill()
