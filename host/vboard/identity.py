"""The board's fake RK3588 identity (sysfs, device tree through qemu-user's path prefix, the virtual
marker) and its NPU shims cross-compiled for aarch64."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

from host.vboard.config import NAME, QEMU_CPU, RKLLM_ABI, SHIM_LATENCY, SHIM_SOURCES, VBoardError
from host.vboard.system import _run

# --- identity ----------------------------------------------------------------------------------

#: (policy, cpus, core type, MIDR_EL1, max kHz): RK3588 = 4×Cortex-A55 + 2×2 Cortex-A76.
CLUSTERS = (("policy0", (0, 1, 2, 3), "cortex-a55", "0x00000000412fd050", 1800000),
            ("policy4", (4, 5), "cortex-a76", "0x00000000414fd0b0", 2352000),
            ("policy6", (6, 7), "cortex-a76", "0x00000000414fd0b0", 2352000))
THERMAL_ZONES = (("soc-thermal", 41.6), ("bigcore0-thermal", 42.5), ("bigcore1-thermal", 42.5),
                 ("littlecore-thermal", 41.6), ("center-thermal", 40.7), ("gpu-thermal", 40.7), ("npu-thermal", 41.6))
def model(name: str = NAME) -> str:
    """The device tree's model string of board ``name``."""
    return f"rkdeploy {name}: virtual RK3588 (arm64 Debian under qemu-user, NPU libraries are shims)"


MODEL = model()


def write_identity(sys_dir: Path, name: str = NAME) -> None:
    """A fake ``/sys`` of a healthy RK3588 (the paths of ROCKCHIP.md §5 and what onnxruntime's cpuinfo reads)."""

    def w(rel: str, text: str) -> None:
        f = sys_dir / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)

    cpu = "devices/system/cpu/"
    for entry in ("possible", "present", "online"):
        w(cpu + entry, "0-7\n")
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
    w("firmware/devicetree/base/model", model(name) + "\0")


COMPATIBLE = "radxa,rock-5b\0rockchip,rk3588\0"


def write_qemu_prefix(prefix: Path, name: str = NAME) -> None:
    """The files served through ``QEMU_LD_PREFIX``: /proc/device-tree (a link to the devicetree in /sys
    on boards) and a placeholder for the rknpu render node (a plain file: nothing opens it, the shim
    talks to no driver)."""
    dt = prefix / "proc" / "device-tree"
    dt.mkdir(parents=True, exist_ok=True)
    (dt / "compatible").write_text(COMPATIBLE)
    (dt / "model").write_text(model(name) + "\0")
    (prefix / "dev" / "dri").mkdir(parents=True, exist_ok=True)
    (prefix / "dev" / "dri" / "renderD129").write_text("")


def marker(key: str, name: str = NAME) -> dict:
    """``/etc/rkdeploy/virtual-board.json`` on the board: the board's own claim to be virtual."""
    import platform

    return {"board": name, "virtual": True, "emulator": f"qemu-user (binfmt_misc), -cpu {QEMU_CPU}", "host_arch": platform.machine(),
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

