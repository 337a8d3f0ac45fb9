"""SQLite store of result rows (``ResultStore``) and the runner's JSONL lines.

The store keeps each ``board.rows.ResultRow`` as its JSON plus one indexed column per field marked
``index``; it is schema-versioned and refuses a file written by a newer rkdeploy.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from board.rows import ROW_SCHEMA_VERSION, ResultRow, fields
from board.strictjson import JSONInputError
from board.strictjson import loads as loads_json
from host import gate
from host.errors import RkdeployError
from host.ui import sanitize


def default_store() -> Path:
    """``$RKDEPLOY_RESULTS``, else ``./results/rkdeploy.sqlite`` in the CURRENT folder (like ``./artifacts``,
    ``host.plan.artifacts_root``): a user's project folder holds its own results, not the rkdeploy checkout."""
    env = os.environ.get("RKDEPLOY_RESULTS")
    return Path(env) if env else Path.cwd() / "results" / "rkdeploy.sqlite"


DEFAULT_STORE = None  # means default_store(), resolved at call time
# Version of the store layout (tables/columns). Readers refuse a newer one.
STORE_SCHEMA_VERSION = 1
INDEXED = tuple(f.name for f in fields() if f.metadata["index"])


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


def iter_rows_jsonl(text: str) -> Iterator[dict]:
    for line in text.splitlines():
        if line.strip():
            obj = parse_line(line)
            if obj.get("type") == "row":
                yield obj
