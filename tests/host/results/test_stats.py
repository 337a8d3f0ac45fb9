"""Mann-Whitney U against known values: scipy's documented example (exact and asymptotic) and hand counts."""

from __future__ import annotations

import pytest

from host.results import stats


def test_scipy_documented_example_exact_and_normal(monkeypatch):
    """scipy.stats.mannwhitneyu docs: males vs females, U1 = 17, exact p = 0.1111, asymptotic p = 0.11134688653314041."""
    males, females = [19, 22, 16, 29, 24], [20, 11, 17, 12]
    exact = stats.mann_whitney_u(males, females)
    assert (exact.u, exact.method) == (17.0, "exact") and exact.p == pytest.approx(1 / 9)
    monkeypatch.setattr(stats, "EXACT_LIMIT", 0)
    normal = stats.mann_whitney_u(males, females)
    assert normal.method == "normal" and normal.p == pytest.approx(0.11134688653314041, rel=1e-12)


@pytest.mark.parametrize(("a", "b", "u", "p"), [
    ([1, 2, 3], [4, 5, 6], 0.0, 2 / 20),           # the most extreme of C(6,3) = 20 splits, both tails
    ([1, 2, 3, 4, 5], [6, 7, 8, 9, 10], 0.0, 2 / 252),
    ([6, 7, 8, 9, 10], [1, 2, 3, 4, 5], 25.0, 2 / 252),
    ([1.0, 1.0, 1.0], [1.0, 1.0, 1.0], 4.5, 1.0),  # identical samples: no evidence at all
    ([1, 2], [3, 4], 0.0, 2 / 6),                   # two reps a side can never reach p < 0.05
])
def test_exact_small_samples(a, b, u, p):
    got = stats.mann_whitney_u(a, b)
    assert got.u == u and got.p == pytest.approx(p)


def test_ties_use_midranks():
    assert stats.midranks([3, 1, 3, 2]) == [3.5, 1.0, 3.5, 2.0]
    # with ties the permutation distribution of the mid-ranks is still exact: {1,2} vs {2,3}
    got = stats.mann_whitney_u([1, 2], [2, 3])
    assert got.u == 0.5 and got.p == pytest.approx(4 / 6)


def test_large_samples_take_the_normal_approximation():
    a = [float(x) for x in range(30)]
    b = [x + 100 for x in a]
    got = stats.mann_whitney_u(a, b)
    assert got.method == "normal" and got.p < 1e-9 and stats.mann_whitney_u(a, a).p == 1.0


def test_min_p_and_empty_side():
    assert stats.min_p(2, 2) == pytest.approx(1 / 3) and stats.min_p(5, 5) == pytest.approx(2 / 252)
    with pytest.raises(ValueError, match="at least one sample"):
        stats.mann_whitney_u([], [1.0])
