"""Offline text: held-in documents (calibration) and held-out documents (evaluation).

One document per line. Sentences are split deterministically so every step (calibration JSON,
encoder calibration, encoder evaluation) sees the same units. Held-in and held-out text must be
disjoint: no shared 13-word run (the usual contamination test).
"""

from __future__ import annotations

import re
from pathlib import Path

from host.errors import ConfigError

_SENT = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'])")
NGRAM = 13


def read_docs(path: Path) -> list[str]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: text file not found") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    docs = [line.strip() for line in text.splitlines() if line.strip()]
    if not docs:
        raise ConfigError(f"{path}: text file is empty")
    return docs


def sentences(docs: list[str], limit: int | None = None, *, min_words: int = 6, max_words: int = 60) -> list[str]:
    out: list[str] = []
    seen: set[str] = set()
    for d in docs:
        for s in _SENT.split(d):
            s = s.strip()
            n = len(s.split())
            if min_words <= n <= max_words and s not in seen:
                seen.add(s)
                out.append(s)
                if limit is not None and len(out) >= limit:
                    return out
    return out


def sentence_source(text, which: str) -> Path:
    """The file ``recipe_sentences`` reads for ``which`` ("heldin" | "heldout") of a recipe's ``text``."""
    return getattr(text, f"{which}_sentences") or getattr(text, which)


def recipe_sentences(text, which: str, limit: int) -> list[str]:
    """Up to ``limit`` sentences of a recipe's held-in or held-out text, the same for every step
    (encoder calibration, rknn calibration, encoder evaluation): the recipe's own sentence list
    (``heldin_sentences`` / ``heldout_sentences``, one per line) when it names one, else sentences
    split from the documents."""
    if getattr(text, f"{which}_sentences"):
        return read_docs(sentence_source(text, which))[:limit]
    return sentences(read_docs(sentence_source(text, which)), limit)


def _ngrams(docs: list[str], n: int) -> set[tuple[str, ...]]:
    grams: set[tuple[str, ...]] = set()
    for d in docs:
        words = re.findall(r"\w+", d.lower())
        grams.update(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
    return grams


def overlap(heldin: list[str], heldout: list[str], n: int = NGRAM) -> list[str]:
    """Shared ``n``-word runs between the two texts (empty = disjoint), as strings."""
    return sorted(" ".join(g) for g in _ngrams(heldin, n) & _ngrams(heldout, n))


#: check_disjoint's answers by (both paths, sizes, mtimes): one process checking many recipes (a test
#: run, a batch of checks) compares the same two texts once (~0.1-0.4 s each time otherwise).
_DISJOINT: dict[tuple, list[str]] = {}


def check_disjoint(heldin_path: Path, heldout_path: Path) -> list[str]:
    try:
        key = tuple((str(p), st.st_size, st.st_mtime_ns) for p in (heldin_path, heldout_path) for st in [Path(p).stat()])
    except OSError:
        key = None  # read_docs says what is wrong
    if key in _DISJOINT:
        return list(_DISJOINT[key])
    shared = overlap(read_docs(heldin_path), read_docs(heldout_path))
    problems = [] if not shared else [
        f"{heldout_path}: held-out text shares {len(shared)} {NGRAM}-word runs with held-in {heldin_path} "
        f"(first: {shared[0]!r}); evaluation text must not be calibration text"]
    if key is not None:
        _DISJOINT[key] = problems
    return list(problems)
