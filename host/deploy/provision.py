"""``rkdeploy boards provision NAME``: the board runtimes as wheels fetched BY THE HOST, for boards
without internet (or without a trusted CA): probe → ``pip download`` here for the board's
platform → content-addressed push → ``pip install --no-index --find-links`` into the board's venv.

The venv is the board's ``python:`` (inventory), which must look like ``<venv>/bin/python3``; it is
created with the board's system ``python3 -m venv`` when missing. A marker in the venv holds the
digest of the wheel set, so provisioning a provisioned board costs one round trip.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from host.deploy.push import LocalFile, PushDir, push_board
from host.deploy.transport import RemoteCommandFailed, Transport
from host.errors import DeployError
from host.fsutil import atomic_write_text, sha256_file
from host.ui import sanitize

#: What the board runner's backends import (rknn-toolkit-lite2 exists for aarch64 only).
BOARD_REQUIREMENTS = ("numpy==2.4.6", "onnxruntime==1.32.0", "onnxruntime-genai==0.18.0", "rknn-toolkit-lite2==2.5.0")
AARCH64_ONLY = ("rknn-toolkit-lite2",)
MARKER = ".rkdeploy-provisioned"
BASE_PYTHON = "python3"
INSTALL_TIMEOUT_S = 1800.0

PROBE = r'''
import json, platform, sys
print(json.dumps({"python": list(sys.version_info[:3]), "machine": platform.machine(),
                  "libc": list(platform.libc_ver())}))
'''


@dataclass
class ProvisionResult:
    board: str
    venv: str
    digest: str
    installed: bool
    seconds: float
    versions: dict[str, str | None] = field(default_factory=dict)
    wheels: list[str] = field(default_factory=list)


def wheel_cache() -> Path:
    return Path(os.environ.get("RKDEPLOY_WHEEL_CACHE") or Path.home() / ".cache" / "rkdeploy" / "wheels")


def venv_of(python: str) -> PurePosixPath:
    """The venv folder of the board's interpreter ``<venv>/bin/python*`` (else a DeployError)."""
    p = PurePosixPath(python)
    if not p.is_absolute() or p.parent.name != "bin" or not p.name.startswith("python"):
        raise DeployError(f"python {python!r}: provisioning installs into a venv, so the board's `python:` must be an "
                          "absolute <venv>/bin/python3 path (e.g. python: /home/rock/rkdeploy/venv/bin/python3)")
    return p.parent.parent


def platform_tags(machine: str, libc: Sequence[str]) -> list[str]:
    """pip ``--platform`` values a board with this glibc accepts (manylinux_2_17 … its own glibc)."""
    if libc[0] != "glibc":
        raise DeployError(f"the board's C library is {libc[0] or 'unknown'}; wheels are fetched for glibc boards only")
    minor = int(str(libc[1]).split(".")[1])
    return [f"manylinux_2_{m}_{machine}" for m in range(minor, 16, -1)] + [f"manylinux2014_{machine}"]


def requirements_for(machine: str, reqs: Sequence[str] = BOARD_REQUIREMENTS) -> list[str]:
    return [r for r in reqs if machine == "aarch64" or not r.split("=")[0].startswith(AARCH64_ONLY)]


def download_wheels(python: Sequence[int], machine: str, libc: Sequence[str], reqs: Sequence[str],
                    say: Callable[[str], None] = print) -> Path:
    """``pip download`` the binary wheels for the board's platform into a cache folder (reused)."""
    tags = platform_tags(machine, libc)
    pyver = f"{python[0]}{python[1]}"
    key = hashlib.sha256(json.dumps([pyver, tags, sorted(reqs)]).encode()).hexdigest()[:16]
    folder = wheel_cache() / f"cp{pyver}-{machine}-{key}"
    if (folder / "complete.json").exists():
        return folder
    tmp = folder.with_name(folder.name + f".tmp-{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--only-binary=:all:",
            *(x for t in tags for x in ("--platform", t)), "--python-version", pyver, "--implementation", "cp",
            "-d", str(tmp), *reqs]
    say(f"fetching wheels for cp{pyver} {machine} ({libc[0]} {libc[1]}): {' '.join(reqs)}")
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=1800)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if res.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        lines = [ln for ln in res.stderr.splitlines() if ln.startswith("ERROR")] or res.stderr.splitlines()[-2:]
        raise DeployError(f"pip download for the board (cp{pyver}, {machine}) failed: {' | '.join(lines)}")
    files = sorted(p.name for p in tmp.glob("*.whl"))
    atomic_write_text(tmp / "complete.json", json.dumps({"requirements": list(reqs), "platforms": tags, "wheels": files}))
    if folder.exists():
        shutil.rmtree(folder)
    os.rename(tmp, folder)
    return folder


def wheel_digest(folder: Path, reqs: Sequence[str]) -> tuple[str, PushDir]:
    files = {p.name: LocalFile(p, sha256_file(p), p.stat().st_size) for p in sorted(folder.glob("*.whl"))}
    digest = hashlib.sha256(json.dumps([sorted(reqs), sorted((n, f.sha256) for n, f in files.items())]).encode())
    d = digest.hexdigest()[:16]
    return d, PushDir(f"wheels/{d}", files)


def provision_board(t: Transport, *, reqs: Sequence[str] = BOARD_REQUIREMENTS,
                    say: Callable[[str], None] = print) -> ProvisionResult:
    """Make the board's venv hold exactly these runtimes (idempotent; one round trip when current)."""
    b = t.board
    start = time.monotonic()
    venv = venv_of(b.python)
    res = t.run([BASE_PYTHON, "-c", PROBE], check=False)
    try:
        plat = json.loads(res.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise DeployError(f"board {b.name}: cannot run {BASE_PYTHON} there ({sanitize(res.stderr.strip())[-200:]}); "
                          "install python3 and python3-venv on the board") from None
    reqs = requirements_for(plat["machine"], reqs)
    folder = download_wheels(plat["python"], plat["machine"], plat["libc"], reqs, say)
    digest, wheels = wheel_digest(folder, reqs)
    marker = venv / MARKER
    # The venv first: push's probe and receiver run with the board's python (stdlib only).
    q = shlex.quote
    try:
        t.run(["sh", "-c", f"[ -x {q(f'{venv}/bin/python3')} ] || {q(BASE_PYTHON)} -m venv {q(str(venv))}"],
              timeout=600, silent_ok=True)
    except RemoteCommandFailed as e:
        raise DeployError(f"board {b.name}: {BASE_PYTHON} -m venv {venv} failed: {sanitize(e.stderr.strip())[-200:]} "
                          "(install python3-venv on the board)") from None
    have = t.run(["cat", str(marker)], check=False).stdout.strip()
    if have == digest:
        return ProvisionResult(b.name, str(venv), digest, False, time.monotonic() - start,
                               _versions(t, b.python), sorted(wheels.files))
    pushed = push_board(t, [wheels])
    say(f"{b.name}: {len(wheels.files)} wheels pushed ({pushed.sent / 1e6:.1f} MB sent); installing into {venv} …")
    wd = PurePosixPath(_workdir(t))
    script = (f"set -e; rm -f {q(str(marker))}; {q(f'{venv}/bin/python3')} -m pip install --no-index --no-compile "
              f"--disable-pip-version-check --find-links {q(str(wd / wheels.remote))} {' '.join(map(q, reqs))}")
    try:
        t.run(["sh", "-c", script], timeout=INSTALL_TIMEOUT_S, silent_ok=True)
    except RemoteCommandFailed as e:
        tail = [ln for ln in sanitize(e.stderr + e.stdout).splitlines() if ln.strip()][-3:]
        raise DeployError(f"board {b.name}: pip install into {venv} failed (exit {e.returncode}): {' | '.join(tail)}") from None
    t.run(["sh", "-c", f"echo {q(digest)} > {q(str(marker))}"])
    return ProvisionResult(b.name, str(venv), digest, True, time.monotonic() - start, _versions(t, b.python),
                           sorted(wheels.files))


def _workdir(t: Transport) -> str:
    code = "import os, sys; print(os.path.abspath(os.path.expanduser(sys.argv[1])))"
    return t.run([BASE_PYTHON, "-c", code, str(t.board.workdir)]).stdout.strip()


def _versions(t: Transport, python: str) -> dict[str, str | None]:
    code = ("import json\nfrom importlib import metadata\nout = {}\n"
            "for n in ('numpy', 'onnxruntime', 'onnxruntime-genai', 'rknn-toolkit-lite2'):\n"
            "    try:\n        out[n] = metadata.version(n)\n    except Exception:\n        out[n] = None\n"
            "print(json.dumps(out))")
    r = t.run([python, "-c", code], check=False)
    try:
        return json.loads(r.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {}


def provision_command(name: str, inventory: Path | None = None) -> ProvisionResult:
    """What ``rkdeploy boards provision NAME`` does (the CLI only parses)."""
    from host.deploy.inventory import load_inventory
    from host.deploy.ssh import SshTransport
    from host.errors import ConfigError
    from host.ui import console, err_console

    inv = load_inventory(inventory)
    if name not in inv.boards:
        raise ConfigError(f"no board named {name!r} in {inv.source}; known: {', '.join(inv.boards) or '(none)'}")
    say = lambda msg: err_console.print(msg, markup=False, highlight=False)  # noqa: E731
    with SshTransport(inv.boards[name]) as t:
        res = provision_board(t, say=say)
    what = "installed" if res.installed else "already provisioned"
    versions = ", ".join(f"{k} {v}" for k, v in res.versions.items() if v)
    console.print(f"{name}: {what} in {res.seconds:.0f} s: {res.venv} ({versions}; wheel set {res.digest})",
                  markup=False, highlight=False)
    return res
