"""``rkdeploy``: a thin typer adapter. Each command parses options, builds a config, and calls one
library function by keyword. Heavy imports live inside the handlers (start-up stays fast).

Known errors (``RkdeployError``) exit 1 as ``rkdeploy: error: ...`` (one line per problem);
anything else is a bug: exit 2, traceback only with ``--debug``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from host.config import DEFAULT_RECIPE
from host.errors import RkdeployError
from host.ui import console, err_console

app = typer.Typer(add_completion=False, no_args_is_help=True, help="HF checkpoint → Rockchip artifacts → boards → tables.")
models_app = typer.Typer(no_args_is_help=True, help="Materialise models into the local cache.")
calib_app = typer.Typer(no_args_is_help=True, help="Build and validate rkllm calibration JSON.")
app.add_typer(models_app, name="models")
app.add_typer(calib_app, name="calib")

RecipeOpt = typer.Option(DEFAULT_RECIPE, "--recipe", "-r", help="recipe YAML", show_default=False)
TargetOpt = typer.Option(..., "--target", "-t", help="chip: rk3588, rk3576, rk3562, rv1126b")
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


# --- foundation ----------------------------------------------------------------------------------

@models_app.command("fetch")
def models_fetch(
    cache: Optional[Path] = typer.Option(None, "--cache", help="cache folder (default $RKDEPLOY_CACHE/models or ~/.cache/rkdeploy/models)"),
    force: bool = typer.Option(False, "--force", help="materialise again even when cached"),
) -> None:
    """Materialise the built-in models (SmolLM2-135M-Instruct, all-MiniLM-L6-v2) offline."""
    from host.models import BUILTINS, fetch_builtin, read_record

    _dir_option(cache, "--cache")
    for name in BUILTINS:
        with err_console.status(f"materialising {name} …"):
            path = fetch_builtin(name, cache, force=force)
        rec = read_record(path) or {}
        console.print(f"{name}: {path}  sha256 {rec.get('sha256', '?')[:16]}…")


@app.command("check")
def check_cmd(
    recipe: Path = RecipeOpt,
    target: str = TargetOpt,
    scheme: Optional[str] = typer.Option(None, "--scheme", "-s", help="only this scheme"),
) -> None:
    """Validate everything knowable before loading weights; one line per problem."""
    from host.config import load_recipe
    from host.targets import check

    r = load_recipe(recipe)
    check(r, target, scheme)
    console.print(f"ok: {r.name} on {target}" + (f" ({scheme})" if scheme else ""))


@app.command("schema")
def schema_cmd() -> None:
    """Print the JSON Schema of recipes and the target table (for editors)."""
    from host.config import json_schemas

    print(json.dumps(json_schemas(), indent=2))


@calib_app.command("validate")
def calib_validate(
    file: Path = typer.Argument(..., help="calibration JSON"),
    recipe: Path = RecipeOpt,
    model: Optional[str] = typer.Option(None, "--model", help="recipe model (default: its first LLM)"),
) -> None:
    """Check a calibration JSON: format, chat template, double BOS, length, held-out overlap."""
    from host.calib import validate_file
    from host.config import load_recipe

    report = validate_file(file, load_recipe(recipe), model)
    for w in report.warnings:
        err_console.print(f"rkdeploy: warning: {w}")
    console.print(f"ok: {file}: {report.n_items} items, longest input {report.max_tokens} tokens")


@calib_app.command("build")
def calib_build(
    recipe: Path = RecipeOpt,
    model: Optional[str] = typer.Option(None, "--model", help="recipe model (default: its first LLM)"),
    out: Optional[Path] = typer.Option(None, "--out", help="output JSON (default: the recipe's calibration path)"),
    n_prompts: Optional[int] = typer.Option(None, "--n-prompts", min=1),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", min=1),
) -> None:
    """Vendor method: held-in prompts + chat template → greedy answers of the float model."""
    from host.calib import build_calibration
    from host.config import load_recipe

    _out_file(out, "--out")
    path = build_calibration(load_recipe(recipe), model=model, out=out, n_prompts=n_prompts, max_new_tokens=max_new_tokens)
    console.print(f"wrote {path}")


# --- commands of later steps (each: a thin wrapper around one module) ---------------------------
# >>> commands: export / quality
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


@app.command("export")
def export_cmd(
    recipe: Path = RecipeOpt,
    target: str = TargetOpt,
    dry_run: bool = typer.Option(False, "--dry-run", help="print the plan, build nothing"),
    no_quality: bool = typer.Option(False, "--no-quality", help="skip the quality table at the end"),
    require: Optional[list[str]] = typer.Option(None, "--require", help="kinds that must build (rkllm,rknn): a missing toolkit fails instead of skipping"),
    only: Optional[list[str]] = typer.Option(None, "--only", help="only these schemes (repeat or comma-separate)"),
    artifacts: Optional[Path] = typer.Option(None, "--artifacts", help="artifacts root (default ./artifacts or $RKDEPLOY_ARTIFACTS)"),
    jsonl: Optional[Path] = typer.Option(None, "--jsonl", help="also write the summary as JSON lines here"),
    strict: bool = StrictOpt,
) -> None:
    """Build every artifact of the recipe for TARGET (only what changed) and print a summary + quality table."""
    from host.export import export, plan_table, summary_table, write_jsonl

    _out_file(jsonl, "--jsonl")
    _dir_option(artifacts, "--artifacts")
    from host.toolkits import TOOLKITS

    unknown = [k for k in _csv_list(require) if k not in TOOLKITS]
    if unknown:
        raise typer.BadParameter(f"{', '.join(map(repr, unknown))}: kinds are {', '.join(sorted(TOOLKITS))}",
                                 param_hint="'--require'")
    rep = export(recipe, target, dry_run=dry_run, require=_csv_list(require), only=_csv_list(only) or None,
                 root=artifacts)
    console.print(plan_table(rep) if dry_run else summary_table(rep))
    if jsonl:
        write_jsonl(rep, jsonl)
    if not dry_run and not no_quality:
        from host.quality import evaluate_export, quality_table

        rows = evaluate_export(rep)
        if rows:
            console.print(quality_table(rows, title=f"quality {rep.recipe.name} → {rep.target}"))
            _gate_exit(rows, strict)
    if rep.failed:
        raise typer.Exit(1)


@app.command("quality")
def quality_cmd(
    recipe: Path = RecipeOpt,
    target: str = TargetOpt,
    sensitivity: bool = typer.Option(False, "--sensitivity", help="per layer type × depth: KLD increase when only it is quantized"),
    scheme: Optional[str] = typer.Option(None, "--scheme", help="scheme for --sensitivity (default: the target's w8a8 when listed, else its first vendor scheme)"),
    artifacts: Optional[Path] = typer.Option(None, "--artifacts", help="artifacts root"),
    no_simulated: bool = typer.Option(False, "--no-simulated", help="skip the fake-quant rows of vendor schemes"),
    strict: bool = StrictOpt,
    board: Optional[str] = typer.Option(None, "--board", help="evaluate the ONNX LLM artifacts with this inventory board's own onnxruntime (over SSH)"),
    tokens: int = typer.Option(64, "--tokens", min=2, help="--board: held-out tokens scored on the board (emulated boards: 64-128)"),
    inventory: Optional[Path] = typer.Option(None, "--inventory", help="--board: inventory YAML (default configs/boards.yaml)"),
) -> None:
    """Quality of the built artifacts vs the float model (PPL ratio, KLD, top-1; encoders: cosine, NN agreement)."""
    from host.config import load_recipe
    from host.quality import evaluate, quality_table, sensitivity_report

    _dir_option(artifacts, "--artifacts")
    r = load_recipe(recipe)
    _known_target(target)
    if board:
        from host.quality.board import board_table, evaluate_board

        rows = evaluate_board(r, target, board, tokens=tokens, root=artifacts, schemes=(scheme,) if scheme else None,
                              inventory=inventory, log=lambda s: err_console.print(s, markup=False, highlight=False))
        console.print(board_table(rows, title=f"quality {r.name} → {target} on board {board}"))
        _gate_exit([x for x in rows if x.get("board")], strict)
        return
    if sensitivity:
        console.print(sensitivity_report(r, target, scheme=scheme))
        return
    rows = evaluate(r, target, root=artifacts, simulated=not no_simulated)
    console.print(quality_table(rows, title=f"quality {r.name} → {target}"))
    _gate_exit(rows, strict)
# <<< commands: export / quality
# >>> commands: bench / report
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
    store: Optional[Path] = typer.Option(None, "--store", help="results SQLite (default results/rkdeploy.sqlite)"),
    boards: Optional[str] = typer.Option(None, "--boards", "-B", help="run on these inventory boards over SSH (names, groups, all)"),
    no_wait: bool = typer.Option(False, "--no-wait", help="fail at once if a board is busy with another benchmark"),
) -> None:
    """Run the board runner on every built artifact of TARGET and store the rows."""
    from host.bench import BenchParams, bench_local
    from host.errors import BenchError

    if any("=" not in kv or not kv.split("=", 1)[0].strip() for kv in opt):
        raise typer.BadParameter(f"takes KEY=VALUE, got {', '.join(repr(kv) for kv in opt)}", param_hint="'--opt'")
    _known_target(target)
    params = BenchParams(n_prompt=n_prompt, n_gen=n_gen, reps=reps, warmup=warmup, threads=threads,
                         options=dict(kv.split("=", 1) for kv in opt))
    if boards or board != "local":  # over SSH: host.deploy
        from host.deploy import commands

        return commands.bench(boards or board, recipe=recipe, target=target, params=params, store=store, wait=not no_wait)
    summary = bench_local(recipe=recipe, target=target, params=params, store=store)
    ok = sum(r.status == "ok" for r in summary.rows)
    console.print(f"{ok} ok, {len(summary.rows) - ok} error rows stored; `rkdeploy report` prints the table")
    if not summary.rows:
        raise BenchError(f"nothing benchmarked for {target}: build artifacts first (`rkdeploy export --target {target}`)")


@app.command("report")
def report_cmd(
    fmt: str = typer.Option("md", "--format", "-f", help="md, csv, jsonl or html",
                            callback=_choice(("md", "csv", "jsonl", "html"))),
    store: Optional[Path] = typer.Option(None, "--store", help="results SQLite (default results/rkdeploy.sqlite)"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="write here instead of stdout"),
) -> None:
    """Render the results store: the benchmark table (md/html) or every row (csv/jsonl)."""
    from host.fsutil import atomic_write_text
    from host.results import report

    _out_file(out, "--out")
    text = report(store=store, fmt=fmt)
    if out:
        atomic_write_text(out, text)
    else:
        sys.stdout.write(text)
# <<< commands: bench / report
# >>> commands: boards / push / remote doctor
boards_app = typer.Typer(no_args_is_help=True, help="The board inventory (configs/boards.yaml) and SSH host keys.")
app.add_typer(boards_app, name="boards")
InventoryOpt = typer.Option(None, "--inventory", help="inventory YAML (default $RKDEPLOY_INVENTORY or configs/boards.yaml)")


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
    boards: str = typer.Option(..., "--boards", "-B", help="board names, groups or 'all' (comma separated)"),
    recipe: Path = RecipeOpt,
    target: str = TargetOpt,
    jobs: int = typer.Option(4, "--jobs", "-j", min=1, help="boards pushed at once"),
    dry_run: bool = typer.Option(False, "--dry-run", help="list what would be pushed, send nothing"),
    inventory: Optional[Path] = InventoryOpt,
    stall_timeout: Optional[float] = typer.Option(
        None, "--stall-timeout", min=0.5, max=3600,
        help="seconds a board may take no bytes and say nothing before it counts as stopped "
             "(default $RKDEPLOY_STALL_TIMEOUT or 30)"),
) -> None:
    """Push the board runner and TARGET's built artifacts (content-addressed, verified, resumable)."""
    from host.deploy import commands

    _known_target(target)
    commands.push(boards, recipe=recipe, target=target, jobs=jobs, dry_run=dry_run, inventory=inventory,
                  stall_timeout=stall_timeout)
# <<< commands: boards / push / remote doctor
# >>> commands: doctor --host / toolkits
@app.command("doctor")
def doctor_cmd(
    host: bool = typer.Option(True, "--host/--no-host", help="check this build host: vendor toolkits, GPU, compilers"),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
    boards: Optional[str] = typer.Option(None, "--boards", "-B", help="run the board doctor on these inventory boards over SSH"),
) -> None:
    """Which vendor toolkits are installed here (version, venv), and what changes the builds."""
    from rich.table import Table

    from host.hostdoctor import arithmetic_facts, host_facts, toolkit_rows

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
# <<< commands: doctor --host / toolkits


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
