"""``rkdeploy`` commands that run and report: bench, report, compare, boards, push, doctor, toolkits.
Each is a thin call into one library module (heavy imports inside the handler)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from host.cli_common import InventoryOpt, RecipeOpt, StoreOpt, TargetOpt, _choice, _known_target, _out_file, app
from host.cli_farm import CoordinatorOpt, CountOpt, FarmOpt, FarmTimeoutOpt, farm_or_boards
from host.ui import console


@app.command("bench")
def bench_cmd(
    board: str = typer.Option("local", "--board", "-b", help="board name from the inventory, or 'local' (this machine)"),
    recipe: Path = RecipeOpt,
    target: str = TargetOpt,
    reps: int = typer.Option(5, "--reps", min=1, help="timed repetitions"),
    warmup: int = typer.Option(1, "--warmup", min=0, help="untimed warmup runs"),
    n_prompt: int = typer.Option(128, "--n-prompt", min=1, help="prompt tokens (vendor method: 128)"),
    n_gen: int = typer.Option(64, "--n-gen", min=1, help="generated tokens (vendor method: 64)"),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="CPU threads (default: all the runner may use)"),
    opt: list[str] = typer.Option([], "--opt", help="backend option KEY=VALUE (onnxruntime: engine=auto|genai|ort)"),
    store: Optional[Path] = StoreOpt,
    boards: Optional[str] = typer.Option(None, "--boards", "-B", help="run on these inventory boards over SSH (names, groups, all)"),
    no_wait: bool = typer.Option(False, "--no-wait", help="fail at once if a board is busy with another benchmark"),
    farm: Optional[str] = FarmOpt,
    count: int = CountOpt,
    coordinator: Optional[str] = CoordinatorOpt,
    farm_timeout: Optional[float] = FarmTimeoutOpt,
) -> None:
    """Run the board runner on every built artifact of TARGET and store the rows."""
    from host.bench import BenchParams, bench_local
    from host.errors import BenchError

    if any("=" not in kv or not kv.split("=", 1)[0].strip() for kv in opt):
        raise typer.BadParameter(f"takes KEY=VALUE, got {', '.join(repr(kv) for kv in opt)}", param_hint="'--opt'")
    _known_target(target)
    params = BenchParams(n_prompt=n_prompt, n_gen=n_gen, reps=reps, warmup=warmup, threads=threads,
                         options=dict(kv.split("=", 1) for kv in opt))
    farm_or_boards(farm, boards)
    if farm:  # boards reserved through the labgrid coordinator: host.farm
        from host.farm import commands as farm_commands

        return farm_commands.bench(farm, count, coordinator, recipe=recipe, target=target, params=params, store=store,
                                   wait=not no_wait, wait_timeout=farm_timeout)
    if boards or board != "local":  # over SSH: host.deploy
        from host.deploy import commands

        return commands.bench(boards or board, recipe=recipe, target=target, params=params, store=store, wait=not no_wait)
    summary = bench_local(recipe=recipe, target=target, params=params, store=store)
    ok = sum(r.status == "ok" for r in summary.rows)
    console.print(f"{ok} ok, {len(summary.rows) - ok} error rows stored; `rkdeploy report` prints the table")
    if not summary.rows:
        if any(": export failed (" in m for m in summary.skipped):
            raise BenchError(f"nothing benchmarked for {target}: the export of its artifacts failed (skip lines above)")
        raise BenchError(f"nothing benchmarked for {target}: build artifacts first (`rkdeploy export --target {target}`)")


REPORT_FORMATS = ("md", "csv", "jsonl", "html", "llama-bench-jsonl", "llama-bench-sqlite")
SelectHelp = ("latest, previous, run=N, time=FROM..TO, commit=SHA, FIELD=VALUE (board=, scheme=, runner=, ...) or a .jsonl/.sqlite "
              "file; comma-separated terms all apply")


@app.command("report")
def report_cmd(
    fmt: str = typer.Option("md", "--format", "-f", help="md, csv, jsonl, html (one page with charts), llama-bench-jsonl "
                            "or llama-bench-sqlite (llama.cpp's compare-llama-bench.py reads them; sqlite needs --out)",
                            callback=_choice(REPORT_FORMATS)),
    store: Optional[Path] = StoreOpt,
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="write here instead of stdout"),
    select: Optional[str] = typer.Option(None, "--select", "-s", help="only these rows: " + SelectHelp),
    label: Optional[str] = typer.Option(None, "--label", help="llama-bench formats: the build_commit the rows get "
                                        "(default: the rkdeploy commit that ran it, else the runner version); labels of one length, e.g. run1 run2"),
) -> None:
    """Render the results store: the benchmark table (md), one HTML page with charts, every row (csv/jsonl),
    or llama-bench's own records."""
    from host.fsutil import atomic_write_text
    from host.results import report

    _out_file(out, "--out")
    if fmt == "llama-bench-sqlite":
        from host.results.llamabench import write_llama_bench_sqlite
        from host.results.render import selected_rows

        if out is None:
            raise typer.BadParameter("llama-bench-sqlite writes a database: give --out FILE.sqlite", param_hint="'--out'")
        n = write_llama_bench_sqlite(selected_rows(store=store, select=select), out, label=label)
        console.print(f"{n} llama-bench records added to {out} (table llama_bench)", markup=False, highlight=False)
        return
    text = report(store=store, fmt=fmt, select=select, label=label)
    if out:
        atomic_write_text(out, text)
    else:
        sys.stdout.write(text)


@app.command("compare")
def compare_cmd(
    a: str = typer.Argument(..., help="the baseline rows: " + SelectHelp),
    b: str = typer.Argument(..., help="the rows compared with A (same terms), e.g. `previous latest`, `board=x board=y`"),
    fmt: str = typer.Option("md", "--format", "-f", help="md, jsonl or html", callback=_choice(("md", "jsonl", "html"))),
    store: Optional[Path] = StoreOpt,
    alpha: float = typer.Option(0.05, "--alpha", min=0.0001, max=0.5, help="significance level: p >= alpha is within noise"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="write here instead of stdout"),
) -> None:
    """B against A per test: delta, ratio and a Mann-Whitney U test on the per-rep samples (within noise or not)."""
    from host.fsutil import atomic_write_text
    from host.results.compare import compare

    _out_file(out, "--out")
    text = compare(a, b, store=store, fmt=fmt, alpha=alpha)
    if out:
        atomic_write_text(out, text)
    else:
        sys.stdout.write(text)


boards_app = typer.Typer(no_args_is_help=True, help="The board inventory (configs/boards.yaml) and SSH host keys.")


app.add_typer(boards_app, name="boards")


@boards_app.command("list")
def boards_list_cmd(inventory: Optional[Path] = InventoryOpt) -> None:
    """Show the resolved inventory: address, chip, workdir, and whether each host key is known."""
    from host.deploy import commands

    commands.boards_list(inventory)


@boards_app.command("trust")
def boards_trust_cmd(name: str = typer.Argument(..., help="board name"), inventory: Optional[Path] = InventoryOpt) -> None:
    """Record the board's current SSH host key in configs/known_hosts (never replaces a changed one)."""
    from host.deploy import commands

    commands.boards_trust(name, inventory)


@boards_app.command("provision")
def boards_provision_cmd(name: str = typer.Argument(..., help="board name"), inventory: Optional[Path] = InventoryOpt) -> None:
    """Install the board runtimes (onnxruntime, genai, rknn-toolkit-lite2, numpy) into the board's venv from
    wheels this host downloads (the board needs no internet). Idempotent."""
    from host.deploy.provision import provision_command

    provision_command(name, inventory)


@app.command("push")
def push_cmd(
    boards: Optional[str] = typer.Option(None, "--boards", "-B", help="board names, groups or 'all' (comma separated)"),
    recipe: Path = RecipeOpt,
    target: str = TargetOpt,
    jobs: int = typer.Option(4, "--jobs", "-j", min=1, help="boards pushed at once"),
    dry_run: bool = typer.Option(False, "--dry-run", help="list what would be pushed, send nothing"),
    inventory: Optional[Path] = InventoryOpt,
    stall_timeout: Optional[float] = typer.Option(
        None, "--stall-timeout", min=0.5, max=3600,
        help="seconds a board may take no bytes and say nothing before it counts as stopped "
             "(default $RKDEPLOY_STALL_TIMEOUT or 30)"),
    farm: Optional[str] = FarmOpt,
    count: int = CountOpt,
    coordinator: Optional[str] = CoordinatorOpt,
    farm_timeout: Optional[float] = FarmTimeoutOpt,
) -> None:
    """Push the board runner and TARGET's built artifacts (content-addressed, verified, resumable)."""
    from host.deploy import commands

    farm_or_boards(farm, boards)
    if not farm and not boards:
        raise typer.BadParameter("give --boards NAMES (inventory) or --farm TAG=VALUE (labgrid)", param_hint="'--boards'")
    _known_target(target)
    if farm:  # boards reserved through the labgrid coordinator: host.farm
        from host.farm import commands as farm_commands

        return farm_commands.push(farm, count, coordinator, recipe=recipe, target=target, inventory=inventory,
                                  stall_timeout=stall_timeout, wait_timeout=farm_timeout, dry_run=dry_run)
    commands.push(boards, recipe=recipe, target=target, jobs=jobs, dry_run=dry_run, inventory=inventory,
                  stall_timeout=stall_timeout)


@app.command("doctor")
def doctor_cmd(
    host: bool = typer.Option(True, "--host/--no-host", help="check this build host: vendor toolkits, GPU, compilers"),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
    boards: Optional[str] = typer.Option(None, "--boards", "-B", help="run the board doctor on these inventory boards over SSH"),
    farm: Optional[str] = FarmOpt,
    count: int = CountOpt,
    coordinator: Optional[str] = CoordinatorOpt,
    farm_timeout: Optional[float] = FarmTimeoutOpt,
) -> None:
    """Which vendor toolkits are installed here (version, venv), and what changes the builds."""
    from rich.table import Table

    from host.hostdoctor import arithmetic_facts, host_facts, toolkit_rows

    farm_or_boards(farm, boards)
    if farm:  # boards reserved through the labgrid coordinator: host.farm
        from host.farm import commands as farm_commands

        return farm_commands.doctor(farm, count, coordinator, as_json=as_json, wait_timeout=farm_timeout)
    if boards:  # over SSH: host.deploy
        from host.deploy import commands

        return commands.doctor(boards, as_json=as_json)

    if not host:
        raise typer.BadParameter("only --host checks are available here; boards: `python3 -m board doctor` on the board")
    rows, facts = toolkit_rows(), host_facts() + arithmetic_facts()
    if as_json:
        print(json.dumps({"toolkits": rows, "host": facts}, indent=2))
        return
    t = Table(title="vendor toolkits")
    for col in ("toolkit", "status", "version", "where", "notes"):
        t.add_column(col)
    for r in rows:
        style = "green" if r["status"] == "installed" and not r.get("test_double") else "yellow"
        version = (r["version"] or "") + (" (test double)" if r.get("test_double") else "")
        t.add_row(r["toolkit"], f"[{style}]{r['status']}[/]", version, r["where"] or "", r["notes"])
    console.print(t)
    for f in facts:
        console.print(f"{f['status']:4} {f['check']:9} {f['detail']}", markup=False)


@app.command("toolkits")
def toolkits_cmd() -> None:
    """List vendor toolkits and their versions (same as `rkdeploy doctor --host`, JSON)."""
    from host.hostdoctor import toolkit_rows

    print(json.dumps(toolkit_rows(), indent=2))
