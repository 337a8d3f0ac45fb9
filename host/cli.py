"""``rkdeploy``: a thin typer adapter. Each command parses options, builds a config, and calls one
library function by keyword. Heavy imports live inside the handlers (start-up stays fast).

The commands: ``host.cli_build`` (models, check, schema, calib, export, quality) and ``host.cli_run``
(bench, report, boards, push, doctor, toolkits), on the one ``app`` of ``host.cli_common``.
Known errors (``RkdeployError``) exit 1 as ``rkdeploy: error: ...`` (one line per problem);
anything else is a bug: exit 2, traceback only with ``--debug``.
"""

from __future__ import annotations

import sys

import typer

import host.cli_build  # noqa: F401 - registers its commands on app (models, calib, check, schema, export, quality)
import host.cli_run  # noqa: F401 - registers its commands on app (bench, report, boards, push, doctor, toolkits)
from host.cli_common import _state, app
from host.errors import RkdeployError
from host.ui import err_console

__all__ = ["app", "main"]


def _usage_error_types() -> tuple[type, ...]:
    """Click's exception base as typer raises it: typer >= 0.2x vendors its own click copy
    (``typer._click``), older typer uses the ``click`` package; accept both."""
    found = []
    try:
        from typer._click.exceptions import ClickException as vendored

        found.append(vendored)
    except ImportError:
        pass
    try:
        import click

        found.append(click.ClickException)
    except ImportError:
        pass
    return tuple(found)


def _exit_types() -> tuple[type, ...]:
    found: list[type] = [typer.Exit]
    try:
        import click

        found.append(click.exceptions.Exit)
    except ImportError:
        pass
    return tuple(found)


def _command_path(argv: list[str]) -> str:
    """``rkdeploy calib build`` for argv ``calib build --n-prompts``: the subcommand words argv starts with."""
    cmd, path = typer.main.get_command(app), ["rkdeploy"]
    for word in argv:
        sub = getattr(cmd, "commands", {}).get(word)
        if sub is None:
            if word.startswith("-") and not path[1:]:
                continue  # a root option such as --debug
            break
        cmd, path = sub, [*path, word]
    return " ".join(path)


def main() -> None:
    """One error path: usage errors exit 2 with click's usage text; known errors (``RkdeployError``)
    exit 1 as one ``rkdeploy: error: …`` line per problem; anything else is a bug (exit 2, "internal
    error", traceback only with ``--debug``)."""
    try:
        rc = app(standalone_mode=False)  # standalone_mode=False: typer.Exit(n) comes back as the return value
        if isinstance(rc, int) and rc:
            sys.exit(rc)
    except RkdeployError as e:
        if _state["debug"]:
            raise
        for line in str(e).splitlines() or ["failed"]:
            print(f"rkdeploy: error: {line}", file=sys.stderr)
        sys.exit(1)
    except (typer.Abort, KeyboardInterrupt):
        err_console.print("rkdeploy: interrupted")
        sys.exit(130)
    except _exit_types() as e:
        sys.exit(e.exit_code)
    except _usage_error_types() as e:  # missing/unknown option, bad choice, bad int: click's usage text, exit 2
        if getattr(e, "ctx", True) is None:  # raised while parsing (e.g. an option without its value): no usage yet
            path = _command_path(sys.argv[1:])
            print(f"Usage: {path} [OPTIONS]\nTry '{path} --help' for help.\n", file=sys.stderr)
        e.show()
        sys.exit(e.exit_code)
    except Exception as e:  # noqa: BLE001 - the bug path: exit 2, traceback only with --debug
        if _state["debug"]:
            raise
        err_console.print(f"rkdeploy: internal error: {type(e).__name__}: {e} (run with --debug for the traceback)",
                          markup=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
