"""The board inventory: Ansible's YAML inventory shape, resolved into plain ``Board`` records.

``configs/boards.yaml`` (or ``$RKDEPLOY_INVENTORY``) holds groups → hosts; variables set on a
group (``vars:``) apply to every host below it, host variables win. Host variables we read:
``ansible_host``, ``ansible_port``, ``ansible_user``, ``ansible_ssh_private_key_file`` and ours:
``soc``, ``workdir`` (board path; relative = under the login's home), ``python``.
A selection (``--boards``) is a comma list of board names, group names or ``all``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from host.errors import ConfigError
from host.safeload import line_of, read_yaml

HOST_VARS = {"ansible_host", "ansible_port", "ansible_user", "ansible_ssh_private_key_file", "soc", "workdir",
             "python", "ansible_connection"}
GROUP_KEYS = {"hosts", "children", "vars"}
DEFAULT_WORKDIR = "rkdeploy"


@dataclass(frozen=True)
class Board:
    """One board as the deployer sees it (all inheritance resolved)."""

    name: str
    host: str
    port: int = 22
    user: str | None = None
    key_file: Path | None = None
    soc: str | None = None
    workdir: PurePosixPath = PurePosixPath(DEFAULT_WORKDIR)
    python: str = "python3"
    groups: tuple[str, ...] = field(default_factory=tuple)

    @property
    def address(self) -> str:
        return f"{self.user + '@' if self.user else ''}{self.host}:{self.port}"

    @property
    def known_hosts_name(self) -> str:
        """How OpenSSH names this server in ``known_hosts``."""
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"


@dataclass(frozen=True)
class Inventory:
    boards: dict[str, Board]
    groups: dict[str, list[str]]
    source: Path | None = None

    def select(self, selection: str) -> list[Board]:
        """Boards named by ``selection`` (names, groups, ``all``; comma separated), inventory order."""
        wanted: set[str] = set()
        for item in (s.strip() for s in selection.split(",")):
            if not item:
                continue
            if item == "all":
                wanted.update(self.boards)
            elif item in self.boards:
                wanted.add(item)
            elif item in self.groups:
                wanted.update(self.groups[item])
            else:
                known = ", ".join(sorted(self.boards) + sorted(self.groups)) or "(none)"
                raise ConfigError(f"--boards {item!r}: no such board or group in {self.source}; known: {known}")
        if not wanted:
            raise ConfigError(f"--boards {selection!r} selects no board")
        return [b for name, b in self.boards.items() if name in wanted]


def default_inventory_path() -> Path:
    env = os.environ.get("RKDEPLOY_INVENTORY")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "configs" / "boards.yaml"


def _expect_mapping(value, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
    return value


def _bad_chars(text: str) -> bool:
    return any(ord(c) < 32 or ord(c) == 127 for c in text)


def _text(hv: dict, key: str, where: str, *, spaces: bool = False) -> str | None:
    """A host variable that must be a non-empty string (no control characters; no spaces unless allowed)."""
    if key not in hv or hv[key] is None:
        return None
    v = hv[key]
    if not isinstance(v, str):
        raise ConfigError(f"{where}: {key} must be a string, got {type(v).__name__} {_short(v)}")
    if not v.strip() or _bad_chars(v) or (not spaces and any(c.isspace() for c in v)):
        raise ConfigError(f"{where}: {key} {v!r} is empty or holds spaces/control characters")
    return v


def _short(v) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _port(hv: dict, where: str) -> int:
    v = hv.get("ansible_port", 22)
    if isinstance(v, str) and v.strip().isdigit():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int):  # no 22.5 -> 22, no true -> 1
        raise ConfigError(f"{where}: ansible_port must be a whole number 1..65535, got {type(v).__name__} {_short(v)}")
    if not 0 < v < 65536:
        raise ConfigError(f"{where}: ansible_port {v} is outside 1..65535")
    return v


def _workdir(hv: dict, where: str) -> PurePosixPath:
    v = hv.get("workdir", DEFAULT_WORKDIR)
    if not isinstance(v, str):
        raise ConfigError(f"{where}: workdir must be a string (a board path), got {type(v).__name__} {_short(v)}")
    p = PurePosixPath(v)
    if not v.strip() or _bad_chars(v) or ".." in p.parts or str(p) == "/":
        raise ConfigError(f"{where}: workdir {v!r} is not usable: a folder on the board, relative to the login's "
                          "home or absolute, without '..', control characters, or '/' itself")
    return p


def _board(name: str, hv: dict, groups: list[str], where: str) -> Board:
    here = f"{where}: host {name!r}"
    unknown = sorted((str(k) for k in set(hv) - HOST_VARS), key=str)
    if unknown:
        raise ConfigError(f"{here}: unknown variable {unknown[0]!r}; allowed: {', '.join(sorted(HOST_VARS))}")
    port = _port(hv, here)
    workdir = _workdir(hv, here)
    key = _text(hv, "ansible_ssh_private_key_file", here, spaces=True)
    key_file = Path(os.path.expanduser(key)) if key else None
    if key_file is not None and key_file.is_dir():
        raise ConfigError(f"{here}: ansible_ssh_private_key_file {key} is a directory, expected a private key file")
    _text(hv, "ansible_connection", here)
    return Board(
        name=name,
        host=_text(hv, "ansible_host", here) or name,
        port=port,
        user=_text(hv, "ansible_user", here),
        key_file=key_file,
        soc=_text(hv, "soc", here),
        workdir=workdir,
        python=_text(hv, "python", here, spaces=True) or "python3",
        groups=tuple(groups),
    )


def _name(value, what: str, where: str) -> str:
    if not isinstance(value, str) or not value.strip() or _bad_chars(value) or any(c.isspace() for c in value):
        raise ConfigError(f"{where}: {what} name {_short(value)} must be a non-empty string without spaces")
    return value


def parse_inventory(data: dict, source: Path | None = None, lines: dict | None = None) -> Inventory:
    where = str(source or "inventory")
    data = _expect_mapping(data, where)
    lines = lines or {}
    host_vars: dict[str, dict] = {}
    host_where: dict[str, str] = {}
    host_groups: dict[str, list[str]] = {}
    groups: dict[str, list[str]] = {}

    def at(path: tuple) -> str:
        line = line_of(lines, path)
        return f"{where}: line {line}" if line else where

    def walk(gname: str, group: dict, inherited: dict, lineage: list[str], path: tuple) -> None:
        gname = _name(gname, "group", at(path))
        group = _expect_mapping(group, f"{at(path)}: group {gname!r}")
        unknown = sorted(str(k) for k in set(group) - GROUP_KEYS)
        if unknown:
            raise ConfigError(f"{at(path)}: group {gname!r}: unknown key {unknown[0]!r}; allowed: hosts, children, vars")
        gvars = {**inherited, **_expect_mapping(group.get("vars"), f"{at(path + ('vars',))}: group {gname!r} vars")}
        lineage = [*lineage, gname]
        hosts = _expect_mapping(group.get("hosts"), f"{at(path + ('hosts',))}: group {gname!r} hosts")
        for h, hv in hosts.items():
            hpath = (*path, "hosts", h)
            h = _name(h, "host", at(hpath))
            hv = _expect_mapping(hv, f"{at(hpath)}: host {h!r}")
            host_vars[h] = {**gvars, **host_vars.get(h, {}), **hv}
            host_where.setdefault(h, at(hpath))
            for g in lineage:
                if g not in host_groups.setdefault(h, []):
                    host_groups[h].append(g)
                if h not in groups.setdefault(g, []):
                    groups[g].append(h)
        children = _expect_mapping(group.get("children"), f"{at(path + ('children',))}: group {gname!r} children")
        for cname, child in children.items():
            walk(cname, child, gvars, lineage, (*path, "children", cname))

    for gname, group in data.items():
        walk(gname, group, {}, [], (gname,))
    groups.pop("all", None)  # "all" is always every board
    boards = {h: _board(h, hv, [g for g in host_groups[h] if g != "all"], host_where[h]) for h, hv in host_vars.items()}
    return Inventory(boards=boards, groups=groups, source=source)


def load_inventory(path: Path | str | None = None) -> Inventory:
    path = Path(path) if path else default_inventory_path()
    if not path.exists():
        raise ConfigError(f"inventory {path} not found; create it (see configs/boards.yaml) or set RKDEPLOY_INVENTORY")
    data, lines = read_yaml(path, what="inventory YAML")
    return parse_inventory(data or {}, source=path, lines=lines)
