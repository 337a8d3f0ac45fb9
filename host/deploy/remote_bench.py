"""Benchmarks and doctor on boards over SSH, reusing ``host.bench`` through its ``run_stream``.

``rkdeploy bench --boards SEL`` = push (idempotent: 0 bytes when current) → doctor (recorded in
every row's ``env.doctor`` and in ``results/doctor/<board>-<time>.json``) → ``host.bench``'s
loop with a ``run_stream`` that runs the runner on the board. Every ``board bench`` invocation
holds ``<workdir>/.bench.lock`` (flock) so two benchmarks never overlap on one board.
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from rich.markup import escape

from host.deploy import remote
from host.deploy.inventory import Board
from host.deploy.ssh import SshTransport
from host.deploy.transport import RemoteCommandFailed, Transport
from host.errors import BenchError, DeployError, RkdeployError
from host.ui import err_console, sanitize

LOCK_NAME = ".bench.lock"


def remote_workdir(t: Transport) -> PurePosixPath:
    """The board's workdir as an absolute path (``~`` and relative paths resolved there)."""
    code = "import os, sys; print(os.path.abspath(os.path.expanduser(sys.argv[1])))"
    return PurePosixPath(t.run([t.board.python, "-c", code, str(t.board.workdir)]).stdout.strip())


class RemoteRunStream:
    """``host.bench``'s ``run_stream`` for one board: same argv, run in ``<workdir>/runner`` on the
    board, host artifact paths mapped to the board's, ``bench`` wrapped in the board-side lock."""

    def __init__(self, t: Transport, workdir: PurePosixPath, *, local_artifacts: Path, wait: bool = True,
                 doctor: list | None = None, say: Callable[[str], None] | None = None):
        self.t, self.workdir, self.wait, self.doctor = t, workdir, wait, doctor
        self.local_artifacts = local_artifacts.resolve()
        self.say = say or (lambda msg: err_console.print(msg, markup=False, highlight=False))

    def _map(self, argv: list[str]) -> list[str]:
        out = list(argv)
        for i, a in enumerate(argv[:-1]):
            if a == "--artifact":
                rel = Path(argv[i + 1]).resolve().relative_to(self.local_artifacts).as_posix()
                out[i + 1] = str(self.workdir / "artifacts" / rel)
        if "bench" in argv[:4]:
            lock = str(self.workdir / LOCK_NAME)
            out = [self.t.board.python, "-c", remote.LOCKED_EXEC, lock, "wait" if self.wait else "nowait", *out]
        return out

    def _stderr(self, line: str) -> None:
        if line.startswith("rkdeploy-lock: waiting"):
            self.say(f"{self.t.board.name}: {line.split(': ', 1)[1]} (waiting; --no-wait fails instead)")

    def __call__(self, argv: list[str]) -> Iterator[str]:
        b = self.t.board
        try:
            for line in self.t.stream(self._map(argv), cwd=self.workdir / "runner", on_stderr=self._stderr):
                yield self._with_doctor(line)
        except RemoteCommandFailed as e:
            if e.returncode == 1:
                return  # the runner wrote an error row
            if e.returncode == remote.LOCK_BUSY_EXIT:
                raise DeployError(f"board {b.name} is busy: another benchmark holds {self.workdir / LOCK_NAME}; "
                                  "retry later, or drop --no-wait to wait for it") from None
            raise BenchError(str(e)) from None
        except DeployError as e:
            raise BenchError(str(e)) from None

    def _with_doctor(self, line: str) -> str:
        if self.doctor is None or '"type": "row"' not in line:
            return line
        try:
            obj = json.loads(line)
        except ValueError:
            return line
        obj["env"] = {**(obj.get("env") or {}), "doctor": self.doctor}
        return json.dumps(obj)


def remote_doctor(t: Transport, workdir: PurePosixPath) -> list[dict]:
    """``python3 -m board doctor --json`` on the board (exit 1 = a check failed, still a report)."""
    # silent_ok: probing the NPU/runtime may print nothing for a while; COMMAND_TIMEOUT still bounds it.
    res = t.run([t.board.python, "-m", "board", "doctor", "--json"], cwd=workdir / "runner", check=False,
                silent_ok=True)
    try:
        checks = json.loads(res.stdout)
    except ValueError:
        raise DeployError(f"board {t.board.name}: doctor failed (exit {res.returncode}): "
                          f"{sanitize(res.stderr.strip())[-300:] or 'no output'}; push the runner first "
                          "(rkdeploy push)") from None
    return [{k: sanitize(str(c.get(k, ""))) for k in ("name", "status", "message", "fix")} for c in checks]


@dataclass
class DoctorReport:
    board: str
    checks: list[dict] = field(default_factory=list)
    error: str | None = None


def doctor_boards(boards: Sequence[Board], *, jobs: int = 4, push_runner: bool = True,
                  transport: Callable[[Board], Transport] = SshTransport) -> list[DoctorReport]:
    """Doctor on every board in parallel (pushing the runner first, a no-op when current)."""
    from host.deploy.push import push_board, runner_dir

    runner = runner_dir() if push_runner else None

    def one(board: Board) -> DoctorReport:
        try:
            with transport(board) as t:
                if runner is not None:
                    push_board(t, [runner])
                return DoctorReport(board.name, remote_doctor(t, remote_workdir(t)))
        except RkdeployError as e:
            return DoctorReport(board.name, error=sanitize(str(e)))

    with ThreadPoolExecutor(max_workers=max(1, min(jobs, len(boards)))) as pool:
        return list(pool.map(one, boards))


def doctor_table(reports: Sequence[DoctorReport]):
    from rich.table import Table

    table = Table(title="board doctor")
    for col in ("board", "check", "status", "message", "fix"):
        table.add_column(col)
    style = {"ok": "green", "warn": "yellow", "fail": "red", "skip": "dim"}
    for r in reports:
        if r.error:
            table.add_row(escape(r.board), "ssh", "[red]fail[/]", escape(r.error), "")
        for c in r.checks:
            table.add_row(escape(r.board), escape(c["name"]), f"[{style.get(c['status'], 'dim')}]{escape(c['status'])}[/]",
                          escape(c["message"]), escape(c["fix"]))
    return table


def bench_boards(boards: Sequence[Board], *, recipe, target: str, params, store=None, artifacts_root=None,
                 wait: bool = True, transport: Callable[[Board], Transport] = SshTransport,
                 log: Callable[[str], None] | None = None, row_env: dict | None = None) -> dict:
    """Push, doctor and benchmark each board in turn; rows stream into the results store (``row_env``:
    merged into every row's ``env``, e.g. the farm's place and reservation)."""
    from host.bench import bench_local
    from host.config import load_recipe
    from host.deploy.push import artifact_dir, push_board, runner_dir
    from host.plan import artifacts_root as default_root
    from host.plan import plan
    from host.results import default_store

    say = log or (lambda msg: err_console.print(msg, markup=False, highlight=False, soft_wrap=True))
    root = default_root(artifacts_root)
    built = [j.out_dir for j in plan(load_recipe(recipe), target, root=root) if (j.out_dir / "manifest.json").exists()]
    arts = [artifact_dir(f, root) for f in built]
    dirs = [runner_dir(artifacts=arts), *arts]
    summaries = {}
    for board in boards:
        with transport(board) as t:
            res = push_board(t, dirs)
            say(f"{board.name}: pushed {res.sent / 1e6:.1f} MB ({res.skipped / 1e6:.1f} MB already there)"
                + "".join(f"; {n}" for n in res.notes))
            wd = remote_workdir(t)
            checks = remote_doctor(t, wd)
            _save_doctor(store or default_store(), board.name, checks)
            bad = [c for c in checks if c["status"] in ("warn", "fail")]
            for c in bad:
                say(f"{board.name}: doctor {c['status']} {c['name']}: {c['message']}")
            rs = RemoteRunStream(t, wd, local_artifacts=root, wait=wait, doctor=checks, say=say)
            summaries[board.name] = bench_local(recipe=recipe, target=target, params=params, store=store,
                                                artifacts_root=root, run_stream=rs,
                                                runner=(board.python, "-m", "board"), board=board.name, log=say,
                                                row_env=row_env)
    return summaries


def _save_doctor(store: Path | str, board: str, checks: list[dict]) -> Path:
    from host.fsutil import atomic_write_text

    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = Path(store).parent / "doctor" / f"{board}-{stamp}.json"
    atomic_write_text(path, json.dumps({"board": board, "time": stamp, "checks": checks}, indent=1))
    return path
