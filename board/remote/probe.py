"""Preflight + inventory of blobs, in one round trip and one interpreter start.

stdin: {"workdir", "blobs": {sha: size}}. First line out: the interpreter's version; below 3.8 it
stops there. Python 2/3 syntax on purpose (this file and what it inlines), so an old interpreter is
named, never crashes first. Then one JSON line: {"workdir", "writable", "free", "error", "blobs"}
where each blob is {"have": size} (size and sha256 verified), {"partial": bytes} (resumable),
{"quarantined": path, "why": ...} (was corrupt, moved aside) or absent (missing). Partials are not
read here: the receiver hashes a resumed prefix once, while the rest streams in.
"""
import sys

sys.stdout.write("%d.%d.%d\n" % tuple(sys.version_info[:3]))
sys.stdout.flush()  # the host's stall deadline counts from the first byte: say we are alive at once
if sys.version_info < (3, 8):
    sys.exit(0)

import json  # noqa: E402
import os  # noqa: E402

from board.remote.lib import cache_load, check_blob, good_sha, heartbeat, lock_path, quarantine, try_lock  # noqa: E402


def probe(req):
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
    return out


if __name__ == "__main__":
    sys.stdout.write(json.dumps(probe(json.loads(sys.stdin.read()))) + "\n")
