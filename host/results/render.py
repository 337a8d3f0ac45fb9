"""The report: md / csv / jsonl / html rendered from the ONE row definition, ``board.rows.ResultRow``.

Every renderer picks its columns from the field metadata (``formats``, display name, unit, digits,
``pm`` = stddev field); md and html show the newest row per configuration, quality joined onto the
bench row of the same artifact.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from board.rows import ResultRow, fields, format_value, header, meta
from host import gate
from host.results import roofline
from host.results.store import DEFAULT_STORE, ResultStore, StoreError, coerce_row
from host.ui import sanitize

FORMATS = ("md", "csv", "jsonl", "html", "llama-bench-jsonl", "llama-bench-sqlite")
# Rows with the same values here measure the same thing; the report shows the newest one.
SAME_TEST = ("kind", "model", "target", "scheme", "backend", "runtime", "board", "test", "threads", "n_prompt", "n_gen",
             "batch", "seq_len", "method")
METHOD_RANK = {"measured": 0, "simulator": 1, "simulated": 2}


def latest(rows: list[ResultRow]) -> list[ResultRow]:
    """The newest row per measured configuration (``SAME_TEST``), in first-seen order."""
    keep: dict[tuple, ResultRow] = {}
    for r in rows:
        keep[tuple(getattr(r, k) for k in SAME_TEST)] = r
    return list(keep.values())


def _roofline_columns(rows: list[ResultRow]) -> list[str]:
    """The derived roofline columns (``host.results.roofline``) that have a value in some row."""
    return [n for n in roofline.DERIVED if any(roofline.DERIVED[n](r) is not None for r in rows)]


def _cell(name: str, row: ResultRow, fmt: str) -> str:
    if name in roofline.DERIVED:
        return roofline.derived_cell(name, row)
    value = getattr(row, name)
    text = format_value(name, value)
    pm = meta(name)["pm"]
    if text and pm and getattr(row, pm) is not None:
        text += f" ± {format_value(pm, getattr(row, pm))}"
    text = sanitize(text)
    return text.replace("|", "\\|") if fmt == "md" else text


def _columns(rows: list[ResultRow], fmt: str, kinds: tuple[str, ...]) -> list[str]:
    return [f.name for f in fields()
            if fmt in f.metadata["formats"] and f.metadata["kind"] in kinds + ("any",)
            and any(getattr(r, f.name) is not None for r in rows)]


def _join_quality(bench: list[ResultRow], quality: list[ResultRow],
                  lone: list[ResultRow]) -> tuple[list[ResultRow], list[ResultRow]]:
    """Copy quality fields onto the bench rows of the SAME artifact (``artifact_sha256``): a quality row
    of another build of the scheme is never shown beside this build's speed. ``quality`` is every
    quality row (older ones too: an older build's bench row finds its own); ``lone`` the newest ones,
    those not joined are returned. A degraded quality row makes the joined bench row degraded too."""
    by_sha: dict[str, ResultRow] = {}
    for q in quality:  # newest wins within a method; measured beats the simulator beats simulated
        if not q.artifact_sha256:
            continue
        old = by_sha.get(q.artifact_sha256)
        if old is None or METHOD_RANK.get(q.method, 9) <= METHOD_RANK.get(old.method, 9):
            by_sha[q.artifact_sha256] = q
    used = set()
    joined = []
    qnames = [f.name for f in fields() if f.metadata["kind"] == "quality"]
    for b in bench:
        q = by_sha.get(b.artifact_sha256 or "")
        if q is not None and b.status == "ok":
            used.add(id(q))
            b = ResultRow.from_dict({**b.to_dict(), **{n: getattr(q, n) for n in qnames}, "status": q.status})
        joined.append(b)
    return joined, [q for q in lone if id(by_sha.get(q.artifact_sha256 or "")) not in used]


def tables(rows: list[ResultRow]) -> list[tuple[str, list[str], list[ResultRow]]]:
    """The report's tables: (title, columns, rows) — LLM bench, encoder bench, quality-only."""
    rows = [_judged(r) if r.kind == "quality" and r.status in OK else r for r in rows]
    every_quality = [r for r in rows if r.kind == "quality" and r.status in OK]
    rows = latest(rows)
    bench = [r for r in rows if r.kind == "bench" and r.status == "ok"]
    quality = [r for r in rows if r.kind == "quality" and r.status in OK]
    # Rows of emulated boards (env.emulated: qemu-user, e.g. the virtual vrk3588) prove that the board side
    # runs there; their speed is the emulator's, so they never share a table with real measurements, and
    # quality joins only real bench rows (one benched only under emulation stays in the quality table).
    emulated = [r for r in bench if (r.env or {}).get("emulated")]
    bench = [r for r in bench if not (r.env or {}).get("emulated")]
    bench, lone_quality = _join_quality(bench, every_quality, quality)
    out = []
    for title, test in (("LLM: prompt + generation", "pp+tg"), ("Encoder", "encode")):
        group = [r for r in bench if r.test == test]
        if group:
            out.append((title, _columns(group, "md", ("bench", "quality")) + _roofline_columns(group), group))
    for title, test in (("LLM on emulated boards (qemu: it runs; speeds are not the board's)", "pp+tg"),
                        ("Encoder on emulated boards (qemu: it runs; speeds are not the board's)", "encode")):
        group = [r for r in emulated if r.test == test]
        if group:
            out.append((title, _columns(group, "md", ("bench",)), group))
    others = [r for r in bench if r.test not in ("pp+tg", "encode")]
    if others:
        out.append(("Other tests", _columns(others, "md", ("bench", "quality")) + ["test"], others))
    if lone_quality:
        out.append(("Quality (no benchmark row of the same artifact)", _columns(lone_quality, "md", ("quality",)), lone_quality))
    return out


#: Statuses of rows with numbers (shown in the tables); ``degraded`` ones carry their ``gate`` reason.
OK = ("ok", gate.DEGRADED)


def _judged(r: ResultRow) -> ResultRow:
    """The row as the current quality gate sees it (rows stored before the gate, or under older bands)."""
    return ResultRow.from_dict(gate.apply(r.to_dict()))


def errors(rows: list[ResultRow]) -> list[ResultRow]:
    return [r for r in latest(rows) if r.status == "error"]


def _error_text(r: ResultRow) -> str:
    who = "/".join(str(x) for x in (r.model, r.target, r.scheme, r.backend) if x) or "?"
    return sanitize(f"{who} on {r.board or '?'}: {r.error}")


def render_md(rows: list[ResultRow]) -> str:
    out = []
    shown = tables(rows)
    for title, cols, group in shown:
        out.append(f"### {title}\n")
        out.append("| " + " | ".join(_md_header(c) for c in cols) + " |")
        out.append("|" + "|".join("---:" if _numeric(c) else "---" for c in cols) + "|")
        for r in group:
            out.append("| " + " | ".join(_cell(c, r, "md") for c in cols) + " |")
        out.append("")
    bad = [r for _t, _c, group in shown for r in group if r.status == gate.DEGRADED]
    if bad:
        out.append("### Degraded (outside the healthy band of their scheme: `rkdeploy quality` says why)\n")
        out += [f"- {sanitize('/'.join(str(x) for x in (r.model, r.target, r.scheme, r.backend) if x))}: "
                f"{sanitize(r.gate or '')}" for r in bad]
        out.append("")
    errs = errors(rows)
    if errs:
        out.append("### Errors\n")
        out += [f"- {_error_text(r)}" for r in errs]
        out.append("")
    if not out:
        return "(no results yet: run `rkdeploy bench`)\n"
    return "\n".join(out)


def _md_header(name: str) -> str:
    if name in roofline.DERIVED:
        return roofline.HEADERS[name]
    pm = meta(name)["pm"]
    return header(name) + (" ± sd" if pm else "")


def _numeric(name: str) -> bool:
    if name in roofline.DERIVED:
        return True
    return meta(name)["digits"] is not None or name in ("batch", "seq_len", "threads")


def render_csv(rows: list[ResultRow]) -> str:
    names = [f.name for f in fields() if "csv" in f.metadata["formats"]]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(names)
    for r in rows:
        w.writerow(["" if getattr(r, n) is None else
                    json.dumps(getattr(r, n)) if isinstance(getattr(r, n), (list, dict)) else getattr(r, n)
                    for n in names])
    return buf.getvalue()


def render_jsonl(rows: list[ResultRow]) -> str:
    return "".join(json.dumps({"type": "row", **r.to_dict()}) + "\n" for r in rows)


def render_html(rows: list[ResultRow]) -> str:
    """One self-contained page: charts (inline SVG) and these tables with their environment warnings."""
    from host.results.html import render_report_html

    return render_report_html(rows)


RENDERERS = {"md": render_md, "csv": render_csv, "jsonl": render_jsonl, "html": render_html}


def render(rows: Iterable[ResultRow | dict], fmt: str = "md") -> str:
    if fmt not in RENDERERS:
        raise StoreError(f"report format {fmt!r}; allowed: {', '.join(RENDERERS)}")
    return RENDERERS[fmt]([coerce_row(r) for r in rows])


def report(*, store: Path | str | None = DEFAULT_STORE, fmt: str = "md", filters: dict[str, Any] | None = None,
           select: str | None = None, label: str | None = None) -> str:
    """``rkdeploy report``: render every row in the store (md/html show the newest per configuration);
    ``select`` (``host.results.select``) picks a run, time range, board ... or another file's rows;
    ``llama-bench-jsonl`` writes llama-bench's records (``host.results.llamabench``) labelled ``label``."""
    if fmt not in RENDERERS and fmt != "llama-bench-jsonl":  # before the store is opened: a bad format creates nothing
        raise StoreError(f"report format {fmt!r}; allowed: {', '.join(FORMATS)}")
    rows = selected_rows(store=store, filters=filters, select=select)
    if fmt == "llama-bench-jsonl":
        from host.results.llamabench import render_llama_bench_jsonl

        return render_llama_bench_jsonl(rows, label=label)
    return render(rows, fmt)


def selected_rows(*, store: Path | str | None = DEFAULT_STORE, filters: dict[str, Any] | None = None,
                  select: str | None = None) -> list[ResultRow]:
    """The stored rows a report shows: all of them, or those ``select`` means (parsed before any file opens)."""
    from host.results.select import apply_selector, load_rows, parse_selector

    sel = parse_selector(select) if select else None
    if sel is None:
        with ResultStore(store, create=False) as s:
            return s.rows(filters or {})
    rows = load_rows(sel, store)
    if filters:
        rows = [r for r in rows if all(str(getattr(r, k)) == str(v) for k, v in filters.items())]
    return apply_selector(rows, sel, SAME_TEST)
