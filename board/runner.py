"""The benchmark runner: warmup, repetitions, fixed prompt/generation lengths, one row per test.

Method (the vendor's): a deterministic prompt of exactly ``n_prompt`` token ids, greedy decoding
of exactly ``n_gen`` tokens with EOS ignored. Per repetition the runner timestamps the request
and every token the backend reports through ``on_token``: TTFT = first token - request
(prefill included), prefill tok/s = n_prompt / TTFT, decode tok/s = (n_gen - 1) / (last - first).
Aggregates are the mean and sample stddev over repetitions; raw samples are kept.

Peak memory: VmHWM. ``python3 -m board bench`` runs exactly one test per process, so the
process peak is the test's peak, load included (``peak_rss_method = "fresh-process"``);
per-repetition peaks are added in ``samples_rss_mb`` where /proc/self/clear_refs can reset VmHWM.
"""

from __future__ import annotations

import datetime
import os
import socket
from typing import Any, Dict, List, Optional

from . import RUNNER_VERSION, metrics
from .artifact import ArtifactError, check_backend, load_artifact
from .backends import BackendError, load_backend
from .manifest import Manifest
from .rows import ResultRow
from .sysinfo import cpufreq, fingerprint

ENCODE_MIN_ITERS = 30  # timed encode batches at least, so p99 means something


def check_counts(counts, optional=()) -> None:
    """(option name, value, lowest allowed) triples: whole numbers (no bool) >= the lowest; a name in
    ``optional`` may be None. The host checks the same before contacting a board (``host.bench``)."""
    for name, value, low in counts:
        if value is None and name in optional:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError("--%s must be a whole number >= %d, got %r" % (name, low, value))


class BenchConfig:
    """What to run; keyword-only, defaults = the vendor method."""

    def __init__(self, *, artifact: str, backend: str, n_prompt: int = 128, n_gen: int = 64, reps: int = 5,
                 warmup: int = 1, threads: Optional[int] = None, board: Optional[str] = None,
                 sysfs_root: str = "/", batch: Optional[int] = None, seq_len: Optional[int] = None,
                 encode_iters: int = ENCODE_MIN_ITERS, fresh_process: bool = False,
                 backend_params: Optional[Dict[str, Any]] = None, debug: bool = False) -> None:
        check_counts((("n-prompt", n_prompt, 1), ("n-gen", n_gen, 1), ("reps", reps, 1), ("warmup", warmup, 0),
                      ("threads", threads, 1), ("batch", batch, 1), ("seq-len", seq_len, 1),
                      ("encode_iters", encode_iters, 1)), optional=("threads", "batch", "seq-len"))
        if not isinstance(backend, str) or not backend:
            raise ValueError("--backend must name a backend, got %r" % (backend,))
        self.artifact = artifact
        self.backend = backend
        self.n_prompt = n_prompt
        self.n_gen = n_gen
        self.reps = reps
        self.warmup = warmup
        self.threads = threads
        self.board = board
        self.sysfs_root = sysfs_root
        self.batch = batch
        self.seq_len = seq_len
        self.encode_iters = encode_iters
        self.fresh_process = fresh_process
        self.backend_params = dict(backend_params or {})
        self.debug = debug


def make_prompt(n: int, vocab_size: int) -> List[int]:
    """Exactly ``n`` deterministic token ids in [lo, vocab_size), same on every machine.

    Skips the lowest ids (special/control tokens in most vocabularies) when the vocab is large.
    """
    lo = min(1000, vocab_size // 4)
    span = max(1, vocab_size - lo)
    return [lo + (7919 * i + 104729) % span for i in range(n)]


def default_threads(root: str = "/") -> int:
    """CPUs of the fastest cluster on big.LITTLE boards (RK3588: the 4 A76), else every usable CPU.

    Small cores slow a synchronous CPU decode down (the slowest thread gates each matmul).
    """
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count() or 1
    big = fastest_cluster_cpus(root)
    return min(big, usable) if big else usable


def fastest_cluster_cpus(root: str = "/") -> int:
    """Number of CPUs whose cpufreq policy has the highest hardware max frequency (0 if unknown)."""
    pols = cpufreq(root)
    maxes = [p["hw_max_khz"] for p in pols.values() if p["hw_max_khz"]]
    if len(set(maxes)) < 2:
        return 0
    top = max(maxes)
    return sum(len((p["cpus"] or "").split()) for p in pols.values() if p["hw_max_khz"] == top)


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _base_row(cfg: BenchConfig) -> ResultRow:
    return ResultRow(kind="bench", backend=cfg.backend, board=cfg.board or socket.gethostname(),
                     test_time=utc_now(), runner_version=RUNNER_VERSION, reps=cfg.reps, warmup=cfg.warmup)


def error_row(cfg: BenchConfig, message: str, row: Optional[ResultRow] = None) -> ResultRow:
    row = row or _base_row(cfg)
    row.status = "error"
    row.error = message
    if row.env is None:
        row.env = fingerprint(cfg.sysfs_root)
    return row


def run_bench(cfg: BenchConfig) -> ResultRow:
    """Run one test on one artifact; known failures become an error row (never raise them)."""
    row = _base_row(cfg)
    try:
        manifest = load_artifact(cfg.artifact)
    except ArtifactError as e:
        return error_row(cfg, str(e), row)
    row.model = manifest.model
    row.target = manifest.target
    row.scheme = manifest.scheme
    row.model_size = manifest.weights_size or None
    row.artifact_sha256 = manifest.sha256
    row.transform = manifest.transform_label
    mix = manifest.mix or {}
    row.budget = mix.get("budget")
    row.int8_nodes = mix.get("int8_node_count")
    row.model_type = manifest.model_type or " ".join(
        str(x) for x in (manifest.model_kind, manifest.format, manifest.scheme) if x)
    encoder = manifest.model_kind == "encoder"
    row.test = "encode" if encoder else "pp+tg"
    row.threads = cfg.threads or default_threads(cfg.sysfs_root)
    row.env = fingerprint(cfg.sysfs_root)
    backend = None
    try:
        backend = load_backend(cfg.backend)
        check_backend(manifest, cfg.backend, os.path.join(cfg.artifact, "manifest.json"))
        params = dict(cfg.backend_params, manifest=manifest.to_dict(), threads=row.threads, n_prompt=cfg.n_prompt, n_gen=cfg.n_gen)
        backend.load(cfg.artifact, params)
        info = backend.info()
        row.env["backend"] = info
        row.runtime = info.get("runtime") or " ".join(str(x) for x in (info.get("name"), info.get("version")) if x)
        if info.get("threads"):
            row.threads = int(info["threads"])
        if encoder:
            _measure_encode(cfg, row, backend, manifest)
        else:
            _measure_generate(cfg, row, backend, manifest)
    except (BackendError, ArtifactError, MemoryError) as e:
        return error_row(cfg, "%s: %s" % (cfg.backend, e) if not str(e).startswith(cfg.backend) else str(e), row)
    except Exception as e:  # noqa: BLE001 - a runtime library failing mid-test still yields a row
        if cfg.debug:
            raise
        first = (str(e).strip().splitlines() or [""])[0][:300]
        return error_row(cfg, "%s: %s: %s" % (cfg.backend, type(e).__name__, first), row)
    finally:
        if backend is not None:
            backend.close()
    return row


def _vocab_size(backend: Any, manifest: Manifest) -> int:
    return int(getattr(backend, "vocab_size", 0) or manifest.vocab_size or 1000)


def _peak(cfg: BenchConfig, row: ResultRow, before: Optional[float], per_rep: List[Optional[float]]) -> None:
    """peak = max(VmHWM before the timed reps (load + warmup), per-rep peaks, VmHWM now)."""
    reps = [x for x in per_rep if x is not None]
    row.samples_rss_mb = [round(x, 1) for x in reps] if reps and len(reps) == len(per_rep) else None
    vals = [x for x in [before, metrics.read_vmhwm_mb()] + reps if x is not None]
    row.peak_rss_mb = round(max(vals), 1) if vals else None
    row.peak_rss_method = "fresh-process" if cfg.fresh_process else "in-process"
    # a backend whose model lives in a child process (llamacpp: rk-llama-run) reports that process's VmHWM:
    # both are resident at once, so the row's peak is the sum (an upper bound), and the method says so
    driver = (row.runtime_perf or {}).get("driver_vmhwm_mb") if isinstance(row.runtime_perf, dict) else None
    if isinstance(driver, (int, float)) and row.peak_rss_mb is not None:
        row.peak_rss_mb = round(row.peak_rss_mb + float(driver), 1)
        row.peak_rss_method += "+driver"


def _measure_generate(cfg: BenchConfig, row: ResultRow, backend: Any, manifest: Manifest) -> None:
    row.n_prompt, row.n_gen = cfg.n_prompt, cfg.n_gen
    prompt = make_prompt(cfg.n_prompt, _vocab_size(backend, manifest))
    clock = metrics.TokenClock()

    def one() -> None:
        clock.start()
        backend.generate(prompt, cfg.n_gen, clock.on_token)
        t_end = metrics.now_ns()
        if len(clock.stamps) != cfg.n_gen:
            raise BackendError("backend reported %d tokens, expected exactly n_gen=%d"
                               % (len(clock.stamps), cfg.n_gen))
        walls.append(t_end - clock.t_start)

    walls: List[int] = []
    for _ in range(cfg.warmup):
        one()
    whole_before = metrics.read_vmhwm_mb()
    walls = []
    ttft: List[float] = []
    decode: List[float] = []
    rss: List[Optional[float]] = []
    with metrics.NpuLoadSampler(cfg.sysfs_root) as npu:
        for _ in range(cfg.reps):
            reset = metrics.reset_vmhwm()
            one()
            rss.append(metrics.read_vmhwm_mb() if reset else None)
            ttft.append(clock.ttft_ns / 1e6)
            d = clock.decode_tps
            if d is not None:
                decode.append(d)
    n = cfg.n_prompt + cfg.n_gen
    row.samples_ns = walls
    row.avg_ns = int(round(metrics.mean(walls)))
    row.stddev_ns = int(round(metrics.stddev(walls)))
    row.samples_ts = [n * 1e9 / w for w in walls]
    row.avg_ts = metrics.mean(row.samples_ts)
    row.stddev_ts = metrics.stddev(row.samples_ts)
    row.wall_ms = row.avg_ns / 1e6
    row.samples_ttft_ms = ttft
    row.ttft_ms = metrics.mean(ttft)
    row.ttft_stddev_ms = metrics.stddev(ttft)
    prefill = [cfg.n_prompt * 1000.0 / t for t in ttft]
    row.prefill_tps = metrics.mean(prefill)
    row.prefill_stddev_tps = metrics.stddev(prefill)
    if decode:
        row.samples_decode_tps = decode
        row.decode_tps = metrics.mean(decode)
        row.decode_stddev_tps = metrics.stddev(decode)
        row.decode_cv = metrics.cv(decode)
    row.npu_load_pct = npu.mean
    perf = getattr(backend, "last_perf", None)
    row.runtime_perf = perf() if callable(perf) else None
    _peak(cfg, row, whole_before, rss)


def _measure_encode(cfg: BenchConfig, row: ResultRow, backend: Any, manifest: Manifest) -> None:
    shape = manifest.inputs or {}
    batch = int(cfg.batch or shape.get("batch") or 1)
    seq_len = int(cfg.seq_len or shape.get("seq_len") or 128)
    row.batch, row.seq_len = batch, seq_len
    ids = make_prompt(seq_len, _vocab_size(backend, manifest))
    inputs = [list(ids) for _ in range(batch)]
    for _ in range(cfg.warmup):
        backend.encode(inputs)
    iters = max(cfg.reps, cfg.encode_iters)
    whole_before = metrics.read_vmhwm_mb()
    lat: List[int] = []
    with metrics.NpuLoadSampler(cfg.sysfs_root) as npu:
        for _ in range(iters):
            t0 = metrics.now_ns()
            backend.encode(inputs)
            lat.append(metrics.now_ns() - t0)
    ms = [x / 1e6 for x in lat]
    row.samples_ns = lat
    row.avg_ns = int(round(metrics.mean(lat)))
    row.stddev_ns = int(round(metrics.stddev(lat)))
    row.samples_ts = [batch * 1e9 / x for x in lat]
    row.avg_ts = metrics.mean(row.samples_ts)
    row.stddev_ts = metrics.stddev(row.samples_ts)
    row.latency_ms = metrics.mean(ms)
    row.latency_stddev_ms = metrics.stddev(ms)
    row.latency_p50_ms = metrics.percentile(ms, 50)
    row.latency_p99_ms = metrics.percentile(ms, 99)
    row.seqs_per_s = batch * 1000.0 / row.latency_ms
    row.wall_ms = sum(ms)
    row.npu_load_pct = npu.mean
    _peak(cfg, row, whole_before, [])
