"""Measurements: monotonic timers, aggregates, peak RSS (VmHWM) and the NPU load sampler."""

from __future__ import annotations

import math
import os
import re
import threading
import time
from typing import List, Optional, Sequence

now_ns = time.perf_counter_ns  # monotonic, highest resolution available


def mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs)


def stddev(xs: Sequence[float]) -> float:
    """Sample standard deviation (n-1); 0.0 for a single sample (as llama-bench)."""
    if len(xs) < 2:
        return 0.0
    m = mean(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def cv(xs: Sequence[float]) -> float:
    m = mean(xs)
    return stddev(xs) / m if m else 0.0


def percentile(xs: Sequence[float], p: float) -> float:
    """Linear-interpolated percentile (numpy's default method), p in [0, 100]."""
    s = sorted(xs)
    if len(s) == 1:
        return float(s[0])
    k = (len(s) - 1) * p / 100.0
    lo = int(math.floor(k))
    hi = min(lo + 1, len(s) - 1)
    return float(s[lo] + (s[hi] - s[lo]) * (k - lo))


class TokenClock:
    """Timestamps of one generation: ``start()`` at the request, ``on_token`` per token.

    TTFT = first token - start (prefill included); decode tok/s = (n-1) / (last - first).
    """

    def __init__(self) -> None:
        self.t_start = 0
        self.stamps: List[int] = []
        self.tokens: List[int] = []

    def start(self) -> None:
        self.stamps = []
        self.tokens = []
        self.t_start = now_ns()

    def on_token(self, token_id: int) -> None:
        self.stamps.append(now_ns())
        self.tokens.append(int(token_id))

    @property
    def ttft_ns(self) -> int:
        return self.stamps[0] - self.t_start

    @property
    def decode_tps(self) -> Optional[float]:
        if len(self.stamps) < 2 or self.stamps[-1] == self.stamps[0]:
            return None
        return (len(self.stamps) - 1) * 1e9 / (self.stamps[-1] - self.stamps[0])


# --- peak memory -------------------------------------------------------------------------

def read_vmhwm_mb(proc_root: str = "/proc") -> Optional[float]:
    """Peak resident set size of this process (VmHWM) in MB, None when unreadable."""
    try:
        with open(os.path.join(proc_root, "self", "status")) as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        return None
    return None


def reset_vmhwm(proc_root: str = "/proc") -> bool:
    """Reset VmHWM to the current RSS by writing "5" to /proc/self/clear_refs (Linux >= 4.0)."""
    try:
        with open(os.path.join(proc_root, "self", "clear_refs"), "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# --- NPU load ------------------------------------------------------------------------------

NPU_LOAD_PATHS = ("sys/kernel/debug/rknpu/load", "proc/rknpu/load")
_CORE_PCT = re.compile(r"Core\d+:\s*(\d+(?:\.\d+)?)%")


def parse_npu_load(text: str) -> Optional[float]:
    """Mean load over cores from ``NPU load:  Core0: 21%, Core1: 11%, ...`` (None if no core)."""
    vals = [float(v) for v in _CORE_PCT.findall(text)]
    if not vals:
        m = re.search(r"(\d+(?:\.\d+)?)%", text)  # single-core chips print "NPU load: 35%"
        return float(m.group(1)) if m else None
    return sum(vals) / len(vals)


def find_npu_load_file(root: str = "/") -> Optional[str]:
    for rel in NPU_LOAD_PATHS:
        path = os.path.join(root, rel)
        try:
            with open(path) as f:
                if parse_npu_load(f.read()) is not None:
                    return path
        except OSError:
            continue
    return None


class NpuLoadSampler:
    """Background thread sampling NPU load while a test runs; ``mean`` is None when unreadable."""

    def __init__(self, root: str = "/", interval_s: float = 0.1) -> None:
        self.path = find_npu_load_file(root)
        self.interval_s = interval_s
        self.samples: List[float] = []
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                with open(self.path) as f:  # type: ignore[arg-type]
                    v = parse_npu_load(f.read())
                if v is not None:
                    self.samples.append(v)
            except OSError:
                pass
            self._stop.wait(self.interval_s)

    def __enter__(self) -> NpuLoadSampler:
        if self.path is not None:
            self._thread = threading.Thread(target=self._loop, name="npu-load", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)

    @property
    def mean(self) -> Optional[float]:
        return mean(self.samples) if self.samples else None
