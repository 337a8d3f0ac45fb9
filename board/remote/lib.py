"""Shared by every board-side program: JSON messages, flocks with a stall deadline, heartbeats,
hashing, the verified-blob cache and quarantine.

The host inlines this file into each program it runs with ``python3 -c`` (``board.remote.source``),
so it must stay stdlib-only and in Python 2 *syntax* (the probe must parse on an old interpreter to
name it); Python >= 3.8 at run time. No ``from __future__`` imports, no annotations, no f-strings.
"""

import errno
import fcntl
import hashlib
import json
import os
import stat
import sys
import threading
import time

HEX = "0123456789abcdef"
WORK = [0]      # bytes read, hashed or written so far: what the heartbeat reports
HELD = [None]   # the lock file this process holds; its mtime moves while work goes on
_OUT = threading.Lock()


def say(**kw):
    with _OUT:
        try:
            sys.stdout.write(json.dumps(kw) + "\n")
            sys.stdout.flush()
        except (IOError, OSError, ValueError):
            pass


def good_sha(s):
    return isinstance(s, str) and len(s) == 64 and not s.strip(HEX)


def _stamp():
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def lock_path(wd, name):
    d = os.path.join(wd, ".locks")
    try:
        os.makedirs(d)
    except OSError:
        if not os.path.isdir(d):
            raise
    return os.path.join(d, name)


def try_lock(path):
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except (IOError, OSError) as e:
        os.close(fd)
        if e.errno in (errno.EAGAIN, errno.EACCES):
            return None
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, ("pid %d since %s" % (os.getpid(), _stamp())).encode(), 0)
    return fd


def holder(path):
    try:
        with open(path, "rb") as f:
            return f.read(200).decode("utf-8", "replace").strip() or "another push"
    except (IOError, OSError):
        return "another push"


def _sig(p):
    try:
        st = os.stat(p)
        return (st.st_size, st.st_mtime_ns)
    except OSError:
        return None


def lock(path, what, stall, watch=()):
    """flock ``path``. While another process holds it, say {"status": "wait"} every second; give up
    (None) once the holder made no progress for ``stall`` s (its lock file's mtime, which its
    heartbeat moves, and the ``watch`` files stand still)."""
    fd = try_lock(path)
    last, since, told = None, time.time(), 0.0
    while fd is None:
        now = time.time()
        sig = [_sig(p) for p in (path,) + tuple(watch)]
        if sig != last:
            last, since = sig, now
        elif now - since > stall:
            return None
        if now - told >= 1:
            told = now
            say(status="wait", what=what, holder=holder(path))
        time.sleep(0.2)
        fd = try_lock(path)
    HELD[0] = path
    return fd


def unlock(fd):
    HELD[0] = None
    os.close(fd)


def heartbeat(emit):
    """Call ``emit(bytes_done)`` every second while work goes on (and touch the held lock file)."""
    def run():
        last = None
        while True:
            time.sleep(1)
            w = WORK[0]
            if w != last:
                last = w
                if HELD[0]:
                    try:
                        os.utime(HELD[0], None)
                    except OSError:
                        pass
                emit(w)
    t = threading.Thread(target=run)
    t.daemon = True
    t.start()


def hash_file(path, limit=None, h=None):
    h = h or hashlib.sha256()
    with open(path, "rb") as f:
        left = limit
        while left is None or left > 0:
            b = f.read(1 << 20 if left is None else min(1 << 20, left))
            if not b:
                if left:
                    raise ValueError("%s is shorter than %d bytes" % (path, limit))
                break
            h.update(b)
            WORK[0] += len(b)
            if left is not None:
                left -= len(b)
    return h


CACHE = ".verified.json"
PENDING = {}


def cache_key(st):
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns]


def cache_load(bd):
    try:
        with open(os.path.join(bd, CACHE)) as f:
            c = json.load(f)
        return c if isinstance(c, dict) else {}
    except (IOError, OSError, ValueError):
        return {}


def cache_add(wd, bd, cache, sha, st, flush=True):
    """Record a verified blob (best effort: a lost entry only costs a re-hash later)."""
    cache[sha] = PENDING[sha] = cache_key(st)
    if flush:
        cache_flush(wd, bd, cache)


def cache_flush(wd, bd, cache):
    if not PENDING:
        return
    try:
        lfd, deadline = None, time.time() + 2
        while lfd is None and time.time() < deadline:
            lfd = try_lock(lock_path(wd, "verified.lock"))
            if lfd is None:
                time.sleep(0.05)
        if lfd is None:
            return
        try:
            c = cache_load(bd)
            c.update(PENDING)
            PENDING.clear()
            c = dict((k, v) for k, v in c.items() if good_sha(k) and os.path.isfile(os.path.join(bd, k)))
            tmp = os.path.join(bd, "%s.%d.tmp" % (CACHE, os.getpid()))
            with open(tmp, "w") as f:
                json.dump(c, f)
            os.rename(tmp, os.path.join(bd, CACHE))
            cache.update(c)
        finally:
            os.close(lfd)
    except (IOError, OSError):
        pass


def check_blob(wd, bd, cache, sha, size):
    """("ok" | "missing" | "corrupt", why, stat). A blob is "ok" only when its size (if given) and
    sha256 were verified; the sha256 is cached by (dev, inode, size, mtime_ns)."""
    final = os.path.join(bd, sha)
    try:
        st = os.lstat(final)
    except OSError as e:
        if e.errno == errno.ENOENT:
            return "missing", None, None
        raise
    if not stat.S_ISREG(st.st_mode):
        return "corrupt", "not a regular file", st
    if size is not None and st.st_size != size:
        return "corrupt", "%d bytes instead of %d" % (st.st_size, size), st
    if cache.get(sha) != cache_key(st):
        cache.update(cache_load(bd))  # another push may have verified it meanwhile
    if cache.get(sha) == cache_key(st):
        return "ok", None, st
    got = hash_file(final).hexdigest()
    if got == sha and cache_key(os.lstat(final)) == cache_key(st):
        cache_add(wd, bd, cache, sha, st)
        return "ok", None, st
    return "corrupt", "sha256 %s... instead of %s..." % (got[:12], sha[:12]), st


def quarantine(bd, cache, sha, st):
    """Move a corrupt blob aside (caller holds its lock); returns where to, None if it changed."""
    final = os.path.join(bd, sha)
    try:
        now = os.lstat(final)
    except OSError:
        return None
    if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
        return None
    qd = os.path.join(bd, ".quarantine")
    os.makedirs(qd, exist_ok=True)
    name = "%s.%s.%d" % (sha, time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()), os.getpid())
    os.rename(final, os.path.join(qd, name))
    cache.pop(sha, None)
    return "blobs/.quarantine/" + name
