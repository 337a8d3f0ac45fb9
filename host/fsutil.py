"""Atomic file writes and hashing: write to a temp name, fsync, rename. Nothing half-written."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

CHUNK = 4 * 1024 * 1024


def sha256_file(path: Path | str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: Path | str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def fsync_tree(root: Path) -> None:
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            with open(os.path.join(dirpath, name), "rb") as f:
                os.fsync(f.fileno())
        _fsync_dir(Path(dirpath))


def stale_atomic_dirs(final: Path | str) -> list[Path]:
    """What an interrupted ``atomic_dir(final)`` can leave beside ``final``: its temp folder
    (``.tmp-<name>-XXXXXXXX``, plus anything a builder names after it, ``<temp>.<suffix>``) and a
    replaced folder not yet removed (``.old-<name>-<pid>``). Only the caller that holds ``final``'s
    build lock may delete them; another artifact's temps (``.tmp-<name>-dyn-…``) never match."""
    final = Path(final)
    name = re.escape(final.name)
    pat = re.compile(rf"\.tmp-{name}-[a-z0-9_]{{8}}(\..+)?|\.old-{name}-\d+")
    if not final.parent.is_dir():
        return []
    return sorted(p for p in final.parent.iterdir() if pat.fullmatch(p.name))


@contextlib.contextmanager
def atomic_dir(final: Path | str) -> Iterator[Path]:
    """Yield an empty temp folder beside ``final``; on success it replaces ``final`` in one rename.

    On any exception (Ctrl-C included) the temp folder is removed and ``final`` is untouched, so
    a half-built artifact never looks complete. Temp folders start with ``.tmp-`` and are ignored
    by readers; a crash that skips cleanup leaves only such a folder.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    try:
        yield tmp
        fsync_tree(tmp)
        if final.exists():
            old = final.with_name(f".old-{final.name}-{os.getpid()}")
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs: it exists (another user's counts) and is not a zombie (killed, not yet reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return False
