"""Programs the deployer runs on a board with ``python3 -c`` (stdlib only, Python >= 3.8 at run time).

Board layout under ``workdir``::

    blobs/<sha256>            content-addressed files (never modified once renamed in)
    blobs/.partial-<sha256>   an upload in progress; a later push resumes from its bytes
    blobs/.verified.json      blobs whose size and sha256 were checked, by (dev, inode, size, mtime_ns)
    blobs/.quarantine/        blobs found corrupt (wrong size or sha256), moved aside, never used again
    .locks/blob-<sha>.lock    flock held by the one process writing (or quarantining) that blob
    .locks/install.lock       flock held while folders are swapped in
    artifacts/<model>/<target>/<scheme>/   hard links to blobs (+ manifest.json)
    runner/board/...          the board runner package, hard links to blobs
    .bench.lock               flock held while a benchmark runs

Any number of pushes (from one host or many, under one inventory name or several) may run at
once: a blob is written only by the holder of its lock, into a partial it created with
``O_EXCL`` or resumed under that lock; a blob counts as present only once its size and sha256
were verified (cached by inode/mtime so a re-push only stats); a process killed while holding a
lock releases it (flock dies with the process). While they work, the programs print heartbeats
(bytes processed) so the host can tell a busy board from a stopped one.

The programs (``probe``, ``install``, ``receiver``, ``locked_exec``) are ordinary modules here, so
ruff, vermin and the unit tests see them. They run before the runner is on the board, so
``source(name)`` makes each one self-contained: every ``from board.remote.X import ...`` statement
is replaced by the text of ``X`` (once per program, without its ``if __name__ == "__main__":``
block). Inlined modules therefore use no ``from __future__`` imports.
"""

import functools
import os
import re

PROGRAMS = ("probe", "install", "receiver", "locked_exec")
HERE = os.path.dirname(os.path.abspath(__file__))
_IMPORT = re.compile(r"^from board\.remote\.(\w+) import ")
_MAIN = '\nif __name__ == "__main__":'


@functools.lru_cache(maxsize=None)
def source(name):
    """The text of program ``name`` (one of ``PROGRAMS``) for ``python3 -c``, its imports inlined."""
    if name not in PROGRAMS:
        raise ValueError("unknown board program %r; known: %s" % (name, ", ".join(PROGRAMS)))
    return _expand(name, {name}, main=True)


def _expand(name, seen, main):
    with open(os.path.join(HERE, name + ".py")) as f:
        text = f.read()
    if not main:
        text = text.split(_MAIN, 1)[0].rstrip("\n") + "\n"
    out = []
    lines = iter(text.splitlines(True))
    for line in lines:
        m = _IMPORT.match(line)
        if m is None:
            out.append(line)
            continue
        stmt = line
        while "(" in stmt and ")" not in stmt:
            stmt += next(lines)
        dep = m.group(1)
        if dep not in seen:
            seen.add(dep)
            out.append(_expand(dep, seen, main=False))
    return "".join(out)
