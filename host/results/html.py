"""The self-contained HTML page: ``rkdeploy report --format html`` (and ``rkdeploy compare --format html``
through the same ``page``/``table``). One file, inline CSS and SVG (``host.results.svg``), no script
and nothing fetched at view time.

The report page: decode tok/s per scheme × board with every rep as a dot, TTFT bars (± sd), quality
vs size (PPL ratio vs MB; hover: KLD, top-1, method) with the Pareto front, weights GB/s against the
targets' DDR peaks (``host.results.roofline``), then the report tables with each row's environment
warnings (CPU governor, DDR devfreq, thermal, emulated, test doubles, degraded) beside it.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable
from html import escape

from board.rows import ResultRow
from board.sysinfo import GOOD_GOVERNORS, THROTTLE_C
from host.results import roofline, svg

CSS = ("body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}"
       "h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.6em}p.note{color:#555;font-size:.9em}"
       "table{border-collapse:collapse;margin-bottom:1.5em;font-size:.88em}td,th{border:1px solid #ccc;padding:2px 7px}"
       "td.n{text-align:right}tr.bad td{background:#fde8e8}tr.good td{background:#e8f6e8}"
       "td.warn{color:#a15c00;font-size:.85em}ul.warn li{color:#a15c00}"
       "svg text{font-size:11px;fill:#333}svg .unit{fill:#666}svg .axis{stroke:#444;fill:none}"
       "svg .grid{stroke:#e4e4e4}svg .rep{fill:#3b6fb6;fill-opacity:.7}svg .mean{stroke:#c0392b;stroke-width:2.5}"
       "svg .bar{fill:#3b6fb6}svg .bar.muted{fill:#b9c3cf}svg .err{stroke:#222;fill:none}"
       "svg .ref{stroke:#c0392b;stroke-dasharray:4 3;fill:none}svg .reflabel{fill:#c0392b}svg .front{stroke:#2e8b57;stroke-width:2;fill:none}"
       "svg .pt{fill:#3b6fb6}svg .pt.on{fill:#2e8b57}svg .pl{font-size:10px}")


def page(title: str, parts: Iterable[str]) -> str:
    return ("<!doctype html>\n<html lang=en><head><meta charset=utf-8><title>" + escape(title) + "</title><style>"
            + CSS + "</style></head><body>\n<h1>" + escape(title) + "</h1>\n" + "\n".join(parts) + "\n</body></html>\n")


def table(headers: list[str], rows: list[tuple[list[str], str]], *, numeric: Iterable[int] = (),
          warn_col: int | None = None) -> str:
    """``rows``: (cells, css class of the row); cells are plain text (escaped here)."""
    num = set(numeric)
    out = ["<table><tr>" + "".join(f"<th>{escape(h)}</th>" for h in headers) + "</tr>"]
    for cells, cls in rows:
        out.append(f"<tr{f' class={cls}' if cls else ''}>" + "".join(
            f"<td{' class=n' if i in num else ' class=warn' if i == warn_col else ''}>{escape(c)}</td>"
            for i, c in enumerate(cells)) + "</tr>")
    return "".join(out) + "</table>"


HOST_NOTE = "not its target chip:"


def env_warnings(row: ResultRow) -> list[str]:
    """What in the row's environment makes its numbers not a healthy board's (empty: nothing known)."""
    env = row.env or {}
    out = []
    if env.get("emulated"):
        out.append("emulated (qemu-user): speed is the emulator's")
    bad = sorted({str(p.get("governor")) for p in (env.get("cpufreq") or {}).values()
                  if isinstance(p, dict) and p.get("governor") not in GOOD_GOVERNORS})
    if bad:
        out.append(f"CPU governor {', '.join(bad)} (not performance)")
    soc = str((env.get("cpu") or {}).get("soc") or "").lower()
    devfreq = env.get("devfreq") or {}
    if "rockchip" in soc and "dmc" not in devfreq:
        out.append("no DDR devfreq node (dmc): decode can run at half speed")
    dmc = devfreq.get("dmc")
    if isinstance(dmc, dict) and dmc.get("governor") not in GOOD_GOVERNORS:
        out.append(f"DDR devfreq governor {dmc.get('governor')}")
    hot = [f"{k} {v:.0f}°C" for k, v in sorted((env.get("thermal_c") or {}).items())
           if isinstance(v, (int, float)) and v >= THROTTLE_C]
    if hot:
        out.append("hot: " + ", ".join(hot))
    runtime = (row.runtime or "").lower()
    if "shim" in runtime or "double" in runtime:
        out.append("runtime is a test double / shim: timings are injected")
    if row.status == "degraded":
        out.append(f"DEGRADED: {row.gate or 'outside its scheme quality band'}")
    if row.kind == "bench" and not roofline.on_target(row) and not env.get("emulated") and row.target:
        out.append(f"{HOST_NOTE} {'this host' if row.board in (None, 'local') else row.board} is no {row.target}")
    return out


def _name(r: ResultRow) -> str:
    return " ".join(str(x) for x in (r.scheme, f"· {r.board}" if r.board else None,
                                     f"({r.backend})" if r.backend else None) if x)


def _charts(tabs: list[tuple[str, list[str], list[ResultRow]]], rows: list[ResultRow]) -> list[str]:
    out = []
    llm = [(title, r) for title, _c, group in tabs for r in group if r.kind == "bench" and r.test == "pp+tg"]
    real = [r for _t, r in llm if not (r.env or {}).get("emulated")]
    emulated = [r for _t, r in llm if (r.env or {}).get("emulated")]
    for label, group in (("", real), (" — emulated boards (qemu: shows it runs, not the board's speed)", emulated)):
        series = [svg.Series(_name(r), list(r.samples_decode_tps or []), r.decode_tps) for r in group
                  if r.decode_tps is not None]
        if series:
            out.append(f"<h2>Decode tok/s per scheme × board{escape(label)}</h2><p class=note>Every dot is one timed "
                       "rep (hover for its value); the red tick is the mean.</p>")
            out.append(svg.dots(series, unit="decode tok/s", title="decode tok/s per scheme and board" + label))
    ttft = [svg.Bar(_name(r), r.ttft_ms, r.ttft_stddev_ms, f"{r.ttft_ms:.1f} ms") for r in real if r.ttft_ms is not None]
    if ttft:
        out.append("<h2>Time to first token</h2><p class=note>Mean over the reps, whisker ± one standard deviation.</p>")
        out.append(svg.bars(ttft, unit="TTFT ms", title="time to first token"))
    out += _pareto(rows)
    out += _roofline_chart(real)
    return out


def _pareto(rows: list[ResultRow]) -> list[str]:
    from host.results.render import latest

    quality = [r for r in latest(rows) if r.kind == "quality" and r.status in ("ok", "degraded")
               and r.ppl_ratio is not None]
    pts = [svg.Point(r.model_size / 1e6, r.ppl_ratio, f"{r.scheme}",
                     f"{r.model} {r.scheme} ({r.method}): PPL ratio {r.ppl_ratio:.4f}, KLD "
                     f"{'' if r.kld_mean is None else f'{r.kld_mean:.4f}'}, top-1 "
                     f"{'' if r.top1_agree is None else f'{r.top1_agree:.3f}'}, {r.model_size / 1e6:.0f} MB")
           for r in quality if r.model_size]
    if not pts:
        return []
    unsized = len(quality) - len(pts)
    return ["<h2>Quality vs size</h2><p class=note>PPL ratio against the float model vs artifact MB; hover a point for "
            "KLD and top-1. Green: the Pareto front (nothing is both smaller and closer to float)."
            + (f" {unsized} quality row(s) without an artifact size (simulated schemes) are not plotted." if unsized else "")
            + "</p>", svg.scatter(pts, x_unit="artifact MB", y_unit="PPL ratio", title="quality vs size")]


def _roofline_chart(real: list[ResultRow]) -> list[str]:
    items, targets = [], {}
    for r in real:
        gbs = roofline.weight_gbs(r)
        if gbs is None:
            continue
        pct = roofline.ddr_pct(r)
        items.append(svg.Bar(_name(r), gbs, None, f"{gbs:.2f} GB/s" + (f" = {pct:.0f} % of {r.target} DDR" if pct is not None
                             else " (not on the board)"), muted=pct is None))
        bw, _tops = roofline.target_limits(r.target or "")
        if bw:
            targets[r.target] = bw
    if not items:
        return []
    refs = [svg.Ref(bw, f"{t} DDR peak {bw:g} GB/s") for t, bw in sorted(targets.items())]
    return ["<h2>Decode against the DDR roofline</h2><p class=note>weights GB/s = decode tok/s × weight bytes (every "
            "weight byte read once per generated token; KV cache not counted, so this is a lower bound of the traffic). "
            "Dashed: the targets' theoretical DDR peak (configs/targets.yaml). Grey bars were not measured on their "
            "target chip (this host's CPU or an emulator): their GB/s is real for that machine, the % of the board's "
            "peak is not shown.</p>", svg.bars(items, unit="weights GB/s", title="decode weight traffic vs DDR peak",
                                               refs=refs)]


def render_report_html(rows: list[ResultRow]) -> str:
    from host.gate import DEGRADED
    from host.results.render import _cell, _error_text, _md_header, _numeric, errors, tables

    tabs = tables(rows)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    parts = [f"<p class=note>Rendered {stamp} from {len(rows)} stored rows. One self-contained file: inline SVG, "
             "no script, nothing loaded from the network.</p>"]
    warned = [(r, w) for _t, _c, g in tabs for r in g
              if (w := [x for x in env_warnings(r) if not x.startswith(HOST_NOTE)])]
    if warned:
        parts.append("<h2>Environment warnings</h2><ul class=warn>" + "".join(
            f"<li>{escape(_name(r))} {escape(r.model or '')}: {escape('; '.join(w))}</li>" for r, w in warned) + "</ul>")
    parts += _charts(tabs, rows)
    for title, cols, group in tabs:
        heads = [_md_header(c) for c in cols] + ["environment warnings"]
        body = [([_cell(c, r, "html") for c in cols] + ["; ".join(env_warnings(r))],
                 "bad" if r.status == DEGRADED else "") for r in group]
        parts.append(f"<h2>{escape(title)}</h2>" + table(heads, body, numeric=[i for i, c in enumerate(cols) if _numeric(c)],
                                                         warn_col=len(cols)))
    errs = errors(rows)
    if errs:
        parts.append("<h2>Errors</h2><ul>" + "".join(f"<li>{escape(_error_text(r))}</li>" for r in errs) + "</ul>")
    if not tabs and not errs:
        parts.append("<p>(no results yet: run <code>rkdeploy bench</code>)</p>")
    return page("rkdeploy results", parts)
