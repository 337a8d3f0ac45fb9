"""Selectors: which stored rows one side of ``rkdeploy compare`` (or ``report --select``) means.

A selector is comma-separated terms, all of which a row must meet:

- ``latest`` / ``previous`` / ``run=N``: per configuration (``render.SAME_TEST``), the newest, the
  one before it, the N-th newest row (a *run*: ``make demo`` twice leaves ``previous`` and ``latest``);
- ``time=FROM..TO``: ``test_time`` between two UTC ISO prefixes, either side may be left out
  (``time=2026-12-01..2026-12-02``, ``time=2026-12-02T10:00..``);
- ``commit=SHA``: rows benchmarked by that rkdeploy checkout (``env.rkdeploy.commit``, a prefix; rows
  stored before rkdeploy recorded it have none);
- ``FIELD=VALUE``: a row field equals the value (``board=rock5b``, ``scheme=w8a8``,
  ``runner=1.3.0``); ``artifact_sha256`` (or ``sha``) matches a prefix;
- a ``.jsonl`` (``rkdeploy report --format jsonl``) or ``.sqlite`` (a results store) file: rows from
  it instead of the store (``file=PATH`` for other names).

Without ``run``/``previous`` a side holds the newest matching row per configuration. Every term is
checked before the store is opened: a bad one is one ``rkdeploy: error:`` line naming it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from board.rows import ResultRow
from host.errors import ReportError
from host.results.store import ResultStore, coerce_row, iter_rows_jsonl

#: Fields a ``FIELD=VALUE`` term may name (aliases on the right).
FIELDS = ("board", "target", "scheme", "backend", "model", "runtime", "test", "threads", "n_prompt", "n_gen",
          "batch", "seq_len", "artifact_sha256", "runner_version", "status")
ALIASES = {"runner": "runner_version", "sha": "artifact_sha256"}
_TIME = re.compile(r"^\d{4}(-\d{2}(-\d{2}([T ]\d{2}(:\d{2}(:\d{2}(\.\d+)?)?)?Z?)?)?)?$")
HELP = ("latest, previous, run=N, time=FROM..TO, commit=SHA, FIELD=VALUE (fields: " + ", ".join(FIELDS + tuple(ALIASES))
        + ") or a .jsonl/.sqlite file")


@dataclass(frozen=True)
class Selector:
    text: str
    fields: dict[str, str] = field(default_factory=dict)
    time: tuple[str, str] | None = None
    run: int | None = None  # 1 = newest per configuration
    source: Path | None = None  # rows from this file instead of the store
    commit: str | None = None  # prefix of env.rkdeploy.commit: the rkdeploy checkout that ran the benchmark


def _bad(text: str, term: str, why: str) -> ReportError:
    return ReportError(f"selector {text!r}: term {term!r} {why}; a selector is comma-separated terms: {HELP}")


def parse_selector(text: str) -> Selector:
    """Parse one selector (see the module docstring); a bad term raises ``ReportError`` naming it."""
    terms = [t.strip() for t in text.split(",")]
    if not text.strip() or any(not t for t in terms):
        raise ReportError(f"selector {text!r} is empty or has an empty term; give one of: {HELP}")
    fields: dict[str, str] = {}
    time = run = source = commit = None
    for term in terms:
        key, eq, value = term.partition("=")
        key = key.strip().lower()
        value = value.strip()
        if not eq:
            if key in ("latest", "previous"):
                run = 1 if key == "latest" else 2
            elif term.endswith((".jsonl", ".sqlite")):
                source = Path(term)
            else:
                raise _bad(text, term, "is not a known term")
        elif not value:
            raise _bad(text, term, "has no value")
        elif key == "run":
            if not re.fullmatch(r"-?\d+", value) or int(value) == 0:
                raise _bad(text, term, "takes a run number: 1 (latest), 2 (previous), ... (or -1, -2)")
            run = abs(int(value))
        elif key == "time":
            lo, dots, hi = value.partition("..")
            if not dots or not (lo or hi) or any(x and not _TIME.match(x) for x in (lo, hi)):
                raise _bad(text, term, "takes FROM..TO, UTC ISO prefixes such as 2026-12-01..2026-12-02T12:00")
            time = (lo.replace(" ", "T"), hi.replace(" ", "T"))
        elif key == "file":
            source = Path(value)
        elif key == "commit":
            if not re.fullmatch(r"[0-9a-fA-F]{4,40}", value):
                raise _bad(text, term, "takes a git commit hash (4 to 40 hex digits) of the rkdeploy that ran the "
                           "benchmark (env.rkdeploy.commit)")
            commit = value.lower()
        elif ALIASES.get(key, key) in FIELDS:
            fields[ALIASES.get(key, key)] = value
        else:
            raise _bad(text, term, "names an unknown field")
    if source is not None and not source.is_file():
        raise ReportError(f"selector {text!r}: file {source} does not exist (rows come from a .jsonl report "
                          "export or a .sqlite results store)")
    return Selector(text, fields, time, run, source, commit)


def _matches(row: ResultRow, sel: Selector) -> bool:
    for name, want in sel.fields.items():
        got = getattr(row, name)
        if name == "artifact_sha256":
            if not (got or "").startswith(want.lower()):
                return False
        elif got is None or str(got) != want:
            return False
    if sel.commit and not str(((row.env or {}).get("rkdeploy") or {}).get("commit") or "").startswith(sel.commit):
        return False
    if sel.time:
        lo, hi = sel.time
        t = row.test_time or ""
        if not t or (lo and t < lo) or (hi and t > hi and not t.startswith(hi)):
            return False
    return True


def apply_selector(rows: list[ResultRow], sel: Selector, same_test: tuple[str, ...]) -> list[ResultRow]:
    """The rows one side means: matching rows, then per configuration the run-th newest (default 1)."""
    groups: dict[tuple, list[ResultRow]] = {}
    for r in rows:
        if _matches(r, sel):
            groups.setdefault(tuple(getattr(r, k) for k in same_test), []).append(r)
    n = sel.run or 1
    return [g[-n] for g in groups.values() if len(g) >= n]


def load_rows(sel: Selector | None, store: Path | str | None) -> list[ResultRow]:
    """Every row of the selector's file (``.jsonl`` export or ``.sqlite`` store), else of ``store``."""
    if sel is not None and sel.source is not None and sel.source.suffix == ".jsonl":
        try:
            return [coerce_row(r) for r in iter_rows_jsonl(sel.source.read_text(encoding="utf-8"))]
        except (OSError, UnicodeDecodeError) as e:
            raise ReportError(f"selector {sel.text!r}: cannot read {sel.source}: {e}") from None
    with ResultStore(sel.source if sel is not None and sel.source else store, create=False) as s:
        return s.rows()
