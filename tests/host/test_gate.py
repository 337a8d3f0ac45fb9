"""Fast unit tests of the quality gate (host/gate.py): bands per test kind and scheme family."""

from __future__ import annotations

import pytest

from host import gate


@pytest.mark.parametrize(("scheme", "fam"), [
    ("w4a16-g64", "w4a16-g"), ("w4a16-g128", "w4a16-g"), ("w8a8-g512", "w8a8-g"), ("w4a16", "w4a16"),
    ("int8-dyn", "int8-dyn"), ("fp32", "fp32"), (None, ""), ("", ""),
])
def test_family_folds_the_group_size(scheme, fam):
    assert gate.family(scheme) == fam


@pytest.mark.parametrize("key", sorted(gate.BANDS))
def test_every_band_has_a_reason_and_limits_for_its_test_kind(key):
    test, _fam = key
    band = gate.BANDS[key]
    assert band.why
    limits = {n: getattr(band, n) for n in gate.UPPER + gate.LOWER if getattr(band, n) is not None}
    assert limits, key
    assert set(limits) <= ({"ppl_ratio", "kld_mean", "top1_agree"} if test == "ppl" else {"cos_mean", "nn_agree"})
    assert all(v >= 1 for n, v in limits.items() if n == "ppl_ratio")
    assert all(0 < v <= 1 for n, v in limits.items() if n in gate.LOWER)


def q(scheme="int8-dyn", test="ppl", **kw):
    return {"kind": "quality", "test": test, "scheme": scheme, "status": "ok", "env": {}, **kw}


@pytest.mark.parametrize(("row", "want"), [
    (q(ppl_ratio=1.06, kld_mean=0.05, top1_agree=0.9), "healthy"),
    (q(ppl_ratio=1.10, kld_mean=0.20, top1_agree=0.75), "healthy"),  # the limits themselves are healthy
    (q(ppl_ratio=1.11), "degraded"),
    (q(kld_mean=0.21), "degraded"),
    (q(top1_agree=0.74), "degraded"),
    (q("w4a16-g64", ppl_ratio=1.75), "healthy"),
    (q("w4a16-g64", ppl_ratio=2.6), "degraded"),
    (q("w4a16", ppl_ratio=3.09), "healthy"),
    (q("fp32", ppl_ratio=1.0001, kld_mean=0.0, top1_agree=1.0), "healthy"),
    (q("int8-qdq", test="embedding", cos_mean=0.99, nn_agree=0.89), "healthy"),
    (q("int8-qdq", test="embedding", cos_mean=0.93), "degraded"),
    (q("w4a16", test="embedding", cos_mean=0.906), "healthy"),
    (q("w4a8", ppl_ratio=9.0), "no band"),
    (q("int8-dyn", test="other", ppl_ratio=9.0), "no band"),
    (q(), "healthy"),  # no numbers: nothing outside the band
])
def test_verdict(row, want):
    v, reason = gate.verdict(row)
    assert v == want
    assert (reason is None) == (want != "degraded")


def test_degraded_reason_names_value_limit_and_the_healthy_figure():
    v, reason = gate.verdict(q(ppl_ratio=1.2345, top1_agree=0.5))
    assert v == gate.DEGRADED
    assert reason == ("PPL ratio 1.234 > 1.1, top-1 0.5 < 0.75 (healthy int8-dyn: 8-bit weights + activations, "
                      "sensitive layers float: 1.06 measured)")


def test_apply_judges_quality_rows_only_and_is_idempotent():
    row = gate.apply(q(ppl_ratio=1.5))
    assert row["status"] == gate.DEGRADED and row["gate"].startswith("PPL ratio 1.5 > 1.1") and \
        row["env"]["gate"] == gate.DEGRADED
    assert gate.apply(dict(row)) == row
    healed = gate.apply({**row, "ppl_ratio": 1.01, "env": {}})  # judged again under the same bands
    assert healed["status"] == "ok" and healed["gate"] is None and healed["env"]["gate"] == "healthy"
    err = q(ppl_ratio=9.0, status="error")
    assert gate.apply(dict(err)) == err
    bench = {"kind": "bench", "status": "ok", "scheme": "int8-dyn", "ppl_ratio": 9.0}
    assert gate.apply(dict(bench)) == bench
    assert gate.apply(q("w4a8", ppl_ratio=9.0, env=None))["status"] == "ok"


def test_degraded_picks_dicts_and_rows():
    from board.rows import ResultRow

    rows = [gate.apply(q(ppl_ratio=1.5)), gate.apply(q(ppl_ratio=1.0)),
            ResultRow.from_dict(gate.apply(q(ppl_ratio=2.0)))]
    assert [r["ppl_ratio"] if isinstance(r, dict) else r.ppl_ratio for r in gate.degraded(rows)] == [1.5, 2.0]
