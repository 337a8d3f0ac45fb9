# rkdeploy receiver
"""The receiver: ``python3 -c <this> WORKDIR STALL`` (STALL: seconds a lock holder may stand still).

A dialogue on stdin/stdout, one JSON line per message::

  host {"sha256", "size"}  -> board takes the blob's lock, then answers
       (with "eager": true the bytes from 0 follow at once: small files, no round trip to wait)
       {"status": "have"}                       verified blob already there (nothing to send)
       {"status": "send", "offset": n, ...}     host sends bytes [n:size]; "quarantined" names a
                                                corrupt blob just moved aside
       {"status": "busy", "holder": ...}        another writer holds the lock and stands still
  after the bytes: {"status": "ok" | "mismatch" | "short" | "error", "offset": n}
  host {"install": dirs}   -> {"install": {path: "installed" | "unchanged"}} or {"install": null, "error"}

plus {"status": "wait"} while waiting for a lock and {"beat": bytes} while working.
Three threads overlap a transfer: the main one reads the pipe, one writes the partial (starting
writeback every 8 MiB so the final fsync is short), one hashes (a resumed prefix first, read
once; hashlib drops the GIL). A blob is renamed to blobs/<sha> only when its sha256 matches;
a resumed blob that does not match loses its partial and the host sends it again from 0.
The first line of this file marks the process (the host's tests find receivers by it).
"""

import fcntl
import hashlib
import json
import os
import queue
import signal
import stat
import sys
import threading

from board.remote.install import locked_install
from board.remote.lib import (
    WORK,
    cache_add,
    cache_flush,
    cache_load,
    check_blob,
    good_sha,
    hash_file,
    heartbeat,
    holder,
    lock,
    lock_path,
    quarantine,
    say,
    unlock,
)

FADVISE = getattr(os, "posix_fadvise", None)  # Linux; elsewhere the final fsync does it all
pending = bytearray()  # bytes read past a header line


def readline():
    while b"\n" not in pending:
        b = os.read(0, 1 << 16)
        if not b:
            return bytes(pending)
        pending.extend(b)
    i = pending.index(b"\n") + 1
    line = bytes(pending[:i])
    del pending[:i]
    return line


def read(n):
    if pending:
        b = bytes(pending[:n])
        del pending[:n]
        return b
    return os.read(0, n)  # straight from the pipe: one copy, no buffer layer


def hasher(h, q, part, off, err):
    if off:
        try:
            hash_file(part, off, h)
        except (IOError, OSError, ValueError) as e:
            err.append(e)
    for b in iter(q.get, None):
        h.update(b)
        WORK[0] += len(b)  # hashing the queue can outlast the transfer: keep the heartbeat moving


def writer(fd, q, err, pos):
    kicked = pos
    for b in iter(q.get, None):
        if err:
            continue
        try:
            view = memoryview(b)
            while view:
                view = view[os.write(fd, view):]
            pos += len(b)
            if pos - kicked >= 8 << 20 and FADVISE:
                # Start writeback of what we wrote (async on Linux: DONTNEED writes dirty pages with
                # WB_SYNC_NONE, then drops the clean ones), so the final fsync finds little to do.
                FADVISE(fd, kicked, pos - kicked, os.POSIX_FADV_DONTNEED)
                kicked = pos
        except OSError as e:
            err.append(e)


def fail(sha, e, part=None):
    if part:
        try:
            os.unlink(part)
        except OSError:
            pass
    say(sha256=sha, status="error", error=str(getattr(e, "strerror", None) or e), errno=getattr(e, "errno", None))
    os._exit(4)


def open_partial(part, size):
    """Our partial, under the blob's lock: resume one that fits, else create it with O_EXCL."""
    try:
        pst = os.lstat(part)
    except OSError:
        pst = None
    if pst is not None and stat.S_ISREG(pst.st_mode) and 0 < pst.st_size <= size:
        fd = os.open(part, os.O_WRONLY)
        os.lseek(fd, pst.st_size, 0)
        return fd, pst.st_size
    if pst is not None:
        os.unlink(part)
    return os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644), 0


def discard(n):
    while n > 0:
        b = read(min(1 << 20, n))
        if not b:
            break
        n -= len(b)
        WORK[0] += len(b)


def receive(wd, bd, sha, size, cache, eager):
    """One blob, under its lock. ``eager``: the host sent the bytes from 0 without waiting for our answer
    (small files): they are read even when not needed, and any old partial is replaced."""
    part = os.path.join(bd, ".partial-" + sha)
    final = os.path.join(bd, sha)
    state, why, st = check_blob(wd, bd, cache, sha, size)
    if state == "ok":
        if os.path.exists(part):
            os.unlink(part)
        say(sha256=sha, status="have")
        if eager:
            discard(size)
        return
    try:
        moved = quarantine(bd, cache, sha, st) if state == "corrupt" else None
        if eager and os.path.lexists(part):
            os.unlink(part)
        fd, off = open_partial(part, size)
    except OSError as e:
        fail(sha, e)
    say(sha256=sha, status="send", offset=off, quarantined=moved, why=why if moved else None)
    h = hashlib.sha256()
    # Resuming, the hasher first reads the partial back: let up to 256 MiB of new bytes wait for it
    # meanwhile, so reading the prefix overlaps the transfer instead of stalling it.
    hq, wq, err = queue.Queue(256 if off else 32), queue.Queue(32), []
    ht = threading.Thread(target=hasher, args=(h, hq, part, off, err))
    ht.start()
    wt = threading.Thread(target=writer, args=(fd, wq, err, off))
    wt.start()
    got = off
    while got < size and not err:
        b = read(min(1 << 20, size - got))
        if not b:
            break
        hq.put(b)
        wq.put(b)
        got += len(b)
        WORK[0] += len(b)
    wq.put(None)
    wt.join()
    try:
        if err:
            raise err[0]
        os.fsync(fd)
    except (OSError, ValueError) as e:
        hq.put(None)
        os.close(fd)
        fail(sha, e, part)
    hq.put(None)
    ht.join()
    os.close(fd)
    if got < size:
        cache_flush(wd, bd, cache)
        say(sha256=sha, status="short", have=got, offset=off)
        sys.exit(3)
    if err:  # the prefix could not be read back
        fail(sha, err[0], part)
    if h.hexdigest() != sha:
        os.unlink(part)
        say(sha256=sha, status="mismatch", got=h.hexdigest(), offset=off)
        return
    os.rename(part, final)
    dfd = os.open(bd, os.O_RDONLY)
    os.fsync(dfd)
    os.close(dfd)
    cache_add(wd, bd, cache, sha, os.lstat(final), flush=size >= 8 << 20)  # small ones: at install / the end
    say(sha256=sha, status="ok", offset=off)


def main(argv):
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    wd = os.path.abspath(os.path.expanduser(argv[1]))
    stall = float(argv[2]) if len(argv) > 2 else 30.0
    bd = os.path.join(wd, "blobs")
    try:
        fcntl.fcntl(0, 1031, 1 << 20)  # F_SETPIPE_SZ: fewer, larger reads
    except OSError:
        pass
    os.makedirs(bd, exist_ok=True)
    cache = cache_load(bd)
    heartbeat(lambda w: say(beat=w))
    while True:
        line = readline()
        if not line:
            break
        hdr = json.loads(line)
        if "install" in hdr:
            cache_flush(wd, bd, cache)
            try:
                say(install=locked_install(wd, hdr["install"], stall))
            except (OSError, ValueError) as e:
                say(install=None, error=str(e))
                sys.exit(5)
            continue
        sha, size = hdr.get("sha256"), hdr.get("size")
        if not good_sha(sha) or not isinstance(size, int) or size < 0:
            say(sha256=str(sha), status="error", error="bad header %r" % hdr)
            sys.exit(2)
        lp = lock_path(wd, "blob-%s.lock" % sha)
        lfd = lock(lp, "blob " + sha, stall, (os.path.join(bd, ".partial-" + sha),))
        if lfd is None:
            say(sha256=sha, status="busy", holder=holder(lp), idle=stall)
            if hdr.get("eager"):
                discard(size)
            continue
        try:
            receive(wd, bd, sha, size, cache, bool(hdr.get("eager")))
        finally:
            unlock(lfd)
    cache_flush(wd, bd, cache)


if __name__ == "__main__":
    main(sys.argv)
