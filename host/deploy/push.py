"""Content-addressed push: PLANNED → UPLOADED (temp name) → VERIFIED (sha256 on the board) →
INSTALLED (rename), for many boards in parallel.

The host never hashes big files: artifact sha256s come from their ``manifest.json``. Per board:
one preflight/probe round trip (Python version, write permission, free disk, which blobs are
there with their size and sha256 verified -- cached on the board by inode/mtime -- and which
partials), one receiver stream for the missing bytes, and the install of folders of hard links
in the same stream. Unchanged artifacts: 0 bytes sent. Pushes that overlap on one board (two
terminals, or one board under two inventory names) are safe: see ``remote``'s locks.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from board.manifest import Manifest, ManifestError
from host.deploy import remote
from host.deploy.inventory import Board
from host.deploy.ssh import SshTransport
from host.deploy.transport import Transport, Upload
from host.errors import DeployError, RkdeployError
from host.fsutil import sha256_file
from host.ui import sanitize

MIN_PYTHON = (3, 8)
EAGER_MAX = 1 << 20


def free_margin(need: int) -> int:
    """Keep this much free on the board beyond what we write (1 MiB + 2 %)."""
    return (1 << 20) + need // 50
BOARD_PACKAGE = Path(__file__).resolve().parents[2] / "board"


@dataclass(frozen=True)
class LocalFile:
    path: Path
    sha256: str
    size: int


@dataclass(frozen=True)
class PushDir:
    """A folder to appear on the board at ``workdir/<remote>``: name → local file."""

    remote: str
    files: dict[str, LocalFile]


@dataclass
class PushResult:
    board: str
    sent: int = 0
    skipped: int = 0
    seconds: float = 0.0
    status: str = "ok"
    installed: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # repairs and waits worth telling (quarantined blobs, ...)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def mb_per_s(self) -> float:
        return self.sent / 1e6 / self.seconds if self.seconds > 0 else 0.0


def safe_relpath(name: str, *, what: str = "file name") -> str:
    """A POSIX path relative to the workdir that cannot escape it (no ``..``, absolute path, NUL)."""
    if not isinstance(name, str) or not name or "\0" in name or "\\" in name:
        raise DeployError(f"{what} {name!r} is not allowed: empty, NUL or backslash")
    p = PurePosixPath(name)
    if p.is_absolute() or any(part in ("..", ".") for part in name.split("/")) or "" in name.split("/"):
        raise DeployError(f"{what} {name!r} would escape the board's workdir; only plain relative names are allowed")
    return str(p)


def artifact_dir(folder: Path, root: Path) -> PushDir:
    """An artifact folder (``<root>/<model>/<target>/<scheme>``) from its manifest, without hashing."""
    mpath = folder / "manifest.json"
    if not mpath.exists():
        raise DeployError(f"{mpath}: no manifest; build the artifact first (rkdeploy export)")
    try:
        manifest = Manifest.read(str(mpath))
    except ManifestError as e:
        raise DeployError(str(e)) from None
    rel = folder.resolve().relative_to(root.resolve()).as_posix()
    files: dict[str, LocalFile] = {}
    for name, meta in manifest.files.items():     # names already checked by the manifest's validation
        p = folder / name
        size = p.stat().st_size if p.is_file() else -1
        if size != meta.get("size"):
            raise DeployError(f"{p}: size {size if size >= 0 else 'missing'} differs from manifest ({meta.get('size')}); "
                              "rebuild the artifact")
        files[name] = LocalFile(p, str(meta["sha256"]), size)
    files["manifest.json"] = LocalFile(mpath, sha256_file(mpath), mpath.stat().st_size)
    return PushDir(safe_relpath(f"artifacts/{rel}", what="artifact folder"), files)


def runner_dir(package: Path = BOARD_PACKAGE, *, artifacts: Sequence[PushDir] = ()) -> PushDir:
    """The board runner package (``board/``) as files under ``runner/board/``, plus the host-built
    programs the pushed ``artifacts`` need there (``board_tools``)."""
    files = {}
    for p in sorted(package.rglob("*")):
        if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo"):
            name = "board/" + p.relative_to(package).as_posix()
            files[name] = LocalFile(p, sha256_file(p), p.stat().st_size)
    files.update(board_tools(artifacts))
    return PushDir("runner", files)


def board_tools(artifacts: Sequence[PushDir]) -> dict[str, LocalFile]:
    """``runner/bin/aarch64/rk-llama-run`` (+ its ``.json``) when a GGUF artifact is pushed: the llama.cpp
    backend's driver, cross-compiled here from the same llama.cpp that wrote the GGUF (static, built once
    and cached, ~15 min: host.build.llamacpp_tools.build_aarch64). The push carries it, not ``boards
    provision``: only boards that get a GGUF need it, it changes with the host's llama.cpp (the artifact's
    toolkit), and a push is content-addressed (0 bytes when current). Every RK3576/RK3588 is aarch64; the
    board backend uses it only where ``platform.machine()`` is aarch64 and the CPU has its features."""
    if not any(_format(d) == "gguf" for d in artifacts):
        return {}
    from host.build import llamacpp_tools as lt
    from host.fsutil import atomic_write_text

    # A push never starts the ~15-35 min cross build itself (nor fails the runner and every other artifact
    # for want of it): without it the GGUF artifacts go without their driver, and the board's llamacpp
    # backend says "not available" with the reason.
    try:
        if not lt.aarch64_built():
            raise lt.LlamaCppError("llama.cpp is not built for aarch64 boards: run `make llamacpp-aarch64` "
                                   "(~15 min once) and push again")
        exe = lt.driver_aarch64()
    except lt.LlamaCppError as e:
        from host.ui import err_console

        err_console.print(f"push: GGUF artifacts go without rk-llama-run (the board's llama.cpp driver): {e}",
                          markup=False)
        return {}
    meta = json.loads((lt.aarch64_dir() / "build.json").read_text())
    side = exe.with_name("rk-llama-run.json")
    info = {"arch": meta.get("arch"), "needs_cpu_features": meta.get("needs_cpu_features"),
            "llamacpp": f"llama-cpp-python {meta.get('version')} sdist", "build": lt.aarch64_dir().name}
    if not side.is_file() or json.loads(side.read_text()) != info:
        atomic_write_text(side, json.dumps(info, sort_keys=True))
    return {f"bin/aarch64/{f.name}": LocalFile(f, sha256_file(f), f.stat().st_size) for f in (exe, side)}


def _format(d: PushDir) -> str | None:
    m = d.files.get("manifest.json")
    if m is None or not d.remote.startswith("artifacts/"):
        return None
    try:
        return Manifest.read(str(m.path)).format
    except ManifestError:
        return None


def target_artifacts(target: str, *, recipe=None, root: Path | None = None,
                     missing: list[str] | None = None) -> list[PushDir]:
    """Built artifact folders for ``target``: those the recipe lists (unbuilt ones are appended to
    ``missing``), or every one under ``root`` when no recipe is given."""
    from host.plan import artifacts_root, plan

    root = artifacts_root(root)
    if recipe is not None:
        folders = []
        for j in plan(recipe, target, root=root):
            if (j.out_dir / "manifest.json").exists():
                folders.append(j.out_dir)
            elif missing is not None:
                missing.append(j.label)
    else:
        folders = sorted(m.parent for m in root.glob(f"*/{target}/*/manifest.json"))
    return [artifact_dir(f, root) for f in folders]


# -- one board ---------------------------------------------------------------------------------

def preflight(t: Transport, dirs: Sequence[PushDir]) -> dict:
    """Python version, write permission, free disk and blob inventory, in one round trip."""
    b = t.board
    shas = sorted({f.sha256 for d in dirs for f in d.files.values()})
    sizes = {f.sha256: f.size for d in dirs for f in d.files.values()}
    req = {"workdir": str(b.workdir), "blobs": {sha: sizes[sha] for sha in shas}}
    # No overall limit: a first push after an upgrade may hash many blobs; the probe's heartbeats
    # keep it alive, and a stopped board still fails after the transport's stall deadline.
    res = t.run([b.python, "-c", remote.PROBE], input=json.dumps(req).encode(), check=False, timeout=None)
    first, _, rest = res.stdout.partition("\n")
    try:
        version = tuple(int(x) for x in first.strip().split("."))
    except ValueError:
        raise DeployError(f"board {b.name}: cannot run Python as {b.python!r} ({_one(res.stderr) or _one(first)}); "
                          "install python3 >= 3.8 on the board or set `python:` in the inventory") from None
    if version[:2] < MIN_PYTHON:
        raise DeployError(f"board {b.name}: {b.python} is Python {'.'.join(map(str, version))}; the board runner needs "
                          f"Python >= {MIN_PYTHON[0]}.{MIN_PYTHON[1]} (install it or set `python:` in the inventory)")
    try:
        probe = json.loads(rest.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise DeployError(f"board {b.name}: preflight failed: {_one(res.stderr) or _one(rest)}") from None
    if not probe.get("writable"):
        raise DeployError(f"board {b.name}: workdir {probe.get('workdir')} is not writable "
                          f"({sanitize(str(probe.get('error')))}); fix permissions or set `workdir:` in the inventory")
    probe["python"] = version
    return probe


def _one(text: str) -> str:
    lines = [ln for ln in sanitize(text).splitlines() if ln.strip()]
    return lines[-1] if lines else ""


@dataclass
class UploadPlan:
    """What must travel, from the probe: the board decides the exact offsets under its locks."""

    uploads: list[Upload]
    present: int  # bytes of verified blobs already there
    partial: int  # bytes of partials the board will probably resume from
    notes: list[str]


def plan_uploads(dirs: Sequence[PushDir], blobs: dict) -> UploadPlan:
    uploads: dict[str, Upload] = {}
    seen: set[str] = set()
    present = partial = 0
    notes = []
    for d in dirs:
        for f in d.files.values():
            if f.sha256 in seen:
                continue
            seen.add(f.sha256)
            have = blobs.get(f.sha256) or {}
            if "have" in have:
                present += f.size
                continue
            if have.get("quarantined"):
                notes.append(f"{f.path.name}: corrupt copy on the board ({sanitize(str(have.get('why')))}) moved to "
                             f"{sanitize(str(have['quarantined']))}, re-sent")
            part = have.get("partial")
            if isinstance(part, int) and 0 < part <= f.size:
                partial += part
            # Small files go out without a round trip each (the board reads and drops them if another push
            # finished them meanwhile); big ones and partly sent ones wait for the board's offset.
            eager = not part and f.size <= EAGER_MAX
            uploads[f.sha256] = Upload(f.path, f.sha256, f.size, eager=eager)
    return UploadPlan(list(uploads.values()), present, partial, notes)


def push_board(t: Transport, dirs: Sequence[PushDir], *, on_start: Callable[[int], None] | None = None,
               on_bytes: Callable[[int], None] | None = None) -> PushResult:
    """Push ``dirs`` to one board. Raises ``DeployError``; nothing is installed unless all is verified."""
    start = time.monotonic()
    b = t.board
    if hasattr(t, "prepare_put"):
        t.prepare_put(b.workdir)  # the data stream logs in while the preflight runs
    try:
        probe = preflight(t, dirs)
        plan = plan_uploads(dirs, probe["blobs"])
        need = sum(u.size for u in plan.uploads) - plan.partial
        if need and need + free_margin(need) > probe["free"]:
            raise DeployError(f"board {b.name}: not enough free disk in {probe['workdir']}: need {_mib(need + free_margin(need))} "
                              f"(incl. margin), {_mib(probe['free'])} free; free some space or set `workdir:`; nothing was sent")
        if on_start is not None:
            on_start(need)
        sent = [0]

        def count(n: int) -> None:
            sent[0] += n
            if on_bytes is not None:
                on_bytes(n)
    except BaseException:
        if hasattr(t, "cancel_put"):
            t.cancel_put()
        raise
    dir_table = [{"path": d.remote, "files": {n: f.sha256 for n, f in d.files.items()}} for d in dirs]
    rep = t.put(plan.uploads, PurePosixPath(probe["workdir"]), on_bytes=count, install=dir_table)
    return PushResult(b.name, sent=sent[0], skipped=plan.present + rep.resumed + rep.already,
                      seconds=time.monotonic() - start, installed=rep.installed, notes=plan.notes + rep.notes)


def _mib(n: int) -> str:
    return f"{n / 1048576:.1f} MiB"


# -- many boards -------------------------------------------------------------------------------

def push_boards(boards: Sequence[Board], dirs: Sequence[PushDir], *, jobs: int = 4,
                transport: Callable[[Board], Transport] = SshTransport, show_progress: bool = True) -> list[PushResult]:
    """Push to every board in a bounded pool; one failing board does not stop the others."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn, TransferSpeedColumn

    from host.ui import err_console

    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                        TimeElapsedColumn(), TextColumn("{task.fields[state]}"), console=err_console,
                        disable=not show_progress)

    def one(board: Board) -> PushResult:
        task = progress.add_task(board.name, total=None, state="connecting")
        start = time.monotonic()
        sent = [0]  # what a failure row reports: the bytes that really went out

        def on_bytes(n: int) -> None:
            sent[0] += n
            progress.advance(task, n)

        tr = None
        try:
            tr = transport(board)
            res = push_board(tr, dirs, on_start=lambda n: progress.update(task, total=n, state="sending"),
                             on_bytes=on_bytes)
            progress.update(task, state="ok")
            return res
        except RkdeployError as e:
            progress.update(task, state="[red]failed")
            return PushResult(board.name, sent=sent[0], seconds=time.monotonic() - start, status=sanitize(str(e)))
        finally:
            if tr is not None:
                tr.close()

    with progress, ThreadPoolExecutor(max_workers=max(1, min(jobs, len(boards)))) as pool:
        return list(pool.map(one, boards))


def summary_table(results: Sequence[PushResult]):
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="push")
    for col in ("board", "sent", "skipped", "seconds", "MB/s", "status"):
        table.add_column(col, justify="right" if col in ("sent", "skipped", "seconds", "MB/s") else "left")
    for r in results:
        status = "[green]ok[/]" if r.ok else f"[red]{escape(r.status)}[/]"
        if r.notes:
            status += " [yellow](" + escape("; ".join(r.notes)) + ")[/]"
        table.add_row(escape(r.board), _mib(r.sent), _mib(r.skipped), f"{r.seconds:.2f}", f"{r.mb_per_s:.1f}", status)
    return table
