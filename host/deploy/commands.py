"""What the ``rkdeploy boards|push|doctor --boards|bench --boards`` commands do (the CLI only parses)."""

from __future__ import annotations

import json
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from host.deploy.inventory import Board, load_inventory
from host.errors import BenchError, ConfigError, DeployError
from host.ui import console, err_console


def _select(selection: str, inventory: Path | None = None) -> list[Board]:
    return load_inventory(inventory).select(selection)


def _check_soc(boards: list[Board], target: str) -> None:
    wrong = [f"{b.name} is {b.soc}" for b in boards if b.soc and b.soc != target]
    if wrong:
        raise ConfigError(f"--target {target} does not match the boards' soc ({', '.join(wrong)}); "
                          "pick boards of that chip (e.g. --boards " + target + ") or another --target")


def boards_list(inventory: Path | None = None) -> None:
    from host.deploy.hostkeys import known_hosts_files, load_host_keys

    inv = load_inventory(inventory)
    keys = load_host_keys(known_hosts_files())
    table = Table(title=f"boards ({inv.source})")
    for col in ("board", "groups", "address", "soc", "workdir", "python", "key", "host key"):
        table.add_column(col)
    for b in inv.boards.values():
        known = "known" if keys.lookup(b.known_hosts_name) else "[yellow]unknown[/] (rkdeploy boards trust " + b.name + ")"
        table.add_row(escape(b.name), escape(",".join(b.groups)), escape(b.address), escape(b.soc or "?"),
                      escape(str(b.workdir)), escape(b.python), escape(str(b.key_file or "agent/default")), known)
    console.print(table)


def boards_trust(name: str, inventory: Path | None = None) -> None:
    from host.deploy.hostkeys import project_known_hosts, trust_board

    inv = load_inventory(inventory)
    if name not in inv.boards:
        raise ConfigError(f"no board named {name!r} in {inv.source}; known: {', '.join(inv.boards) or '(none)'}")
    board = inv.boards[name]
    fp, added = trust_board(board)
    where = project_known_hosts()
    if added:
        console.print(f"{name}: recorded host key {fp} for {board.known_hosts_name} in {where}", markup=False)
    else:
        console.print(f"{name}: host key {fp} already trusted", markup=False)


def push(selection: str, *, recipe: Path, target: str, jobs: int = 4, dry_run: bool = False,
         inventory: Path | None = None, stall_timeout: float | None = None) -> None:
    from host.config import load_recipe
    from host.deploy.push import push_boards, runner_dir, summary_table, target_artifacts

    boards = _select(selection, inventory)
    _check_soc(boards, target)
    missing: list[str] = []
    arts = target_artifacts(target, recipe=load_recipe(recipe), missing=missing)
    dirs = [runner_dir(artifacts=arts), *arts]
    if missing:
        err_console.print(f"skip (not built; `rkdeploy export --target {target}` builds them): {', '.join(missing)}",
                          markup=False)
    if len(dirs) == 1:
        raise DeployError(f"no artifact of the recipe is built for {target}; run: rkdeploy export --target {target}")
    if dry_run:
        for d in dirs:
            size = sum(f.size for f in d.files.values())
            console.print(f"{d.remote}: {len(d.files)} files, {size / 1e6:.1f} MB", markup=False)
        console.print(f"→ {', '.join(b.name for b in boards)} (nothing sent: --dry-run)", markup=False)
        return
    from host.deploy.ssh import SshTransport

    results = push_boards(boards, dirs, jobs=jobs, transport=lambda b: SshTransport(b, stall_timeout=stall_timeout))
    console.print(summary_table(results))
    failed = [r.board for r in results if not r.ok]
    if failed:
        raise DeployError(f"push failed on {len(failed)} of {len(results)} boards: {', '.join(failed)} (see the table)")


def doctor(selection: str, *, as_json: bool = False, inventory: Path | None = None) -> None:
    from host.deploy.remote_bench import doctor_boards, doctor_table

    reports = doctor_boards(_select(selection, inventory))
    if as_json:
        print(json.dumps([{"board": r.board, "error": r.error, "checks": r.checks} for r in reports], indent=2))
    else:
        console.print(doctor_table(reports))
    failed = [r.board for r in reports if r.error]
    if failed:
        raise DeployError(f"doctor could not run on: {', '.join(failed)}")


def bench(selection: str, *, recipe: Path, target: str, params, store: Path | None = None, wait: bool = True,
          inventory: Path | None = None) -> None:
    from host.deploy.remote_bench import bench_boards

    boards = _select(selection, inventory)
    _check_soc(boards, target)
    out = bench_boards(boards, recipe=recipe, target=target, params=params, store=store, wait=wait)
    rows = [r for s in out.values() for r in s.rows]
    ok = sum(r.status == "ok" for r in rows)
    err_console.print(f"{ok} ok, {len(rows) - ok} error rows stored; `rkdeploy report` prints the table", markup=False)
    if not rows:
        raise BenchError(f"nothing benchmarked for {target}: build artifacts first (`rkdeploy export --target {target}`)")
