"""Runner overhead: the board runner's measured wall time vs a bare loop over the same backend.

    python bench/runner_overhead.py                       # fake backend, 20 ms prefill, 2 ms/token
    python bench/runner_overhead.py --artifact DIR --backend onnxruntime --n-gen 32

Prints the ratio runner / bare (1.00 = no overhead) and, with a zero-latency fake backend, the
runner's cost per token callback in microseconds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from board.artifact import read_artifact  # noqa: E402
from board.backends import load_backend  # noqa: E402
from board.runner import BenchConfig, default_threads, make_prompt, run_bench  # noqa: E402
from board.testing.artifacts import write_fake_artifact  # noqa: E402


def bare_loop(artifact: str, backend: str, n_prompt: int, n_gen: int, reps: int, threads: int) -> list[float]:
    b = load_backend(backend)
    b.load(artifact, {"manifest": read_artifact(artifact), "threads": threads})
    prompt = make_prompt(n_prompt, int(getattr(b, "vocab_size", 0) or 1000))
    b.generate(prompt, n_gen, lambda t: None)  # warmup, as the runner does
    walls = []
    for _ in range(reps):
        t0 = time.perf_counter_ns()
        b.generate(prompt, n_gen, lambda t: None)
        walls.append(time.perf_counter_ns() - t0)
    b.close()
    return walls


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--artifact")
    ap.add_argument("--backend", default="fake")
    ap.add_argument("--n-prompt", type=int, default=128)
    ap.add_argument("--n-gen", type=int, default=64)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=default_threads())
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        art = a.artifact or write_fake_artifact(tmp + "/fake", prefill_ms=20, token_ms=2)
        bare = bare_loop(art, a.backend, a.n_prompt, a.n_gen, a.reps, a.threads)
        row = run_bench(BenchConfig(artifact=art, backend=a.backend, n_prompt=a.n_prompt, n_gen=a.n_gen, reps=a.reps,
                                    warmup=1, threads=a.threads))
        if row.status != "ok":
            sys.exit(f"runner failed: {row.error}")
        ratio = row.avg_ns / statistics.mean(bare)
        print(f"backend {a.backend}, {a.n_prompt} prompt + {a.n_gen} generated tokens, {a.reps} reps")
        print(f"bare loop  {statistics.mean(bare) / 1e6:.2f} ms  (stddev {statistics.stdev(bare) / 1e6:.2f})")
        print(f"runner     {row.avg_ns / 1e6:.2f} ms  (stddev {row.stddev_ns / 1e6:.2f})")
        print(f"overhead ratio runner/bare: {ratio:.4f}")
        zero = write_fake_artifact(tmp + "/zero", prefill_ms=0, token_ms=0)
        n = 5000
        bare0 = statistics.median(bare_loop(zero, "fake", 1, n, 5, 1))
        run0 = run_bench(BenchConfig(artifact=zero, backend="fake", n_prompt=1, n_gen=n, reps=5, warmup=1))
        per_tok_us = (statistics.median(run0.samples_ns) - bare0) / n / 1e3
        print(f"per-token callback cost: {per_tok_us:.2f} us (zero-latency fake, {n} tokens)")


if __name__ == "__main__":
    main()
