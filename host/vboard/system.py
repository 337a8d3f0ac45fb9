"""Host side of the virtual board: host checks (root, Debian packages, binfmt_misc), mounts and the
board's processes (found by their root directory, stopped by PID), the lock."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from host.fsutil import pid_alive
from host.vboard.config import BINFMT, CROSS_LIBC_HEADER, HOST_TOOLS, VBoardError

# --- host checks -------------------------------------------------------------------------------

def missing_host_tools() -> list[str]:
    """Debian packages the virtual board needs that are not installed (empty when ready)."""
    out = [pkg for tool, pkg in HOST_TOOLS.items() if shutil.which(tool) is None]
    if not CROSS_LIBC_HEADER.exists():
        out.append("libc6-dev-arm64-cross")
    return out


def ensure_binfmt() -> str:
    """binfmt_misc mounted and qemu-aarch64 registered with the F flag (works inside a chroot)."""
    if not (BINFMT / "status").exists():
        subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)], check=False, capture_output=True)
    entry = BINFMT / "qemu-aarch64"
    if not entry.exists() or "enabled" not in entry.read_text():
        subprocess.run(["update-binfmts", "--enable", "qemu-aarch64"], check=False, capture_output=True)
    if not entry.exists() or "enabled" not in entry.read_text():
        raise VBoardError("qemu-aarch64 is not registered in binfmt_misc; run: apt-get install qemu-user-static "
                          "binfmt-support && update-binfmts --enable qemu-aarch64")
    text = entry.read_text()
    flags = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("flags:")), "")
    if "F" not in flags:
        raise VBoardError(f"{entry}: flags {flags!r} lack F (fix-binary), so the interpreter is not found inside a "
                          "chroot; reinstall qemu-user-static (Debian registers it with F)")
    return next((ln.split(None, 1)[1] for ln in text.splitlines() if ln.startswith("interpreter")), "?")


def check_host() -> None:
    if os.geteuid() != 0:
        raise VBoardError("the virtual board needs root (mounts, chroot); run make board-up as root")
    if not sys.platform.startswith("linux"):
        raise VBoardError(f"the virtual board needs Linux (binfmt_misc, overlayfs), not {sys.platform}")
    missing = missing_host_tools()
    if missing:
        raise VBoardError(f"missing Debian packages: {' '.join(missing)}; run: make setup-system "
                          f"(or apt-get install {' '.join(missing)})")
    ensure_binfmt()


# --- mounts and processes ----------------------------------------------------------------------

def _unescape(field: str) -> str:
    return field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below ``path`` (from /proc/mounts), deepest first."""
    base = str(path.resolve()) if path.exists() else str(path)
    out = []
    with open("/proc/mounts", encoding="utf-8") as f:
        for line in f:
            mp = _unescape(line.split()[1])
            if mp == base or mp.startswith(base + "/"):
                out.append(mp)
    return sorted(set(out), key=lambda m: (-m.count("/"), m))


def _run(argv: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=True, capture_output=True, text=True, **kw)


def _mount(*args: str) -> None:
    try:
        _run(["mount", *args])
    except subprocess.CalledProcessError as e:
        raise VBoardError(f"mount {' '.join(args)} failed: {e.stderr.strip()}") from None


def unmount_all(path: Path, say: Callable[[str], None] = print) -> None:
    """Unmount everything at or below ``path``; a busy mount is detached lazily and named."""
    for _ in range(3):
        left = mounts_under(path)
        if not left:
            return
        for mp in left:
            if subprocess.run(["umount", mp], capture_output=True).returncode != 0:
                time.sleep(0.3)
                if subprocess.run(["umount", mp], capture_output=True).returncode != 0:
                    say(f"{mp} is busy; detaching it (umount -l)")
                    subprocess.run(["umount", "-l", mp], capture_output=True)
    left = mounts_under(path)
    if left:
        raise VBoardError(f"still mounted after board-down: {', '.join(left)}")


def safe_rmtree(path: Path) -> None:
    """``rm -rf`` that never descends into a mount (a bound /dev would take the host's with it)."""
    if not path.exists():
        return
    if mounts_under(path):
        raise VBoardError(f"refusing to delete {path}: mounted below it: {', '.join(mounts_under(path))}")
    shutil.rmtree(path)


_alive = pid_alive


def board_pids(root: Path, pid: int | None = None) -> list[int]:
    """Processes whose root directory is the board's root, plus ``pid`` and its descendants."""
    want = str(root.resolve())
    parent: dict[int, int] = {}
    out: set[int] = set()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        p = int(d.name)
        with contextlib.suppress(OSError, ValueError, IndexError):
            parent[p] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if os.readlink(d / "root") == want:
                out.add(p)
    if pid is not None and pid in out:   # descendants only of a process that is itself inside the board
        frontier = {pid}
        out.add(pid)
        while frontier:
            frontier = {p for p, pp in parent.items() if pp in frontier} - out
            out |= frontier
    out.discard(os.getpid())
    return sorted(out)


def _stop_pids(pids: list[int], timeout: float = 10.0) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for p in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, sig)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.1)
        pids = [p for p in pids if _alive(p)]
        if not pids:
            return


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)

