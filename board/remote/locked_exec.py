"""flock wrapper: ``python3 -c <this> LOCKFILE wait|nowait COMMAND...``; holds the lock across exec.

Busy with ``nowait``: exit ``LOCK_BUSY_EXIT`` with one ``rkdeploy-lock: busy`` line on stderr; with
``wait``, one ``rkdeploy-lock: waiting`` line, then it waits.
"""

import fcntl
import os
import sys
import time

LOCK_BUSY_EXIT = 75


def main(argv):
    lock, mode, cmd = argv[1], argv[2], argv[3:]
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
            sys.exit(LOCK_BUSY_EXIT)
        sys.stderr.write("rkdeploy-lock: waiting: another benchmark holds %s (%s)\n" % (lock, holder))
        sys.stderr.flush()
        fcntl.flock(fd, fcntl.LOCK_EX)
    os.ftruncate(fd, 0)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    os.pwrite(fd, ("pid %d since %s" % (os.getpid(), stamp)).encode(), 0)
    os.set_inheritable(fd, True)
    os.execvp(cmd[0], cmd)


if __name__ == "__main__":
    main(sys.argv)
