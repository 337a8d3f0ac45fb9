#!/usr/bin/env python3
"""Our push vs ``scp`` vs ``rsync`` on the same file (1 GiB by default), side by side.

    python bench/push_throughput.py                 # starts its own sshd on a loopback port
    python bench/push_throughput.py --board rock5b  # a board from the inventory

Each tool runs ``--reps`` times, interleaved (push, scp, rsync, push, ...) so a busy machine
hurts all three alike; the best run of each is compared. Our push is measured end to end:
preflight, transfer, sha256 verification on the board, atomic rename and install. Its sha256
is computed while the file is written here, as a build's manifest would carry it. scp and
rsync run with OpenSSH's defaults (same login, same pinned host key); ``scp-gcm`` is scp forced to
our cipher (aes128-gcm), to show what the cipher alone is worth. The test file lives in
/tmp and is deleted afterwards, as are the remote copies. The last line is
``ratio push/scp: X.XX``.
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path, PurePosixPath

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from host.deploy.push import LocalFile, PushDir, push_board  # noqa: E402
from host.deploy.ssh import SshTransport  # noqa: E402
from host.testing.deploy import random_file  # noqa: E402

MiB = 1 << 20


def timed(argv: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, stdin=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--board", help="inventory board to use (default: start a loopback sshd)")
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()

    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="rkdeploy-bench-", dir="/tmp")))
        if a.board:
            from host.deploy.inventory import load_inventory

            board = load_inventory().select(a.board)[0]
            transport = SshTransport(board)
        else:
            from host.testing.deploy import board_for
            from host.testing.sshd import TestSshd

            sshd = stack.enter_context(TestSshd.start(tmp / "sshd"))
            board = board_for(sshd, name="loopback", workdir=tmp / "board")
            transport = SshTransport(board, known_hosts=[sshd.write_known_hosts(tmp / "known_hosts")])
        stack.callback(transport.close)
        transport.connect()
        remote_tmp = PurePosixPath(str(board.workdir)) / "bench-tmp"
        transport.run(["mkdir", "-p", str(remote_tmp)])
        stack.callback(lambda: transport.run(["rm", "-rf", str(remote_tmp)], check=False))

        src = tmp / "payload.bin"
        print(f"writing {a.size_mib} MiB of random bytes to {src} ...", flush=True)
        sha = random_file(src, a.size_mib * MiB)
        size = src.stat().st_size
        kh, key = transport.pinned_known_hosts()
        stack.callback(kh.unlink)
        opts = transport.openssh_options(kh, key, ciphers=None)
        gcm = transport.openssh_options(kh, key, ciphers="aes128-gcm@openssh.com")
        dest = f"{board.host}:{remote_tmp}/"
        item = PushDir(f"bench-tmp/{sha[:12]}", {"payload.bin": LocalFile(src, sha, size)})
        blob = PurePosixPath(str(board.workdir)) / "blobs" / sha

        def run_push() -> float:
            transport.run(["rm", "-rf", str(blob), str(PurePosixPath(str(board.workdir)) / item.remote)])
            t0 = time.perf_counter()
            res = push_board(transport, [item])
            dt = time.perf_counter() - t0
            assert res.sent == size, res
            return dt

        def run_scp() -> float:
            transport.run(["rm", "-f", f"{remote_tmp}/scp.bin"])
            return timed(["scp", "-q", *opts, str(src), dest + "scp.bin"])

        def run_scp_gcm() -> float:
            transport.run(["rm", "-f", f"{remote_tmp}/scp-gcm.bin"])
            return timed(["scp", "-q", *gcm, str(src), dest + "scp-gcm.bin"])

        def run_rsync() -> float:
            transport.run(["rm", "-f", f"{remote_tmp}/rsync.bin"])
            return timed(["rsync", "-q", "-e", shlex.join(["ssh", *opts]), str(src), dest + "rsync.bin"])

        tools = {"push": run_push, "scp": run_scp, "scp-gcm": run_scp_gcm, "rsync": run_rsync}
        samples: dict[str, list[float]] = {k: [] for k in tools}
        for rep in range(a.reps):
            for name, fn in tools.items():
                dt = fn()
                samples[name].append(size / MiB / dt)
                print(f"  rep {rep + 1} {name:7s} {dt:6.2f} s  {size / MiB / dt:7.1f} MiB/s", flush=True)
        transport.run(["rm", "-rf", str(blob), str(PurePosixPath(str(board.workdir)) / item.remote)], check=False)
        src.unlink()

    best = {k: max(v) for k, v in samples.items()}
    print(f"\nfile {size / MiB:.0f} MiB to {board.name} ({board.host}:{board.port}), best of {a.reps}:")
    for k, v in best.items():
        print(f"  {k:7s} {v:7.1f} MiB/s   (runs: {', '.join(f'{x:.0f}' for x in samples[k])})")
    print("push = preflight + stream via OpenSSH (aes128-gcm) + sha256 on the board + rename + install")
    print(f"ratio push/rsync: {best['push'] / best['rsync']:.2f}")
    print(f"ratio push/scp-gcm (same cipher): {best['push'] / best['scp-gcm']:.2f}")
    print(f"ratio push/scp: {best['push'] / best['scp']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
