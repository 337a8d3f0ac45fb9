"""Our top-level package names against a foreign ``board`` module (README "Design": package names).

Adafruit Blinka installs a top-level ``board`` module (``board.py``: pin names such as ``board.D4``)
on many single-board computers, Rockchip ones included: exactly our users' boards. These tests run
real interpreters on throw-away folders (nothing is installed).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT

#: What Blinka's ``board.py`` looks like to an importer: module-level pin names.
BLINKA_BOARD = 'board_id = "ROCK_PI_4"\nD4 = 4\nD17 = 17\n'
#: Our installed top-level packages, as pyproject.toml declares them (``host*``, ``board*`` today).
TOP_LEVEL = sorted({p.split(".")[0].rstrip("*") for p in re.findall(
    r'"([^"]+)"', re.search(r"(?m)^include = \[(.*)\]", (ROOT / "pyproject.toml").read_text()).group(1))})
#: The runner's module path: ``board`` today, ``rkdeploy.board`` after the rename.
RUNNER = "rkdeploy.board" if (ROOT / "rkdeploy" / "board" / "__main__.py").is_file() else "board"


def _copy_ours(dest):
    for name in TOP_LEVEL:
        shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))


def _info(*argv, cwd, pythonpath=None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if pythonpath:
        env["PYTHONPATH"] = str(pythonpath)
    p = subprocess.run([sys.executable, *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    return json.loads(p.stdout)


def test_the_deployed_runner_wins_over_a_foreign_board_on_the_path(tmp_path):
    """How the deployer runs it (``python3 -m board`` in the board's runner folder, or the isolated folder
    form): our runner, even when a Blinka ``board`` module is importable there."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "board.py").write_text(BLINKA_BOARD)
    runner = tmp_path / "workdir" / "runner"
    runner.mkdir(parents=True)
    shutil.copytree(ROOT / "board", runner / "board", ignore=shutil.ignore_patterns("__pycache__"))
    info = _info("-m", "board", "info", cwd=runner, pythonpath=site)
    assert info["type"] == "info" and info["runner_version"]
    info = _info("-I", "-S", str(runner / "board"), "info", cwd=tmp_path, pythonpath=site)
    assert info["type"] == "info"


@pytest.mark.xfail(RUNNER == "board", strict=True,
                   reason="`host` and `board` are installed as top-level names: beside Blinka's board.py in one "
                          "site-packages, `import board` finds our package and Blinka's pins are gone; fixed by the "
                          "planned rename to one `rkdeploy` package (README: Design)")
def test_installed_beside_blinka_both_import(tmp_path):
    """pip install rkdeploy on a board that has Blinka: one site-packages holds both. Blinka's ``import board``
    must still give its pins, and our runner must still run from anywhere."""
    site = tmp_path / "site-packages"
    site.mkdir()
    (site / "board.py").write_text(BLINKA_BOARD)
    _copy_ours(site)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    p = subprocess.run([sys.executable, "-S", "-c", f"import sys; sys.path.insert(0, {str(site)!r}); import board; "
                        "print(board.D4)"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stdout.strip() == "4", p.stdout + p.stderr
    assert _info("-m", RUNNER, "info", cwd=tmp_path, pythonpath=site)["type"] == "info"
