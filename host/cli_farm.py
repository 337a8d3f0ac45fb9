"""``rkdeploy farm ...``: the shared board farm on labgrid (status, export, register, release).
``bench|push|doctor --farm TAG=VALUE`` live beside their commands in ``host.cli_run``. Thin: each
command calls one function of ``host.farm.commands`` (heavy imports inside the handler)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from host.cli_common import InventoryOpt, _out_file, app

farm_app = typer.Typer(no_args_is_help=True, help="A shared board farm on labgrid: places, tags, who holds what.")
app.add_typer(farm_app, name="farm")

CoordinatorOpt = typer.Option(None, "--coordinator", help="labgrid coordinator HOST:PORT (default $LG_COORDINATOR, "
                              "else 127.0.0.1:20408)")
ExporterOpt = typer.Option(None, "--exporter", help="the exporter's name (labgrid-exporter -n NAME; default: this host's name)")


@farm_app.command("status")
def farm_status_cmd(coordinator: Optional[str] = CoordinatorOpt,
                    as_json: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """Places, their tags, who holds each, and the reservations waiting or allocated."""
    from host.farm import commands

    commands.status(coordinator, as_json=as_json)


@farm_app.command("export")
def farm_export_cmd(out: Path = typer.Option(..., "--out", "-o", help="exporter YAML to write"),
                    inventory: Optional[Path] = InventoryOpt, exporter: Optional[str] = ExporterOpt) -> None:
    """Write a labgrid exporter config from the inventory: one NetworkService per board."""
    from host.farm import commands

    _out_file(out, "--out")
    commands.export(out, inventory, exporter)


@farm_app.command("register")
def farm_register_cmd(coordinator: Optional[str] = CoordinatorOpt, inventory: Optional[Path] = InventoryOpt,
                      exporter: Optional[str] = ExporterOpt) -> None:
    """Create one place per inventory board on the coordinator (match EXPORTER/BOARD/NetworkService,
    tags soc and board); idempotent."""
    from host.farm import commands

    commands.register(coordinator, inventory, exporter)


@farm_app.command("trust")
def farm_trust_cmd(place: str = typer.Argument(..., help="place name"), coordinator: Optional[str] = CoordinatorOpt,
                   inventory: Optional[Path] = InventoryOpt) -> None:
    """Record the SSH host key of a place's board in configs/known_hosts (as `rkdeploy boards trust`)."""
    from host.farm import commands

    commands.trust(coordinator, place, inventory)


@farm_app.command("release")
def farm_release_cmd(places: list[str] = typer.Argument(None, help="place names"),
                     coordinator: Optional[str] = CoordinatorOpt,
                     stale: bool = typer.Option(False, "--stale", help="release places this host's killed farm commands held"),
                     kick: bool = typer.Option(False, "--kick", help="also release a place another client holds")) -> None:
    """Release places (after a killed host: labgrid keeps acquired places until someone releases them)."""
    from host.farm import commands

    commands.release(coordinator, list(places or []), stale=stale, kick=kick)


# -- options `bench`, `push` and `doctor` take (host.cli_run) -------------------------------------
FarmOpt = typer.Option(None, "--farm", help="reserve boards from the labgrid farm by tag, e.g. soc=rk3588 "
                       "(TAG=VALUE[,TAG=VALUE]; see `rkdeploy farm status`)")
CountOpt = typer.Option(1, "--count", "-n", min=1, help="with --farm: how many boards (all used in parallel)")
FarmTimeoutOpt = typer.Option(None, "--farm-timeout", min=1, help="with --farm: give up after waiting this many "
                              "seconds for free boards (default: wait; Ctrl-C cancels)")


def farm_or_boards(farm: Optional[str], boards: Optional[str]) -> None:
    """--farm and --boards exclude each other (a usage error before any work)."""
    if farm and boards:
        raise typer.BadParameter("give --farm TAG=VALUE or --boards NAMES, not both", param_hint="'--farm'")
