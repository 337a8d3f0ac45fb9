"""``make readme-numbers``: the README's measured tables, rendered from the results store.

No figure in the README is typed by hand: this rewrites what stands between
``<!-- numbers:begin -->`` and ``<!-- numbers:end -->`` from the newest rows of the local board
(``make demo`` writes them), stamped with the date, the CPU the rows name and the commit. Quality
rows join bench rows of the same artifact only (``host.results``); a degraded artifact says so.

    python -m host.readme_numbers README.md [--store results/rkdeploy.sqlite] [--check]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

from board.rows import ResultRow, format_value, meta
from host import gate
from host.errors import RkdeployError
from host.fsutil import atomic_write_text
from host.results import ResultStore, tables

BEGIN, END = "<!-- numbers:begin -->", "<!-- numbers:end -->"
LLM_COLS = (("artifact", None), ("PPL ratio", "ppl_ratio"), ("KLD", "kld_mean"), ("top-1", "top1_agree"),
            ("decode tok/s", "decode_tps"), ("prefill tok/s", "prefill_tps"), ("TTFT ms", "ttft_ms"),
            ("peak MB", "peak_rss_mb"))
ENC_COLS = (("artifact", None), ("cos", "cos_mean"), ("NN agree", "nn_agree"), ("seq/s", "seqs_per_s"),
            ("latency ms", "latency_ms"), ("peak MB", "peak_rss_mb"))
QUALITY_COLS = (("artifact", None), ("method", "method"), ("PPL ratio", "ppl_ratio"), ("KLD", "kld_mean"),
                ("top-1", "top1_agree"), ("cos", "cos_mean"))


class ReadmeError(RkdeployError):
    pass


def _label(r: ResultRow) -> str:
    who = f"{r.model} {r.scheme}" + (f" ({r.backend})" if r.backend and r.kind == "bench" else "")
    return who + (" **DEGRADED**" if r.status == gate.DEGRADED else "")


def _table(rows: list[ResultRow], cols) -> list[str]:
    cols = [(h, f) for h, f in cols if f is None or any(getattr(r, f) is not None for r in rows)]
    out = ["| " + " | ".join(h for h, _ in cols) + " |",
           "|" + "|".join("---:" if f and meta(f)["digits"] is not None else "---" for _, f in cols) + "|"]
    for r in rows:
        out.append("| " + " | ".join(_label(r) if f is None else format_value(f, getattr(r, f)) for _, f in cols)
                   + " |")
    return out


def _stamp(rows: list[ResultRow]) -> str:
    cpus = {((r.env or {}).get("host_cpu") or (r.env or {}).get("cpu") or {}).get("model") for r in rows} - {None}
    isas = {", ".join(((r.env or {}).get("cpu") or {}).get("isa") or []) for r in rows if r.kind == "bench"} - {""}
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).resolve().parent, check=False).stdout.strip() or "unknown"
    except OSError:
        commit = "unknown"
    newest = max((r.test_time or "" for r in rows), default="")
    return (f"_Rendered by `make readme-numbers` on {datetime.now(timezone.utc):%Y-%m-%d} from rows measured up to "
            f"{newest or '?'} on {', '.join(sorted(cpus)) or 'an unnamed CPU'}"
            + (f" (ISA: {'; '.join(sorted(isas))})" if isas else "") + f", commit {commit}. "
            "Speeds are this host's CPU running the board runner locally, never a board's; "
            "they move 15 % between runs on a shared machine._")


def render(rows: list[ResultRow], board: str = "local") -> str:
    """The markdown between the markers: LLM and encoder bench tables with quality joined, then the
    quality rows that have no bench row here (simulated vendor schemes, simulator rows)."""
    mine = [r for r in rows if r.kind == "quality" or r.board == board]
    if not mine:
        raise ReadmeError(f"no rows of board {board!r} in the store: run `make demo` first")
    out = [_stamp(mine), ""]
    shown = tables(mine)
    for title, _cols, group in shown:
        if title.startswith("LLM"):
            out += ["LLM (128-token prompt, 64 new tokens; quality on held-out text vs the float model):", ""]
            out += _table(group, LLM_COLS)
        elif title.startswith("Encoder"):
            out += ["Encoder (quality: cosine / nearest-neighbour agreement vs the float model):", ""]
            out += _table(group, ENC_COLS)
        elif title.startswith("Quality"):
            out += ["Quality without a local benchmark row (vendor schemes: simulated or the toolkit's simulator):", ""]
            out += _table(group, QUALITY_COLS)
        else:
            continue
        out.append("")
    bad = [r for _t, _c, g in shown for r in g if r.status == gate.DEGRADED]
    out += [f"- DEGRADED {r.model} {r.scheme}: {r.gate}" for r in bad]
    return "\n".join(out).rstrip() + "\n"


def rewrite(readme: Path, store: Path | str | None = None, *, board: str = "local", check: bool = False) -> bool:
    """Replace the marked section; returns whether it changed. ``check``: only compare (exit 1 if stale)."""
    text = readme.read_text(encoding="utf-8")
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise ReadmeError(f"{readme}: needs exactly one {BEGIN} … {END} section")
    with ResultStore(store, create=False) as s:
        rows = s.rows()
    body = render(rows, board)
    head, rest = text.split(BEGIN)
    _old, tail = rest.split(END)
    new = f"{head}{BEGIN}\n{body}{END}{tail}"
    if check:
        return _strip_stamp(new) != _strip_stamp(text)
    if new != text:
        atomic_write_text(readme, new)
    return new != text


def _strip_stamp(text: str) -> str:
    return "\n".join(ln for ln in text.splitlines() if not ln.startswith("_Rendered by"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="readme-numbers", description=__doc__.splitlines()[0])
    ap.add_argument("readme", type=Path)
    ap.add_argument("--store", default=None, help="results SQLite (default results/rkdeploy.sqlite)")
    ap.add_argument("--board", default="local")
    ap.add_argument("--check", action="store_true", help="exit 1 when the README's numbers differ from the store")
    a = ap.parse_args(argv)
    try:
        changed = rewrite(a.readme, a.store, board=a.board, check=a.check)
    except (RkdeployError, OSError) as e:
        print(f"readme-numbers: error: {e}", file=sys.stderr)
        return 1
    if a.check:
        print("README numbers are stale: run `make readme-numbers`" if changed else "README numbers match the store")
        return 1 if changed else 0
    print(f"{a.readme}: {'rewritten' if changed else 'unchanged'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
