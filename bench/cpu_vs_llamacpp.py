#!/usr/bin/env python3
"""Our CPU path (onnxruntime int8 / int4) against llama.cpp (Q8_0 / Q4_0 / Q4_K_M), same run, same method.

    python bench/cpu_vs_llamacpp.py                      # default: 5 rounds, 2 threads, 128 prompt, 64 new
    python bench/cpu_vs_llamacpp.py --rounds 3 --n-prompt 64 --n-gen 32

Every backend is the board's own (board/backends: onnxruntime, llamacpp through rk-llama-run), loaded
for each measurement and measured by the board runner's own ``_measure_generate`` (same prompt ids, n_gen, one warmup,
TTFT and decode rate exactly as in a bench row), one backend loaded at a time. Rounds are INTERLEAVED (each round runs every artifact
once, order rotated) so a busy moment on this shared machine hits every artifact alike; the median
over rounds is printed. Missing artifacts are built first (``export`` of the built-in SmolLM2 with
the ONNX int8/int4 and the GGUF schemes into ``--artifacts``; the llama.cpp build must exist:
``make llamacpp``). Last lines: ``ratio ours/llama.cpp decode: X`` and ``... prefill: X`` (our best
scheme of the pair int8 vs Q8_0).

The 1-minute load average is sampled after every measurement and printed (min / median / max): above
the core count the ratios are not valid. llama.cpp's OpenMP workers spin-wait, so under oversubscription
it loses far more than onnxruntime (measured at load 13-20 on the 2-core Xeon: Q8_0 decode 0.4-1.2 tok/s
against ~67 at load < 4, i.e. "ours/llama.cpp" 5-11x, which is an artifact of the load). Our own graph
levers are compared by CPU time instead (README "CPU levers"): since issue 19 our int8/int4 prune the
lm_head to the last prompt position (prefill CPU time -20 % int8, -14 % int4).
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
LLM = "smollm2-135m-instruct"
OURS = ("int8", "int4")
THEIRS = ("gguf-q8_0", "gguf-q4_0", "gguf-q4_k_m")


def _recipe(tmp: Path) -> Path:
    from tests.conftest import DEFAULT_RECIPE

    data = yaml.safe_load(DEFAULT_RECIPE.read_text())
    base = DEFAULT_RECIPE.parent
    data["models"] = [m for m in data["models"] if m["name"] == LLM]
    m = data["models"][0]
    m.update(calibration=str((base / m["calibration"]).resolve()), onnx=list(OURS), gguf=list(THEIRS), targets={})
    data["text"] = {k: str((base / v).resolve()) for k, v in data["text"].items()}
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(copy.deepcopy(data), sort_keys=False))
    return path


def _load(folder: Path, backend_name: str, threads: int, n_ctx: int):
    from board.backends import load_backend
    from board.manifest import Manifest

    manifest = Manifest.read(str(folder / "manifest.json"))
    be = load_backend(backend_name)
    be.load(str(folder), {"manifest": manifest.to_dict(), "threads": threads, "n_ctx": n_ctx})
    return be, manifest


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-prompt", type=int, default=128)
    ap.add_argument("--n-gen", type=int, default=64)
    ap.add_argument("--artifacts", type=Path, default=ROOT / "artifacts" / "bench-cpu-vs-llamacpp")
    args = ap.parse_args(argv)

    from board.backends.llamacpp import ENV
    from board.rows import ResultRow
    from board.runner import BenchConfig, _measure_generate
    from board.sysinfo import _cpu
    from host.build.llamacpp_tools import driver
    from host.export import export

    os.environ[ENV] = str(driver())

    with tempfile.TemporaryDirectory() as tmp:
        rep = export(_recipe(Path(tmp)), "rk3576", root=args.artifacts, progress=False)
    bad = [(r.job.scheme, r.status, r.reason) for r in rep.results if r.status not in ("built", "up to date", "copied")]
    if bad:
        print(f"export failed: {bad}", file=sys.stderr)
        return 1
    folders = {r.job.scheme: r.job.out_dir for r in rep.results}
    cpu = _cpu("/")
    print(f"cpu: {cpu.get('model')} ({cpu.get('arch')}), threads {args.threads}, n_prompt {args.n_prompt}, "
          f"n_gen {args.n_gen}, {args.rounds} interleaved rounds, median per artifact")
    # One backend loaded at a time: an idle llama.cpp driver keeps its OpenMP threads spinning for a while
    # after each request, which would slow whatever runs beside it (measured: Q8_0 decode 3 tok/s with
    # three drivers loaded at once). Each measurement loads, warms up once and closes (loading is not timed).
    order = [*OURS, *THEIRS]
    sizes: dict[str, int] = {}
    res: dict[str, dict[str, list[float]]] = {s: {"prefill": [], "decode": []} for s in order}
    loads: list[float] = []
    for rnd in range(args.rounds):
        for s in order[rnd % len(order):] + order[:rnd % len(order)]:
            be, manifest = _load(folders[s], "onnxruntime" if s in OURS else "llamacpp", args.threads,
                                 args.n_prompt + args.n_gen + 8)
            try:
                cfg = BenchConfig(artifact=str(folders[s]), backend=be.name, n_prompt=args.n_prompt, n_gen=args.n_gen,
                                  reps=1, warmup=1, threads=args.threads)
                row = ResultRow()
                _measure_generate(cfg, row, be, manifest)
            finally:
                be.close()
            sizes[s] = manifest.size
            loads.append(os.getloadavg()[0])
            res[s]["prefill"].append(row.prefill_tps)
            res[s]["decode"].append(row.decode_tps)
    med = {s: {k: statistics.median(v) for k, v in d.items()} for s, d in res.items()}
    for s in order:
        mb = sizes[s] / 1e6
        print(f"{s:12s} {'onnxruntime' if s in OURS else 'llama.cpp':12s} {mb:6.0f} MB  "
              f"prefill {med[s]['prefill']:8.1f} tok/s  decode {med[s]['decode']:7.1f} tok/s")
    print(f"load average (1 min) over the measurements: min {min(loads):.1f}, median {statistics.median(loads):.1f}, "
          f"max {max(loads):.1f} on {os.cpu_count()} CPUs" + ("  (above the CPU count: ratios not valid)"
                                                              if statistics.median(loads) > (os.cpu_count() or 1) else ""))
    for ours, theirs in (("int8", "gguf-q8_0"), ("int4", "gguf-q4_0"), ("int4", "gguf-q4_k_m")):
        print(f"ratio {ours}/{theirs}: decode {med[ours]['decode'] / med[theirs]['decode']:.2f}, "
              f"prefill {med[ours]['prefill'] / med[theirs]['prefill']:.2f}")
    print(f"ratio ours/llama.cpp decode: {med['int8']['decode'] / med['gguf-q8_0']['decode']:.2f}")
    print(f"ratio ours/llama.cpp prefill: {med['int8']['prefill'] / med['gguf-q8_0']['prefill']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
