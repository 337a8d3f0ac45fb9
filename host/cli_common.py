"""What every ``rkdeploy`` command module shares: the typer ``app``, the common options and the
checks that run before any work (usage errors, exit 2). The commands live in ``host.cli_build``
(models, check, schema, calib, export, quality) and ``host.cli_run`` (bench, report, boards, push,
doctor, toolkits); ``host.cli`` registers both and owns the error path (``main``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from host.config import DEFAULT_RECIPE
from host.ui import err_console

app = typer.Typer(add_completion=False, no_args_is_help=True, help="HF checkpoint → Rockchip artifacts → boards → tables.")


def _recipe_note(ctx: typer.Context, param: typer.CallbackParam, value):
    """Say which recipe a command runs when ``--recipe`` was left out (it used to default silently).

    On a terminal only: piped/CI output and error output stay one line per problem."""
    import sys

    source = ctx.get_parameter_source(param.name)   # typer's own click: compare the enum member by name
    if not ctx.resilient_parsing and getattr(source, "name", None) == "DEFAULT" and sys.stderr.isatty():
        err_console.print(f"rkdeploy: note: no --recipe given; using the default recipe {value}", highlight=False)
    return value


RecipeOpt = typer.Option(DEFAULT_RECIPE, "--recipe", "-r", help="recipe YAML (default: the built-in SmolLM2 recipe, "
                         "configs/models/smollm2-135m.yaml; on a terminal a note says so)", show_default=False,
                         callback=_recipe_note)


TargetOpt = typer.Option(..., "--target", "-t", help="chip: rk3588, rk3576, rk3562, rv1126b")

# Where results and artifacts go: the CURRENT folder unless an option or variable says otherwise (one rule
# for every command: host.results.store.default_store, host.plan.artifacts_root).
StoreOpt = typer.Option(None, "--store", help="results SQLite (default ./results/rkdeploy.sqlite in the current "
                        "folder, or $RKDEPLOY_RESULTS)")
ArtifactsOpt = typer.Option(None, "--artifacts", help="artifacts root (default ./artifacts in the current folder, "
                            "or $RKDEPLOY_ARTIFACTS)")


_state = {"debug": False}


def _choice(allowed: tuple[str, ...]):
    """An option callback: a value outside ``allowed`` is a usage error (exit 2), checked before any work."""
    def check(value: Optional[str]) -> Optional[str]:
        if value is not None and value not in allowed:
            raise typer.BadParameter(f"{value!r} is not one of {', '.join(allowed)}")
        return value
    return check


def _out_file(path: Optional[Path], option: str) -> Optional[Path]:
    """An output file option: refused before any work when it names a folder or lies under a file."""
    if path is None:
        return None
    if path.is_dir():
        raise typer.BadParameter(f"{path} is a directory; give a file name", param_hint=f"'{option}'")
    parent = next((p for p in path.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise typer.BadParameter(f"{parent} is a file, not a folder", param_hint=f"'{option}'")
    return path


def _dir_option(path: Optional[Path], option: str) -> Optional[Path]:
    """A folder option (cache, artifacts root): refused before any work when it or a parent is a file."""
    if path is None:
        return None
    parent = next((p for p in (path, *path.parents) if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise typer.BadParameter(f"{parent} is a file, not a folder", param_hint=f"'{option}'")
    return path


def _known_target(target: str) -> str:
    """Refuse an unknown chip before anything connects or builds (``CheckError``: exit 1, one line)."""
    from host.targets import get_target

    return get_target(target).name


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="show tracebacks")) -> None:
    _state["debug"] = debug


def _csv_list(values: Optional[list[str]]) -> tuple[str, ...]:
    return tuple(s.strip() for v in (values or []) for s in v.split(",") if s.strip())


StrictOpt = typer.Option(False, "--strict", help="exit 1 when an artifact is outside its scheme's healthy quality band")


def _gate_exit(rows: list[dict], strict: bool) -> None:
    """One stderr line per degraded artifact (``host.gate``); with --strict, exit 1."""
    from host.gate import degraded

    bad = degraded(rows)
    for r in bad:
        err_console.print(f"rkdeploy: warning: {r['model']}/{r['scheme']} is DEGRADED: {r.get('gate')}",
                          markup=False, highlight=False)
    if bad and strict:
        raise typer.Exit(1)


InventoryOpt = typer.Option(None, "--inventory", help="inventory YAML (default $RKDEPLOY_INVENTORY or configs/boards.yaml)")
