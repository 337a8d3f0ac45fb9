"""A recording double of rkllm-toolkit, installable as a toolkit "venv" for tests.

``install_fake_toolkit(venvs_root)`` creates ``<venvs_root>/rkllm`` whose ``bin/python`` runs the
current interpreter with this folder first on ``sys.path`` (so ``from rkllm.api import RKLLM``
imports the fake) and records the toolkit as installed. Point ``RKDEPLOY_VENVS`` at
``venvs_root`` and the builder uses it exactly like a real toolkit venv.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

FAKE_DIR = Path(__file__).resolve().parent


def install_fake_toolkit(venvs_root: Path | str, version: str = "1.3.0", python: str | None = None) -> Path:
    from host.toolkits import record_toolkit

    venv = Path(venvs_root) / "rkllm"
    (venv / "bin").mkdir(parents=True, exist_ok=True)
    py = venv / "bin" / "python"
    py.write_text(
        "#!/bin/sh\n"
        f"# fake rkllm-toolkit {version} (host/testing/fake_rkllm)\n"
        f"PYTHONPATH={shlex.quote(str(FAKE_DIR))} FAKE_RKLLM_VERSION=${{FAKE_RKLLM_VERSION:-{version}}} "
        f"exec {shlex.quote(python or sys.executable)} \"$@\"\n"
    )
    os.chmod(py, 0o755)
    record_toolkit("rkllm", venv, version, fake=True, python=python or sys.executable)
    return venv
