"""Is this runner emulated (qemu-user on another CPU)? Three independent signs, none trusted alone.

- ``qemu``: the executable of this process, read by a forked child (qemu-user hides its own
  mappings and ``exe`` from the emulated process itself, not from another one), or of the parent
  process, is a qemu binary. Hard evidence.
- ``cpuinfo``: the process runs as ARM but ``/proc/cpuinfo`` describes an x86 CPU (qemu-user
  passes the host's cpuinfo through). Hard evidence.
- ``marker``: ``/etc/rkdeploy/virtual-board.json`` — the virtual board's own claim (host/vboard/).

``detect(root)`` returns ``{"arch", "emulated", "emulation": [evidence, ...]}``; ``emulated`` is true
when any sign is present, and the evidence list says which (a marker with no hardware sign, or the
reverse, is visible in every row). Stdlib only, Python >= 3.8.
"""

from __future__ import annotations

import json
import os
import platform
import re
from typing import Any, Dict, List, Optional

MARKER = "etc/rkdeploy/virtual-board.json"
_QEMU = re.compile(r"qemu-[\w.-]+")


def _readlink(path: str) -> Optional[str]:
    try:
        return os.readlink(path)
    except OSError:
        return None


def exe_seen_from_child(pid: int) -> Optional[str]:
    """``/proc/<pid>/exe`` read by a forked child (not intercepted by qemu-user there)."""
    if not hasattr(os, "fork"):
        return None
    r, w = os.pipe()
    try:
        child = os.fork()
    except OSError:
        os.close(r)
        os.close(w)
        return None
    if child == 0:  # pragma: no cover - runs in the child
        try:
            os.close(r)
            os.write(w, (_readlink("/proc/%d/exe" % pid) or "").encode("utf-8", "replace")[:4096])
        finally:
            os._exit(0)
    os.close(w)
    data = b""
    try:
        while True:
            chunk = os.read(r, 4096)
            if not chunk:
                break
            data += chunk
    finally:
        os.close(r)
        os.waitpid(child, 0)
    return data.decode("utf-8", "replace") or None


def _qemu_evidence() -> List[str]:
    out = []
    for who, pid, exe in (("this process", os.getpid(), exe_seen_from_child(os.getpid())),
                          ("its parent", os.getppid(), _readlink("/proc/%d/exe" % os.getppid()))):
        m = _QEMU.search(os.path.basename(exe or ""))
        if m:
            out.append("qemu: %s (pid %d) runs under %s" % (who, pid, exe))
    return out


def _cpuinfo_evidence(root: str, machine: str) -> List[str]:
    if not machine.startswith(("aarch64", "arm")):
        return []
    try:
        with open(os.path.join(root, "proc/cpuinfo"), encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        return []
    vendor = re.search(r"^vendor_id\s*:\s*(.+)$", text, re.M)
    model = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
    if vendor or re.search(r"^flags\s*:.*\b(sse2|avx)\b", text, re.M):
        what = " ".join(x.group(1).strip() for x in (vendor, model) if x) or "x86 flags"
        return ["cpuinfo: the process runs as %s but /proc/cpuinfo describes an x86 CPU (%s)" % (machine, what)]
    return []


def _marker_evidence(root: str) -> List[str]:
    path = os.path.join(root, MARKER)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return []
    if isinstance(data, dict) and data.get("virtual"):
        return ["marker: /%s says virtual board %s (%s)" % (MARKER, data.get("board"), data.get("emulator"))]
    return []


def detect(root: str = "/") -> Dict[str, Any]:
    machine = platform.machine()
    evidence = _marker_evidence(root) + _cpuinfo_evidence(root, machine)
    if os.path.abspath(root) == "/":  # process facts: only for the real root
        evidence += _qemu_evidence()
    return {"arch": machine, "emulated": bool(evidence), "emulation": evidence}
