"""Two-sided Mann-Whitney U test on raw per-rep samples (no scipy: a few lines, checked against
scipy's documented values in tests/host/results/test_stats.py).

Small samples (the usual 2-10 reps) get the exact permutation distribution of U over the pooled
mid-ranks, which is exact with ties too; larger ones the normal approximation with tie and
continuity correction (scipy's ``method="asymptotic"``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations

#: Above this many splits of the pooled samples the normal approximation is used.
EXACT_LIMIT = 50_000


@dataclass(frozen=True)
class MannWhitney:
    u: float  # U of the first sample (the number of pairs a > b, ties count 1/2)
    p: float  # two-sided p-value
    method: str  # "exact" or "normal"


def midranks(values: list[float]) -> list[float]:
    """1-based ranks; tied values share the mean of their ranks."""
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def mann_whitney_u(a: list[float], b: list[float]) -> MannWhitney:
    """Two-sided test that ``a`` and ``b`` come from the same distribution."""
    n1, n2 = len(a), len(b)
    if not n1 or not n2:
        raise ValueError("mann_whitney_u needs at least one sample on each side")
    r = midranks([float(x) for x in a] + [float(x) for x in b])
    offset = n1 * (n1 + 1) / 2
    u1 = sum(r[:n1]) - offset
    mu = n1 * n2 / 2
    dev = abs(u1 - mu)
    n = n1 + n2
    if math.comb(n, n1) <= EXACT_LIMIT:
        hits = total = 0
        for idx in combinations(range(n), n1):
            total += 1
            if abs(sum(r[i] for i in idx) - offset - mu) >= dev - 1e-9:
                hits += 1
        return MannWhitney(u1, hits / total, "exact")
    ties: dict[float, int] = {}
    for x in r:
        ties[x] = ties.get(x, 0) + 1
    var = n1 * n2 / 12 * ((n + 1) - sum(t ** 3 - t for t in ties.values()) / (n * (n - 1)))
    if var <= 0:
        return MannWhitney(u1, 1.0, "normal")
    z = max(dev - 0.5, 0.0) / math.sqrt(var)
    return MannWhitney(u1, min(1.0, math.erfc(z / math.sqrt(2))), "normal")


def min_p(n1: int, n2: int) -> float:
    """The smallest two-sided p-value any outcome can reach with these sample sizes (no ties)."""
    if not n1 or not n2:
        return 1.0
    return min(1.0, 2 / math.comb(n1 + n2, n1))
