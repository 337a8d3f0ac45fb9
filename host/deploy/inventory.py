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

import yaml

from host.errors import ConfigError

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


def _board(name: str, hv: dict, groups: list[str], where: str) -> Board:
    unknown = sorted(set(hv) - HOST_VARS)
    if unknown:
        raise ConfigError(f"{where}: host {name!r}: unknown variable {unknown[0]!r}; allowed: {', '.join(sorted(HOST_VARS))}")
    try:
        port = int(hv.get("ansible_port", 22))
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: host {name!r}: ansible_port {hv.get('ansible_port')!r} is not a number") from None
    if not 0 < port < 65536:
        raise ConfigError(f"{where}: host {name!r}: ansible_port {port} is outside 1..65535")
    workdir = str(hv.get("workdir", DEFAULT_WORKDIR))
    if "\0" in workdir or not workdir.strip():
        raise ConfigError(f"{where}: host {name!r}: workdir {workdir!r} is not a usable path")
    key = hv.get("ansible_ssh_private_key_file")
    return Board(
        name=name,
        host=str(hv.get("ansible_host", name)),
        port=port,
        user=str(hv["ansible_user"]) if hv.get("ansible_user") is not None else None,
        key_file=Path(os.path.expanduser(str(key))) if key else None,
        soc=str(hv["soc"]) if hv.get("soc") is not None else None,
        workdir=PurePosixPath(workdir),
        python=str(hv.get("python", "python3")),
        groups=tuple(groups),
    )


def parse_inventory(data: dict, source: Path | None = None) -> Inventory:
    where = str(source or "inventory")
    data = _expect_mapping(data, where)
    host_vars: dict[str, dict] = {}
    host_groups: dict[str, list[str]] = {}
    groups: dict[str, list[str]] = {}

    def walk(gname: str, group: dict, inherited: dict, lineage: list[str]) -> None:
        group = _expect_mapping(group, f"{where}: group {gname!r}")
        unknown = sorted(set(group) - GROUP_KEYS)
        if unknown:
            raise ConfigError(f"{where}: group {gname!r}: unknown key {unknown[0]!r}; allowed: hosts, children, vars")
        gvars = {**inherited, **_expect_mapping(group.get("vars"), f"{where}: group {gname!r} vars")}
        lineage = [*lineage, gname]
        for h, hv in _expect_mapping(group.get("hosts"), f"{where}: group {gname!r} hosts").items():
            hv = _expect_mapping(hv, f"{where}: host {h!r}")
            host_vars[h] = {**gvars, **host_vars.get(h, {}), **hv}
            for g in lineage:
                if g not in host_groups.setdefault(h, []):
                    host_groups[h].append(g)
                if h not in groups.setdefault(g, []):
                    groups[g].append(h)
        for cname, child in _expect_mapping(group.get("children"), f"{where}: group {gname!r} children").items():
            walk(cname, child, gvars, lineage)

    for gname, group in data.items():
        walk(gname, group, {}, [])
    groups.pop("all", None)  # "all" is always every board
    boards = {h: _board(h, hv, [g for g in host_groups[h] if g != "all"], where) for h, hv in host_vars.items()}
    return Inventory(boards=boards, groups=groups, source=source)


def load_inventory(path: Path | str | None = None) -> Inventory:
    path = Path(path) if path else default_inventory_path()
    if not path.exists():
        raise ConfigError(f"inventory {path} not found; create it (see configs/boards.yaml) or set RKDEPLOY_INVENTORY")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None
    return parse_inventory(data or {}, source=path)
