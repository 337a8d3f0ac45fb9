"""The board-side programs as the text the deployer runs with ``python3 -c``.

The programs are real modules under ``board/remote/`` (stdlib only, linted, vermin-checked,
unit-tested in ``tests/board/``); ``board.remote.source`` inlines what each imports. The board
layout and the locking rules are described in ``board/remote/__init__.py``.
"""

from __future__ import annotations

from board.remote import source
from board.remote.locked_exec import LOCK_BUSY_EXIT

#: Preflight + blob inventory (stdin: {"workdir", "blobs"}); its first line is the Python version.
PROBE = source("probe")
#: Folders of hard links to verified blobs (stdin: {"workdir", "dirs", "stall"}).
INSTALL = source("install")
#: The blob receiver (argv: WORKDIR STALL); a JSON-lines dialogue on stdin/stdout.
RECEIVER = source("receiver")
#: flock wrapper (argv: LOCKFILE wait|nowait COMMAND...); exit ``LOCK_BUSY_EXIT`` when busy with nowait.
LOCKED_EXEC = source("locked_exec")

__all__ = ["INSTALL", "LOCKED_EXEC", "LOCK_BUSY_EXIT", "PROBE", "RECEIVER"]
