"""``rkdeploy export``: recipe → checks → plan → build what changed → manifests → summary (+ quality).

Order of work (fail fast): load the recipe, ``host.targets.check`` plus the export pre-checks
(every ``sensitive_layers`` pattern a recipe names for int8-dyn / int8-qdq matches a linear layer)
— all before any build. Then per job (kinds are ``host.build.registry`` records):
``inputs_hash`` = model sha256 + the recipe model fields the kind depends on + ``kind.inputs(job)``;
"up to date" when the manifest has that hash and the files are intact; an artifact of a target-free
kind (ONNX) with the same hash under another target is copied; else ``kind.check(job)``, then the
jobs it ``depends_on`` (planned before it; built here only when it needs building), then the
builder runs inside ``atomic_dir`` and the manifest is written last, inside the temp folder, so a
killed build never leaves a folder that looks complete. Rows from metrics the builder put in the
manifest (``kind.rows``: rknn's simulator accuracy) are stored after the build. One failure does
not stop the other jobs.

The "up to date" path imports no torch/onnx: a second export with nothing changed takes seconds.
"""

from __future__ import annotations

import json
import shutil
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from host.config import Recipe, load_recipe
from host.errors import BuildError, CheckError, RkdeployError, ToolkitMissingError
from host.fsutil import atomic_dir, atomic_write_text, sha256_file
from host.manifest import (
    MANIFEST,
    copy_artifact,
    inputs_hash,
    is_up_to_date,
    read_manifest,
    sibling_with_hash,
    write_manifest,
)
from host.plan import BuildJob, artifacts_root, plan

STATUS_STYLE = {"built": "green", "reused": "green", "up to date": "cyan", "skipped": "yellow", "failed": "red",
                "planned": "white"}


@dataclass
class JobResult:
    job: BuildJob
    status: str                    # built | reused | up to date | skipped | failed | planned
    reason: str = ""
    seconds: float = 0.0
    size: int | None = None
    inputs_hash: str | None = None

    @property
    def ok(self) -> bool:
        return self.status != "failed"

    def to_dict(self) -> dict:
        j = self.job
        return {"artifact": j.label, "model": j.model.name, "target": j.target, "kind": j.kind, "scheme": j.scheme,
                "path": str(j.out_dir), "status": self.status, "reason": self.reason,
                "seconds": round(self.seconds, 2), "size": self.size, "inputs_hash": self.inputs_hash}


@dataclass
class ExportReport:
    recipe: Recipe
    target: str
    results: list[JobResult] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def failed(self) -> list[JobResult]:
        return [r for r in self.results if r.status == "failed"]


# --- pre-checks ---------------------------------------------------------------------------------

def precheck(recipe: Recipe, target: str, schemes: list[str] | None = None) -> None:
    """``host.targets.check`` + each kind's recipe checks; raise one ``CheckError`` listing every problem."""
    from host.targets import check

    problems: list[str] = []
    try:
        if schemes is None:
            check(recipe, target)
        else:
            for s in schemes:
                check(recipe, target, s)
    except CheckError as e:
        problems += [p for p in e.problems if p not in problems]
    from host.build import registry

    for kind in registry.kinds():          # each kind's recipe-level checks (onnx: sensitive_layers)
        problems += kind.recipe_problems(recipe, schemes)
    if problems:
        raise CheckError(list(dict.fromkeys(problems)))


# --- hashing --------------------------------------------------------------------------------------

def job_inputs(job: BuildJob, builder, model_sha: str) -> dict:
    """What ``inputs_hash`` hashes: the model fields the kind reads (``Kind.irrelevant_fields`` left out)."""
    from host.build import registry

    kind = registry.get(job.kind)
    fields_ = job.model.model_dump(mode="json", exclude=kind.irrelevant_fields())
    data = {"kind": job.kind, "scheme": job.scheme, "model_sha256": model_sha, "model": fields_,
            "builder": builder.inputs(job)}
    if kind.per_target:
        data["target"] = job.target
    calib = job.model.calibration
    if kind.reads_calibration and calib is not None and Path(calib).is_file():
        data["calibration_sha256"] = sha256_file(calib)
    return data


# --- one job --------------------------------------------------------------------------------------

def _load_builder(kind: str):
    from host.build import registry

    try:
        return registry.get(kind).builder(), None
    except ModuleNotFoundError as e:
        if e.name and registry.get(kind).module.startswith(e.name):
            return None, "builder not available"
        raise


class _JobLog:
    """Build log file for one job (``<artifacts>/.logs/<model>-<target>-<scheme>.log``) + progress text."""

    @staticmethod
    def path_for(job: BuildJob, root: Path) -> Path:
        return root / ".logs" / f"{job.model.name}-{job.target}-{job.scheme}.log"

    def __init__(self, job: BuildJob, root: Path, on_line: Callable[[str], None] | None):
        self.path = self.path_for(job, root)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.f = open(self.path, "w", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self.on_line = on_line

    def __call__(self, line: str) -> None:
        self.f.write(line.rstrip() + "\n")
        self.f.flush()
        if self.on_line:
            self.on_line(line)

    def close(self) -> None:
        self.f.close()


def failure_record(out_dir: Path) -> Path:
    """``<target dir>/.failed-<scheme>.json``: why the last export of this artifact failed (removed when it
    builds), so ``bench`` names the failure instead of suggesting the export that just failed."""
    return out_dir.parent / f".failed-{out_dir.name}.json"


def read_failure(out_dir: Path) -> dict | None:
    from board.strictjson import JSONInputError
    from board.strictjson import loads as loads_json

    try:
        data = loads_json(failure_record(out_dir).read_text(encoding="utf-8"), "failure record")
    except (OSError, JSONInputError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("reason"), str) else None


def _record_outcome(job: BuildJob, res: JobResult, log_path: Path) -> None:
    rec = failure_record(job.out_dir)
    if res.status == "failed":
        from datetime import datetime, timezone

        rec.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(rec, json.dumps({"artifact": job.label, "reason": res.reason, "log": str(log_path),
                                           "at": datetime.now(timezone.utc).isoformat(timespec="seconds")}))
    elif res.status in ("built", "reused", "up to date"):
        rec.unlink(missing_ok=True)


def run_job(job: BuildJob, *, root: Path, recipe: Recipe, model_sha: str, require: set[str],
            on_line: Callable[[str], None] | None = None,
            ensure: Callable[[BuildJob], JobResult] | None = None, store: Path | str | None = None) -> JobResult:
    """Build one job (``_build_job``) and keep or clear its failure record (``failure_record``)."""
    res = _build_job(job, root=root, recipe=recipe, model_sha=model_sha, require=require, on_line=on_line,
                     ensure=ensure, store=store)
    _record_outcome(job, res, _JobLog.path_for(job, root))
    return res


def _build_job(job: BuildJob, *, root: Path, recipe: Recipe, model_sha: str, require: set[str],
               on_line: Callable[[str], None] | None, ensure: Callable[[BuildJob], JobResult] | None,
               store: Path | str | None) -> JobResult:
    """Build one job. ``ensure(dep)`` builds (once) a job this one depends on (``Kind.depends_on``)."""
    from host.build import registry

    builder, why = _load_builder(job.kind)
    kind = registry.get(job.kind)
    if builder is None:
        status = "failed" if job.kind in require else "skipped"
        return JobResult(job, status, f"{why} ({kind.module})")
    try:
        inputs = job_inputs(job, builder, model_sha)
    except ToolkitMissingError as e:
        return JobResult(job, "failed" if job.kind in require else "skipped", str(e))
    except RkdeployError as e:
        return JobResult(job, "failed", str(e))
    ih = inputs_hash(inputs)
    if is_up_to_date(job.out_dir, ih):
        return JobResult(job, "up to date", seconds=0.0, size=read_manifest(job.out_dir).size, inputs_hash=ih)
    log = _JobLog(job, root, on_line)
    t0 = time.monotonic()
    lock = _lock_job(job)
    try:
        problems = kind.check(job)
        if problems:
            raise CheckError(problems)
        for dep in kind.depends_on(job):
            res = ensure(dep) if ensure else None
            if res is not None and res.status in ("failed", "skipped"):
                raise BuildError(f"{job.model.name}: {dep.label} ({job.kind} is built from it) failed to build: "
                                 f"{res.reason}")
            log(f"{dep.label} (built first: {job.kind} is built from it): {res.status if res else 'not built here'}")
        _remove_stale_temps(job, log)
        sibling = sibling_with_hash(job.out_dir, ih) if not kind.per_target else None
        with atomic_dir(job.out_dir) as tmp:
            if sibling is not None:
                log(f"copying {sibling} (same inputs; {job.kind} artifacts do not depend on the target)")
                copy_artifact(sibling, tmp)
                extra = {k: v for k, v in read_manifest(sibling).to_dict().items()
                         if k not in ("files", "built_at", "target", "schema", "rkdeploy_version")}
                extra["copied_from"] = str(sibling)
            else:
                extra = kind.build(job, tmp, log=log)
                extra["build_seconds"] = round(time.monotonic() - t0, 2)
            fields_ = _manifest_fields(job, recipe, model_sha, ih, inputs, extra)
            art = write_manifest(tmp, **fields_)
            tmp.chmod(0o755)                       # mkdtemp/mkstemp made these owner-only
            (tmp / MANIFEST).chmod(0o644)
        if not sibling:
            store_rows(kind.rows(job, art.manifest), store)
        seconds = time.monotonic() - t0
        return JobResult(job, "reused" if sibling else "built", f"from {sibling.parent.name}" if sibling else "",
                         seconds, art.size, ih)
    except ToolkitMissingError as e:
        return JobResult(job, "failed" if job.kind in require else "skipped", str(e), time.monotonic() - t0)
    except RkdeployError as e:
        log(f"error: {e}")
        return JobResult(job, "failed", str(e).splitlines()[0], time.monotonic() - t0)
    except Exception as e:  # noqa: BLE001 - one failing builder must not stop the others
        log(traceback.format_exc())
        return JobResult(job, "failed", f"{type(e).__name__}: {str(e)[:200]} (log: {log.path})", time.monotonic() - t0)
    finally:
        log.close()
        lock.close()


def store_rows(rows: list, store: Path | str | None = None) -> None:
    """Rows a build produced (``Kind.rows``) into the results store, unless one with the same
    ``env.quality_key`` is there (rebuilding an unchanged artifact adds no duplicate row)."""
    if not rows:
        return
    from host.results import ResultStore

    with ResultStore(store) as st:
        have = {(r.env or {}).get("quality_key") for r in st.rows(kind="quality")}
        for row in rows:
            if (row.env or {}).get("quality_key") not in have:
                st.add(row)


def _lock_job(job: BuildJob):
    """Exclusive lock on ``<target dir>/.lock-<scheme>`` for the build (two exports of one artifact queue up)."""
    import fcntl

    job.out_dir.parent.mkdir(parents=True, exist_ok=True)
    f = open(job.out_dir.parent / f".lock-{job.out_dir.name}", "a")  # noqa: SIM115 - closed by run_job
    fcntl.flock(f, fcntl.LOCK_EX)
    return f


def _remove_stale_temps(job: BuildJob, log) -> None:
    """Temp folders of this artifact left by a killed build (we hold its lock, so none is in use)."""
    from host.fsutil import stale_atomic_dirs

    for p in stale_atomic_dirs(job.out_dir):
        log(f"removing {p.name} (left by an interrupted build)")
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def _manifest_fields(job: BuildJob, recipe: Recipe, model_sha: str, ih: str, inputs: dict, extra: dict) -> dict:
    from host.models import model_note, resolve_model

    model_dir = resolve_model(job.model)
    fields_ = {
        "model": job.model.name, "model_kind": job.model.kind, "target": job.target, "scheme": job.scheme,
        "artifact_kind": job.kind, "inputs_hash": ih, "recipe": recipe.name, "recipe_sha256": recipe.sha256(),
        "recipe_path": str(recipe.path) if recipe.path else None,
        "model_sha256": model_sha, "model_source": job.model.source, "model_dir": str(model_dir),
        # "float weights dequantized from Q4_K_M …" for a GGUF-derived model (built-in or a .gguf source)
        "model_note": model_note(model_dir),
    }
    if "calibration_sha256" in inputs:
        fields_["calibration_sha256"] = inputs["calibration_sha256"]
    elif isinstance(inputs.get("builder"), dict) and inputs["builder"].get("calibration_sha256"):
        fields_["calibration_sha256"] = inputs["builder"]["calibration_sha256"]
    fields_.update(extra)
    # Every manifest names these, null where the artifact does not use them (issue 3, item 3).
    fields_.setdefault("calibration_sha256", None)
    fields_.setdefault("exclusions", None)
    return fields_


# --- the command ----------------------------------------------------------------------------------

def export(recipe_path: Path | str, target: str, *, dry_run: bool = False, require: tuple[str, ...] = (),
           only: tuple[str, ...] | None = None, root: Path | str | None = None,
           on_line: Callable[[str], None] | None = None, progress: bool = True,
           store: Path | str | None = None) -> ExportReport:
    """Check, plan and build every artifact of ``recipe`` for ``target``; returns the per-job results."""
    t0 = time.monotonic()
    recipe = load_recipe(recipe_path)
    target = target.lower()
    schemes = list(only) if only else None
    if schemes:
        from host.targets import listed_schemes

        listed = {s for m in recipe.models for s in listed_schemes(m, target)}
        missing = [s for s in schemes if s not in listed]
        if missing:
            raise CheckError([f"--only {s}: recipe {recipe.name} builds no {s!r} artifact for {target} "
                              f"(listed: {', '.join(sorted(listed))})" for s in missing])
    precheck(recipe, target, schemes)
    base = artifacts_root(root)
    jobs = plan(recipe, target, root=base, schemes=tuple(schemes) if schemes else None, with_deps=True)
    report = ExportReport(recipe, target)
    if dry_run:
        report.results = [JobResult(j, "planned", "") for j in jobs if not j.implied]
        report.seconds = time.monotonic() - t0
        return report
    from host.models import model_sha256, resolve_model

    shas: dict[str, str] = {}   # models of every planned job, implied ones too
    for m in recipe.models:
        if any(j.model.name == m.name for j in jobs):
            shas[m.name] = model_sha256(resolve_model(m))
    report.results = _run_all(jobs, base, recipe, shas, set(require), on_line, progress, store)
    report.seconds = time.monotonic() - t0
    return report


def _run_all(jobs, base, recipe, shas, require, on_line, show_progress, store=None) -> list[JobResult]:
    """Run every job in plan order; an ``implied`` job (a dependency the selection did not list) runs
    only when a job that depends on it builds, and is not reported."""
    from contextlib import nullcontext

    from host.ui import progress as make_progress

    done: dict[Path, JobResult] = {}
    shown = [j for j in jobs if not j.implied]

    def run(j: BuildJob, line, req: set[str]) -> JobResult:
        if j.out_dir not in done:
            done[j.out_dir] = run_job(j, root=base, recipe=recipe, model_sha=shas[j.model.name], require=req,
                                      on_line=line, ensure=lambda d: run(d, line, req | {d.kind}), store=store)
        return done[j.out_dir]

    results = []
    with (make_progress(transient=True) if show_progress else nullcontext()) as prog:
        task = prog.add_task("export", total=len(shown)) if prog else None
        for j in shown:
            line = on_line
            if prog:
                prog.update(task, description=f"{j.label}")

                def line(text: str, _j=j) -> None:
                    prog.update(task, description=f"{_j.label}: {text[:60]}")
                    if on_line:
                        on_line(text)

            results.append(run(j, line, require))
            if prog:
                prog.advance(task)
    return results


# --- output -------------------------------------------------------------------------------------

def human_size(n: int | None) -> str:
    if n is None:
        return ""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def summary_table(report: ExportReport):
    from rich.table import Table

    title = f"export {report.recipe.name} → {report.target} ({report.seconds:.1f} s)"
    t = Table(title=title, title_justify="left")
    t.add_column("artifact", overflow="fold", min_width=20)
    for col, just in ( ("kind", "left"), ("scheme", "left"), ("size", "right"),
                      ("seconds", "right"), ("status", "left")):
        t.add_column(col, justify=just, overflow="fold" if col == "status" else "ellipsis")
    for r in report.results:
        status = r.status + (f" — {r.reason}" if r.reason else "")
        style = STATUS_STYLE.get(r.status, "white")
        t.add_row(r.job.label, r.job.kind, r.job.scheme, human_size(r.size),
                  f"{r.seconds:.1f}" if r.status not in ("planned", "skipped") else "", f"[{style}]{status}[/]")
    return t


def plan_table(report: ExportReport):
    from rich.table import Table

    t = Table(title=f"plan {report.recipe.name} → {report.target} (dry run: nothing built)", title_justify="left")
    for col in ("artifact", "kind", "scheme", "folder"):
        t.add_column(col)
    for r in report.results:
        t.add_row(r.job.label, r.job.kind, r.job.scheme, str(r.job.out_dir))
    return t


def write_jsonl(report: ExportReport, path: Path | str) -> None:
    atomic_write_text(path, "".join(json.dumps(r.to_dict()) + "\n" for r in report.results))
