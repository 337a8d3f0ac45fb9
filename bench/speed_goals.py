#!/usr/bin/env python3
"""Speed goals, measured: the tests bound these times only to an order of magnitude (shared CI machines).

    python bench/speed_goals.py                  # every goal whose parts exist here
    python bench/speed_goals.py --only check,fetch --reps 5

Each goal runs ``--reps`` times; the best run is compared with the goal (a busy moment only ever
makes a run slower). One line per goal: measured, goal, ok/MISSED. Exit status 1 when one is missed.

- ``check``: ``rkdeploy check`` refusing a scheme the target does not allow, CLI start-up included: < 3 s
- ``fetch``: the built-in models reused from the cache (no copy, no re-hash): < 1 s
- ``repush``: pushing unchanged artifacts (runner + 4 MiB) again over SSH (a loopback sshd): < 2 s
- ``fidelity``: the runner's TTFT and decode rate on the librkllmrt shim (gcc) within 2 % of the
  injected 300 ms prefill and 30 ms/token (the tests check the runner against the shim's own clock)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MiB = 1 << 20


def goal_check(tmp: Path) -> float:
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "host.cli", "check", "--target", "rk3588", "--scheme", "w4a16"],
                       cwd=ROOT, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    assert p.returncode == 1 and "is not allowed" in p.stderr, p.stderr
    return dt


def goal_fetch(tmp: Path) -> float:
    from host.models import fetch_all, fetch_builtin

    names = list(fetch_all())  # materialised once (not timed)
    t0 = time.perf_counter()
    for name in names:
        fetch_builtin(name)
    return time.perf_counter() - t0


def goal_repush(tmp: Path) -> Callable[[], float]:
    from host.deploy.push import artifact_dir, push_board, runner_dir
    from host.deploy.ssh import SshTransport
    from host.testing.deploy import board_for, write_artifact
    from host.testing.sshd import TestSshd

    sshd = TestSshd.start(tmp / "sshd").__enter__()
    known = sshd.write_known_hosts(tmp / "known_hosts")
    folder = write_artifact(tmp / "art" / "tiny-llm" / "rk3588" / "int8-dyn", {"model.onnx": os.urandom(4 * MiB)})
    dirs = [runner_dir(), artifact_dir(folder, tmp / "art")]
    board = board_for(sshd, workdir=tmp / "board")
    with SshTransport(board, known_hosts=[known]) as t:
        push_board(t, dirs)

    def once() -> float:
        t0 = time.perf_counter()
        with SshTransport(board, known_hosts=[known]) as t:
            res = push_board(t, dirs)
        dt = time.perf_counter() - t0
        assert res.sent == 0, res
        return dt

    once.close = lambda: sshd.__exit__(None, None, None)  # type: ignore[attr-defined]
    return once


def goal_fidelity(tmp: Path) -> float:
    """Worst relative error of TTFT / decode rate vs the injected latencies."""
    from board.testing.rkllm import build_shim, write_rkllm_artifact

    lib = build_shim(str(tmp / "shim"), "1.3.0") if not (tmp / "shim").exists() else str(tmp / "shim/1.3.0/librkllmrt.so")
    art = write_rkllm_artifact(str(tmp / "rkllm-art"), "1.3.0")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RKLLM")}
    env.update(RKLLM_SHIM_PREFILL_MS="300", RKLLM_SHIM_TOKEN_MS="30")
    p = subprocess.run([sys.executable, "-m", "board", "bench", "--backend", "rkllm", "--artifact", art, "--rkllm-lib",
                        lib, "--n-prompt", "64", "--n-gen", "32", "--reps", "3", "--warmup", "1"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    row = json.loads(p.stdout.splitlines()[-1])
    assert row["status"] == "ok", row["error"]
    return max(abs(row["ttft_ms"] / 300.0 - 1), abs(row["decode_tps"] / (1000.0 / 30.0) - 1))


GOALS: dict[str, tuple[Callable, float, str, Callable[[], bool]]] = {
    "check": (goal_check, 3.0, "s", lambda: True),
    "fetch": (goal_fetch, 1.0, "s", lambda: True),
    "repush": (goal_repush, 2.0, "s", lambda: shutil.which("sshd") is not None or Path("/usr/sbin/sshd").exists()),
    "fidelity": (goal_fidelity, 0.02, "rel. error", lambda: shutil.which("gcc") is not None),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=",".join(GOALS), help=f"comma-separated goals ({', '.join(GOALS)})")
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    wanted = [g.strip() for g in a.only.split(",") if g.strip()]
    unknown = [g for g in wanted if g not in GOALS]
    if unknown:
        ap.error(f"unknown goal(s) {', '.join(unknown)}; known: {', '.join(GOALS)}")
    missed = 0
    with tempfile.TemporaryDirectory(prefix="rkdeploy-goals-") as d:
        tmp = Path(d)
        for name in wanted:
            fn, goal, unit, available = GOALS[name]
            if not available():
                print(f"{name:9s} not measured here (a part is missing: sshd or gcc)")
                continue
            once = fn(tmp) if name == "repush" else (lambda fn=fn: fn(tmp))
            try:
                runs = [once() for _ in range(a.reps)]
            finally:
                getattr(once, "close", lambda: None)()
            best = min(runs)
            ok = best < goal
            missed += not ok
            shown = ", ".join(f"{x:.3f}" for x in runs)
            print(f"{name:9s} best {best:.3f} {unit} (runs {shown}); goal < {goal} {unit}: {'ok' if ok else 'MISSED'}")
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
