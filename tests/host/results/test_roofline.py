"""Roofline arithmetic: weights GB/s, % of the target's DDR peak, prefill % of NPU peak; only on the chip."""

from __future__ import annotations

import pytest

from host.results import render, roofline
from tests.host.results.sample_rows import BOARD_ENV, HOST_ENV, VBOARD_ENV, llm_row


def test_decode_times_artifact_bytes_against_ddr_peak():
    r = llm_row("w8a8", board="rock5b", target="rk3588", backend="rkllm", env=BOARD_ENV, decode_tps=20.0,
                model_size=500_000_000)
    assert roofline.weight_gbs(r) == pytest.approx(10.0)  # 20 tok/s x 0.5 GB
    assert roofline.ddr_pct(r) == pytest.approx(100 * 10.0 / 33.8)  # rk3588: 33.8 GB/s in targets.yaml
    rk3576 = llm_row("w4a16", board="rock4d", target="rk3576", backend="rkllm", decode_tps=17.1, model_size=100_000_000,
                     env={**BOARD_ENV, "cpu": {"soc": "radxa,rock-4d rockchip,rk3576"}})
    assert roofline.ddr_pct(rk3576) == pytest.approx(10.0)  # 1.71 GB/s of 17.1


def test_prefill_against_npu_peak():
    r = llm_row("w8a8", board="rock5b", target="rk3588", backend="rkllm", env=BOARD_ENV, prefill_tps=1000.0,
                model_size=1_000_000_000)
    # w8a8: 8 bits -> 1e9 params, 2 ops each per token: 2e12 ops/s of 6 TOPS
    assert roofline.npu_pct(r) == pytest.approx(100 * 2e12 / 6e12)
    assert roofline.npu_pct(llm_row("w4a16", target="rk3576", board="b", backend="rkllm", prefill_tps=1000.0,
                                    model_size=500_000_000, env={"cpu": {"soc": "rockchip,rk3576"}})) \
        == pytest.approx(100 * 2e12 / 6e12)  # 4-bit: 500 MB is 1e9 params too
    assert roofline.npu_pct(llm_row("int8", board="rock5b", target="rk3588", env=BOARD_ENV)) is None  # CPU backend


@pytest.mark.parametrize("env", [HOST_ENV, VBOARD_ENV, None])
def test_no_percentage_off_the_chip(env):
    r = llm_row("int8", target="rk3588", env=env, decode_tps=10.0, model_size=1_000_000_000)
    assert roofline.weight_gbs(r) == pytest.approx(10.0) and roofline.ddr_pct(r) is None and not roofline.on_target(r)


@pytest.mark.parametrize(("scheme", "bits"), [("w8a8-g128", 8), ("w4a16-g64", 4), ("fp16", 16), ("int8-dyn", 8),
                                              ("int4", 4), ("mystery", None)])
def test_weight_bits(scheme, bits):
    assert roofline.weight_bits(scheme) == bits


def test_report_columns_say_what_bytes_per_token_are():
    rows = [llm_row("int8"), llm_row("w8a8", board="rock5b", target="rk3588", backend="rkllm", env=BOARD_ENV)]
    md = render(rows, "md")
    assert "weights GB/s (decode × weight bytes)" in md and "% DDR peak (weight bytes/token)" in md
    line = next(x for x in md.splitlines() if "| rock5b |" in x)
    assert line.rstrip(" |").split("|")[-2].strip() == f"{roofline.ddr_pct(rows[1]):.1f}"
    assert render([llm_row("int8", model_size=None)], "md").count("GB/s") == 0  # no size: no column
