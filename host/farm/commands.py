"""What ``rkdeploy farm ...`` and ``bench|push|doctor --farm`` do (the CLI only parses)."""

from __future__ import annotations

import json
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from host.errors import BenchError, DeployError
from host.farm.client import FarmClient, coordinator_address, parse_filter
from host.ui import console, err_console, sanitize


def _say(msg: str) -> None:
    err_console.print(msg, markup=False, highlight=False, soft_wrap=True)


def status(coordinator: str | None, *, as_json: bool = False) -> None:
    with FarmClient(coordinator) as c:
        places, reservations = c.places(), c.reservations()
    if as_json:
        print(json.dumps({"coordinator": c.address,
                          "places": [{"name": p.name, "tags": p.tags, "matches": list(p.matches), "acquired": p.acquired,
                                      "reservation": p.reservation, "comment": p.comment} for p in places],
                          "reservations": [{"token": r.token, "owner": r.owner, "state": r.state, "filters": r.filters,
                                            "places": list(r.places)} for r in reservations]}, indent=2))
        return
    table = Table(title=f"farm places ({c.address})")
    for col in ("place", "tags", "held by", "reservation", "matches"):
        table.add_column(col)
    for p in places:
        tags = ",".join(f"{k}={v}" for k, v in sorted(p.tags.items()))
        held = f"[yellow]{escape(sanitize(p.acquired))}[/]" if p.acquired else "[green]free[/]"
        table.add_row(escape(p.name), escape(tags), held, escape(p.reservation or ""), escape(" ".join(p.matches)))
    console.print(table)
    if reservations:
        rt = Table(title="reservations")
        for col in ("token", "owner", "state", "filter", "places"):
            rt.add_column(col)
        for r in reservations:
            rt.add_row(escape(r.token), escape(sanitize(r.owner)), escape(r.state),
                       escape(",".join(f"{k}={v}" for k, v in sorted(r.filters.items()))), escape(" ".join(r.places)))
        console.print(rt)


def export(out: Path, inventory: Path | None, exporter: str | None) -> None:
    from host.deploy.inventory import load_inventory
    from host.farm.export import exporter_name, write_exporter_config

    inv = load_inventory(inventory)
    data = write_exporter_config(inv, out)
    name = exporter or exporter_name()
    console.print(f"wrote {out}: {len(data)} NetworkService resource(s) ({', '.join(data)}) from {inv.source}",
                  markup=False, highlight=False)
    console.print(f"next: labgrid-exporter -c COORDINATOR:20408 -n {name} {out}\n"
                  f"      rkdeploy farm register --exporter {name} --coordinator COORDINATOR:20408",
                  markup=False, highlight=False)


def register(coordinator: str | None, inventory: Path | None, exporter: str | None) -> None:
    from host.deploy.inventory import load_inventory
    from host.farm.export import exporter_name, register_places

    inv = load_inventory(inventory)  # checked before we connect
    name = exporter or exporter_name()
    with FarmClient(coordinator) as c:
        for place, created in register_places(c, inv, name):
            console.print(f"{place}: {'created' if created else 'updated'} (match {name}/{place}/NetworkService)",
                          markup=False, highlight=False)


def release(coordinator: str | None, places: list[str], *, stale: bool, kick: bool) -> None:
    from host.farm.client import FarmError
    from host.farm.session import release_stale

    if not places and not stale:
        raise FarmError("name the places to release, or --stale (places of this host's killed farm commands)")
    with FarmClient(coordinator) as c:
        if stale:
            freed = release_stale(c, _say)
            if not freed:
                _say("farm: no stale place of this host")
        known = {p.name: p for p in c.places()}
        for name in places:
            p = known.get(name)
            if p is None:
                raise FarmError(f"no place {name!r} on {c.address}; known: {', '.join(known) or '(none)'}")
            if not p.acquired:
                _say(f"farm: {name} is not held")
                continue
            if p.acquired != c.user and not kick:
                raise FarmError(f"place {name} is held by {p.acquired}, not {c.user}; add --kick if that client is gone")
            c.release(name)
            _say(f"farm: released {name} (was held by {p.acquired})")


def trust(coordinator: str | None, place: str, inventory: Path | None) -> None:
    """``rkdeploy boards trust`` for a place: record the host key its NetworkService's server offers."""
    from host.deploy.hostkeys import project_known_hosts, trust_board
    from host.farm.export import board_from_place

    inv = _inventory(inventory)
    with FarmClient(coordinator) as c:
        info = next((p for p in c.places() if p.name == place), None)
        board = board_from_place(place, c.matched_resources(place), info.tags if info else {}, inv)
    fp, added = trust_board(board)
    if added:
        console.print(f"{place}: recorded host key {fp} for {board.known_hosts_name} in {project_known_hosts()}",
                      markup=False, highlight=False)
    else:
        console.print(f"{place}: host key {fp} already trusted", markup=False, highlight=False)


def _inventory(inventory: Path | None):
    from host.farm.run import load_optional_inventory

    return load_optional_inventory(inventory)


def _outcomes_table(title: str, outcomes) -> Table:
    table = Table(title=title)
    for col in ("place", "reservation", "rows", "status"):
        table.add_column(col)
    for o in outcomes:
        status = "[green]ok[/]" if o.ok else f"[red]{escape(o.error or '')}[/]"
        table.add_row(escape(o.place), escape(o.reservation), str(len(o.rows)), status)
    return table


def bench(farm: str, count: int, coordinator: str | None, *, recipe: Path, target: str, params, store=None,
          wait: bool = True, inventory: Path | None = None, wait_timeout: float | None = None) -> None:
    from host.farm.run import bench_farm

    tags = parse_filter(farm)
    address = coordinator_address(coordinator)
    out = bench_farm(tags, count, recipe=recipe, target=target, params=params, address=address, store=store,
                     wait=wait, inventory=_inventory(inventory), wait_timeout=wait_timeout)
    err_console.print(_outcomes_table("farm bench", out))
    rows = [r for o in out for r in o.rows]
    ok = sum(r.status == "ok" for r in rows)
    _say(f"{ok} ok, {len(rows) - ok} error rows stored; `rkdeploy report` prints the table")
    failed = [o.place for o in out if not o.ok]
    if failed:
        raise DeployError(f"bench failed on {len(failed)} of {len(out)} farm boards: {', '.join(failed)} (see the table)")
    if not rows:
        raise BenchError(f"nothing benchmarked for {target}: build artifacts first (`rkdeploy export --target {target}`)")


def push(farm: str, count: int, coordinator: str | None, *, recipe: Path, target: str, inventory: Path | None = None,
         stall_timeout: float | None = None, wait_timeout: float | None = None, dry_run: bool = False) -> None:
    from host.config import load_recipe
    from host.deploy.push import runner_dir, summary_table, target_artifacts
    from host.deploy.ssh import SshTransport
    from host.farm.run import push_farm

    tags = parse_filter(farm)
    address = coordinator_address(coordinator)
    missing: list[str] = []
    arts = target_artifacts(target, recipe=load_recipe(recipe), missing=missing)
    if missing:
        _say(f"skip (not built; `rkdeploy export --target {target}` builds them): {', '.join(missing)}")
    if not arts:
        raise DeployError(f"no artifact of the recipe is built for {target}; run: rkdeploy export --target {target}")
    if dry_run:
        for d in arts:
            console.print(f"{d.remote}: {len(d.files)} files, {sum(f.size for f in d.files.values()) / 1e6:.1f} MB",
                          markup=False, highlight=False)
        console.print(f"→ {count} board(s) with {farm} from {address} (nothing reserved or sent: --dry-run)",
                      markup=False, highlight=False)
        return
    out = push_farm(tags, count, [runner_dir(artifacts=arts), *arts], address=address, target=target, inventory=_inventory(inventory),
                    transport=lambda b: SshTransport(b, stall_timeout=stall_timeout), wait_timeout=wait_timeout)
    console.print(summary_table([o.result for o in out]))
    failed = [o.place for o in out if not o.ok]
    if failed:
        raise DeployError(f"push failed on {len(failed)} of {len(out)} farm boards: {', '.join(failed)} (see the table)")


def doctor(farm: str, count: int, coordinator: str | None, *, as_json: bool = False, inventory: Path | None = None,
           wait_timeout: float | None = None) -> None:
    from host.deploy.remote_bench import doctor_table
    from host.farm.run import doctor_farm

    tags = parse_filter(farm)
    address = coordinator_address(coordinator)
    out = doctor_farm(tags, count, address=address, inventory=_inventory(inventory), wait_timeout=wait_timeout)
    reports = [o.result for o in out]
    if as_json:
        print(json.dumps([{"board": r.board, "place": o.place, "reservation": o.reservation, "error": r.error,
                           "checks": r.checks} for o, r in zip(out, reports, strict=True)], indent=2))
    else:
        console.print(doctor_table(reports))
    failed = [o.place for o in out if not o.ok]
    if failed:
        raise DeployError(f"doctor could not run on: {', '.join(failed)}")
