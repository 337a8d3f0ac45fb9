"""Hand-made rows shaped like a `make demo` store (numbers of README's measured table), plus one row of a
real-looking RK3588 board (device tree names the chip, ondemand DDR governor) and the emulated vrk3588.
Fakes for the report/compare tests: every number here is typed, none is measured."""

from __future__ import annotations

from board.rows import ResultRow

HOST_ENV = {"arch": "x86_64", "emulated": False, "cpu": {"model": "AMD EPYC", "cores": 2, "soc": None},
            "cpufreq": {}, "devfreq": {}, "thermal_c": {}}
BOARD_ENV = {"arch": "aarch64", "emulated": False,
             "cpu": {"model": "Cortex-A76", "cores": 8, "soc": "radxa,rock-5b rockchip,rk3588"},
             "cpufreq": {"policy0": {"governor": "performance"}, "policy4": {"governor": "performance"}},
             "devfreq": {"dmc": {"governor": "dmc_ondemand", "cur_hz": 528000000}, "fdab0000.npu": {"governor": "performance"}},
             "thermal_c": {"soc-thermal": 83.5}}
VBOARD_ENV = {"arch": "aarch64", "emulated": True, "emulation": ["qemu-aarch64"],
              "cpu": {"model": "Cortex-A76", "soc": "rockchip,rk3588"},
              "cpufreq": {"policy0": {"governor": "schedutil"}}, "devfreq": {"dmc": {"governor": "performance"}}}

#: scheme -> (decode tok/s, prefill tok/s, TTFT ms, peak MB, artifact bytes, PPL ratio, KLD, top-1)
LLM = {"fp32": (15.73, 119.1, 1083.9, 1079, 538_000_000, 1.0, 0.0, 1.0),
       "int8": (45.14, 83.2, 1544.0, 345, 175_000_000, 1.0022, 0.0045, 0.953),
       "int4": (66.27, 146.8, 872.3, 285, 125_000_000, 1.3286, 0.4235, 0.604),
       "int8-dyn": (21.46, 121.1, 1057.2, 591, 175_000_000, 1.0600, 0.0810, 0.818)}


def spread(mean: float, n: int, rel: float = 0.02, shift: float = 0.0) -> list[float]:
    """n samples around mean*(1+shift), +-rel, deterministic."""
    return [mean * (1 + shift) * (1 + rel * ((k % 5) - 2) / 2) for k in range(n)]


def llm_row(scheme: str, *, t: str = "2026-12-02T15:00:00Z", reps: int = 5, shift: float = 0.0, board: str = "local",
            target: str = "rk3576", backend: str = "onnxruntime", env: dict | None = None, **kw) -> ResultRow:
    d, pf, ttft, mb, size, *_q = LLM.get(scheme, LLM["int8"])
    dec = spread(d, reps, shift=shift)
    tt = spread(ttft, reps, shift=-shift)
    walls = [int((x / 1000 + 64 / y) * 1e9) for x, y in zip(tt, dec, strict=True)]
    base = dict(kind="bench", test="pp+tg", model="smollm2-135m-instruct", target=target, scheme=scheme, backend=backend,
                runtime="onnxruntime 1.24.1", board=board, n_prompt=128, n_gen=64, threads=2, reps=reps, warmup=1,
                ttft_ms=sum(tt) / reps, ttft_stddev_ms=ttft * 0.01, prefill_tps=pf, decode_tps=sum(dec) / reps,
                decode_stddev_tps=d * 0.01, peak_rss_mb=mb, model_size=size, artifact_sha256=f"sha-{scheme}-{target}",
                samples_decode_tps=dec, samples_ttft_ms=tt, samples_ns=walls, samples_ts=[192e9 / w for w in walls],
                avg_ns=sum(walls) // reps, stddev_ns=1, avg_ts=sum(192e9 / w for w in walls) / reps, stddev_ts=0.1,
                test_time=t, runner_version="1.3.0", env=env or HOST_ENV)
    base.update(kw)
    return ResultRow(**base)


def quality_row(scheme: str, like: str | None = None, **kw) -> ResultRow:
    *_b, size, ppl, kld, top1 = LLM[like or scheme]
    base = dict(kind="quality", test="ppl", model="smollm2-135m-instruct", target="rk3576", scheme=scheme,
                backend="onnxruntime", ppl=12.0 * ppl, ppl_ratio=ppl, kld_mean=kld, kld_p99=kld * 5, top1_agree=top1,
                n_tokens=4599, method="measured", artifact_sha256=f"sha-{scheme}-rk3576", model_size=size)
    base.update(kw)
    return ResultRow(**base)


def encoder_row(*, t: str = "2026-12-02T15:00:00Z", **kw) -> ResultRow:
    lat = spread(91.47e6, 5)
    base = dict(kind="bench", test="encode", model="all-minilm-l6-v2", target="rk3576", scheme="fp32", backend="onnxruntime",
                board="local", batch=1, seq_len=128, threads=2, latency_ms=91.47, latency_stddev_ms=1.0, latency_p50_ms=91.0,
                latency_p99_ms=95.0, seqs_per_s=10.9, peak_rss_mb=195, samples_ns=[int(x) for x in lat],
                samples_ts=[1e9 / x for x in lat], test_time=t, env=HOST_ENV)
    base.update(kw)
    return ResultRow(**base)


def demo_run(t: str, shift: float = 0.0) -> list[ResultRow]:
    """One `make demo`-like run: local LLM rows of four schemes, an encoder row, a real RK3588 rkllm row and an
    emulated vrk3588 row."""
    rows = [llm_row(s, t=t, shift=shift) for s in LLM]
    rows.append(encoder_row(t=t))
    rows.append(llm_row("w8a8", t=t, shift=shift, board="rock5b", target="rk3588", backend="rkllm",
                        runtime="rkllm 1.2.1", env=BOARD_ENV, decode_tps=18.2, prefill_tps=690.0,
                        samples_decode_tps=spread(18.2, 5, shift=shift), model_size=160_000_000))
    rows.append(llm_row("int8", t=t, reps=2, board="vrk3588", target="rk3588", env=VBOARD_ENV,
                        runtime="onnxruntime 1.32.0", decode_tps=0.4, samples_decode_tps=[0.39, 0.41]))
    return rows


def demo_store_rows() -> list[ResultRow]:
    """Two identical runs, quality rows (measured, one degraded; a simulated one without a size) and an error row."""
    rows = demo_run("2026-12-02T15:00:00Z") + demo_run("2026-12-02T16:00:00Z")
    rows += [quality_row(s) for s in LLM]
    rows.append(quality_row("int4", status="degraded", gate="PPL ratio 1.3286 > 1.10 (int4 band)"))
    rows.append(quality_row("w8a8", like="int8", method="simulated", artifact_sha256=None, model_size=None))
    rows.append(ResultRow(kind="bench", status="error", error="model.onnx missing", backend="onnxruntime", board="local",
                          model="smollm2-135m-instruct", scheme="int4-bad", test_time="2026-12-02T16:00:00Z"))
    return rows
