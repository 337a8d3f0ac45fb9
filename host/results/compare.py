"""``rkdeploy compare A B``: per test, B against A — delta, ratio and a Mann-Whitney U test on the raw
per-rep samples; a change whose p-value is not below ``alpha`` is "within noise".

A and B are selectors (``host.results.select``): runs, time ranges, boards, any row field, or a
.jsonl/.sqlite file. Tests are matched on ``render.SAME_TEST`` less the fields either selector names,
so ``board=a`` vs ``board=b`` pairs the same artifact and settings on two boards. Metrics and their
samples: decode tok/s (``samples_decode_tps``), TTFT ms (``samples_ttft_ms``), the whole test's t/s
(llama-bench's ``samples_ts``) and encoder latency ms (``samples_ns``).
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from board.rows import ResultRow
from host.errors import ReportError
from host.results.render import OK, SAME_TEST
from host.results.select import Selector, apply_selector, load_rows, parse_selector
from host.results.stats import mann_whitney_u, min_p
from host.results.store import DEFAULT_STORE
from host.ui import sanitize

FORMATS = ("md", "jsonl", "html")
ALPHA = 0.05


@dataclass(frozen=True)
class Metric:
    name: str
    label: str
    higher_is_better: bool
    samples: Callable[[ResultRow], list[float] | None]
    mean: Callable[[ResultRow], float | None]


def _ms(ns: list[int] | None) -> list[float] | None:
    return [x / 1e6 for x in ns] if ns else None


METRICS = {
    "pp+tg": (Metric("decode_tps", "decode tok/s", True, lambda r: r.samples_decode_tps, lambda r: r.decode_tps),
              Metric("ttft_ms", "TTFT ms", False, lambda r: r.samples_ttft_ms, lambda r: r.ttft_ms),
              Metric("avg_ts", "test t/s", True, lambda r: r.samples_ts, lambda r: r.avg_ts)),
    "encode": (Metric("latency_ms", "latency ms", False, lambda r: _ms(r.samples_ns), lambda r: r.latency_ms),),
}


@dataclass(frozen=True)
class Comparison:
    """One metric of one test, B against A (``only`` = "A"/"B": the test ran on one side only)."""

    test: dict
    metric: str
    a_mean: float | None = None
    b_mean: float | None = None
    delta: float | None = None  # b - a
    ratio: float | None = None  # b / a
    p: float | None = None
    u: float | None = None
    method: str | None = None
    n_a: int = 0
    n_b: int = 0
    verdict: str = ""
    only: str | None = None
    a_samples: list[float] | None = None
    b_samples: list[float] | None = None

    def to_dict(self) -> dict:
        return {"type": "compare", **asdict(self)}


def _verdict(m: Metric, a: list[float], b: list[float], p: float, alpha: float, mean_a: float, mean_b: float) -> str:
    if p >= alpha:
        if min_p(len(a), len(b)) >= alpha:
            return f"within noise (too few reps: {len(a)}+{len(b)} cannot reach p<{alpha:g})"
        return "within noise"
    better = (mean_b > mean_a) == m.higher_is_better
    return "better" if better else "worse"


def compare_rows(a_rows: list[ResultRow], b_rows: list[ResultRow], *, varying: tuple[str, ...] = (),
                 alpha: float = ALPHA) -> list[Comparison]:
    """Pair the tests of A and B (``SAME_TEST`` less ``varying``) and compare each metric's samples."""
    key_fields = tuple(k for k in SAME_TEST if k not in varying)

    def index(rows: list[ResultRow]) -> dict[tuple, ResultRow]:
        out: dict[tuple, ResultRow] = {}
        for r in rows:
            if r.kind == "bench" and r.status in OK and r.test in METRICS:
                out[tuple(getattr(r, k) for k in key_fields)] = r
        return out

    ia, ib = index(a_rows), index(b_rows)
    pairs = _pair_runtime_upgrades(ia, ib, key_fields)
    out = []
    for key in list(ia) + [k for k in ib if k not in ia and k not in pairs.values()]:
        test = {k: v for k, v in zip(key_fields, key, strict=True) if v is not None}
        if key in pairs:  # the same test under another runtime version: "A's runtime → B's"
            test["runtime"] = f"{ia[key].runtime} → {ib[pairs[key]].runtime}"
        ra, rb = ia.get(key), ib.get(pairs.get(key, key))
        if ra is None or rb is None:
            out.append(Comparison(test, "-", only="B" if ra is None else "A",
                                  verdict=f"only in {'B' if ra is None else 'A'}"))
            continue
        for m in METRICS[ra.test]:
            sa, sb = m.samples(ra) or [], m.samples(rb) or []
            ma, mb = m.mean(ra), m.mean(rb)
            if not sa or not sb or ma is None or mb is None:
                out.append(Comparison(test, m.label, ma, mb, n_a=len(sa), n_b=len(sb), verdict="no samples"))
                continue
            t = mann_whitney_u(sa, sb)
            out.append(Comparison(test, m.label, ma, mb, mb - ma, mb / ma if ma else None, t.p, t.u, t.method,
                                  len(sa), len(sb), _verdict(m, sa, sb, t.p, alpha, ma, mb), None, sa, sb))
    return out


def compare(a: str, b: str, *, store: Path | str | None = DEFAULT_STORE, fmt: str = "md", alpha: float = ALPHA) -> str:
    """``rkdeploy compare A B``: both selectors are parsed (and refused) before any store is opened."""
    if fmt not in FORMATS:
        raise ReportError(f"compare format {fmt!r}; allowed: {', '.join(FORMATS)}")
    if not 0 < alpha < 1:
        raise ReportError(f"--alpha {alpha}: a significance level between 0 and 1, e.g. 0.05")
    sa, sb = parse_selector(a), parse_selector(b)
    sides = []
    for sel in (sa, sb):
        rows = load_rows(sel, store)
        bench = [r for r in rows if r.kind == "bench" and r.status in OK]
        got = apply_selector(bench, sel, SAME_TEST)
        if not got:
            boards = sorted({r.board or "?" for r in bench})
            times = sorted(r.test_time for r in bench if r.test_time)
            span = f", test_time {times[0]}..{times[-1]}" if times else ""
            raise ReportError(f"selector {sel.text!r} matches no benchmark rows ({len(bench)} benchmark rows in "
                              f"{sel.source or store or 'the results store'}; boards: {', '.join(boards) or 'none'}{span})")
        sides.append(got)
    varying = tuple(dict.fromkeys([*sa.fields, *sb.fields]))
    result = compare_rows(*sides, varying=varying, alpha=alpha)
    return RENDERERS[fmt](result, sa, sb, alpha)


def _pair_runtime_upgrades(ia: dict[tuple, ResultRow], ib: dict[tuple, ResultRow],
                           key_fields: tuple[str, ...]) -> dict[tuple, tuple]:
    """A's unpaired tests matched to B's that differ ONLY in ``runtime`` (a runtime upgrade between the two
    runs), one to one: a test with two runtime versions on the same side stays unpaired ("only in A/B")."""
    if "runtime" not in key_fields:
        return {}
    at = key_fields.index("runtime")

    def rest(key: tuple) -> tuple:
        return key[:at] + key[at + 1:]

    def unpaired(mine: dict, other: dict) -> dict[tuple, list[tuple]]:
        by: dict[tuple, list[tuple]] = {}
        for k in mine:
            if k not in other:
                by.setdefault(rest(k), []).append(k)
        return by

    ua, ub = unpaired(ia, ib), unpaired(ib, ia)
    return {ka[0]: ub[r][0] for r, ka in ua.items() if len(ka) == 1 and len(ub.get(r, ())) == 1}


def _num(x: float | None, digits: int = 2) -> str:
    return "" if x is None else f"{x:.{digits}f}"


MAIN = ("model", "scheme", "backend", "board", "target")


def _label(test: dict, varying: set[str]) -> str:
    """Model, scheme, backend, board, target, then only the other settings that differ between tests."""
    extra = [f"{k}={v}" for k, v in test.items()
             if (k in varying and k not in MAIN) or (k == "runtime" and " → " in str(v))]
    return sanitize(" ".join(str(test[k]) for k in MAIN if test.get(k)) + (f" ({', '.join(extra)})" if extra else ""))


def _varying(result: list[Comparison]) -> set[str]:
    keys = {k for c in result for k in c.test}
    return {k for k in keys if len({repr(c.test.get(k)) for c in result}) > 1} - {"runtime", "kind", "test"}


def _cells(c: Comparison, varying: set[str]) -> list[str]:
    pct = "" if c.ratio is None else f"{(c.ratio - 1) * 100:+.1f} %"
    return [_label(c.test, varying), c.metric, _num(c.a_mean), _num(c.b_mean), _num(c.delta), pct,
            "" if c.ratio is None else f"{c.ratio:.3f}", "" if c.p is None else f"{c.p:.3g}",
            f"{c.n_a}+{c.n_b}" if c.n_a or c.n_b else "", c.verdict]


HEADERS = ["test", "metric", "A", "B", "Δ (B-A)", "Δ %", "B/A", "p (Mann-Whitney U)", "reps A+B", "verdict"]


def _title(sa: Selector, sb: Selector, alpha: float) -> str:
    return (f"rkdeploy compare: A = {sa.text!r}, B = {sb.text!r} (two-sided Mann-Whitney U on the per-rep samples; "
            f"p >= {alpha:g} is within noise)")


def render_compare_md(result: list[Comparison], sa: Selector, sb: Selector, alpha: float) -> str:
    out = [f"### {sanitize(_title(sa, sb, alpha))}", "", "| " + " | ".join(HEADERS) + " |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    v = _varying(result)
    out += ["| " + " | ".join(x.replace("|", "\\|") for x in _cells(c, v)) + " |" for c in result]
    return "\n".join(out) + "\n"


def render_compare_jsonl(result: list[Comparison], sa: Selector, sb: Selector, alpha: float) -> str:
    return "".join(json.dumps({**c.to_dict(), "a": sa.text, "b": sb.text, "alpha": alpha}) + "\n" for c in result)


def render_compare_html(result: list[Comparison], sa: Selector, sb: Selector, alpha: float) -> str:
    from host.results import svg
    from host.results.html import page, table

    v = _varying(result)
    rows = [(_cells(c, v), "bad" if c.verdict == "worse" else "good" if c.verdict == "better" else "") for c in result]
    parts = [f"<p>{html.escape(_title(sa, sb, alpha))}</p>"]
    for metric in ("decode tok/s", "TTFT ms"):
        series = [svg.Series(f"{_label(c.test, v)} {side}", list(samples), mean, c.verdict if side == "B" else "")
                  for c in result if c.metric == metric and c.a_samples and c.b_samples
                  for side, samples, mean in (("A", c.a_samples, c.a_mean), ("B", c.b_samples, c.b_mean))]
        if series:
            parts += [f"<h2>{html.escape(metric)}: A and B, every rep a dot</h2>",
                      svg.dots(series, unit=metric, title=f"{metric}, A vs B")]
    return page("rkdeploy compare", [*parts, "<h2>All metrics</h2>", table(HEADERS, rows, numeric=range(2, 9))])


RENDERERS = {"md": render_compare_md, "jsonl": render_compare_jsonl, "html": render_compare_html}
