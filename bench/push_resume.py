#!/usr/bin/env python3
"""Resume vs full send of one big file (540 MB by default) through ``push_board``.

    python bench/push_resume.py                 # starts its own sshd on a loopback port
    python bench/push_resume.py --size-mb 540 --reps 3

Per rep: a full push of a fresh blob (timed), then a push cut off at ``--cut`` (half by default:
the stream is dropped from the host side, as a killed push would, leaving ``blobs/.partial-<sha>``
on the board), then the resuming push (timed). Both timings are end to end: preflight, transfer,
sha256 on the board (for the resume: the partial's prefix is read and hashed once, while the rest
streams in), rename, install. The test file lives in /tmp and is deleted afterwards.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from host.deploy.push import LocalFile, PushDir, push_board  # noqa: E402
from host.deploy.ssh import SshTransport  # noqa: E402
from host.testing.deploy import random_file  # noqa: E402

MB = 1_000_000


class _Cut(Exception):
    pass


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=int, default=540)
    ap.add_argument("--cut", type=float, default=0.5, help="fraction sent before the cut")
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()

    from host.testing.deploy import board_for, receiver_pids
    from host.testing.sshd import TestSshd

    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="rkdeploy-bench-", dir="/tmp")))
        sshd = stack.enter_context(TestSshd.start(tmp / "sshd"))
        wd = tmp / "board"
        board = board_for(sshd, name="loopback", workdir=wd)
        known = sshd.write_known_hosts(tmp / "known_hosts")
        src = tmp / "payload.bin"
        print(f"writing {a.size_mb} MB of random bytes to {src} ...", flush=True)
        sha = random_file(src, a.size_mb * MB)
        size = src.stat().st_size
        item = [PushDir("bench/resume", {"payload.bin": LocalFile(src, sha, size)})]

        def fresh() -> None:
            shutil.rmtree(wd, ignore_errors=True)

        def push(on_bytes=None):
            with SshTransport(board, known_hosts=[known]) as t:
                t0 = time.perf_counter()
                res = push_board(t, item, on_bytes=on_bytes)
                return time.perf_counter() - t0, res

        full, resumed, kept = [], [], []
        for rep in range(a.reps):
            fresh()
            dt, res = push()
            assert res.sent == size, res
            full.append(dt)

            fresh()
            def cut(n: int, seen: list[int] = [0]) -> None:  # noqa: B006 - one counter per definition
                seen[0] += n
                if seen[0] >= a.cut * size:
                    raise _Cut

            with contextlib.suppress(_Cut):
                push(cut)
            deadline = time.monotonic() + 10  # the board's receiver sees the end of its stream and stops
            while receiver_pids(wd) and time.monotonic() < deadline:
                time.sleep(0.05)
            have = next((wd / "blobs").glob(".partial-*")).stat().st_size
            kept.append(have)
            dt, res = push()
            assert res.ok and res.skipped == have and res.sent == size - have, res
            resumed.append(dt)
            print(f"  rep {rep + 1}: full {full[-1]:6.2f} s   resume after {have / MB:6.1f} MB kept: {dt:6.2f} s",
                  flush=True)

    print(f"\nfile {size / MB:.0f} MB over loopback, best of {a.reps}:")
    print(f"  full send        {min(full):6.2f} s  ({size / MB / min(full):.0f} MB/s)")
    print(f"  resume from half {min(resumed):6.2f} s  (partial of {kept[resumed.index(min(resumed))] / MB:.0f} MB "
          "hashed once on the board while the rest streams in)")
    print(f"ratio resume/full: {min(resumed) / min(full):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
