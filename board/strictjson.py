"""Strict, bounded JSON for untrusted input (stdlib only, Python >= 3.8).

``loads(text, where)`` refuses, with one ``JSONInputError`` line naming ``where``: invalid JSON
(line and column), duplicate keys (the second would silently win), NaN/Infinity, and nesting
deeper than ``MAX_DEPTH`` (checked before parsing, so 100k brackets never reach the recursive
decoder). The host reads calibration JSON and manifests through the same function.
"""

from __future__ import annotations

import json
import re
from typing import Any, List, Optional

MAX_DEPTH = 64
_STRING = re.compile(r'"(?:[^"\\\n]|\\.)*"')
_BRACKET = re.compile(r"[\[\]{}]")


class JSONInputError(ValueError):
    """Malformed or hostile JSON; ``str()`` is one line naming the file and the problem."""


def too_deep_line(text: str, limit: int = MAX_DEPTH) -> Optional[int]:
    """Line (1-based) where ``text`` nests deeper than ``limit``, or None."""
    bare = _STRING.sub('""', text)  # strings hold no raw newline, so line numbers survive
    depth = 0
    for m in _BRACKET.finditer(bare):
        depth += 1 if m.group() in "[{" else -1
        if depth > limit:
            return bare.count("\n", 0, m.start()) + 1
    return None


class _Dup(dict):
    """An object that had a repeated key (kept, so the path to it can be named)."""

    dup_key = None  # type: Any


def _pairs_marking(pairs: List[Any]) -> dict:
    out = {}  # type: dict
    dup = None
    for k, v in pairs:
        if k in out and dup is None:
            dup = k
        out[k] = v
    if dup is None:
        return out
    d = _Dup(out)
    d.dup_key = dup
    return d


def _find_dup(obj: Any, path: str, depth: int = 0) -> Optional[str]:
    """'key' in path of the first object with a repeated key (depth-first, document order)."""
    if depth > MAX_DEPTH:
        return None
    if isinstance(obj, _Dup):
        return "%r in %s" % (obj.dup_key, path or "the top-level object")
    children = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for k, v in children:
        got = _find_dup(v, "%s[%d]" % (path, k) if isinstance(k, int) else (path + "." if path else "") + str(k),
                        depth + 1)
        if got:
            return got
    return None


def _no_constant(name: str) -> Any:
    raise JSONInputError("%s is not a JSON number" % name)


def loads(text: str, where: str, max_depth: int = MAX_DEPTH) -> Any:
    line = too_deep_line(text, max_depth)
    if line is not None:
        raise JSONInputError("%s: line %d: nested deeper than %d levels" % (where, line, max_depth))
    try:
        data = json.loads(text, object_pairs_hook=_pairs_marking, parse_constant=_no_constant)
    except JSONInputError as e:
        raise JSONInputError("%s: %s (not allowed in JSON)" % (where, e)) from None
    except json.JSONDecodeError as e:
        raise JSONInputError("%s is not valid JSON: line %d column %d: %s" % (where, e.lineno, e.colno, e.msg)) from None
    except (ValueError, RecursionError) as e:  # e.g. an integer with more than 4300 digits
        raise JSONInputError("%s is not valid JSON (%s)" % (where, str(e).splitlines()[0][:200])) from None
    dup = _find_dup(data, "")
    if dup is not None:
        raise JSONInputError("%s: duplicate key %s; each key may appear once in an object" % (where, dup))
    return data


def read(path: str, where: Optional[str] = None, max_bytes: int = 16 * 1024 * 1024) -> Any:
    """A JSON file, strictly (see ``loads``); OSError for missing/unreadable files is the caller's."""
    import os

    where = where or path
    if os.path.isdir(path):
        raise JSONInputError("%s: is a directory, expected a JSON file" % where)
    with open(path, "rb") as f:
        raw = f.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise JSONInputError("%s: larger than %d bytes; refusing to parse it" % (where, max_bytes))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise JSONInputError("%s: not UTF-8 text (byte 0x%02x at offset %d)" % (where, raw[e.start], e.start)) from None
    return loads(text, where)
