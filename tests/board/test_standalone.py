"""board/ runs alone: copied into an empty folder, stdlib only (-I -S), Python 3.8 syntax.

Isolated mode (-I) never puts the current folder on sys.path, so ``python3 -I -S -m board`` cannot
resolve ``board`` on any Python; the isolated form is ``python3 -I -S board CMD`` (the folder runs its
``__main__.py``). ``-m board`` is checked with -E -s -S (no site-packages, no env) from the folder.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from board.testing.artifacts import write_fake_artifact
from board.testing.sysfs import make_rk3588_tree
from tests.conftest import ROOT

PY = shutil.which("python3") or sys.executable
# The oldest Python the board side supports, when this machine has it (pyenv ships 3.8 here).
PY38 = next((str(p) for p in sorted(Path("/root/.pyenv/versions").glob("3.8*/bin/python3.8"))), None) \
    or shutil.which("python3.8")


@pytest.fixture(scope="module")
def lone_board(tmp_path_factory):
    base = tmp_path_factory.mktemp("lone")
    shutil.copytree(ROOT / "board", base / "board", ignore=shutil.ignore_patterns("__pycache__"))
    return base


def isolated(cwd, *args):
    return subprocess.run([PY, "-I", "-S", "board", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=60)


def stdlib_m(cwd, *args):
    return subprocess.run([PY, "-E", "-s", "-S", "-m", "board", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=60)


def test_doctor_runs_with_stdlib_only(lone_board, tmp_path):
    p = isolated(lone_board, "doctor")
    assert p.returncode in (0, 1), p.stderr
    assert "Traceback" not in p.stderr and len(p.stdout.splitlines()) == 6
    root = make_rk3588_tree(str(tmp_path / "root"))
    p = isolated(lone_board, "doctor", "--sysfs-root", root)
    assert p.returncode == 0, p.stdout + p.stderr
    p = stdlib_m(lone_board, "doctor", "--sysfs-root", root)
    assert p.returncode == 0, p.stdout + p.stderr


def test_bench_help_and_fake_bench_with_stdlib_only(lone_board, tmp_path):
    for run in (isolated, stdlib_m):
        p = run(lone_board, "bench", "--help")
        assert p.returncode == 0 and "--n-prompt" in p.stdout and "--backend" in p.stdout
    art = write_fake_artifact(str(tmp_path / "a"), prefill_ms=5, token_ms=1)
    p = isolated(lone_board, "bench", "--artifact", art, "--backend", "fake", "--n-gen", 4, "--reps", 2)
    assert p.returncode == 0, p.stderr
    hello, row = [json.loads(x) for x in p.stdout.splitlines()]
    assert hello["type"] == "hello" and row["status"] == "ok"
    assert row["env"]["packages"]["onnxruntime"] is None  # nothing outside the stdlib was importable


def test_onnxruntime_backend_reports_unavailable_without_the_wheel(lone_board, tmp_path):
    art = write_fake_artifact(str(tmp_path / "a"), extra={"format": "onnx-genai"})
    p = isolated(lone_board, "bench", "--artifact", art, "--backend", "onnxruntime", "--reps", 1)
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert "onnxruntime does not import" in p.stderr
    info = json.loads(isolated(lone_board, "info").stdout)
    assert info["backends"]["onnxruntime"]["available"] is False and info["backends"]["fake"]["available"] is True


@pytest.mark.skipif(PY38 is None, reason="no python3.8 on this machine")
def test_runs_on_python_3_8(lone_board, tmp_path):
    art = write_fake_artifact(str(tmp_path / "a"), prefill_ms=5, token_ms=1)
    root = make_rk3588_tree(str(tmp_path / "root"))
    env = {"PATH": "/usr/bin:/bin", "PYENV_VERSION": "3.8"}
    p = subprocess.run([PY38, "-I", "-S", "board", "doctor", "--sysfs-root", root], cwd=lone_board, env=env,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    p = subprocess.run([PY38, "-I", "-S", "board", "bench", "--artifact", art, "--backend", "fake", "--n-gen", "4",
                        "--reps", "2"], cwd=lone_board, env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    row = json.loads(p.stdout.splitlines()[-1])
    assert row["status"] == "ok" and row["env"]["python"].startswith("3.8")


@pytest.mark.slow  # vermin over board/ (make lint runs it too)
def test_vermin_says_python_3_8():
    vermin = shutil.which("vermin") or str(ROOT / ".venv" / "bin" / "vermin")
    p = subprocess.run([vermin, "-t=3.8-", "--eval-annotations", "--violations", "--no-tips", str(ROOT / "board")],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
