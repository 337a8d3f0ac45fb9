"""Fake board filesystems (``proc/`` + ``sys/``) for fingerprint and doctor tests.

``make_rk3588_tree(root)`` writes a healthy RK3588 (Rock 5B-like); keyword arguments break one
thing at a time, the way real boards are broken.
"""

from __future__ import annotations

import os
from typing import Dict, Optional

#: /proc/cpuinfo "Features" of RK3588's Cortex-A55/A76 (ARMv8.2-A: dot product, fp16; no i8mm, no SVE).
RK3588_FEATURES = ("fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop "
                   "asimddp")
#: /proc/cpuinfo of the two x86 host families seen (one CPU each is enough for the fingerprint).
X86_CPUINFO = {
    "amd-zen3": ("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\n"
                 "flags\t\t: fpu sse sse2 ssse3 sse4_1 sse4_2 avx f16c fma bmi2 avx2 sha_ni\n\n"),
    "intel-spr": ("processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Platinum 8481C\n"
                  "flags\t\t: fpu sse sse2 ssse3 sse4_1 sse4_2 avx f16c fma avx2 avx512f avx512bw avx512_vnni "
                  "avx_vnni avx512_bf16 amx_bf16 amx_tile amx_int8\n\n"),
}


def write_cpuinfo(root: str, text: str) -> str:
    """A tree holding only ``proc/cpuinfo`` (host fingerprint tests); returns ``root``."""
    _w(root, "proc/cpuinfo", text)
    return root


def _w(root: str, rel: str, text: str) -> None:
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def make_rk3588_tree(root: str, *, governor: str = "performance", dmc: bool = True, dmc_governor: str = "performance",
                     rknpu_version: Optional[str] = "0.9.8", rknpu_in_proc: bool = False, rocket: bool = False,
                     mem_available_mb: int = 6000, temps_c: Optional[Dict[str, float]] = None,
                     capped_policy: Optional[str] = None, npu_load: Optional[str] = None) -> str:
    """Write the tree and return ``root``."""
    _w(root, "proc/device-tree/compatible", "radxa,rock-5b\x00rockchip,rk3588\x00")
    _w(root, "proc/device-tree/model", "Radxa ROCK 5B\x00")
    _w(root, "proc/sys/kernel/osrelease", "5.10.160-rockchip-rk3588\n")
    cpuinfo = "".join("processor\t: %d\nBogoMIPS\t: 48.00\nFeatures\t: %s\nCPU implementer\t: 0x41\n"
                      "CPU architecture: 8\nCPU part\t: %s\n\n" % (i, RK3588_FEATURES, "0xd05" if i < 4 else "0xd0b")
                      for i in range(8))
    _w(root, "proc/cpuinfo", cpuinfo + "Hardware\t: Rockchip RK3588\n")
    _w(root, "proc/meminfo", "MemTotal:        8039000 kB\nMemFree:         5000000 kB\nMemAvailable:    %d kB\n"
       % (mem_available_mb * 1024))
    for pol, cpus, hw_max in (("policy0", "0 1 2 3", 1800000), ("policy4", "4 5", 2352000), ("policy6", "6 7", 2352000)):
        base = "sys/devices/system/cpu/cpufreq/%s/" % pol
        _w(root, base + "scaling_governor", governor + "\n")
        _w(root, base + "cpuinfo_max_freq", "%d\n" % hw_max)
        _w(root, base + "scaling_max_freq", "%d\n" % (hw_max // 2 if pol == capped_policy else hw_max))
        _w(root, base + "scaling_cur_freq", "%d\n" % hw_max)
        _w(root, base + "related_cpus", cpus + "\n")
    npu = "sys/class/devfreq/fdab0000.npu/"
    _w(root, npu + "governor", "userspace\n")
    _w(root, npu + "cur_freq", "1000000000\n")
    _w(root, npu + "max_freq", "1000000000\n")
    if dmc:
        _w(root, "sys/class/devfreq/dmc/governor", dmc_governor + "\n")
        _w(root, "sys/class/devfreq/dmc/cur_freq", "2112000000\n")
        _w(root, "sys/class/devfreq/dmc/max_freq", "2112000000\n")
    if rknpu_version:
        text = "RKNPU driver: v%s\n" % rknpu_version
        _w(root, "proc/rknpu/version" if rknpu_in_proc else "sys/kernel/debug/rknpu/version", text)
    if npu_load is not None:
        _w(root, "sys/kernel/debug/rknpu/load", npu_load)
    if rocket:
        os.makedirs(os.path.join(root, "sys/module/rocket"), exist_ok=True)
        os.makedirs(os.path.join(root, "sys/bus/platform/drivers/rocket/fdab0000.npu"), exist_ok=True)
    temps = {"soc-thermal": 45.0, "bigcore0-thermal": 46.5, "npu-thermal": 44.0}
    temps.update(temps_c or {})
    for i, (name, c) in enumerate(sorted(temps.items())):
        _w(root, "sys/class/thermal/thermal_zone%d/type" % i, name + "\n")
        _w(root, "sys/class/thermal/thermal_zone%d/temp" % i, "%d\n" % int(c * 1000))
    _w(root, "usr/lib/librknnrt.so", "\x7fELF....librknnrt version: 2.3.0 (c949ad889d@2024-11-07T11:35:33)\x00....")
    _w(root, "usr/lib/librkllmrt.so", "\x7fELF....RKLLM version: 1.2.1\x00....")
    return root
