"""SQLite store of result rows, and the renderers (md / csv / jsonl / html).

Everything derives from the ONE row definition, ``board.rows.ResultRow``: the store keeps each
row as its JSON plus one indexed column per field marked ``index``; every renderer picks its
columns from the field metadata (``formats``, display name, unit, digits, ``pm`` = stddev field).
The store is schema-versioned and refuses a file written by a newer rkdeploy.
"""

from __future__ import annotations

import csv
import html
import io
import json
import os
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from board.rows import ROW_SCHEMA_VERSION, ResultRow, fields, format_value, header, meta
from board.strictjson import JSONInputError
from board.strictjson import loads as loads_json
from host import gate
from host.config import PROJECT_ROOT
from host.errors import RkdeployError
from host.ui import sanitize


def default_store() -> Path:
    """``$RKDEPLOY_RESULTS`` or ``results/rkdeploy.sqlite`` under the project root."""
    env = os.environ.get("RKDEPLOY_RESULTS")
    return Path(env) if env else PROJECT_ROOT / "results" / "rkdeploy.sqlite"


DEFAULT_STORE = None  # means default_store(), resolved at call time
# Version of the store layout (tables/columns). Readers refuse a newer one.
STORE_SCHEMA_VERSION = 1
FORMATS = ("md", "csv", "jsonl", "html")
INDEXED = tuple(f.name for f in fields() if f.metadata["index"])
# Rows with the same values here measure the same thing; the report shows the newest one.
SAME_TEST = ("kind", "model", "target", "scheme", "backend", "runtime", "board", "test", "threads", "n_prompt", "n_gen",
             "batch", "seq_len", "method")
METHOD_RANK = {"measured": 0, "simulator": 1, "simulated": 2}


class StoreError(RkdeployError):
    """The results store cannot be opened or a row is invalid."""


def coerce_row(row: ResultRow | dict) -> ResultRow:
    if isinstance(row, ResultRow):
        return row
    try:
        return ResultRow.from_dict(row)
    except (TypeError, ValueError) as e:
        raise StoreError(f"invalid result row: {e}") from None


class ResultStore:
    """``ResultStore(path)``: ``add(row)``, ``rows(filters)``; rows come back exactly as added."""

    def __init__(self, path: Path | str | None = DEFAULT_STORE, *, create: bool = True) -> None:
        """``create=False`` (reports) opens read-only and creates nothing: a missing store reads as
        empty, a missing folder is an error. Either way a file that is not an rkdeploy store (a
        directory, another program's SQLite database, not SQLite at all) is refused untouched."""
        self.path = Path(path) if path else default_store()
        explicit = path is not None  # a --store that names a missing folder is a typo; the default is not
        if self.path.is_dir():
            raise StoreError(f"{self.path}: is a directory; --store takes an rkdeploy results file "
                             "(e.g. results/rkdeploy.sqlite)")
        parent = self.path.parent
        if not create and not parent.is_dir() and explicit:
            raise StoreError(f"{self.path}: folder {parent} does not exist (no results stored there); "
                             "check --store")
        try:
            if not create and not self.path.exists():
                self.db = sqlite3.connect(":memory:")  # reads as an empty store; nothing is written to disk
            elif not create:
                self.db = sqlite3.connect(self.path.resolve().as_uri() + "?mode=ro", uri=True)
            else:
                if parent.exists() and not parent.is_dir():
                    raise StoreError(f"{self.path}: {parent} is not a folder")
                parent.mkdir(parents=True, exist_ok=True)
                self.db = sqlite3.connect(str(self.path), timeout=30)
            self._init_schema(write=create or not self.path.exists())
        except sqlite3.DatabaseError as e:
            raise StoreError(f"{self.path}: not a readable rkdeploy results store ({e}); "
                             "move it away or pass --store NEW.sqlite") from None
        except OSError as e:
            raise StoreError(f"{self.path}: cannot open the results store: {e.strerror or e}") from None

    def _init_schema(self, *, write: bool) -> None:
        """Check (or create) the schema. Writers do it inside one ``BEGIN IMMEDIATE`` transaction, so
        processes opening a new store at once see either nothing or the whole schema."""
        if not write:
            return self._check_or_create(write=False)
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self._check_or_create(write=True)
            self.db.commit()
        except BaseException:
            self.db.rollback()
            raise

    def _check_or_create(self, *, write: bool) -> None:
        db = self.db
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        tables.discard("sqlite_sequence")
        if tables and not {"meta", "rows"} <= tables:
            raise StoreError(f"{self.path}: an SQLite database of another program (tables: "
                             f"{', '.join(sorted(tables))}), not an rkdeploy results store; left untouched — "
                             "pass --store NEW.sqlite")
        if tables:
            got = db.execute("SELECT value FROM meta WHERE key = 'store_schema'").fetchone()
            if got is None or not str(got[0]).isdigit():
                raise StoreError(f"{self.path}: meta table has no valid store_schema ({got[0] if got else 'missing'!r})"
                                 "; not an rkdeploy results store — pass --store NEW.sqlite")
            if int(got[0]) > STORE_SCHEMA_VERSION:
                raise StoreError(f"{self.path}: results store schema {got[0]} is newer than this rkdeploy reads "
                                 f"({STORE_SCHEMA_VERSION}); upgrade rkdeploy (pip install -U rkdeploy) or pass "
                                 "--store NEW.sqlite to start a new store")
            cols = {r[1] for r in db.execute("PRAGMA table_info(rows)")}
            missing = sorted({"row_schema", "data", *INDEXED} - cols)
            if missing:
                raise StoreError(f"{self.path}: table rows lacks column(s) {', '.join(missing)}; not a results "
                                 "store this rkdeploy wrote — pass --store NEW.sqlite")
            return
        if not write:  # an empty SQLite file opened read-only: read it as an empty store, write nothing
            db.close()
            self.db = db = sqlite3.connect(":memory:")
        db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        cols = ", ".join(f"{name} TEXT" for name in INDEXED)
        db.execute(f"CREATE TABLE IF NOT EXISTS rows (id INTEGER PRIMARY KEY AUTOINCREMENT, {cols}, "
                   "row_schema INTEGER NOT NULL, data TEXT NOT NULL)")
        for name in INDEXED:
            db.execute(f"CREATE INDEX IF NOT EXISTS rows_{name} ON rows ({name})")
        db.execute("INSERT OR IGNORE INTO meta VALUES ('store_schema', ?)", (str(STORE_SCHEMA_VERSION),))

    def add(self, row: ResultRow | dict) -> int:
        """Store a row; a quality row is judged by the quality gate first (``host.gate``)."""
        r = coerce_row(row)
        data = gate.apply(r.to_dict())
        cur = self.db.execute(
            f"INSERT INTO rows ({', '.join(INDEXED)}, row_schema, data) VALUES ({', '.join('?' * (len(INDEXED) + 2))})",
            [None if data[n] is None else str(data[n]) for n in INDEXED] + [ROW_SCHEMA_VERSION, json.dumps(data)],
        )
        self.db.commit()
        return int(cur.lastrowid)

    def add_many(self, rows: Iterable[ResultRow | dict]) -> int:
        return sum(1 for r in rows if self.add(r))

    def rows(self, filters: dict[str, Any] | None = None, **kw: Any) -> list[ResultRow]:
        """Rows in insertion order; filters on indexed fields (``kind``, ``model``, ``target``, ...)."""
        flt = {**(filters or {}), **kw}
        bad = sorted(k for k in flt if k not in INDEXED)
        if bad:
            raise StoreError(f"cannot filter on {', '.join(bad)}; filterable fields: {', '.join(INDEXED)}")
        where = " AND ".join(f"{k} = ?" for k in flt)
        sql = "SELECT row_schema, data FROM rows" + (f" WHERE {where}" if where else "") + " ORDER BY id"
        out = []
        sql = sql.replace("SELECT row_schema", "SELECT id, row_schema")
        for rid, schema, data in self.db.execute(sql, [str(v) for v in flt.values()]):
            if not isinstance(schema, int):
                raise StoreError(f"{self.path}: row id {rid}: row_schema {schema!r} is not a number; "
                                 "not a row this rkdeploy wrote")
            if schema > ROW_SCHEMA_VERSION:
                raise StoreError(f"{self.path}: holds rows of schema {schema!r}, newer than {ROW_SCHEMA_VERSION}; "
                                 "upgrade rkdeploy")
            try:
                obj = loads_json(data, f"{self.path}: row id {rid}") if isinstance(data, str) else None
                if not isinstance(obj, dict):
                    raise StoreError(f"{self.path}: row id {rid}: data is not a JSON object")
                out.append(ResultRow.from_dict(obj))
            except JSONInputError as e:
                raise StoreError(str(e)) from None
            except (TypeError, ValueError) as e:
                raise StoreError(f"{self.path}: row id {rid}: not a valid result row ({e})") from None
        return out

    def import_jsonl(self, lines: Iterable[str]) -> int:
        """Add rows from JSONL (runner output or ``report --format jsonl``); hello lines are checked."""
        n = 0
        for line in lines:
            if not line.strip():
                continue
            obj = parse_line(line)
            if obj.get("type") == "row":
                self.add(obj)
                n += 1
        return n

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def parse_line(line: str) -> dict:
    """One runner JSONL line -> dict; refuses a hello announcing a newer row schema."""
    try:
        obj = json.loads(line)
    except ValueError:
        raise StoreError(f"runner output is not JSON: {sanitize(line.strip())[:200]!r}") from None
    if not isinstance(obj, dict) or obj.get("type") not in ("hello", "row", "info"):
        raise StoreError(f"unexpected runner line: {sanitize(line.strip())[:200]!r}")
    if obj["type"] == "hello" and int(obj.get("schema_version", 0)) > ROW_SCHEMA_VERSION:
        raise StoreError(f"board runner {obj.get('runner_version')} writes row schema {obj['schema_version']}, "
                         f"this rkdeploy reads {ROW_SCHEMA_VERSION}: upgrade rkdeploy on the host")
    return obj


# --- rendering --------------------------------------------------------------------------------

def latest(rows: list[ResultRow]) -> list[ResultRow]:
    """The newest row per measured configuration (``SAME_TEST``), in first-seen order."""
    keep: dict[tuple, ResultRow] = {}
    for r in rows:
        keep[tuple(getattr(r, k) for k in SAME_TEST)] = r
    return list(keep.values())


def _cell(name: str, row: ResultRow, fmt: str) -> str:
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
            out.append((title, _columns(group, "md", ("bench", "quality")), group))
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
    pm = meta(name)["pm"]
    return header(name) + (" ± sd" if pm else "")


def _numeric(name: str) -> bool:
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
    parts = ["<!doctype html><meta charset=utf-8><title>rkdeploy results</title>",
             "<style>body{font-family:sans-serif}table{border-collapse:collapse;margin-bottom:1.5em}"
             "td,th{border:1px solid #ccc;padding:2px 8px}td.n{text-align:right}</style>"]
    for title, cols, group in tables(rows):
        parts.append(f"<h3>{html.escape(title)}</h3><table><tr>"
                     + "".join(f"<th>{html.escape(_md_header(c))}</th>" for c in cols) + "</tr>")
        for r in group:
            parts.append("<tr>" + "".join(
                f"<td{' class=n' if _numeric(c) else ''}>{html.escape(_cell(c, r, 'html'))}</td>" for c in cols) + "</tr>")
        parts.append("</table>")
    errs = errors(rows)
    if errs:
        parts.append("<h3>Errors</h3><ul>" + "".join(f"<li>{html.escape(_error_text(r))}</li>" for r in errs) + "</ul>")
    return "\n".join(parts) + "\n"


RENDERERS = {"md": render_md, "csv": render_csv, "jsonl": render_jsonl, "html": render_html}


def render(rows: Iterable[ResultRow | dict], fmt: str = "md") -> str:
    if fmt not in RENDERERS:
        raise StoreError(f"report format {fmt!r}; allowed: {', '.join(FORMATS)}")
    return RENDERERS[fmt]([coerce_row(r) for r in rows])


def report(*, store: Path | str | None = DEFAULT_STORE, fmt: str = "md", filters: dict[str, Any] | None = None) -> str:
    """``rkdeploy report``: render every row in the store (md/html show the newest per configuration)."""
    if fmt not in RENDERERS:  # before the store is opened: a bad format creates nothing
        raise StoreError(f"report format {fmt!r}; allowed: {', '.join(FORMATS)}")
    with ResultStore(store, create=False) as s:
        return render(s.rows(filters or {}), fmt)


def iter_rows_jsonl(text: str) -> Iterator[dict]:
    for line in text.splitlines():
        if line.strip():
            obj = parse_line(line)
            if obj.get("type") == "row":
                yield obj
