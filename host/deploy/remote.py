"""Programs the deployer runs on a board with ``python3 -c`` (stdlib only), and the remote
doctor/bench helpers built on them.

Board layout under ``workdir``::

    blobs/<sha256>            content-addressed files (never modified once renamed in)
    blobs/.partial-<sha256>   an upload in progress; a later push resumes from its verified bytes
    artifacts/<model>/<target>/<scheme>/   hard links to blobs (+ manifest.json)
    runner/board/...          the board runner package, hard links to blobs
    .bench.lock               flock held while a benchmark runs
"""

from __future__ import annotations

# Preflight + inventory of blobs, in one round trip and one interpreter start.
# stdin: {"workdir", "blobs": [sha...]}. First line out: the interpreter's version; below 3.8 it
# stops there. Python 2/3 syntax on purpose, so an old interpreter is named, never crashes first.
PROBE = r'''
import sys
sys.stdout.write("%d.%d.%d\n" % tuple(sys.version_info[:3]))
if sys.version_info < (3, 8):
    sys.exit(0)
import hashlib, json, os
req = json.loads(sys.stdin.read())
wd = os.path.abspath(os.path.expanduser(req["workdir"]))
out = {"workdir": wd, "writable": False, "free": 0, "blobs": {}, "error": None}
bd = os.path.join(wd, "blobs")
try:
    if not os.path.isdir(bd):
        os.makedirs(bd)
    t = os.path.join(bd, ".probe-%d" % os.getpid())
    open(t, "w").close()
    os.unlink(t)
    out["writable"] = True
except (IOError, OSError) as e:
    out["error"] = "%s: %s" % (getattr(e, "filename", None) or bd, e.strerror or e)
p = wd
while not os.path.exists(p) and os.path.dirname(p) != p:
    p = os.path.dirname(p)
st = os.statvfs(p)
out["free"] = st.f_bavail * st.f_frsize
for sha in req.get("blobs", []):
    if len(sha) != 64 or sha.strip("0123456789abcdef"):
        continue
    final = os.path.join(bd, sha)
    part = os.path.join(bd, ".partial-" + sha)
    if os.path.isfile(final):
        out["blobs"][sha] = {"have": os.path.getsize(final)}
    elif os.path.isfile(part):
        h = hashlib.sha256()
        with open(part, "rb") as f:
            for b in iter(lambda: f.read(1 << 20), b""):
                h.update(b)
        out["blobs"][sha] = {"partial": os.path.getsize(part), "prefix": h.hexdigest()}
sys.stdout.write(json.dumps(out) + "\n")
'''

# Makes folders of hard links to blobs, atomically (temp folder + rename); folders already
# identical (same inodes) are left alone. Shared by INSTALL and RECEIVER.
_INSTALL_LIB = r'''
import os, shutil, tempfile
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
def install(wd, dirs):
    bd = os.path.join(wd, "blobs")
    res = {}
    for d in dirs:
        final = os.path.join(wd, _safe(d["path"]))
        files = d["files"]
        for name, sha in files.items():
            _safe(name)
            if not os.path.isfile(os.path.join(bd, sha)):
                raise ValueError("blob %s for %s is missing" % (sha, name))
        if _current(final, bd, files):
            res[d["path"]] = "unchanged"
            continue
        parent = os.path.dirname(final)
        if not os.path.isdir(parent):
            os.makedirs(parent)
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
'''

# stdin: {"workdir", "dirs": [{"path": "artifacts/m/t/s", "files": {"name": sha}}]}
INSTALL = _INSTALL_LIB + r'''
import json, sys
req = json.loads(sys.stdin.read())
sys.stdout.write(json.dumps(install(os.path.abspath(os.path.expanduser(req["workdir"])), req["dirs"])) + "\n")
'''

# Receives frames on stdin (argv[1] = workdir). A blob frame is a JSON header line
# {"sha256", "size", "offset"} then size-offset bytes; an install frame is {"install": dirs}.
# Three threads overlap the work: this one reads the pipe, one writes blobs/.partial-<sha>
# (starting writeback every 8 MiB so the final fsync is short), one hashes (hashlib drops the
# GIL). A blob is renamed to blobs/<sha> only when its sha256 matches. One JSON line per frame.
RECEIVER = _INSTALL_LIB + r'''
import fcntl, hashlib, json, queue, signal, sys, threading
signal.signal(signal.SIGHUP, signal.SIG_IGN)
signal.signal(signal.SIGPIPE, signal.SIG_IGN)
wd = os.path.abspath(os.path.expanduser(sys.argv[1]))
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
def say(**kw):
    try:
        sys.stdout.write(json.dumps(kw) + "\n")
        sys.stdout.flush()
    except OSError:
        pass
def hasher(h, q):
    for b in iter(q.get, None):
        h.update(b)
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
while True:
    line = readline()
    if not line:
        break
    hdr = json.loads(line)
    if "install" in hdr:
        try:
            say(install=install(wd, hdr["install"]))
        except (OSError, ValueError) as e:
            say(install=None, error=str(e))
            sys.exit(5)
        continue
    sha, size, off = hdr["sha256"], int(hdr["size"]), int(hdr["offset"])
    if len(sha) != 64 or sha.strip("0123456789abcdef") or not 0 <= off <= size:
        say(sha256=sha, status="error", error="bad header %r" % hdr)
        sys.exit(2)
    part = os.path.join(bd, ".partial-" + sha)
    final = os.path.join(bd, sha)
    h = hashlib.sha256()
    hq, wq, err = queue.Queue(16), queue.Queue(16), []
    got = off
    fd = -1
    try:
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | (0 if off else os.O_TRUNC), 0o644)
        ht = threading.Thread(target=hasher, args=(h, hq))
        ht.start()
        if off:
            with open(part, "rb") as f:
                left = off
                while left:
                    b = f.read(min(1 << 20, left))
                    if not b:
                        raise ValueError("partial file shorter than the resume offset")
                    hq.put(b)
                    left -= len(b)
            os.ftruncate(fd, off)
            os.lseek(fd, off, 0)
        wt = threading.Thread(target=writer, args=(fd, wq, err, off))
        wt.start()
        while got < size and not err:
            b = read(min(1 << 20, size - got))
            if not b:
                break
            hq.put(b)
            wq.put(b)
            got += len(b)
        wq.put(None)
        wt.join()
        if err:
            raise err[0]
        os.fsync(fd)
    except (OSError, ValueError) as e:
        hq.put(None)
        if fd >= 0:
            os.close(fd)
        try:
            os.unlink(part)
        except OSError:
            pass
        say(sha256=sha, status="error", error=str(getattr(e, "strerror", None) or e), errno=getattr(e, "errno", None))
        os._exit(4)
    hq.put(None)
    ht.join()
    os.close(fd)
    if got < size:
        say(sha256=sha, status="short", have=got)
        sys.exit(3)
    if h.hexdigest() != sha:
        os.unlink(part)
        say(sha256=sha, status="mismatch", got=h.hexdigest())
        continue
    os.rename(part, final)
    dfd = os.open(bd, os.O_RDONLY)
    os.fsync(dfd)
    os.close(dfd)
    say(sha256=sha, status="ok")
'''

# flock wrapper: argv = lockfile wait|nowait command... ; holds the lock across exec.
LOCKED_EXEC = r'''
import fcntl, os, sys, time
lock, mode, cmd = sys.argv[1], sys.argv[2], sys.argv[3:]
d = os.path.dirname(lock)
if d and not os.path.isdir(d):
    os.makedirs(d)
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
