"""``make setup-rkllm WHEEL=...``: rkllm-toolkit in its own venv (``.venvs/rkllm``), idempotent.

The vendor wheel is not on PyPI; the user downloads it from the vendor's rknn-llm release. Its
pins clash with ours (v1.3.0: torch==2.6.0, transformers==5.8.0, numpy<=1.26.4, …), so:

1. a venv with the interpreter the wheel is built for (``cp311`` → ``python3.11``);
2. torch **2.13.0** (the local CPU wheel when one matches; never another torch): the wheel's own
   torch pin is *overridden* and recorded as such — if the toolkit misbehaves with 2.13.0, it
   needs its pinned torch installed into ``.venvs/rkllm`` by hand (the message says which);
3. the wheel itself with ``--no-deps``, then every other pin it declares, resolved with torch
   held at 2.13.0 (a constraints file);
4. ``from rkllm.api import RKLLM`` must import; the version is recorded with
   ``host.toolkits.record_toolkit`` (``rkdeploy doctor --host`` shows it), and so is whether the
   imported package is rkdeploy's test double (its ``RKDEPLOY_TEST_DOUBLE`` marker): a wheel of
   ``host/testing/fake_rkllm`` stays labelled as a double, with no flag to remember.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from host.errors import RkdeployError, ToolkitMissingError

TORCH = "2.13.0"
_PROBE_PREFIX = "RKDEPLOY_PROBE "
# Run in the new venv: the toolkit must import; its version, and the test double's marker
# (host.toolkits.TEST_DOUBLE_MARKER) read from the package it imported. One prefixed JSON line,
# whatever the toolkit prints on import.
_PROBE = ("import json, rkllm; from rkllm.api import RKLLM; from importlib import metadata; "
          "print('" + _PROBE_PREFIX + "' + json.dumps({'version': metadata.version('rkllm-toolkit'), "
          "'test_double': getattr(rkllm, 'RKDEPLOY_TEST_DOUBLE', None)}))")
_WHEEL = re.compile(r"^(?P<dist>rkllm_toolkit)-(?P<ver>[^-]+)-(?P<py>cp3\d+)-[^-]+-(?P<plat>[^-]+)\.whl$")
_REQ = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*(.*)$")


def parse_wheel_name(path: Path) -> dict:
    m = _WHEEL.match(path.name)
    if not m:
        raise RkdeployError(f"{path.name}: not an rkllm-toolkit wheel name (expected rkllm_toolkit-<ver>-cp3X-cp3X-"
                            "linux_x86_64.whl from the vendor's rknn-llm release, folder rkllm-toolkit/)")
    if "x86_64" not in m.group("plat"):
        raise RkdeployError(f"{path.name}: rkllm-toolkit runs on x86_64 Linux only (wheel platform {m.group('plat')})")
    py = m.group("py")
    return {"version": m.group("ver"), "python": f"{py[2]}.{py[3:]}"}


def wheel_requirements(path: Path) -> list[str]:
    """``Requires-Dist`` lines of the wheel (environment markers dropped when they do not apply)."""
    with zipfile.ZipFile(path) as z:
        meta = next((n for n in z.namelist() if n.endswith(".dist-info/METADATA")), None)
        if meta is None:
            raise RkdeployError(f"{path}: no .dist-info/METADATA inside (corrupt wheel?)")
        text = z.read(meta).decode("utf-8", "replace")
    reqs = []
    for line in text.splitlines():
        if line.startswith("Requires-Dist:"):
            req = line.split(":", 1)[1].strip()
            if "extra ==" in req:
                continue
            reqs.append(req.split(";")[0].strip())
    return reqs


def plan_requirements(reqs: list[str]) -> tuple[list[str], list[str]]:
    """(requirements to install, pins overridden). torch is held at 2.13.0 and never installed from a pin."""
    install, overridden = [], []
    for r in reqs:
        m = _REQ.match(r)
        if not m:
            continue
        name = m.group(1).lower().replace("_", "-")
        if name == "torch":
            if m.group(2).strip() and m.group(2).replace(" ", "") != f"=={TORCH}":
                overridden.append(f"{r.replace(' ', '')} (using torch=={TORCH})")
            continue
        install.append(r)
    return install, overridden


def _python_ok(path: str, version: str) -> bool:
    """``path`` runs and is CPython ``version`` (pyenv shims exist for versions that are not active)."""
    try:
        res = subprocess.run([path, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], capture_output=True,
                             text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return res.returncode == 0 and res.stdout.strip() == version


def find_python(version: str) -> str:
    """An interpreter for CPython ``version``: $RKLLM_PYTHON, pythonX.Y on PATH, or a pyenv install."""
    import glob
    import os

    cands = [os.environ.get("RKLLM_PYTHON"), shutil.which(f"python{version}"),
             sys.executable if f"{sys.version_info[0]}.{sys.version_info[1]}" == version else None]
    root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    cands += sorted(glob.glob(os.path.join(root, "versions", f"{version}.*", "bin", f"python{version}")), reverse=True)
    for c in cands:
        if c and _python_ok(c, version):
            return c
    raise RkdeployError(f"the wheel is built for CPython {version} but no working python{version} was found; install "
                        f"it (e.g. apt-get install python{version}-venv), set RKLLM_PYTHON, or use the wheel built "
                        "for your Python")


def local_torch_wheel(version: str) -> str | None:
    """A torch 2.13.0 CPU wheel for CPython ``version`` in the pip find-links folders, if any."""
    import glob
    import os

    tag = "cp" + version.replace(".", "")
    for folder in (os.environ.get("PIP_FIND_LINKS") or "/opt/wheels").split():
        hits = glob.glob(os.path.join(folder.removeprefix("file://"), f"torch-{TORCH}*cpu*-{tag}-{tag}-*.whl"))
        if hits:
            return sorted(hits)[-1]
    return None


def _run(cmd: list[str], what: str) -> None:
    print(f"setup-rkllm: {what}", flush=True)
    res = subprocess.run(cmd, text=True)
    if res.returncode != 0:
        raise RkdeployError(f"setup-rkllm: {what} failed (exit {res.returncode}): {' '.join(cmd)}")


def setup(wheel: Path, *, venvs: Path | None = None, skip_torch: bool = False, force: bool = False) -> dict:
    from host.fsutil import sha256_file
    from host.toolkits import INFO_FILE, TOOLKITS, record_toolkit, venvs_root

    wheel = Path(wheel).expanduser().resolve()
    if not wheel.is_file():
        raise ToolkitMissingError(f"{wheel}: wheel not found; download rkllm_toolkit-<ver>-cp3X-...whl from the "
                                  f"vendor's rknn-llm release and run: {TOOLKITS['rkllm'].install_hint}")
    meta = parse_wheel_name(wheel)
    digest = sha256_file(wheel)
    venv = Path(venvs or venvs_root()) / "rkllm"
    try:
        info = json.loads((venv / INFO_FILE).read_text())
    except (OSError, ValueError):
        info = None
    if info and info.get("wheel_sha256") == digest and not force:
        print(f"setup-rkllm: {venv} is up to date (rkllm-toolkit {info.get('version')})")
        return info
    python = find_python(meta["python"])
    if venv.exists():
        shutil.rmtree(venv)
    _run([python, "-m", "venv", str(venv)], f"creating {venv} with Python {meta['python']}")
    py = str(venv / "bin" / "python")
    pip = [py, "-m", "pip", "--disable-pip-version-check", "-q"]
    install, overridden = plan_requirements(wheel_requirements(wheel))
    with tempfile.TemporaryDirectory() as tmp:
        constraints = Path(tmp) / "constraints.txt"
        constraints.write_text("" if skip_torch else f"torch=={TORCH}\n")
        if not skip_torch:
            local = local_torch_wheel(meta["python"])
            if local is None:
                print(f"setup-rkllm: note: no local torch {TORCH} CPU wheel for CPython {meta['python']} in "
                      "$PIP_FIND_LINKS; pip takes torch from the index (for Linux that is the large CUDA build)")
            _run(pip + ["install", f"torch=={TORCH}"], f"torch {TORCH} ({local or 'from the index'})")
        _run(pip + ["install", "--no-deps", str(wheel)], f"{wheel.name} (--no-deps)")
        if install:
            _run(pip + ["install", "-c", str(constraints), *install], f"its pinned dependencies: {' '.join(install)}")
    probe = subprocess.run([py, "-c", _PROBE], capture_output=True, text=True)
    found = [ln[len(_PROBE_PREFIX):] for ln in probe.stdout.splitlines() if ln.startswith(_PROBE_PREFIX)]
    if probe.returncode != 0 or not found:
        tail = (probe.stderr.strip().splitlines() or ["?"])[-1]
        hint = (f"; the wheel pins {', '.join(o.split(' ')[0] for o in overridden)} — install that torch into {venv} "
                "by hand and rerun") if overridden else ""
        raise RkdeployError(f"setup-rkllm: `from rkllm.api import RKLLM` fails in {venv}: {tail}{hint}")
    facts = json.loads(found[-1])
    version = facts["version"] or meta["version"]
    extra = {"wheel": str(wheel), "wheel_sha256": digest, "python": meta["python"], "pins_overridden": overridden,
             "torch": None if skip_torch else TORCH, "test_double": bool(facts["test_double"])}
    record_toolkit("rkllm", venv, version, **extra)
    for o in overridden:
        print(f"setup-rkllm: note: pin {o}: if the toolkit misbehaves, it needs that exact torch in {venv}")
    if extra["test_double"]:
        print(f"setup-rkllm: note: {wheel.name} is rkdeploy's TEST DOUBLE ({facts['test_double']}): doctor, "
              "manifests and rows label everything built with it; its .rkllm files run on no board")
    print(f"setup-rkllm: rkllm-toolkit {version} ready in {venv}" + (" (test double)" if extra["test_double"] else ""))
    return {"name": "rkllm", "version": version, **extra}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="setup-rkllm", description=__doc__.splitlines()[0])
    p.add_argument("wheel", type=Path, help="rkllm_toolkit-<ver>-cp3X-cp3X-linux_x86_64.whl")
    p.add_argument("--venvs", type=Path, default=None, help="venvs root (default .venvs or $RKDEPLOY_VENVS)")
    p.add_argument("--skip-torch", action="store_true", help="do not install torch (tests, or a toolkit without it)")
    p.add_argument("--force", action="store_true", help="recreate the venv even when up to date")
    a = p.parse_args(argv)
    try:
        setup(a.wheel, venvs=a.venvs, skip_torch=a.skip_torch, force=a.force)
    except RkdeployError as e:
        print(f"rkdeploy: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
