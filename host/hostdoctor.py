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
        if info.get("test_double"):
            notes.append("TEST DOUBLE (host/testing/fake_rkllm), not the vendor toolkit: what it builds is "
                         "labelled so and runs on no board")
        for pin in info.get("pins_overridden") or []:
            notes.append(f"pin overridden: {pin}")
        if info.get("wheel"):
            notes.append(f"from {info['wheel']}")
        rows.append({"toolkit": tk.dist, "status": "installed", "version": info.get("version"),
                     "where": info.get("venv"), "test_double": bool(info.get("test_double")), "notes": "; ".join(notes)})
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


def arithmetic_facts(root: str = "/", artifacts_root=None) -> list[dict]:
    """How this host's CPU computes int8/fp16 compared with the boards in targets.yaml, and which built
    ONNX artifacts it would compute differently from them. ``root``: where ``proc/cpuinfo`` is read
    (a fake tree in tests)."""
    from board.sysinfo import _cpu, int8_u8s8_exact
    from host.config import load_targets

    cpu = _cpu(root)
    boards = {n: t.cpu for n, t in load_targets().targets.items() if t.cpu}
    facts = [{"check": "cpu", "status": "ok",
              "detail": f"{cpu.get('vendor') or '?'} {cpu.get('model') or '?'} ({cpu.get('arch') or '?'}), "
                        f"ISA: {', '.join(cpu.get('isa') or []) or 'none of the int8/fp16 features'}"}]
    exact = int8_u8s8_exact(cpu)
    if exact is False:
        facts.append({"check": "int8", "status": "warn", "detail": (
            "u8×s8 int8 MatMul saturates here (x86 without VNNI/AMX), the boards accumulate exactly "
            f"({', '.join(boards)}): signed-weight int8 ONNX graphs compute differently here. rkdeploy's int8 "
            "artifacts use unsigned weights (exact on every CPU) and its quality evaluation rewrites signed "
            "ones; other int8 models timed or scored here are not the board's numbers")})
    else:
        facts.append({"check": "int8", "status": "ok",
                      "detail": "int8 MatMul accumulates exactly in int32 here, as on the boards"
                      if exact else "int8 arithmetic of this CPU unknown (no ISA flags read)"})
    facts += [{"check": "artifact", "status": "warn", "detail": d} for d in _signed_int8_artifacts(artifacts_root)
              if exact is False]
    if cpu.get("arch") == "x86_64":
        fp16 = sorted(n for n, c in boards.items() if "asimdhp" in c.isa)
        facts.append({"check": "fp16", "status": "ok", "detail": (
            "fp16 ONNX ops run in float32 here (x86 converts only)"
            + (f"; {', '.join(fp16)} compute some in native fp16 (asimdhp): expect last-digit differences"
               if fp16 else ""))})
    return facts


def _signed_int8_artifacts(root) -> list[str]:
    """Built ONNX artifacts whose int8 weights are signed (built before u8u8, or elsewhere)."""
    from board.manifest import Manifest, ManifestError
    from host.build.int8_format import FORMAT
    from host.plan import artifacts_root

    base = artifacts_root(root)
    out = []
    for mf in sorted(base.glob("*/*/*/manifest.json")) if base.is_dir() else []:
        try:
            m = Manifest.read(str(mf))
        except (ManifestError, OSError):
            continue
        if m.scheme in ("int8-dyn", "int8-qdq") and m.extra.get("int8_weights") != FORMAT:
            out.append(f"{mf.parent}: signed int8 weights, computed differently here than on a board "
                       "(rebuild: rkdeploy export)")
    return out
