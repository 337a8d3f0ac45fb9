"""`make test` and CI (RKDEPLOY_REQUIRE_REAL=1) fail where a bare pytest skips; a bare pytest says what it skipped.

Each case runs a real pytest in a subprocess on a small test module whose conftest takes the hooks
of tests/conftest.py, with and without the variable.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests import conftest
from tests.conftest import ROOT  # noqa: E402

CONFTEST = ("from tests.conftest import (pytest_collectreport, pytest_runtest_makereport,  # noqa: F401\n"
            "    pytest_sessionfinish, pytest_sessionstart, pytest_terminal_summary)\n")
SAMPLE = '''
import pytest

def test_ok():
    pass

@pytest.mark.skipif(True, reason="needs OpenSSH sshd (apt install openssh-server)")
def test_needs_sshd():
    pass

@pytest.fixture
def small_fs():
    pytest.skip("cannot mount a tmpfs here: permission denied")

def test_needs_tmpfs(small_fs):
    pass

@pytest.mark.board
def test_on_a_board():
    pytest.skip("no board named (RKDEPLOY_BOARD)")

@pytest.mark.xfail(reason="known")
def test_expected_failure():
    assert False
'''
MODULE_SKIP = 'import pytest\n\npytest.importorskip("rkdeploy_no_such_module")\n\n\ndef test_x():\n    pass\n'


def run_pytest(folder: Path, files: dict[str, str], require: str | None) -> subprocess.CompletedProcess:
    folder.mkdir()
    for name, text in {"conftest.py": CONFTEST, **files}.items():
        (folder / name).write_text(text)
    env = {k: v for k, v in os.environ.items() if k != "RKDEPLOY_REQUIRE_REAL"}
    if require is not None:
        env["RKDEPLOY_REQUIRE_REAL"] = require
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c",
                           str(ROOT / "pyproject.toml"), "--rootdir", str(ROOT), str(folder)],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)


@pytest.mark.slow  # a pytest session in a subprocess
def test_bare_pytest_skips_and_says_what_and_why(tmp_path):
    p = run_pytest(tmp_path / "t", {"test_sample.py": SAMPLE}, None)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "1 passed, 3 skipped, 1 xfailed" in p.stdout
    summary = p.stdout.split("2 test(s) SKIPPED: a real part is missing here", 1)[1].split("short test summary")[0]
    assert "1 x needs OpenSSH sshd (apt install openssh-server)" in summary
    assert "1 x cannot mount a tmpfs here: permission denied" in summary
    assert "RKDEPLOY_REQUIRE_REAL=1" in summary and "fail on these" in summary
    assert "RKDEPLOY_BOARD" not in summary  # a board test skipping is not a missing part of this machine


@pytest.mark.slow  # a pytest session in a subprocess
def test_require_real_turns_each_skip_into_a_failure_naming_the_part(tmp_path):
    p = run_pytest(tmp_path / "t", {"test_sample.py": SAMPLE}, "1")
    assert p.returncode == 1, p.stdout + p.stderr
    assert "1 passed, 1 skipped, 1 xfailed, 2 errors" in p.stdout  # the board test may still skip
    for part in ("needs OpenSSH sshd (apt install openssh-server)", "cannot mount a tmpfs here: permission denied"):
        assert f"RKDEPLOY_REQUIRE_REAL=1 (make test, CI): this test would be skipped, and here a skip fails the run: " \
               f"{part}" in p.stdout
    assert "SKIPPED: a real part is missing" not in p.stdout
    assert run_pytest(tmp_path / "zero", {"test_sample.py": SAMPLE}, "0").returncode == 0  # "0" means off


@pytest.mark.slow  # a pytest session in a subprocess
def test_a_module_skipped_at_collection_fails_the_run_too(tmp_path):
    bare = run_pytest(tmp_path / "bare", {"test_mod.py": MODULE_SKIP, "test_other.py": "def test_y():\n    pass\n"},
                      None)
    assert bare.returncode == 0 and "1 x could not import 'rkdeploy_no_such_module'" in bare.stdout, bare.stdout
    strict = run_pytest(tmp_path / "strict", {"test_mod.py": MODULE_SKIP,
                                              "test_other.py": "def test_y():\n    pass\n"}, "1")
    assert strict.returncode == 1, strict.stdout
    assert "1 passed, 1 skipped" in strict.stdout  # the rest of the suite still ran
    assert "FAILED (skipped module)" in strict.stdout and "test_mod.py: could not import" in strict.stdout


def test_make_test_and_ci_set_the_variable():
    dry = subprocess.run(["make", "-n", "test"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert "RKDEPLOY_REQUIRE_REAL=1 .venv/bin/python -m pytest" in dry.stdout, dry.stdout + dry.stderr
    assert "export RKDEPLOY_REQUIRE_REAL=1" in (ROOT / ".ci" / "run").read_text()


# --- the tiers: `make test-fast` (fakes only) and `make test` (everything) ---------------------------

def _item(fixtures=(), markers=()):
    added = []
    return SimpleNamespace(fixturenames=list(fixtures), added=added, add_marker=lambda m: added.append(m.name),
                           get_closest_marker=lambda name: name if name in markers else None)


@pytest.mark.parametrize(("fixtures", "markers", "want"), [
    ((), (), []),
    (("tmp_path", "monkeypatch"), (), []),
    (("builtin_models", "llm_dir"), (), ["real"]),
    (("onnx_export",), (), ["real"]),
    (("sshd", "known"), (), ["real"]),
    (("tmp_path",), ("vboard",), ["real"]),
    ((), ("board",), ["real"]),
    (("shims",), (), ["slow"]),
    (("shims", "builtin_models"), (), ["real", "slow"]),
])
def test_collection_marks_real_and_slow_from_fixtures_and_markers(fixtures, markers, want):
    it = _item(fixtures, markers)
    conftest.pytest_collection_modifyitems(None, [it])
    assert it.added == want


def test_every_real_fixture_exists_here():
    """A renamed fixture would silently move its tests into the fast tier."""
    import inspect

    defined = {n for n, f in inspect.getmembers(conftest) if hasattr(f, "_fixture_function_marker")
               or type(f).__name__ == "FixtureFunctionDefinition"}
    assert conftest.REAL_FIXTURES <= defined, conftest.REAL_FIXTURES - defined


def test_make_test_fast_selects_the_fast_tier_and_ci_runs_lint_first():
    dry = subprocess.run(["make", "-n", "test-fast"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert 'RKDEPLOY_FAST=1 .venv/bin/python -m pytest -q -p no:cacheprovider -m "not real and not slow"' \
        in dry.stdout, dry.stdout + dry.stderr
    ci = [ln.split("#")[0].strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines()
          if ln.strip().startswith(("make", "exec"))]
    assert ci == ["make lint", "exec make test"], ci


GUARDED = '''
from host.testing.sshd import TestSshd


def test_unmarked_starts_sshd(tmp_path):
    TestSshd.start(tmp_path)


def test_unmarked_exports(tmp_path):
    from host.export import export

    export(tmp_path / "r.yaml", "rk3576", root=tmp_path)


def test_models_are_not_there():
    from host.models import builtin_path

    assert not builtin_path("smollm2-135m-instruct").exists()


def test_uses_models(builtin_models):
    raise AssertionError("deselected in the fast tier")
'''
TIER_CONFTEST = ("from tests.conftest import (pytest_collection_modifyitems, pytest_configure,  # noqa: F401\n"
                 "    pytest_unconfigure, _fast_tier_guard, builtin_models)\n")


@pytest.mark.slow  # a pytest session in a subprocess
def test_fast_tier_refuses_real_parts_a_test_did_not_declare(tmp_path):
    folder = tmp_path / "t"
    folder.mkdir()
    (folder / "conftest.py").write_text(TIER_CONFTEST)
    (folder / "test_guarded.py").write_text(GUARDED)
    env = {**{k: v for k, v in os.environ.items() if k != "RKDEPLOY_REQUIRE_REAL"}, "RKDEPLOY_FAST": "1"}
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c", str(ROOT / "pyproject.toml"),
                        "--rootdir", str(ROOT), "-m", "not real and not slow", str(folder)],
                       capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert "2 failed, 1 passed, 1 deselected" in p.stdout, p.stdout + p.stderr
    assert "RKDEPLOY_FAST=1 (make test-fast): this test starts an OpenSSH sshd; mark it `real`" in p.stdout
    assert "RKDEPLOY_FAST=1 (make test-fast): this test runs a real export; mark it `real`" in p.stdout
