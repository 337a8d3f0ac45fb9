"""A recording double of rkllm-toolkit, installable as a toolkit "venv" for tests.

``install_fake_toolkit(venvs_root)`` creates ``<venvs_root>/rkllm`` whose ``bin/python`` runs the
current interpreter with a copy of this package first on ``sys.path`` (so ``from rkllm.api import
RKLLM`` imports the fake) and records the toolkit as installed. Point ``RKDEPLOY_VENVS`` at
``venvs_root`` and the builder uses it exactly like a real toolkit venv. Everything built with it
is labelled a test double: the package carries ``RKDEPLOY_TEST_DOUBLE`` (see ``rkllm/__init__.py``).
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

FAKE_DIR = Path(__file__).resolve().parent


def install_fake_toolkit(venvs_root: Path | str, version: str = "1.3.0", python: str | None = None, *,
                         marked: bool = True) -> Path:
    """``<venvs_root>/rkllm``: the double's package in ``lib/python3.X/site-packages`` (as pip would put
    it), a ``bin/python`` that runs ``python`` (default: this interpreter) with that folder on its path,
    and the toolkit recorded as installed.

    ``marked=False`` installs a copy WITHOUT the ``RKDEPLOY_TEST_DOUBLE`` line, standing in for the
    vendor's toolkit in tests of how a real install is labelled; the info file records nothing about
    doubles either way, so the label comes from what is installed.
    """
    import shutil

    from host.toolkits import TEST_DOUBLE_MARKER, record_toolkit

    venv = Path(venvs_root) / "rkllm"
    site = venv / "lib" / (f"python{sys.version_info[0]}.{sys.version_info[1]}" if python is None else "python3") \
        / "site-packages"
    if (site / "rkllm").exists():
        shutil.rmtree(site / "rkllm")
    shutil.copytree(FAKE_DIR / "rkllm", site / "rkllm", ignore=shutil.ignore_patterns("__pycache__"))
    if not marked:
        init = site / "rkllm" / "__init__.py"
        init.write_text("".join(line for line in init.read_text().splitlines(keepends=True)
                                if not line.startswith(TEST_DOUBLE_MARKER)))
    (venv / "bin").mkdir(parents=True, exist_ok=True)
    py = venv / "bin" / "python"
    py.write_text(
        "#!/bin/sh\n"
        f"# rkllm-toolkit {version} stand-in (host/testing/fake_rkllm)\n"
        f"PYTHONPATH={shlex.quote(str(site))} FAKE_RKLLM_VERSION=${{FAKE_RKLLM_VERSION:-{version}}} "
        f"exec {shlex.quote(python or sys.executable)} \"$@\"\n"
    )
    os.chmod(py, 0o755)
    record_toolkit("rkllm", venv, version, python=python or sys.executable)
    return venv


def build_fake_wheel(out_dir: Path | str, version: str = "1.3.0", *, python_tag: str | None = None,
                     requires: tuple[str, ...] = ("torch==2.6.0",)) -> Path:
    """A wheel of the double named like the vendor's (``rkllm_toolkit-<ver>-cp3X-cp3X-linux_x86_64.whl``).

    Its METADATA declares ``requires`` (the vendor pins torch==2.6.0), so ``make setup-rkllm`` can be
    exercised end to end without the vendor wheel.
    """
    import base64
    import hashlib
    import zipfile

    tag = python_tag or f"cp{sys.version_info[0]}{sys.version_info[1]}"
    out = Path(out_dir) / f"rkllm_toolkit-{version}-{tag}-{tag}-linux_x86_64.whl"
    out.parent.mkdir(parents=True, exist_ok=True)
    dist = f"rkllm_toolkit-{version}.dist-info"
    init = (FAKE_DIR / "rkllm" / "__init__.py").read_text().replace(
        'os.environ.get("FAKE_RKLLM_VERSION", "1.3.0")', f'os.environ.get("FAKE_RKLLM_VERSION", "{version}")')
    files = {
        "rkllm/__init__.py": init.encode(),
        "rkllm/api.py": (FAKE_DIR / "rkllm" / "api.py").read_bytes(),
        f"{dist}/METADATA": ("Metadata-Version: 2.1\nName: rkllm-toolkit\nVersion: " + version + "\n"
                             + "".join(f"Requires-Dist: {r}\n" for r in requires)).encode(),
        f"{dist}/WHEEL": f"Wheel-Version: 1.0\nGenerator: rkdeploy-fake\nRoot-Is-Purelib: false\nTag: {tag}-{tag}-linux_x86_64\n".encode(),
    }
    record = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    files[f"{dist}/RECORD"] = ("\n".join(record + [f"{dist}/RECORD,,"]) + "\n").encode()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            z.writestr(name, data)
    return out
