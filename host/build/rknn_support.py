"""rknn builder helpers: calibration/evaluation samples for rknn-toolkit2, and the ``adb`` servers it starts.

Kept apart from ``host.build.rknn`` (re-exported there) so each module stays small.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

from host.errors import BuildError

# --- calibration and evaluation data -------------------------------------------------------------

def tokenize(model_dir: Path, texts: list[str], names: list[str], shapes: list[list[int]]) -> list[list]:
    """Samples (one per batch of ``batch`` sentences), each a list of int64 arrays in input order."""
    import numpy as np

    from host.build.onnx_encoder import encode_batch

    batch, seq_len = shapes[0][0], shapes[0][1]
    feeds = encode_batch(model_dir, texts, seq_len, names)
    return [[np.concatenate([f[n] for f in feeds[start:start + batch]]) for n in names]
            for start in range(0, len(feeds) - batch + 1, batch)]


def write_samples(folder: Path, samples: list[list], names: list[str]) -> list[list[str]]:
    """One ``.npy`` per input per sample; returns the paths (the toolkit's dataset.txt format)."""
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, arrays in enumerate(samples):
        paths = []
        for name, a in zip(names, arrays, strict=True):
            p = folder / f"{i:04d}_{name}.npy"
            np.save(p, a)
            paths.append(str(p))
        out.append(paths)
    return out


def write_dataset(path: Path, samples: list[list[str]]) -> None:
    bad = [p for s in samples for p in s if " " in p]
    if bad:
        raise BuildError(f"calibration path {bad[0]!r} contains a space (rknn's dataset.txt is space-separated); "
                         "set TMPDIR to a folder without spaces")
    path.write_text("".join(" ".join(s) + "\n" for s in samples))


# --- adb servers ---------------------------------------------------------------------------------

def adb_pids() -> set[int]:
    """PIDs of live processes named ``adb`` (from /proc; no pgrep needed; zombies are not live)."""
    pids = set()
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError):
                stat = (d / "stat").read_text()
                # "pid (comm) state ...": comm may hold spaces/parens, the state follows the last ')'
                comm, state = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:][:1]
                if comm == "adb" and state != "Z":
                    pids.add(int(d.name))
    return pids


@contextlib.contextmanager
def stopped_adb(log=None) -> Iterator[None]:
    """Stop, by PID, every adb process that appeared while the block ran (the toolkit starts one
    with ``init_runtime(target=...)``/``list_devices()`` and leaves it running)."""
    before = adb_pids()
    try:
        yield
    finally:
        for pid in sorted(adb_pids() - before):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGTERM)
                if log:
                    log(f"stopped adb server started by rknn-toolkit2 (pid {pid})")
        deadline = time.monotonic() + 2.0
        left = adb_pids() - before
        while left and time.monotonic() < deadline:
            time.sleep(0.05)
            left = adb_pids() - before
        for pid in left:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
