"""Strict, bounded reading of the YAML and JSON files a user hands us (recipes, targets,
inventories, calibration JSON, manifests).

One place refuses what a plain ``yaml.safe_load``/``json.load`` lets through or crashes on: a
directory or a non-UTF-8 file where a text file is expected, duplicate keys (the second silently
wins otherwise), nesting deeper than ``MAX_DEPTH``, YAML aliases that recurse or expand past
``MAX_NODES``. Every refusal is one ``ConfigError`` line naming the file, the line where known,
and what is allowed. ``lines`` maps a key path to its YAML line so schema errors can name it too.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from board.strictjson import MAX_DEPTH, JSONInputError
from board.strictjson import loads as _loads_json
from host.errors import ConfigError

MAX_NODES = 50_000           # YAML values, aliases counted at every use (no "billion laughs")
MAX_BYTES = 16 * 1024 * 1024  # JSON inputs (calibration sets); refuse a 2 GB file before reading it
# YAML configs (recipes, targets, inventories) are a few KB; PyYAML parses ~10-50k tokens/s, so
# this cap also bounds the time spent on a hostile file.
MAX_YAML_BYTES = 1024 * 1024


def read_text(path: Path | str, *, what: str = "file", max_bytes: int = MAX_BYTES) -> str:
    """UTF-8 text of ``path``, or one ``ConfigError`` line saying why not."""
    path = Path(path)
    try:
        if path.is_dir():
            raise ConfigError(f"{path}: is a directory, expected a file ({what})")
        with open(path, "rb") as f:
            raw = f.read(max_bytes + 1)
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found (expected a {what})") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror or e}") from None
    if len(raw) > max_bytes:
        raise ConfigError(f"{path}: larger than {max_bytes // 1024} KiB; a {what} is a small text file")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise ConfigError(f"{path}: line {line}: not UTF-8 text (byte 0x{raw[e.start]:02x}); "
                          f"save the {what} as UTF-8") from None


_QUOTED = re.compile(r"'(?:[^'\n]|'')*'|\"(?:[^\"\\\n]|\\.)*\"")
_COMMENT = re.compile(r"(?:^|(?<=\s))#[^\n]*")
_FLOW = re.compile(r"[\[\]{}]")


def _flow_too_deep(text: str) -> int | None:
    """Line where flow brackets nest deeper than MAX_DEPTH (quoted text and comments ignored), or None.

    PyYAML's scanner reads a whole flow collection before the composer sees its first node, in time
    that grows with the square of its depth: 10k brackets take seconds. This linear pass runs first."""
    bare = _COMMENT.sub("", _QUOTED.sub("''", text))
    depth = 0
    for m in _FLOW.finditer(bare):
        depth = depth + 1 if m.group() in "[{" else max(0, depth - 1)
        if depth > MAX_DEPTH:
            return bare.count("\n", 0, m.start()) + 1
    return None


def _base_loader() -> type:
    """libyaml's parser (about 6x faster) under PyYAML's Python composer and safe constructor, where the
    depth, alias and duplicate-key checks below live; the pure-Python SafeLoader without libyaml."""
    try:
        from yaml._yaml import CParser
    except ImportError:
        return yaml.SafeLoader

    class FastSafeLoader(CParser, yaml.composer.Composer, yaml.constructor.SafeConstructor, yaml.resolver.Resolver):
        def __init__(self, stream: str) -> None:
            CParser.__init__(self, stream)
            yaml.composer.Composer.__init__(self)
            yaml.constructor.SafeConstructor.__init__(self)
            yaml.resolver.Resolver.__init__(self)

    for name in ("check_node", "get_node", "get_single_node", "compose_document", "compose_node",
                 "compose_scalar_node", "compose_sequence_node", "compose_mapping_node"):
        setattr(FastSafeLoader, name, getattr(yaml.composer.Composer, name))  # CParser has C versions
    return FastSafeLoader


class _Loader(_base_loader()):
    """SafeLoader + duplicate keys refused, nesting capped, recursive aliases refused."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._nodes = 0
        self._open_anchors: list[str] = []

    def compose_node(self, parent, index):  # noqa: ANN001 - PyYAML's signature
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            if event.anchor in self._open_anchors:
                raise _YamlError(event.start_mark, f"alias *{event.anchor} refers to a node that contains it "
                                 "(recursive alias); aliases must point to complete nodes")
            return super().compose_node(parent, index)
        event = self.peek_event()
        self._nodes += 1
        if self._nodes > MAX_NODES:
            raise _YamlError(event.start_mark, f"holds more than {MAX_NODES} values; a config file is small")
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise _YamlError(event.start_mark, f"nested deeper than {MAX_DEPTH} levels")
        anchor = getattr(event, "anchor", None)
        if anchor:
            self._open_anchors.append(anchor)
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1
            if anchor:
                self._open_anchors.pop()

    def construct_mapping(self, node, deep=False):  # noqa: ANN001
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:
                    raise _YamlError(key_node.start_mark, "a mapping key must be a plain value, not a list or "
                                     "mapping") from None
                if first is not None:
                    raise _YamlError(key_node.start_mark, f"duplicate key {key!r} (first at line {first}); "
                                     "each key may appear once")
                seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


class _YamlError(Exception):
    def __init__(self, mark, msg: str) -> None:
        super().__init__(msg)
        self.line = mark.line + 1 if mark is not None else None


def _children(node) -> list:  # noqa: ANN001
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [x for pair in node.value for x in pair]
    return []


def _measure(node, memo: dict, depth: int) -> int:  # noqa: ANN001
    """Height of ``node`` expanded (aliases followed); raises past MAX_DEPTH levels or MAX_NODES values."""
    if depth > MAX_DEPTH:
        raise _YamlError(node.start_mark, f"nested deeper than {MAX_DEPTH} levels once aliases are expanded")
    key = id(node)
    if key not in memo:
        size, height = 1, 1
        for c in _children(node):
            height = max(height, 1 + _measure(c, memo, depth + 1))
            size += memo[id(c)][0]
            if size > MAX_NODES:
                raise _YamlError(node.start_mark, f"expands to more than {MAX_NODES} values (a YAML alias used "
                                 "many times?); write the values out")
        memo[key] = (size, height)
    height = memo[key][1]
    if depth + height - 1 > MAX_DEPTH:
        raise _YamlError(node.start_mark, f"nested deeper than {MAX_DEPTH} levels once aliases are expanded")
    return height


def _line_map(loader: _Loader, node, path: tuple, out: dict) -> None:  # noqa: ANN001
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode) and k.tag != "tag:yaml.org,2002:merge":
                p = (*path, loader.construct_object(k))
                out.setdefault(p, k.start_mark.line + 1)
                _line_map(loader, v, p, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            out.setdefault((*path, i), v.start_mark.line + 1)
            _line_map(loader, v, (*path, i), out)


def read_yaml(path: Path | str, *, what: str = "YAML file") -> tuple[Any, dict[tuple, int]]:
    """(data, {key path: line}) of a YAML file; one ``ConfigError`` line for anything malformed."""
    path = Path(path)
    text = read_text(path, what=what, max_bytes=MAX_YAML_BYTES)
    deep = _flow_too_deep(text)
    if deep is not None:
        raise ConfigError(f"{path}: line {deep}: nested deeper than {MAX_DEPTH} levels")
    loader = None
    try:
        loader = _Loader(text)  # the reader refuses NUL and other unprintable characters right here
        node = loader.get_single_node()
        if node is None:
            return None, {}
        _measure(node, {}, 1)
        data = loader.construct_document(node)
        lines: dict[tuple, int] = {}
        _line_map(loader, node, (), lines)
    except _YamlError as e:
        raise ConfigError(f"{path}: line {e.line}: {e}") from None
    except yaml.reader.ReaderError as e:
        line = text.count("\n", 0, e.position) + 1
        ch = e.character if isinstance(e.character, int) else ord(e.character[:1] or "\0")
        raise ConfigError(f"{path}: line {line}: character U+{ch:04X} is not allowed in YAML "
                          "(control characters other than tab and newline)") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        where = f" line {mark.line + 1}:" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}:{where} not valid YAML ({problem})") from None
    except RecursionError:  # belt and braces: the caps above should make this unreachable
        raise ConfigError(f"{path}: nested too deeply (at most {MAX_DEPTH} levels)") from None
    finally:
        if loader is not None:
            loader.dispose()
    return data, lines


def line_of(lines: dict[tuple, int], loc: tuple) -> int | None:
    """The YAML line of the longest known prefix of ``loc`` (a pydantic error location)."""
    loc = tuple(loc)
    for n in range(len(loc), 0, -1):
        if loc[:n] in lines:
            return lines[loc[:n]]
    return None


def read_json(path: Path | str, *, what: str = "JSON file", max_bytes: int = MAX_BYTES) -> Any:
    """A JSON file, strictly: UTF-8, no duplicate keys, no NaN, nesting capped; one ConfigError line."""
    path = Path(path)
    text = read_text(path, what=what, max_bytes=max_bytes)
    try:
        return _loads_json(text, str(path))
    except JSONInputError as e:
        raise ConfigError(str(e)) from None
