"""From our inventory to labgrid: an exporter config (one ``NetworkService`` per board) and the
places that match them (tags ``soc`` and ``board``; labgrid adds ``name``), and back: a place's
``NetworkService`` as the same ``Board`` record the static inventory gives.

A place named like an inventory board takes that board's key file, workdir and python; address,
port and user always come from the place's ``NetworkService`` (the lab's truth).
"""

from __future__ import annotations

import dataclasses
import socket
from pathlib import Path, PurePosixPath

import yaml

from host.deploy.inventory import Board, Inventory
from host.farm.client import TAG_VALUE, FarmClient, FarmError, checked_place
from host.fsutil import atomic_write_text

RESOURCE = "NetworkService"


def exporter_name() -> str:
    return socket.gethostname().split(".")[0] or "rkdeploy"


def exporter_config(inv: Inventory) -> dict:
    """labgrid exporter YAML: a group per board holding its ``NetworkService`` (address, port, username)."""
    out: dict = {}
    for b in inv.boards.values():
        if not b.user:
            raise FarmError(f"{inv.source}: host {b.name!r} has no ansible_user; labgrid's NetworkService needs "
                            "the login name (set ansible_user)")
        out[b.name] = {RESOURCE: {"address": b.host, "port": b.port, "username": b.user}}
    return out


def place_tags(b: Board) -> dict[str, str]:
    tags = {"board": b.name}
    if b.soc:
        tags["soc"] = b.soc
    bad = [f"{k}={v}" for k, v in tags.items() if not TAG_VALUE.match(v)]
    if bad:
        raise FarmError(f"board {b.name!r}: tag {bad[0]!r} cannot be a labgrid tag (letters, digits, _ . - only)")
    return tags


def write_exporter_config(inv: Inventory, out: Path) -> dict:
    data = exporter_config(inv)
    for b in inv.boards.values():
        place_tags(b)  # refuse an unusable tag before anything is written
    head = (f"## labgrid exporter config written by `rkdeploy farm export` from {inv.source}\n"
            "## run: labgrid-exporter -c COORDINATOR_HOST:20408 -n EXPORTER_NAME THIS_FILE\n")
    atomic_write_text(out, head + yaml.safe_dump(data, sort_keys=False))
    return data


def register_places(client: FarmClient, inv: Inventory, exporter: str) -> list[tuple[str, bool]]:
    """Create (or update) one place per board: match ``EXPORTER/BOARD/NetworkService``, tags soc + board."""
    return [(b.name, client.add_place(b.name, matches=[f"{exporter}/{b.name}/{RESOURCE}"], tags=place_tags(b)))
            for b in inv.boards.values()]


def board_from_place(place: str, resources: dict[str, dict], tags: dict[str, str], inv: Inventory | None) -> Board:
    """The ``Board`` record of an acquired place (same record as the inventory gives)."""
    checked_place(place)
    ns = resources.get(RESOURCE)
    if ns is None:
        raise FarmError(f"place {place}: no {RESOURCE} resource matched (found: {', '.join(resources) or 'none'}); "
                        f"add one with `rkdeploy farm export` and the exporter, then `rkdeploy farm register`")
    host, user, port = ns.get("address"), ns.get("username"), ns.get("port", 22)
    if not isinstance(host, str) or not host or any(c.isspace() or ord(c) < 32 for c in host):
        raise FarmError(f"place {place}: {RESOURCE} address {host!r} is not a host name or address")
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        raise FarmError(f"place {place}: {RESOURCE} port {port!r} is outside 1..65535")
    if user is not None and (not isinstance(user, str) or not user or any(c.isspace() or ord(c) < 32 for c in user)):
        raise FarmError(f"place {place}: {RESOURCE} username {user!r} is not a login name")
    base = inv.boards.get(place) if inv is not None else None
    if base is None:
        base = Board(name=place, host=host, workdir=PurePosixPath("rkdeploy"))
    return dataclasses.replace(base, name=place, host=host, port=port, user=user or None,
                               soc=tags.get("soc") or base.soc, groups=("farm",))
