"""Programs the deployer runs on a board with ``python3 -c`` (stdlib only), and the remote
doctor/bench helpers built on them.

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
"""

from __future__ import annotations

# Shared by every program below. Python 2 *syntax* (PROBE must parse on an old interpreter to
# name it); Python >= 3.8 at run time.
_LIB = r'''
import errno, fcntl, hashlib, json, os, stat, sys, threading, time
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
def cache_key(st):
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns]
def cache_load(bd):
    try:
        with open(os.path.join(bd, CACHE)) as f:
            c = json.load(f)
        return c if isinstance(c, dict) else {}
    except (IOError, OSError, ValueError):
        return {}
PENDING = {}
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
'''

# Preflight + inventory of blobs, in one round trip and one interpreter start.
# stdin: {"workdir", "blobs": {sha: size}}. First line out: the interpreter's version; below 3.8
# it stops there. Python 2/3 syntax on purpose, so an old interpreter is named, never crashes first.
# Per blob: {"have": size} (size and sha256 verified), {"partial": bytes} (resumable),
# {"quarantined": path, "why": ...} (was corrupt, moved aside) or nothing (missing). Partials are
# not read here: the receiver hashes a resumed prefix once, while the rest streams in.
PROBE = r'''
import sys
sys.stdout.write("%d.%d.%d\n" % tuple(sys.version_info[:3]))
sys.stdout.flush()  # the host's stall deadline counts from the first byte: say we are alive at once
if sys.version_info < (3, 8):
    sys.exit(0)
''' + _LIB + r'''
req = json.loads(sys.stdin.read())
wd = os.path.abspath(os.path.expanduser(req["workdir"]))
out = {"workdir": wd, "writable": False, "free": 0, "blobs": {}, "error": None}
bd = os.path.join(wd, "blobs")
try:
    os.makedirs(bd, exist_ok=True)  # another push may be creating it too
    t = os.path.join(bd, ".probe-%d" % os.getpid())
    open(t, "w").close()
    os.unlink(t)
    lock_path(wd, "install.lock")
    out["writable"] = True
except (IOError, OSError) as e:
    out["error"] = "%s: %s" % (getattr(e, "filename", None) or bd, e.strerror or e)
p = wd
while not os.path.exists(p) and os.path.dirname(p) != p:
    p = os.path.dirname(p)
st = os.statvfs(p)
out["free"] = st.f_bavail * st.f_frsize
heartbeat(lambda w: (sys.stderr.write("rkdeploy-probe: %d bytes checked\n" % w), sys.stderr.flush()))
blobs = req.get("blobs") or {}
cache = cache_load(bd) if out["writable"] else {}
for sha in sorted(blobs) if out["writable"] else []:
    size = blobs[sha]
    if not good_sha(sha) or not isinstance(size, int):
        continue
    state, why, st = check_blob(wd, bd, cache, sha, size)
    if state == "ok":
        out["blobs"][sha] = {"have": size}
    elif state == "corrupt":
        fd = try_lock(lock_path(wd, "blob-%s.lock" % sha))
        if fd is not None:  # else its writer deals with it, under the lock
            try:
                q = quarantine(bd, cache, sha, st)
            finally:
                os.close(fd)
            if q:
                out["blobs"][sha] = {"quarantined": q, "why": why}
    else:
        part = os.path.join(bd, ".partial-" + sha)
        if os.path.isfile(part):
            out["blobs"][sha] = {"partial": os.path.getsize(part)}
sys.stdout.write(json.dumps(out) + "\n")
'''

# Makes folders of hard links to verified blobs, atomically (temp folder + rename); folders
# already identical (same inodes) are left alone. The caller holds .locks/install.lock.
_INSTALL_LIB = _LIB + r'''
import shutil, tempfile
def _safe(rel):
    parts = rel.split("/")
    if not rel or "\0" in rel or rel.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError("unsafe path %r" % rel)
    return os.path.join(*parts)
def _current(final, bd, files):
    if not os.path.isdir(final):
        return False
    have = set()
    for root, dirs, names in os.walk(final):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for n in names:
            have.add(os.path.relpath(os.path.join(root, n), final).replace(os.sep, "/"))
    if have != set(files):
        return False
    for name, sha in files.items():
        a, b = os.stat(os.path.join(final, _safe(name))), os.stat(os.path.join(bd, sha))
        if (a.st_dev, a.st_ino) != (b.st_dev, b.st_ino):
            return False
    return True
def install(wd, dirs, cache):
    bd = os.path.join(wd, "blobs")
    res = {}
    for d in dirs:
        final = os.path.join(wd, _safe(d["path"]))
        files = d["files"]
        for name, sha in sorted(files.items()):
            _safe(name)
            if not good_sha(sha):
                raise ValueError("bad sha256 %r for %s" % (sha, name))
            state, why, _ = check_blob(wd, bd, cache, sha, None)
            if state != "ok":
                raise ValueError("blob %s... for %s is %s; push again to repair it"
                                 % (sha[:16], name, "missing" if state == "missing" else "corrupt (%s)" % why))
        if _current(final, bd, files):
            res[d["path"]] = "unchanged"
            continue
        parent = os.path.dirname(final)
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=".tmp-%s-" % os.path.basename(final), dir=parent)
        os.chmod(tmp, 0o755)
        try:
            for name, sha in sorted(files.items()):
                dst = os.path.join(tmp, _safe(name))
                if not os.path.isdir(os.path.dirname(dst)):
                    os.makedirs(os.path.dirname(dst))
                src = os.path.join(bd, sha)
                try:
                    os.link(src, dst)
                except OSError:
                    os.symlink(src, dst)
            old = None
            if os.path.exists(final):
                old = os.path.join(parent, ".old-%s-%d" % (os.path.basename(final), os.getpid()))
                os.rename(final, old)
            os.rename(tmp, final)
            if old:
                shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        res[d["path"]] = "installed"
    return res
def locked_install(wd, dirs, stall):
    fd = lock(lock_path(wd, "install.lock"), "install", stall)
    if fd is None:
        raise ValueError("another push (%s) holds %s and made no progress for %g s"
                         % (holder(lock_path(wd, "install.lock")), lock_path(wd, "install.lock"), stall))
    try:
        return install(wd, dirs, cache_load(os.path.join(wd, "blobs")))
    finally:
        unlock(fd)
'''

# stdin: {"workdir", "dirs": [{"path": "artifacts/m/t/s", "files": {"name": sha}}], "stall": s}
INSTALL = _INSTALL_LIB + r'''
req = json.loads(sys.stdin.read())
wd = os.path.abspath(os.path.expanduser(req["workdir"]))
say(install=locked_install(wd, req["dirs"], float(req.get("stall", 30))))
'''

# The receiver (argv[1] = workdir, argv[2] = seconds a lock holder may stand still). A dialogue
# on stdin/stdout, one JSON line per message:
#   host {"sha256", "size"}  -> board takes the blob's lock, then answers
#        (with "eager": true the bytes from 0 follow at once: small files, no round trip to wait)
#        {"status": "have"}                       verified blob already there (nothing to send)
#        {"status": "send", "offset": n, ...}     host sends bytes [n:size]; "quarantined" names a
#                                                 corrupt blob just moved aside
#        {"status": "busy", "holder": ...}        another writer holds the lock and stands still
#   after the bytes: {"status": "ok" | "mismatch" | "short" | "error", "offset": n}
#   host {"install": dirs}   -> {"install": {path: "installed" | "unchanged"}} or {"install": null, "error"}
# plus {"status": "wait"} while waiting for a lock and {"beat": bytes} while working.
# Three threads overlap a transfer: this one reads the pipe, one writes the partial (starting
# writeback every 8 MiB so the final fsync is short), one hashes (a resumed prefix first, read
# once; hashlib drops the GIL). A blob is renamed to blobs/<sha> only when its sha256 matches;
# a resumed blob that does not match loses its partial and the host sends it again from 0.
RECEIVER = "# rkdeploy receiver\n" + _INSTALL_LIB + r'''
import queue, signal
signal.signal(signal.SIGHUP, signal.SIG_IGN)
signal.signal(signal.SIGPIPE, signal.SIG_IGN)
wd = os.path.abspath(os.path.expanduser(sys.argv[1]))
stall = float(sys.argv[2]) if len(sys.argv) > 2 else 30.0
bd = os.path.join(wd, "blobs")
try:
    fcntl.fcntl(0, 1031, 1 << 20)
except OSError:
    pass
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
def receive(sha, size, cache, eager):
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
        receive(sha, size, cache, bool(hdr.get("eager")))
    finally:
        unlock(lfd)
cache_flush(wd, bd, cache)
'''

# flock wrapper: argv = lockfile wait|nowait command... ; holds the lock across exec.
LOCKED_EXEC = r'''
import fcntl, os, sys, time
lock, mode, cmd = sys.argv[1], sys.argv[2], sys.argv[3:]
d = os.path.dirname(lock)
if d:
    os.makedirs(d, exist_ok=True)
fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
except OSError:
    holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
    if mode == "nowait":
        sys.stderr.write("rkdeploy-lock: busy: another benchmark holds %s (%s)\n" % (lock, holder))
        sys.exit(75)
    sys.stderr.write("rkdeploy-lock: waiting: another benchmark holds %s (%s)\n" % (lock, holder))
    sys.stderr.flush()
    fcntl.flock(fd, fcntl.LOCK_EX)
os.ftruncate(fd, 0)
os.pwrite(fd, ("pid %d since %s" % (os.getpid(), time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))).encode(), 0)
os.set_inheritable(fd, True)
os.execvp(cmd[0], cmd)
'''

LOCK_BUSY_EXIT = 75
