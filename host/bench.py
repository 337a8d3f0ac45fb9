"""Run the board runner and stream its JSONL rows into the results store.

Transport-agnostic: everything goes through ``run_stream(argv) -> iterator of stdout lines``.
``local_run_stream`` runs ``python -m board ...`` as a subprocess here; an SSH transport supplies
its own ``run_stream`` (same argv, run on the board in the runner's folder) and the rest is shared.
A ``run_stream`` raises ``BenchError`` when the command exits with a code other than 0 or 1
(0 = ok, 1 = the runner wrote an error row).
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from board.backends import BACKENDS_FOR_FORMAT
from board.manifest import Manifest, ManifestError
from board.rows import ResultRow
from host.config import PROJECT_ROOT
from host.errors import BenchError, ConfigError
from host.results import DEFAULT_STORE, ResultStore, parse_line
from host.ui import err_console, sanitize

RunStream = Callable[[list[str]], Iterator[str]]
LOCAL_RUNNER = (sys.executable, "-m", "board")


def _llamacpp_env() -> dict[str, str]:
    """The local runner's llama.cpp backend finds ``rk-llama-run`` through ``$RKDEPLOY_LLAMACPP_RUN``: when
    unset, point it at this host's cached build (host.build.llamacpp_tools), if there is one."""
    from board.backends.llamacpp import ENV
    from host.build.llamacpp_tools import LlamaCppError, driver, is_built

    if os.environ.get(ENV) or not is_built():
        return {}
    try:
        return {ENV: str(driver())}
    except LlamaCppError:
        return {}     # the backend then reports itself unavailable, naming `make llamacpp`


def local_run_stream(argv: list[str], *, cwd: Path | str = PROJECT_ROOT) -> Iterator[str]:
    """Run ``argv`` here (cwd = the folder holding ``board/``), yield stdout lines as they arrive."""
    with tempfile.TemporaryFile(mode="w+", encoding="utf-8") as errf:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **_llamacpp_env()}
        proc = subprocess.Popen(argv, cwd=str(cwd), stdout=subprocess.PIPE, stderr=errf, text=True, env=env)
        try:
            assert proc.stdout is not None
            yield from proc.stdout
            rc = proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if rc not in (0, 1):
            errf.seek(0)
            tail = sanitize(errf.read()[-2000:]).strip().splitlines()
            raise BenchError(f"runner {' '.join(argv[:4])} exited with code {rc}: {tail[-1] if tail else 'no output'}")


@dataclass(frozen=True)
class BenchParams:
    """The measurement method (defaults = the vendor's: 128-token prompt, 64 new tokens)."""

    n_prompt: int = 128
    n_gen: int = 64
    reps: int = 5
    warmup: int = 1
    threads: int | None = None
    options: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Checked here, before any board is contacted (a zero count is a usage error, not a row)."""
        from board.runner import check_counts

        try:
            check_counts((("n-prompt", self.n_prompt, 1), ("n-gen", self.n_gen, 1), ("reps", self.reps, 1),
                          ("warmup", self.warmup, 0), ("threads", self.threads, 1)), optional=("threads",))
        except ValueError as e:
            raise ConfigError(str(e)) from None
        for k, v in self.options.items():
            if not isinstance(k, str) or not k.strip() or not isinstance(v, str) or "\n" in k + v or "\0" in k + v:
                raise ConfigError(f"--opt {k!r}={v!r}: KEY=VALUE on one line, KEY not empty")

    def argv(self) -> list[str]:
        out = ["--n-prompt", str(self.n_prompt), "--n-gen", str(self.n_gen), "--reps", str(self.reps),
               "--warmup", str(self.warmup)]
        if self.threads:
            out += ["--threads", str(self.threads)]
        for k, v in sorted(self.options.items()):
            out += ["--opt", f"{k}={v}"]
        return out


def runner_info(run_stream: RunStream, runner: tuple[str, ...] = LOCAL_RUNNER) -> dict:
    """``python -m board info``: runner version and which backends are available there."""
    text = "".join(run_stream([*runner, "info"]))
    try:
        info = json.loads(text)
    except ValueError:
        raise BenchError(f"board runner info is not JSON: {sanitize(text.strip())[:200]!r}") from None
    return info


def pick_backend(manifest: Manifest, available: dict[str, dict]) -> str | None:
    for name in BACKENDS_FOR_FORMAT.get(manifest.format or "", ()):
        if available.get(name, {}).get("available"):
            return name
    return None


@functools.lru_cache(maxsize=1)
def host_provenance() -> dict:
    """The rkdeploy that ran the benchmark (``env.rkdeploy`` of every bench row): its version and, in a git
    checkout, the commit and whether tracked files differed from it (``rkdeploy compare commit=…`` selects by it)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        out: dict = {"version": version("rkdeploy")}
    except PackageNotFoundError:
        out = {"version": None}
    git = ["git", "-C", str(PROJECT_ROOT)]
    try:
        sha = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        dirty = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True,
                               timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return {**out, "commit": None}
    ok = sha.returncode == 0 and len(sha.stdout.strip()) == 40
    return {**out, "commit": sha.stdout.strip() if ok else None,
            "dirty": bool(dirty.stdout.strip()) if ok and dirty.returncode == 0 else None}


def bench_artifact(artifact_dir: str, backend: str, *, run_stream: RunStream, params: BenchParams,
                   board: str, runner: tuple[str, ...] = LOCAL_RUNNER, row_env: dict | None = None) -> Iterator[ResultRow]:
    """Run the runner on one artifact; yield its rows as they arrive (an error row if it died). ``row_env``
    is merged into every row's ``env`` (e.g. ``farm``: the labgrid place and reservation)."""
    argv = [*runner, "bench", "--artifact", str(artifact_dir), "--backend", backend, "--board", board, *params.argv()]
    got = False
    try:
        for line in run_stream(argv):
            if not line.strip():
                continue
            obj = parse_line(line)
            if obj["type"] == "row":
                row = ResultRow.from_dict(obj)
                row.board = board
                row.env = {**(row.env or {}), "rkdeploy": host_provenance(), **(row_env or {})}
                got = True
                yield row
    except BenchError as e:
        if got:
            raise
        yield ResultRow(kind="bench", backend=backend, board=board, status="error", error=str(e),
                        n_prompt=params.n_prompt, n_gen=params.n_gen, reps=params.reps, env=row_env or None,
                        **_ids(artifact_dir))
        return
    if not got:
        yield ResultRow(kind="bench", backend=backend, board=board, status="error", env=row_env or None,
                        error="runner exited without a result row", **_ids(artifact_dir))


def _ids(artifact_dir: str) -> dict:
    """model/target/scheme of an error row, when the artifact's manifest is readable at all."""
    try:
        m = Manifest.read(str(Path(artifact_dir) / "manifest.json"))
    except ManifestError:
        return {}
    return {"model": m.model, "target": m.target, "scheme": m.scheme}


@dataclass
class BenchSummary:
    rows: list[ResultRow] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def bench_local(*, recipe: str | Path, target: str, params: BenchParams = BenchParams(),
                store: Path | str | None = DEFAULT_STORE, artifacts_root: Path | str | None = None,
                run_stream: RunStream = local_run_stream, runner: tuple[str, ...] = LOCAL_RUNNER,
                board: str = "local", log: Callable[[str], None] | None = None,
                row_env: dict | None = None) -> BenchSummary:
    """``rkdeploy bench --board local``: every built artifact of ``target`` with a backend here."""
    from host.build import registry
    from host.config import load_recipe
    from host.export import read_failure
    from host.plan import plan
    from host.toolkits import TOOLKITS, toolkit_info

    say = log or (lambda msg: err_console.print(msg, markup=False, highlight=False, soft_wrap=True))
    jobs = plan(load_recipe(recipe), target, root=artifacts_root)
    info = runner_info(run_stream, runner)
    available = info.get("backends", {})
    summary = BenchSummary()
    with ResultStore(store) as s:
        for job in jobs:
            mpath = job.out_dir / "manifest.json"
            if not mpath.exists():
                toolkit = registry.get(job.kind).toolkit
                failed = read_failure(job.out_dir)
                if failed:   # the export that would build it failed: name why, do not suggest it again
                    summary.skipped.append(f"{job.label}: export failed ({failed.get('at', '?')}): "
                                           f"{failed['reason']} (log: {failed.get('log', '?')})")
                elif toolkit in TOOLKITS and toolkit_info(toolkit) is None:
                    tk = TOOLKITS[toolkit]
                    summary.skipped.append(f"{job.label}: not built — {tk.dist} not installed ({tk.install_hint})")
                else:
                    summary.skipped.append(f"{job.label}: not built (run `rkdeploy export --target {target}`)")
                continue
            try:
                manifest = Manifest.read(str(mpath))
            except (ManifestError, OSError) as e:
                summary.skipped.append(f"{job.label}: unreadable manifest ({e}); rebuild it with "
                                       f"`rkdeploy export --target {target}`")
                continue
            backend = pick_backend(manifest, available)
            if backend is None:
                names = BACKENDS_FOR_FORMAT.get(manifest.format or "", ())
                want = ", ".join(names) or "none"
                why = "; ".join(sanitize(str(available[n].get("detail"))) for n in names
                                if isinstance(available.get(n), dict) and available[n].get("detail"))
                summary.skipped.append(f"{job.label}: format {manifest.format} needs backend {want}, "
                                       f"not available on {board}" + (f" ({why})" if why else ""))
                continue
            note = manifest.get("model_note")   # "float weights dequantized from Q4_K_M …" travels into rows
            say(f"bench {job.label} on {board} with {backend} …")
            for row in bench_artifact(str(job.out_dir.resolve()), backend, run_stream=run_stream, params=params,
                                      board=board, runner=runner, row_env=row_env):
                if note:
                    row.env = {**(row.env or {}), "model_note": note}
                s.add(row)
                summary.rows.append(row)
                say(_row_line(job.label, row))
    not_built = [m.split(":")[0] for m in summary.skipped if m.endswith(f"`rkdeploy export --target {target}`)")]
    if not_built:
        say(f"skip (not built; `rkdeploy export --target {target}` builds them): {', '.join(not_built)}")
    for msg in summary.skipped:
        if msg.split(":")[0] not in not_built:
            say(f"skip {msg}")
    return summary


def _row_line(label: str, row: ResultRow) -> str:
    if row.status != "ok":
        return f"  {label}: error: {row.error}"
    if row.test == "encode":
        return f"  {label}: {row.latency_ms:.2f} ms/batch, {row.seqs_per_s:.1f} seq/s"
    return (f"  {label}: TTFT {row.ttft_ms:.1f} ms, prefill {row.prefill_tps:.1f} tok/s, "
            f"decode {row.decode_tps or 0:.2f} ± {row.decode_stddev_tps or 0:.2f} tok/s, peak {row.peak_rss_mb} MB")
