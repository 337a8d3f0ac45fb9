"""The cached arm64 Debian rootfs (mmdebstrap, once per recipe) and its customisation."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from host.vboard.config import (
    ARCH,
    BUILD_TIMEOUT_S,
    DPKG_OPTS,
    MIRROR,
    NAME,
    PACKAGES,
    SUITE,
    USER,
    Paths,
    VBoardError,
    image_key,
    recipe,
)
from host.vboard.system import _locked, _run, safe_rmtree, unmount_all

# --- the image ---------------------------------------------------------------------------------

def build_image(say: Callable[[str], None] = print) -> Path:
    """The cached arm64 rootfs for the current recipe (built when missing: ~15 min, once)."""
    p = Paths()
    if (p.image / "complete").exists():
        return p.lower
    p.images.mkdir(parents=True, exist_ok=True)
    with _locked(p.images / ".lock"):
        if (p.image / "complete").exists():
            return p.lower
        for stale in p.images.glob(f".tmp-{image_key()}-*"):
            unmount_all(stale, say)  # a killed mmdebstrap can leave its proc/dev mounts behind
            safe_rmtree(stale)
        tmp = p.images / f".tmp-{image_key()}-{os.getpid()}"
        tmp.mkdir()
        log = tmp / "build.log"
        argv = ["mmdebstrap", "--mode=root", f"--arch={ARCH}", "--variant=minbase", "--include=" + ",".join(PACKAGES),
                *(f"--dpkgopt={o}" for o in DPKG_OPTS), "--aptopt=Acquire::Languages \"none\"",
                SUITE, str(tmp / "rootfs"), MIRROR]
        say(f"{NAME}: building the arm64 {SUITE} rootfs (once per recipe; ~15 min on 2 cores; log {log})")
        t0 = time.monotonic()
        with open(log, "wb") as f:
            try:
                rc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                                    timeout=BUILD_TIMEOUT_S).returncode
            except subprocess.TimeoutExpired:
                rc = -1
        unmount_all(tmp, say)
        if rc != 0:
            tail = log.read_text(errors="replace").strip().splitlines()[-3:]
            raise VBoardError(f"mmdebstrap failed (exit {rc}): {' | '.join(tail)}; full log {log}")
        customize_image(tmp / "rootfs")
        (tmp / "recipe.json").write_text(json.dumps(recipe(), indent=1, sort_keys=True))
        (tmp / "complete").write_text(f"{time.monotonic() - t0:.0f} s\n")
        os.rename(tmp, p.image)
        say(f"{NAME}: rootfs built in {(time.monotonic() - t0) / 60:.1f} min → {p.image}")
    return p.lower


def customize_image(rootfs: Path) -> None:
    """The login user (run inside the arm64 chroot, emulated) and the folders sshd wants."""
    if subprocess.run(["chroot", str(rootfs), "id", USER], capture_output=True).returncode != 0:
        try:
            _run(["chroot", str(rootfs), "useradd", "-m", "-s", "/bin/bash", USER])
        except subprocess.CalledProcessError as e:
            raise VBoardError(f"useradd {USER} in the rootfs failed: {e.stderr.strip()}") from None
    # "!" (locked) in /etc/shadow makes sshd refuse a key login when PAM is off; "*": no password, not locked.
    _run(["chroot", str(rootfs), "usermod", "-p", "*", USER])
    for d in ("run/sshd", "etc/rkdeploy"):
        (rootfs / d).mkdir(parents=True, exist_ok=True)

