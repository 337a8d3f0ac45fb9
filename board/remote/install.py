"""Makes folders of hard links to verified blobs, atomically (temp folder + rename); folders
already identical (same inodes) are left alone. ``locked_install`` holds ``.locks/install.lock``.

As a program (the host runs it with ``python3 -c``): stdin {"workdir", "dirs": [{"path":
"artifacts/m/t/s", "files": {"name": sha}}], "stall": s}; stdout {"install": {path: "installed" |
"unchanged"}}. The receiver inlines this file for its in-stream install.
"""

import json
import os
import shutil
import sys
import tempfile

from board.remote.lib import cache_load, check_blob, good_sha, holder, lock, lock_path, say, unlock


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


if __name__ == "__main__":
    req = json.loads(sys.stdin.read())
    say(install=locked_install(os.path.abspath(os.path.expanduser(req["workdir"])), req["dirs"],
                               float(req.get("stall", 30))))
