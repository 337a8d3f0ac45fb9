#!/usr/bin/env python3
"""Fan-out: push the same artifact (500 MB) to 4 boards vs 1 board, each behind its own rate-limited link.

    sudo python bench/fanout.py                    # 4 boards, 100 Mbit/s per link, 500 MB
    sudo python bench/fanout.py --rate-mbit 200 --boards 4 --size-mb 500 --reps 2

Each board is a real OpenSSH sshd in a network namespace of its own, reached through a veth pair
whose host side is shaped with ``tc qdisc ... tbf rate R`` (the link to a board in a lab: one
cable, one rate). The push is ``host.deploy.push.push_boards`` as ``rkdeploy push`` runs it
(preflight, stream via OpenSSH, sha256 on the board, install), all boards at once. Runs
alternate 1 board / N boards so a busy machine hurts both alike; before each run the boards'
workdirs are emptied (full push) and the file is dropped from this host's page cache
(``posix_fadvise DONTNEED``), and the bytes this process read from disk are counted
(``/proc/self/io`` read_bytes): N boards read the file from disk once, the page cache serves the
other N-1 streams. Needs root (netns, tc). The last line is ``ratio N boards / 1 board: X.XX``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from host.deploy.push import LocalFile, PushDir, push_boards  # noqa: E402
from host.deploy.ssh import SshTransport  # noqa: E402
from host.testing.deploy import board_for, random_file  # noqa: E402
from host.testing.sshd import TestSshd  # noqa: E402

MB = 1_000_000


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, stdin=subprocess.DEVNULL)


def read_bytes() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("read_bytes:"):
            return int(line.split()[1])
    return 0


class ShapedLink:
    """A network namespace with a veth pair; the host side sends at most ``rate_mbit``."""

    def __init__(self, i: int, rate_mbit: float):
        tag = f"{os.getpid() % 100000}{i}"
        self.ns, self.host_if, self.board_if = f"rkfan{tag}", f"rkf{tag}h", f"rkf{tag}b"
        net = f"10.{100 + os.getpid() % 100}.{i}"
        self.host_ip, self.board_ip = f"{net}.1", f"{net}.2"
        sh("ip", "netns", "add", self.ns)
        sh("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.board_if)
        sh("ip", "link", "set", self.board_if, "netns", self.ns)
        sh("ip", "addr", "add", f"{self.host_ip}/30", "dev", self.host_if)
        sh("ip", "link", "set", self.host_if, "up")
        sh("ip", "-n", self.ns, "addr", "add", f"{self.board_ip}/30", "dev", self.board_if)
        sh("ip", "-n", self.ns, "link", "set", self.board_if, "up")
        sh("ip", "-n", self.ns, "link", "set", "lo", "up")
        sh("tc", "qdisc", "add", "dev", self.host_if, "root", "tbf", "rate", f"{rate_mbit}mbit", "burst", "256kb",
           "latency", "50ms")

    def close(self) -> None:
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--boards", type=int, default=4)
    ap.add_argument("--size-mb", type=int, default=500)
    ap.add_argument("--rate-mbit", type=float, default=100.0, help="per-link rate (tc tbf on the host side)")
    ap.add_argument("--reps", type=int, default=1, help="rounds of (1 board, N boards)")
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("fanout: needs root (network namespaces and tc)", file=sys.stderr)
        return 2
    samples: dict[int, list[float]] = {1: [], a.boards: []}
    reads: dict[int, list[int]] = {1: [], a.boards: []}
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="rkdeploy-fanout-", dir="/tmp")))
        boards, known = [], tmp / "known_hosts"
        for i in range(a.boards):
            link = ShapedLink(i, a.rate_mbit)
            stack.callback(link.close)
            sshd = TestSshd.start(tmp / f"sshd{i}", host=link.board_ip, port=2222, netns=link.ns)
            stack.callback(sshd.stop)
            with open(known, "a") as f:
                f.write(sshd.host_key_line())
            boards.append(board_for(sshd, name=f"fan{i}", workdir=tmp / f"board{i}"))
        src = tmp / "artifact.bin"
        print(f"writing {a.size_mb} MB of random bytes; {a.boards} boards behind {a.rate_mbit:g} Mbit/s links ...",
              flush=True)
        sha = random_file(src, a.size_mb * MB)
        item = PushDir(f"artifacts/fanout/{sha[:12]}", {"artifact.bin": LocalFile(src, sha, src.stat().st_size)})

        def run(n: int) -> None:
            for b in boards:
                shutil.rmtree(b.workdir, ignore_errors=True)
            with open(src, "rb") as f:
                os.fsync(f.fileno())
                os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
            r0, t0 = read_bytes(), time.perf_counter()
            res = push_boards(boards[:n], [item], jobs=n, show_progress=False,
                              transport=lambda b: SshTransport(b, known_hosts=[known]))
            dt = time.perf_counter() - t0
            bad = [r for r in res if not r.ok or r.sent < a.size_mb * MB]
            if bad:
                raise SystemExit(f"fanout: push failed: {bad}")
            samples[n].append(dt)
            reads[n].append(read_bytes() - r0)
            rate = n * a.size_mb / dt
            print(f"  {n} board(s): {dt:6.1f} s  ({rate:6.1f} MB/s total, {a.size_mb / dt:5.1f} MB/s per board; "
                  f"read from disk {reads[n][-1] / MB:6.0f} MB)", flush=True)

        for _ in range(a.reps):
            run(1)
            run(a.boards)
    best1, bestn = min(samples[1]), min(samples[a.boards])
    wire = a.size_mb * MB * 8 / (a.rate_mbit * 1e6)
    print(f"\n{a.size_mb} MB to 1 and to {a.boards} boards, each link {a.rate_mbit:g} Mbit/s "
          f"(wire time alone {wire:.1f} s), best of {a.reps}: 1 board {best1:.1f} s, {a.boards} boards {bestn:.1f} s")
    print(f"disk reads per run: 1 board {min(reads[1]) / MB:.0f} MB, {a.boards} boards {min(reads[a.boards]) / MB:.0f} MB")
    print(f"ratio {a.boards} boards / 1 board: {bestn / best1:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
