"""Environment fingerprint and the doctor checks. Every probe tolerates missing files.

``root`` is the filesystem root to read ``proc/`` and ``sys/`` from ("/" on a board; a fake
RK3588 tree in tests, see ``board.testing.sysfs``).
"""

from __future__ import annotations

import glob
import os
import platform
import re
import shutil
import sys
from typing import Any, Dict, List, Optional, Tuple

from .metrics import NPU_LOAD_PATHS

# rknpu >= 0.9.8 is what rkllm-runtime 1.2/1.3 require (ROCKCHIP.md; older drivers fail at init).
MIN_RKNPU = (0, 9, 8)
GOOD_GOVERNORS = ("performance", "userspace")
RKNPU_VERSION_PATHS = ("sys/kernel/debug/rknpu/version", "proc/rknpu/version", "sys/module/rknpu/version")
LIB_DIRS = ("usr/lib", "usr/lib64", "usr/local/lib", "usr/lib/aarch64-linux-gnu", "lib")
RUNTIME_LIBS = ("librkllmrt.so", "librknnrt.so")
#: The version text a vendor runtime embeds in its .so ("librknnrt version: 2.3.0 (c949ad8@2024-11-07)",
#: "RKLLM version: 1.2.1", "librkllmrt version: v1.3.0", "rkllm-runtime version: 1.2.2"). The ONE pattern:
#: the doctor's fingerprint and the rkllm backend's ABI choice (``lib_semver``) read the same text.
LIB_VERSION = re.compile(rb"(?:librkllmrt|librknnrt|rkllm-runtime|RKLLM|rkllm) version:? *v?([0-9][\w.\-+ ()@:]{0,60})")
_SEMVER = re.compile(r"\d+\.\d+\.\d+")


def _p(root: str, rel: str) -> str:
    return os.path.join(root, rel.lstrip("/"))


def _read(root: str, rel: str) -> Optional[str]:
    try:
        with open(_p(root, rel), encoding="utf-8", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return None


def _int(text: Optional[str]) -> Optional[int]:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _kernel(root: str) -> Optional[str]:
    rel = _read(root, "proc/sys/kernel/osrelease")
    if rel is None and os.path.abspath(root) == "/":
        rel = platform.release()
    return rel


#: ISA features that change which int8/fp16 kernels a runtime picks (onnxruntime's MLAS, llama.cpp,
#: librkllmrt's CPU parts), by the names /proc/cpuinfo gives them.
X86_ISA = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16", "f16c")
ARM_ISA = ("asimd", "asimddp", "i8mm", "asimdhp", "fphp", "bf16", "sve", "sve2")
#: x86 features with an exact u8×s8 dot product into int32 (VPDPBUSD / AMX). Without one, MLAS's U8S8
#: kernels use VPMADDUBSW, which adds pairs of products into int16 and saturates.
X86_EXACT_U8S8 = ("avx512_vnni", "avx_vnni", "amx_int8")


def _isa(text: str, arch: Optional[str]) -> Dict[str, Any]:
    """CPU vendor, architecture and the ISA features of ``X86_ISA``/``ARM_ISA`` present (first CPU's flags)."""
    flags_line = re.search(r"^(?:flags|Features)\s*:\s*(.*)$", text, re.M)
    flags = set(flags_line.group(1).split()) if flags_line else set()
    vendor = re.search(r"^(?:vendor_id|CPU implementer)\s*:\s*(\S+)", text, re.M)
    if arch is None:
        arch = "x86_64" if "vendor_id" in text else ("aarch64" if "CPU implementer" in text else None)
    known = X86_ISA if arch in ("x86_64", "i686", "AMD64") else ARM_ISA if arch in ("aarch64", "arm64") else ()
    return {"arch": arch, "vendor": vendor.group(1) if vendor else None,
            "isa": [f for f in known if f in flags] if flags else None}


def int8_u8s8_exact(cpu: Dict[str, Any]) -> Optional[bool]:
    """Whether onnxruntime's u8×s8 int8 MatMul accumulates exactly in int32 on this CPU (None: unknown).

    ARM (dot-product or widening NEON kernels) and x86 with VNNI/AMX: exact. Other x86 (AVX2, AVX-512
    without VNNI, SSE): pairs of products saturate in int16, so an int8 artifact with signed weights
    computes something else here than on a board. rkdeploy builds unsigned weights (exact everywhere).
    """
    arch, isa = cpu.get("arch"), cpu.get("isa")
    if arch in ("aarch64", "arm64"):
        return True
    if arch in ("x86_64", "i686", "AMD64") and isa is not None:
        return any(f in isa for f in X86_EXACT_U8S8)
    return None


def _cpu(root: str) -> Dict[str, Any]:
    text = _read(root, "proc/cpuinfo") or ""
    model = None
    for key in ("model name", "Hardware", "Model"):
        m = re.search(r"^%s\s*:\s*(.+)$" % key, text, re.M)
        if m:
            model = m.group(1).strip()
            break
    parts = sorted(set(re.findall(r"^CPU part\s*:\s*(\S+)", text, re.M)))
    cores = len(re.findall(r"^processor\s*:", text, re.M)) or None
    if cores is None and os.path.abspath(root) == "/":
        cores = os.cpu_count()
    isa = _isa(text, platform.machine() if os.path.abspath(root) == "/" else None)
    return {"model": model, "cores": cores, "parts": parts or None, **isa,
            "soc": (_devicetree(root, "compatible") or "").replace("\x00", " ").strip() or None,
            "board_model": (_devicetree(root, "model") or "").replace("\x00", "").strip() or None}


def _devicetree(root: str, name: str) -> Optional[str]:
    """/proc/device-tree links to /sys/firmware/devicetree/base on boards: read either."""
    return _read(root, "proc/device-tree/" + name) or _read(root, "sys/firmware/devicetree/base/" + name)


def cpufreq(root: str) -> Dict[str, Dict[str, Any]]:
    out = {}
    for d in sorted(glob.glob(_p(root, "sys/devices/system/cpu/cpufreq/policy*"))):
        name = os.path.basename(d)
        rel = os.path.relpath(d, root)
        out[name] = {
            "governor": _read(root, rel + "/scaling_governor"),
            "cur_khz": _int(_read(root, rel + "/scaling_cur_freq")),
            "max_khz": _int(_read(root, rel + "/scaling_max_freq")),
            "hw_max_khz": _int(_read(root, rel + "/cpuinfo_max_freq")),
            "cpus": _read(root, rel + "/related_cpus"),
        }
    return out


def _devfreq(root: str) -> Dict[str, Dict[str, Any]]:
    out = {}
    for d in sorted(glob.glob(_p(root, "sys/class/devfreq/*"))):
        rel = os.path.relpath(d, root)
        out[os.path.basename(d)] = {
            "governor": _read(root, rel + "/governor"),
            "cur_hz": _int(_read(root, rel + "/cur_freq")),
            "max_hz": _int(_read(root, rel + "/max_freq")),
        }
    return out


def _thermal(root: str) -> Dict[str, Optional[float]]:
    out = {}
    for d in sorted(glob.glob(_p(root, "sys/class/thermal/thermal_zone*"))):
        rel = os.path.relpath(d, root)
        t = _int(_read(root, rel + "/temp"))
        out[_read(root, rel + "/type") or os.path.basename(d)] = t / 1000.0 if t is not None else None
    return out


def rknpu_version(root: str) -> Optional[str]:
    for rel in RKNPU_VERSION_PATHS:
        text = _read(root, rel)
        if text:
            m = re.search(r"(\d+\.\d+\.\d+)", text)
            if m:
                return m.group(1)
    return None


def rocket_bound(root: str) -> bool:
    """The mainline ``rocket`` NPU driver is loaded/bound (then the vendor runtimes cannot work)."""
    drv = _p(root, "sys/bus/platform/drivers/rocket")
    if os.path.isdir(drv) and any(":" in n or "." in n for n in os.listdir(drv)):
        return True
    return os.path.isdir(_p(root, "sys/module/rocket"))


def _runtime_libs(root: str) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for lib in RUNTIME_LIBS:
        out[lib] = None
        for d in LIB_DIRS:
            path = _p(root, d + "/" + lib)
            if os.path.isfile(path):
                out[lib] = {"path": "/" + d + "/" + lib, "version": lib_version(path)}
                break
    return out


def lib_version(path: str) -> Optional[str]:
    """The runtime's version text embedded in the library file (``LIB_VERSION``); None when not found."""
    try:
        with open(path, "rb") as f:
            m = LIB_VERSION.search(f.read(64 * 1024 * 1024))
    except OSError:
        return None
    return m.group(1).decode("ascii", "replace").strip() if m else None


def lib_semver(path: str) -> Optional[str]:
    """``X.Y.Z`` at the start of ``lib_version(path)`` (what an ABI table is keyed by); None otherwise."""
    m = _SEMVER.match(lib_version(path) or "")
    return m.group() if m else None


def _meminfo(root: str) -> Dict[str, Optional[int]]:
    text = _read(root, "proc/meminfo") or ""
    vals = {}
    for key in ("MemTotal", "MemAvailable"):
        m = re.search(r"^%s:\s*(\d+)" % key, text, re.M)
        vals[key] = int(m.group(1)) // 1024 if m else None
    return {"total_mb": vals["MemTotal"], "available_mb": vals["MemAvailable"]}


def _disk_free_mb(path: str) -> Optional[int]:
    try:
        return shutil.disk_usage(path).free // (1024 * 1024)
    except OSError:
        return None


def _package_versions() -> Dict[str, Optional[str]]:
    names = ("onnxruntime", "onnxruntime-genai", "numpy", "rknn-toolkit-lite2")
    out: Dict[str, Optional[str]] = {n: None for n in names}
    try:
        from importlib import metadata
    except ImportError:  # Python < 3.8 never gets here (we require 3.8), kept defensive
        return out
    for n in names:
        try:
            out[n] = metadata.version(n)
        except Exception:  # noqa: BLE001 - any metadata failure just means "unknown"
            out[n] = None
    return out


def is_rockchip(root: str) -> bool:
    compat = (_devicetree(root, "compatible") or "").lower()
    return ("rockchip" in compat or rknpu_version(root) is not None
            or any(n.endswith(".npu") for n in _devfreq(root)))


def fingerprint(root: str = "/") -> Dict[str, Any]:
    """Everything that changes a benchmark number, as one JSON-able dict."""
    from .emulation import detect

    return {
        **detect(root),  # arch, emulated (qemu-user), emulation (its evidence)
        "kernel": _kernel(root),
        "cpu": _cpu(root),
        "cpufreq": cpufreq(root),
        "devfreq": _devfreq(root),
        "thermal_c": _thermal(root),
        "rknpu_version": rknpu_version(root),
        "rocket_bound": rocket_bound(root),
        "runtime_libs": _runtime_libs(root),
        "python": platform.python_version(),
        "packages": _package_versions(),
        "mem": _meminfo(root),
        "disk_free_mb": _disk_free_mb(root if os.path.abspath(root) != "/" else os.getcwd()),
        "npu_load_readable": any(os.access(_p(root, r), os.R_OK) for r in NPU_LOAD_PATHS),
        "platform": sys.platform,
    }


# --- doctor ----------------------------------------------------------------------------------

class Check:
    def __init__(self, name: str, status: str, message: str, fix: str = "") -> None:
        assert status in ("ok", "warn", "fail", "skip")
        self.name, self.status, self.message, self.fix = name, status, message, fix

    def line(self) -> str:
        text = "%-4s %-10s %s" % (self.status, self.name, self.message)
        return text + (" — fix: " + self.fix if self.fix else "")

    def to_dict(self) -> Dict[str, str]:
        return {"name": self.name, "status": self.status, "message": self.message, "fix": self.fix}


def _vtuple(v: str) -> Tuple[int, ...]:
    return tuple(int(x) for x in v.split("."))


def _check_governor(fp: Dict[str, Any]) -> Check:
    pol = fp["cpufreq"]
    if not pol:
        return Check("governor", "warn", "no cpufreq policies found (cannot pin CPU clocks)")
    bad = {k: v["governor"] for k, v in pol.items() if v["governor"] not in GOOD_GOVERNORS}
    if bad:
        return Check("governor", "warn", "CPU governor %s; benchmarks need performance or userspace at max"
                     % ", ".join("%s=%s" % kv for kv in sorted(bad.items())),
                     "echo performance | sudo tee /sys/devices/system/cpu/cpufreq/policy*/scaling_governor")
    return Check("governor", "ok", "CPU governors: %s" % ", ".join(sorted({v["governor"] for v in pol.values()})))


def _check_ddr(fp: Dict[str, Any], rk: bool) -> Check:
    if not rk:
        return Check("ddr", "skip", "not a Rockchip SoC")
    dmc = fp["devfreq"].get("dmc")
    if dmc is None:
        return Check("ddr", "fail", "DDR devfreq node /sys/class/devfreq/dmc missing — the known cause of "
                     "about half-speed decode (DDR stuck at a low rate)",
                     "boot a vendor bootloader/kernel with the dmc node enabled (DDR devfreq), then pin it: "
                     "echo performance | sudo tee /sys/class/devfreq/dmc/governor")
    if dmc["governor"] not in GOOD_GOVERNORS:
        return Check("ddr", "warn", "DDR devfreq governor %s (rate can drop during decode)" % dmc["governor"],
                     "echo performance | sudo tee /sys/class/devfreq/dmc/governor")
    return Check("ddr", "ok", "DDR devfreq dmc governor %s at %s Hz" % (dmc["governor"], dmc["cur_hz"]))


def _check_npu_driver(fp: Dict[str, Any], rk: bool) -> Check:
    if not rk:
        return Check("rknpu", "skip", "not a Rockchip SoC")
    v = fp["rknpu_version"]
    if v is None:
        return Check("rknpu", "fail", "rknpu driver not found (no /sys/kernel/debug/rknpu/version or /proc/rknpu/version)",
                     "use the vendor (BSP) kernel with the rknpu driver >= %s; mount debugfs (sudo mount -t debugfs none "
                     "/sys/kernel/debug) and run doctor as root" % ".".join(map(str, MIN_RKNPU)))
    if _vtuple(v) < MIN_RKNPU:
        return Check("rknpu", "fail", "rknpu driver %s < %s (rkllm/rknn runtimes need it)" % (v, ".".join(map(str, MIN_RKNPU))),
                     "update the board kernel/BSP image to one with rknpu >= %s" % ".".join(map(str, MIN_RKNPU)))
    return Check("rknpu", "ok", "rknpu driver %s" % v)


def _check_rocket(fp: Dict[str, Any]) -> Check:
    if fp["rocket_bound"]:
        return Check("rocket", "fail", "mainline 'rocket' NPU driver is bound; librkllmrt/librknnrt need the vendor rknpu driver",
                     "blacklist rocket (echo 'blacklist rocket' | sudo tee /etc/modprobe.d/rocket.conf) and boot the vendor kernel")
    return Check("rocket", "ok", "mainline rocket driver not bound")


def _check_ram(fp: Dict[str, Any], artifact_mb: Optional[float]) -> Check:
    avail = fp["mem"]["available_mb"]
    if avail is None:
        return Check("ram", "warn", "cannot read MemAvailable from /proc/meminfo")
    if artifact_mb is None:
        return Check("ram", "ok", "%d MB available" % avail)
    need = artifact_mb * 1.2 + 100  # weights + runtime overhead (KV cache, activations, runtime)
    if avail < need:
        return Check("ram", "fail", "%d MB available, artifact needs about %d MB (%.0f MB of files)" % (avail, need, artifact_mb),
                     "stop other processes, use a smaller scheme (w4a16) or a board with more RAM")
    if avail < need * 1.5:
        return Check("ram", "warn", "%d MB available, artifact needs about %d MB: tight" % (avail, need))
    return Check("ram", "ok", "%d MB available, artifact needs about %d MB" % (avail, need))


THROTTLE_C = 80.0  # RK3588/RK3576 start throttling around 85 °C; warn a little earlier


def _check_thermal(fp: Dict[str, Any]) -> Check:
    hot = {k: v for k, v in fp["thermal_c"].items() if v is not None and v >= THROTTLE_C}
    capped = {k: v for k, v in fp["cpufreq"].items()
              if v["max_khz"] and v["hw_max_khz"] and v["max_khz"] < v["hw_max_khz"]}
    if hot:
        return Check("thermal", "warn", "thermal throttling: %s" % ", ".join("%s %.0f°C" % kv for kv in sorted(hot.items())),
                     "add a heatsink/fan and let the board cool before benchmarking")
    if capped:
        return Check("thermal", "warn", "CPU max frequency capped below hardware max on %s (thermal or user limit)"
                     % ", ".join(sorted(capped)),
                     "cat /sys/devices/system/cpu/cpufreq/policy*/cpuinfo_max_freq | sudo tee .../scaling_max_freq")
    temps = [v for v in fp["thermal_c"].values() if v is not None]
    return Check("thermal", "ok", "max temperature %.0f°C" % max(temps) if temps else "no thermal zones readable")


def doctor(root: str = "/", artifact_mb: Optional[float] = None, fp: Optional[Dict[str, Any]] = None) -> List[Check]:
    fp = fp or fingerprint(root)
    rk = is_rockchip(root)
    return [_check_governor(fp), _check_ddr(fp, rk), _check_npu_driver(fp, rk), _check_rocket(fp),
            _check_ram(fp, artifact_mb), _check_thermal(fp)]
