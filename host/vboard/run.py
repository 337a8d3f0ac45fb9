"""Start, stop and inspect the virtual board: its chrooted aarch64 sshd (own host key, shim environment),
the overlay and the mounts, ``up`` / ``down`` / ``status`` / ``purge``."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from host.fsutil import atomic_write_text
from host.vboard.config import (
    ADDRESS,
    FIRST_HOST,
    LAST_HOST,
    NAME,
    NAME_RE,
    PORT,
    QEMU_CPU,
    QEMU_PREFIX,
    RKNN_SPECS,
    SHIM_ECHO,
    SHIM_LATENCY,
    SSHD_START_TIMEOUT_S,
    USER,
    Instance,
    Paths,
    VBoardError,
    cache_root,
    image_key,
)
from host.vboard.identity import build_shims, marker, write_identity, write_qemu_prefix
from host.vboard.image import build_image
from host.vboard.system import (
    _alive,
    _locked,
    _mount,
    _run,
    _stop_pids,
    board_pids,
    check_host,
    mounts_under,
    safe_rmtree,
    unmount_all,
)

# --- instances -----------------------------------------------------------------------------------

def _recorded(p: Paths) -> Instance | None:
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        d = json.loads(p.instance.read_text())
        return Instance(p.name, str(d["address"]), int(d["port"]))
    return None


def instance(name: str = NAME, *, allocate: bool = False) -> Instance | None:
    """Where board ``name`` listens: vrk3588 at 127.0.0.9:2222; another name at the address recorded in its
    state folder, or (``allocate``) the lowest 127.0.0.N (N >= 10) no other instance has, recorded now.
    None: never started and not ``allocate``."""
    p = Paths(name)
    if name == NAME:
        return Instance(NAME, ADDRESS, PORT)
    inst = _recorded(p)
    if inst is not None or not allocate:
        return inst
    boards = cache_root() / "boards"
    with _locked(boards / ".instances.lock"):
        inst = _recorded(p)
        if inst is not None:
            return inst
        taken = {ADDRESS} | {i.address for other in boards.iterdir()
                             if other.name != name and NAME_RE.fullmatch(other.name)
                             for i in [_recorded(Paths(other.name))] if i is not None}
        free = next((f"127.0.0.{n}" for n in range(FIRST_HOST, LAST_HOST + 1) if f"127.0.0.{n}" not in taken), None)
        if free is None:
            raise VBoardError(f"no free loopback address for virtual board {name}: 127.0.0.{FIRST_HOST}-{LAST_HOST} "
                              f"are all taken under {boards}; purge one (python -m host.vboard purge --name NAME)")
        inst = Instance(name, free, PORT)
        p.state.mkdir(parents=True, exist_ok=True)
        atomic_write_text(p.instance, json.dumps({"address": inst.address, "port": inst.port}) + "\n")
    return inst


# --- ssh -----------------------------------------------------------------------------------------

def _keygen(path: Path, name: str) -> None:
    if not path.exists():
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"rkdeploy-{name}", "-f", str(path)],
             stdin=subprocess.DEVNULL)


def sshd_config(inst: Instance | None = None) -> str:
    inst = inst or Instance(NAME, ADDRESS, PORT)
    env = " ".join(f"{k}={v}" for k, v in sorted({**SHIM_LATENCY, **SHIM_ECHO, "QEMU_LD_PREFIX": QEMU_PREFIX,
                                                           "QEMU_CPU": QEMU_CPU, "RKNN_SHIM_SPEC": RKNN_SPECS}.items()))
    return "\n".join([
        f"Port {inst.port}", f"ListenAddress {inst.address}",
        "HostKey /etc/ssh/rkdeploy_host_ed25519_key", "PidFile /run/sshd-rkdeploy.pid",
        "AuthorizedKeysFile /etc/ssh/rkdeploy_authorized_keys", f"AllowUsers {USER}",
        "PasswordAuthentication no", "KbdInteractiveAuthentication no", "PubkeyAuthentication yes",
        "UsePAM no", "StrictModes no", "MaxStartups 64", "MaxSessions 64", "LogLevel ERROR",
        "Subsystem sftp internal-sftp", f"SetEnv {env}", "",
    ])


def _listening(inst: Instance, timeout: float, proc_pid: int) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(proc_pid):
            return False
        with contextlib.suppress(OSError), socket.create_connection((inst.address, inst.port), timeout=2) as s:
            s.settimeout(10)
            if s.recv(4).startswith(b"SSH-"):
                return True
        time.sleep(0.2)
    return False


# --- up / down / status ----------------------------------------------------------------------------

def _pid(p: Paths) -> int | None:
    """The board sshd's pid from the pid file, only while that pid really is a process inside the board's
    root (after a host reboot the file survives in the cache and the number may belong to anything)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        pid = int(p.pidfile.read_text().split()[0])
        if os.readlink(f"/proc/{pid}/root") == str(p.root.resolve()):
            return pid
    return None


def status(name: str = NAME) -> dict:
    p = Paths(name)
    pid = _pid(p)
    inst = instance(name)
    return {"board": name, "address": inst.login if inst else None, "image_key": image_key(),
            "image_cached": (p.image / "complete").exists(), "pid": pid, "running": bool(pid and _alive(pid)),
            "mounts": mounts_under(p.root), "state": str(p.state), "client_key": str(p.client_key)}


def up(name: str = NAME, say: Callable[[str], None] = print) -> dict:
    """Build (when needed) and start the board; a running board is left as it is. Returns ``status``."""
    p = Paths(name)
    check_host()
    inst = instance(name, allocate=True)
    t0 = time.monotonic()
    st = status(name)
    if st["running"] and _listening(inst, 10, st["pid"]):  # its image may be older than the recipe: down + up renews
        say(f"{name}: already up ({st['address']}, sshd pid {st['pid']})")
        return st
    build_image(say)
    with _locked(p.lock):
        st = status(name)
        if st["running"] and _listening(inst, 10, st["pid"]):
            say(f"{name}: already up ({st['address']}, sshd pid {st['pid']})")
            return st
        _down_locked(p, lambda m: None)  # leftovers of a crashed run
        key = image_key()
        if not p.image_key_file.exists() or p.image_key_file.read_text().strip() != key:
            for d in (p.upper, p.work):  # the board's changes belong to another image: start clean
                safe_rmtree(d)
        for d in (p.upper, p.work, p.root):
            d.mkdir(parents=True, exist_ok=True)
        p.image_key_file.write_text(key + "\n")
        try:
            _start(p, inst, key, say)
        except BaseException:
            _down_locked(p, say)
            raise
    st = status(name)
    say(f"{name}: up in {time.monotonic() - t0:.1f} s: ssh {st['address']} (sshd pid {st['pid']}; "
        f"trust it with `rkdeploy boards trust {name}`)")
    return st


def _start(p: Paths, inst: Instance, key: str, say: Callable[[str], None]) -> None:
    root = p.root
    _mount("-t", "overlay", "overlay", "-o", f"lowerdir={p.lower},upperdir={p.upper},workdir={p.work}", str(root))
    _mount("-t", "proc", "proc", str(root / "proc"))
    _mount("--bind", "/dev", str(root / "dev"))
    safe_rmtree(p.sys)
    write_identity(p.sys, p.name)
    _mount("--bind", str(p.sys), str(root / "sys"))
    _mount("-o", "remount,bind,ro", str(root / "sys"))
    _mount("-t", "tmpfs", "-o", "mode=1777,size=2g", "tmpfs", str(root / "tmp"))
    _mount("-t", "tmpfs", "-o", "mode=0755,size=64m", "tmpfs", str(root / "run"))
    (root / "run" / "sshd").mkdir(mode=0o755, exist_ok=True)
    etc = root / "etc"
    (etc / "rkdeploy").mkdir(exist_ok=True)
    (etc / "rkdeploy" / "virtual-board.json").write_text(json.dumps(marker(key, p.name), indent=1) + "\n")
    write_qemu_prefix(root / QEMU_PREFIX.lstrip("/"), p.name)
    for lib, src in build_shims(p.shims).items():
        dst = root / "usr" / "lib" / lib
        if not dst.exists() or dst.read_bytes() != src.read_bytes():
            shutil.copyfile(src, dst)
            dst.chmod(0o755)
    _keygen(p.host_key, p.name)
    _keygen(p.client_key, p.name)
    shutil.copyfile(p.host_key, etc / "ssh" / "rkdeploy_host_ed25519_key")
    (etc / "ssh" / "rkdeploy_host_ed25519_key").chmod(0o600)
    shutil.copyfile(p.client_key.with_name(p.client_key.name + ".pub"), etc / "ssh" / "rkdeploy_authorized_keys")
    (etc / "ssh" / "rkdeploy_sshd_config").write_text(sshd_config(inst))
    log = open(p.log, "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(["chroot", str(root), "/usr/sbin/sshd", "-D", "-e", "-f", "/etc/ssh/rkdeploy_sshd_config"],
                            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "QEMU_LD_PREFIX": QEMU_PREFIX,
                                 "QEMU_CPU": QEMU_CPU})
    log.close()
    p.pidfile.write_text(f"{proc.pid}\n")
    if not _listening(inst, SSHD_START_TIMEOUT_S, proc.pid):
        tail = p.log.read_text(errors="replace").strip().splitlines()[-3:]
        raise VBoardError(f"the board's sshd did not answer on {inst.address}:{inst.port} within {SSHD_START_TIMEOUT_S} s: "
                          f"{' | '.join(tail) or 'no log'} (log {p.log})")
    p.info.write_text(json.dumps(status(p.name), indent=1) + "\n")


def down(name: str = NAME, say: Callable[[str], None] = print) -> None:
    """Stop the board's processes by PID and unmount everything under its root."""
    p = Paths(name)
    if not p.state.exists():
        say(f"{name}: not set up")
        return
    with _locked(p.lock):
        _down_locked(p, say)
    say(f"{name}: down (no process, nothing mounted under {p.root})")


def _down_locked(p: Paths, say: Callable[[str], None]) -> None:
    pid = _pid(p)
    pids = board_pids(p.root, pid if pid and _alive(pid) else None) if p.root.exists() else []
    if pids:
        say(f"{p.name}: stopping {len(pids)} board process(es): {' '.join(map(str, pids))}")
        _stop_pids(pids)
    p.pidfile.unlink(missing_ok=True)
    unmount_all(p.root, say)


def purge(name: str = NAME, images: bool = False, say: Callable[[str], None] = print) -> None:
    """Delete the board's state (venv, pushed files, keys); ``images`` also the cached rootfs (refused while
    another instance runs on it: the image is every instance's overlay lower layer)."""
    p = Paths(name)
    if images:
        others = [n for n in running() if n != name]
        if others:
            raise VBoardError(f"not purging the images: virtual board(s) {', '.join(others)} run on them; "
                              f"stop them first (python -m host.vboard down --name NAME)")
    down(name, say)
    safe_rmtree(p.state)
    if images:
        unmount_all(p.images, say)
        safe_rmtree(p.images)
    say(f"{name}: purged {p.state}" + (f" and {p.images}" if images else ""))



def running() -> list[str]:
    """Names of the instances whose sshd runs now (every state folder under the cache)."""
    boards = cache_root() / "boards"
    names = sorted(d.name for d in boards.iterdir() if d.is_dir() and NAME_RE.fullmatch(d.name)) if boards.is_dir() else []
    return [n for n in names if status(n)["running"]]
