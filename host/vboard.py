"""The virtual RK3588 board ``vrk3588``: arm64 Debian under qemu-user (binfmt_misc), its own sshd.

What runs where::

    ~/.cache/rkdeploy/vboard/images/<key>/rootfs   arm64 Debian (mmdebstrap, built once, ~15 min; read-only
                                                  lower layer; <key> hashes the recipe: suite, packages, script)
    ~/.cache/rkdeploy/vboard/boards/vrk3588/       the board's state: overlay upper (provisioned venv, pushed
                                                  files survive board-down), host/client SSH keys, fake sysfs,
                                                  cross-compiled NPU shims, sshd.pid, sshd.log
    mounts while up (all under boards/vrk3588/root): overlay, proc, dev (bind), sys (the fake RK3588
                                                  identity, read-only bind), tmp and run (tmpfs)

The board's own aarch64 ``sshd`` runs chrooted (every board process is emulated by qemu-aarch64) on
127.0.0.9:2222 with its own host key; the host trusts it through ``rkdeploy boards trust vrk3588``.
Its identity (device tree, 4×A55 + 4×A76 cpufreq policies, devfreq npu/dmc, rknpu 0.9.8, thermal
zones) is a fake sysfs, and ``/etc/rkdeploy/virtual-board.json`` says it is virtual. The NPU
libraries are shims cross-compiled with ``aarch64-linux-gnu-gcc``: ``board/testing/rkllm_shim.c``
as ``librkllmrt.so`` (ABI 1.3.0) and ``board/testing/rknn_shim.c`` as ``librknnrt.so``; their
injected latencies are ``SHIM_LATENCY`` (set for every SSH session through sshd's ``SetEnv``).

``python -m host.vboard up|down|status|purge`` (``make board-up`` / ``make board-down``). Needs root
(mounts, chroot) and the Debian packages in ``HOST_TOOLS``. Stopped by PID; ``down`` kills every
process whose root is the board's root, unmounts everything under it and checks /proc/mounts.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

NAME = "vrk3588"
# Bump when the image build or its customisation changes (it is part of the image key).
SCRIPT_VERSION = 1
SUITE = "bookworm"
ARCH = "arm64"
MIRROR = os.environ.get("RKDEPLOY_VBOARD_MIRROR", "http://deb.debian.org/debian")
# No python3-pip / ca-certificates: the venv's pip comes from python3-venv's bundled wheel and installs
# host-fetched wheels offline; configuring ca-certificates alone costs minutes under emulation.
PACKAGES = ("python3", "python3-venv", "openssh-server", "procps")
DPKG_OPTS = ("path-exclude=/usr/share/man/*", "path-exclude=/usr/share/doc/*", "path-exclude=/usr/share/locale/*",
             "path-include=/usr/share/doc/*/copyright")
ADDRESS, PORT, USER = "127.0.0.9", 2222, "rock"
HOME = f"/home/{USER}"
WORKDIR = f"{HOME}/rkdeploy"
PYTHON = f"{WORKDIR}/venv/bin/python3"
#: Known injected latencies of the NPU shims on this board (every SSH session gets them).
SHIM_LATENCY = {"RKLLM_SHIM_PREFILL_MS": "100", "RKLLM_SHIM_TOKEN_MS": "25"}
#: Call logs of the shims (board paths; /tmp is a fresh tmpfs per board-up).
SHIM_ECHO = {"RKNN_SHIM_ECHO": "/tmp/rknn-shim.jsonl", "RKLLM_SHIM_ECHO": "/tmp/rkllm-shim.jsonl"}
#: Paths a chroot on an x86 kernel cannot have (procfs has no device-tree here, there is no rknpu DRM
#: node) come from qemu-user's path prefix: every emulated open/stat of /X looks in PREFIX/X first.
#: rknn-toolkit-lite2 refuses to start without /proc/device-tree/compatible and /dev/dri/renderD129.
QEMU_PREFIX = "/etc/rkdeploy/qemu-prefix"
RKLLM_ABI = "1.3.0"
#: host command -> Debian package (``make setup-system`` installs the missing ones).
HOST_TOOLS = {"qemu-aarch64-static": "qemu-user-static", "update-binfmts": "binfmt-support",
              "mmdebstrap": "mmdebstrap", "aarch64-linux-gnu-gcc": "gcc-aarch64-linux-gnu"}
CROSS_LIBC_HEADER = Path("/usr/aarch64-linux-gnu/include/stdio.h")  # libc6-dev-arm64-cross
BINFMT = Path("/proc/sys/fs/binfmt_misc")
REPO = Path(__file__).resolve().parents[1]
SHIM_SOURCES = {"librkllmrt.so": REPO / "board" / "testing" / "rkllm_shim.c",
                "librknnrt.so": REPO / "board" / "testing" / "rknn_shim.c"}
BUILD_TIMEOUT_S = 45 * 60
SSHD_START_TIMEOUT_S = 90


class VBoardError(RuntimeError):
    """The virtual board cannot be built, started or stopped; the message says what to do."""


def cache_root() -> Path:
    return Path(os.environ.get("RKDEPLOY_VBOARD_CACHE") or Path.home() / ".cache" / "rkdeploy" / "vboard")


def recipe() -> dict:
    """Everything that changes the base image (its hash is the image key)."""
    return {"suite": SUITE, "arch": ARCH, "variant": "minbase", "packages": sorted(PACKAGES),
            "dpkg_opts": list(DPKG_OPTS), "user": USER, "script_version": SCRIPT_VERSION}


def image_key() -> str:
    return hashlib.sha256(json.dumps(recipe(), sort_keys=True).encode()).hexdigest()[:16]


class Paths:
    """Where one virtual board's image and state live."""

    def __init__(self, name: str = NAME) -> None:
        self.name = name
        self.images = cache_root() / "images"
        self.image = self.images / image_key()
        self.lower = self.image / "rootfs"
        self.state = cache_root() / "boards" / name
        self.root = self.state / "root"          # the overlay mount: the board's /
        self.upper = self.state / "upper"        # the board's changes (venv, pushed files)
        self.work = self.state / "work"
        self.sys = self.state / "sys"            # the fake RK3588 /sys
        self.shims = self.state / "shims"
        self.pidfile = self.state / "sshd.pid"
        self.log = self.state / "sshd.log"
        self.host_key = self.state / "ssh_host_ed25519_key"
        self.client_key = self.state / "client_ed25519"
        self.lock = self.state / "lock"
        self.info = self.state / "board.json"
        self.image_key_file = self.state / "image-key"


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


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    st = Path(f"/proc/{pid}/stat")
    with contextlib.suppress(OSError):
        return st.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return False


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


# --- identity ----------------------------------------------------------------------------------

#: (policy, cpus, core type, MIDR_EL1, max kHz): RK3588 = 4×Cortex-A55 + 2×2 Cortex-A76.
CLUSTERS = (("policy0", (0, 1, 2, 3), "cortex-a55", "0x00000000412fd050", 1800000),
            ("policy4", (4, 5), "cortex-a76", "0x00000000414fd0b0", 2352000),
            ("policy6", (6, 7), "cortex-a76", "0x00000000414fd0b0", 2352000))
THERMAL_ZONES = (("soc-thermal", 41.6), ("bigcore0-thermal", 42.5), ("bigcore1-thermal", 42.5),
                 ("littlecore-thermal", 41.6), ("center-thermal", 40.7), ("gpu-thermal", 40.7), ("npu-thermal", 41.6))
MODEL = f"rkdeploy {NAME}: virtual RK3588 (arm64 Debian under qemu-user, NPU libraries are shims)"


def write_identity(sys_dir: Path) -> None:
    """A fake ``/sys`` of a healthy RK3588 (the paths of ROCKCHIP.md §5 and what onnxruntime's cpuinfo reads)."""

    def w(rel: str, text: str) -> None:
        f = sys_dir / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)

    cpu = "devices/system/cpu/"
    for name in ("possible", "present", "online"):
        w(cpu + name, "0-7\n")
    w(cpu + "kernel_max", "7\n")
    for pol, cpus, _core, midr, khz in CLUSTERS:
        listing = " ".join(map(str, cpus))
        base = cpu + f"cpufreq/{pol}/"
        for f, v in (("scaling_governor", "performance"), ("scaling_available_governors", "userspace performance schedutil"),
                     ("cpuinfo_max_freq", khz), ("cpuinfo_min_freq", 408000), ("scaling_max_freq", khz),
                     ("scaling_min_freq", 408000), ("scaling_cur_freq", khz), ("cpuinfo_cur_freq", khz),
                     ("related_cpus", listing), ("affected_cpus", listing)):
            w(base + f, f"{v}\n")
        for i in cpus:
            c = cpu + f"cpu{i}/"
            w(c + "online", "1\n")
            w(c + "regs/identification/midr_el1", midr + "\n")
            w(c + "topology/physical_package_id", "0\n")
            w(c + "topology/cluster_id", f"{cpus[0]}\n")
            w(c + "topology/core_id", f"{i}\n")
            w(c + "topology/core_siblings_list", f"{cpus[0]}-{cpus[-1]}\n")
            w(c + "topology/cluster_cpus_list", f"{cpus[0]}-{cpus[-1]}\n")
            w(c + "topology/package_cpus_list", "0-7\n")
            w(c + "topology/thread_siblings_list", f"{i}\n")
            os.symlink(f"../cpufreq/{pol}", sys_dir / c / "cpufreq")
    for node, hz, gov in (("fdab0000.npu", 1000000000, "userspace"), ("dmc", 2112000000, "performance")):
        for f, v in (("governor", gov), ("cur_freq", hz), ("max_freq", hz), ("min_freq", hz // 4),
                     ("available_frequencies", f"{hz // 4} {hz // 2} {hz}")):
            w(f"class/devfreq/{node}/{f}", f"{v}\n")
    for i, (zone, c) in enumerate(THERMAL_ZONES):
        w(f"class/thermal/thermal_zone{i}/type", zone + "\n")
        w(f"class/thermal/thermal_zone{i}/temp", f"{int(c * 1000)}\n")
    w("kernel/debug/rknpu/version", "RKNPU driver: v0.9.8\n")
    # No rknpu/load: a virtual NPU has no load to report (rows show none rather than a fake 0 %).
    w("kernel/debug/rknpu/freq", "1000000000\n")
    w("firmware/devicetree/base/compatible", COMPATIBLE)
    w("firmware/devicetree/base/model", MODEL + "\0")


COMPATIBLE = "radxa,rock-5b\0rockchip,rk3588\0"


def write_qemu_prefix(prefix: Path) -> None:
    """The files served through ``QEMU_LD_PREFIX``: /proc/device-tree (a link to the devicetree in /sys
    on boards) and a placeholder for the rknpu render node (a plain file: nothing opens it, the shim
    talks to no driver)."""
    dt = prefix / "proc" / "device-tree"
    dt.mkdir(parents=True, exist_ok=True)
    (dt / "compatible").write_text(COMPATIBLE)
    (dt / "model").write_text(MODEL + "\0")
    (prefix / "dev" / "dri").mkdir(parents=True, exist_ok=True)
    (prefix / "dev" / "dri" / "renderD129").write_text("")


def marker(key: str) -> dict:
    """``/etc/rkdeploy/virtual-board.json`` on the board: the board's own claim to be virtual."""
    import platform

    return {"board": NAME, "virtual": True, "emulator": "qemu-user (binfmt_misc)", "host_arch": platform.machine(),
            "image": key, "soc": "rk3588", "npu": "shims (librknnrt.so, librkllmrt.so): no NPU",
            "shim_latency": SHIM_LATENCY}


# --- shims -------------------------------------------------------------------------------------

def build_shims(out: Path) -> dict[str, Path]:
    """Cross-compile the NPU shims for aarch64 (cached by source hash)."""
    from board.testing.rkllm import SHIM_ABIS

    h = hashlib.sha256()
    for src in SHIM_SOURCES.values():
        h.update(src.read_bytes())
    folder = out / h.hexdigest()[:16]
    libs = {lib: folder / lib for lib in SHIM_SOURCES}
    if all(p.exists() for p in libs.values()):
        return libs
    folder.mkdir(parents=True, exist_ok=True)
    flags = ["-std=c11", "-D_GNU_SOURCE", "-Wall", "-Wextra", "-Werror", "-O2", "-shared", "-fPIC"]
    for lib, src in SHIM_SOURCES.items():
        extra = ["-D" + SHIM_ABIS[RKLLM_ABI]] if lib == "librkllmrt.so" else ["-lm"]
        tmp = folder / (lib + ".tmp")
        try:
            _run(["aarch64-linux-gnu-gcc", *flags, str(src), "-o", str(tmp), *extra])
        except subprocess.CalledProcessError as e:
            raise VBoardError(f"cross-compiling {src.name} failed: {e.stderr.strip()[-500:]}") from None
        os.replace(tmp, libs[lib])
    return libs


# --- ssh -----------------------------------------------------------------------------------------

def _keygen(path: Path) -> None:
    if not path.exists():
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"rkdeploy-{NAME}", "-f", str(path)],
             stdin=subprocess.DEVNULL)


def sshd_config() -> str:
    env = " ".join(f"{k}={v}" for k, v in sorted({**SHIM_LATENCY, **SHIM_ECHO, "QEMU_LD_PREFIX": QEMU_PREFIX}.items()))
    return "\n".join([
        f"Port {PORT}", f"ListenAddress {ADDRESS}",
        "HostKey /etc/ssh/rkdeploy_host_ed25519_key", "PidFile /run/sshd-rkdeploy.pid",
        "AuthorizedKeysFile /etc/ssh/rkdeploy_authorized_keys", f"AllowUsers {USER}",
        "PasswordAuthentication no", "KbdInteractiveAuthentication no", "PubkeyAuthentication yes",
        "UsePAM no", "StrictModes no", "MaxStartups 64", "MaxSessions 64", "LogLevel ERROR",
        "Subsystem sftp internal-sftp", f"SetEnv {env}", "",
    ])


def _listening(timeout: float, proc_pid: int) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(proc_pid):
            return False
        with contextlib.suppress(OSError), socket.create_connection((ADDRESS, PORT), timeout=2) as s:
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
    return {"board": name, "address": f"{USER}@{ADDRESS}:{PORT}", "image_key": image_key(),
            "image_cached": (p.image / "complete").exists(), "pid": pid, "running": bool(pid and _alive(pid)),
            "mounts": mounts_under(p.root), "state": str(p.state), "client_key": str(p.client_key)}


def up(name: str = NAME, say: Callable[[str], None] = print) -> dict:
    """Build (when needed) and start the board; a running board is left as it is. Returns ``status``."""
    check_host()
    p = Paths(name)
    t0 = time.monotonic()
    st = status(name)
    if st["running"] and _listening(10, st["pid"]):  # its image may be older than the recipe: down + up renews
        say(f"{name}: already up ({st['address']}, sshd pid {st['pid']})")
        return st
    build_image(say)
    with _locked(p.lock):
        st = status(name)
        if st["running"] and _listening(10, st["pid"]):
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
            _start(p, key, say)
        except BaseException:
            _down_locked(p, say)
            raise
    st = status(name)
    say(f"{name}: up in {time.monotonic() - t0:.1f} s: ssh {st['address']} (sshd pid {st['pid']}; "
        f"trust it with `rkdeploy boards trust {name}`)")
    return st


def _start(p: Paths, key: str, say: Callable[[str], None]) -> None:
    root = p.root
    _mount("-t", "overlay", "overlay", "-o", f"lowerdir={p.lower},upperdir={p.upper},workdir={p.work}", str(root))
    _mount("-t", "proc", "proc", str(root / "proc"))
    _mount("--bind", "/dev", str(root / "dev"))
    safe_rmtree(p.sys)
    write_identity(p.sys)
    _mount("--bind", str(p.sys), str(root / "sys"))
    _mount("-o", "remount,bind,ro", str(root / "sys"))
    _mount("-t", "tmpfs", "-o", "mode=1777,size=2g", "tmpfs", str(root / "tmp"))
    _mount("-t", "tmpfs", "-o", "mode=0755,size=64m", "tmpfs", str(root / "run"))
    (root / "run" / "sshd").mkdir(mode=0o755, exist_ok=True)
    etc = root / "etc"
    (etc / "rkdeploy").mkdir(exist_ok=True)
    (etc / "rkdeploy" / "virtual-board.json").write_text(json.dumps(marker(key), indent=1) + "\n")
    write_qemu_prefix(root / QEMU_PREFIX.lstrip("/"))
    for lib, src in build_shims(p.shims).items():
        dst = root / "usr" / "lib" / lib
        if not dst.exists() or dst.read_bytes() != src.read_bytes():
            shutil.copyfile(src, dst)
            dst.chmod(0o755)
    _keygen(p.host_key)
    _keygen(p.client_key)
    shutil.copyfile(p.host_key, etc / "ssh" / "rkdeploy_host_ed25519_key")
    (etc / "ssh" / "rkdeploy_host_ed25519_key").chmod(0o600)
    shutil.copyfile(p.client_key.with_name(p.client_key.name + ".pub"), etc / "ssh" / "rkdeploy_authorized_keys")
    (etc / "ssh" / "rkdeploy_sshd_config").write_text(sshd_config())
    log = open(p.log, "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(["chroot", str(root), "/usr/sbin/sshd", "-D", "-e", "-f", "/etc/ssh/rkdeploy_sshd_config"],
                            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "QEMU_LD_PREFIX": QEMU_PREFIX})
    log.close()
    p.pidfile.write_text(f"{proc.pid}\n")
    if not _listening(SSHD_START_TIMEOUT_S, proc.pid):
        tail = p.log.read_text(errors="replace").strip().splitlines()[-3:]
        raise VBoardError(f"the board's sshd did not answer on {ADDRESS}:{PORT} within {SSHD_START_TIMEOUT_S} s: "
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
    """Delete the board's state (venv, pushed files, keys); ``images`` also the cached rootfs."""
    down(name, say)
    p = Paths(name)
    safe_rmtree(p.state)
    if images:
        unmount_all(p.images, say)
        safe_rmtree(p.images)
    say(f"{name}: purged {p.state}" + (f" and {p.images}" if images else ""))


def _main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("up", "down", "status", "purge", "build"):
        print("usage: python -m host.vboard up|down|status|build|purge [--images]", file=sys.stderr)
        return 2
    try:
        if argv[0] == "up":
            up()
        elif argv[0] == "down":
            down()
        elif argv[0] == "build":
            check_host()
            build_image()
        elif argv[0] == "purge":
            purge(images="--images" in argv)
        else:
            print(json.dumps(status(), indent=1))
    except VBoardError as e:
        print(f"rkdeploy: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
