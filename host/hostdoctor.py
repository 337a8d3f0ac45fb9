"""``rkdeploy doctor --host``: what this build host has — vendor toolkits (installed? version? where?)
and the facts that change how artifacts are built (GPU for rkllm's grq, x86_64, compilers)."""

from __future__ import annotations

import platform
import shutil
import sys

from host.toolkits import TOOLKITS, toolkit_info, venvs_root


def toolkit_rows() -> list[dict]:
    """One row per vendor toolkit in ``host.toolkits.TOOLKITS``."""
    rows = []
    for name, tk in TOOLKITS.items():
        info = toolkit_info(name)
        if info is None:
            rows.append({"toolkit": tk.dist, "status": "missing", "version": None, "where": str(venvs_root() / name),
                         "notes": f"install: {tk.install_hint}"})
            continue
        notes = []
        if info.get("fake"):
            notes.append("TEST DOUBLE (host/testing), not the vendor toolkit")
        for pin in info.get("pins_overridden") or []:
            notes.append(f"pin overridden: {pin}")
        if info.get("wheel"):
            notes.append(f"from {info['wheel']}")
        rows.append({"toolkit": tk.dist, "status": "installed", "version": info.get("version"),
                     "where": info.get("venv"), "notes": "; ".join(notes)})
    return rows


def host_facts() -> list[dict]:
    from host.build.rkllm import gpu_present

    gpu = gpu_present()
    machine = platform.machine()
    return [
        {"check": "platform", "status": "ok" if machine == "x86_64" and sys.platform.startswith("linux") else "warn",
         "detail": f"{sys.platform} {machine} (rkllm-toolkit needs x86_64 Linux)"},
        {"check": "python", "status": "ok", "detail": platform.python_version()},
        {"check": "gpu", "status": "ok" if gpu else "warn",
         "detail": "CUDA GPU present: w4a16 builds use grq" if gpu else
         "no CUDA GPU: w4a16 builds use 'normal' instead of grq (noted in each manifest)"},
        {"check": "gcc", "status": "ok" if shutil.which("gcc") else "warn",
         "detail": shutil.which("gcc") or "gcc not found (the librkllmrt shim tests compile C)"},
    ]
