"""Vendor toolkits in isolated venvs (their pins clash with ours), driven through worker scripts.

A worker is a Python script run with the toolkit venv's interpreter: it reads one JSON job on
stdin, writes its log to stdout/stderr, and prints its JSON result as the LAST stdout line,
prefixed with ``RKDEPLOY_RESULT ``. The host never imports the vendor module itself.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from host.config import PROJECT_ROOT
from host.errors import BuildError, ToolkitMissingError

RESULT_PREFIX = "RKDEPLOY_RESULT "
INFO_FILE = "rkdeploy-toolkit.json"
#: A line of the form ``RKDEPLOY_TEST_DOUBLE = "..."`` at the top level of a toolkit package's
#: ``__init__.py`` marks it as rkdeploy's test double (host/testing/fake_rkllm carries it, and so does
#: the wheel ``build_fake_wheel`` packs from it). The vendor's packages never define this name.
TEST_DOUBLE_MARKER = "RKDEPLOY_TEST_DOUBLE ="


@dataclass(frozen=True)
class Toolkit:
    name: str            # venv folder name
    dist: str            # pip distribution
    module: str          # import name checked by doctor
    install_hint: str


TOOLKITS = {
    "rknn": Toolkit("rknn", "rknn-toolkit2", "rknn.api", "run `make setup`, or scripts/setup_rknn.sh alone, to create .venvs/rknn"),
    "rkllm": Toolkit("rkllm", "rkllm-toolkit", "rkllm.api", "make setup-rkllm WHEEL=path/to/rkllm_toolkit-<ver>-cp3X-...whl"),
}


def venvs_root() -> Path:
    return Path(os.environ.get("RKDEPLOY_VENVS", PROJECT_ROOT / ".venvs"))


def toolkit_venv(name: str) -> Path | None:
    """The venv folder of toolkit ``name`` when it is installed (its info file exists)."""
    venv = venvs_root() / name
    return venv if (venv / INFO_FILE).is_file() and (venv / "bin" / "python").exists() else None


def installed_test_double(venv: Path, module: str) -> bool:
    """The package of ``module`` installed in ``venv``'s site-packages carries the test-double marker."""
    top = module.split(".")[0]
    for init in sorted(Path(venv).glob(f"lib/python3*/site-packages/{top}/__init__.py")):
        try:
            lines = init.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            continue
        if any(line.startswith(TEST_DOUBLE_MARKER) for line in lines):
            return True
    return False


def toolkit_info(name: str) -> dict | None:
    """The recorded facts of installed toolkit ``name`` plus ``venv`` and ``test_double``.

    ``test_double`` is true when the setup step recorded it (its probe imported the marked
    package) OR the installed package carries the marker now: an info file that lost the flag, or
    one written before the flag existed, never turns the double into "the vendor toolkit".
    """
    venv = toolkit_venv(name)
    if venv is None:
        return None
    try:
        info = json.loads((venv / INFO_FILE).read_text())
    except (OSError, ValueError):
        return None
    double = bool(info.pop("test_double", False) or info.pop("fake", False)
                  or installed_test_double(venv, TOOLKITS[name].module))
    return {**info, "venv": str(venv), "test_double": double}


def require_toolkit(name: str) -> Path:
    venv = toolkit_venv(name)
    if venv is None:
        tk = TOOLKITS[name]
        raise ToolkitMissingError(f"{tk.dist} not installed ({tk.install_hint})")
    return venv


def record_toolkit(name: str, venv: Path, version: str, **extra) -> None:
    """Written by the setup step once the toolkit imports in ``venv``."""
    from host.fsutil import atomic_write_text

    atomic_write_text(venv / INFO_FILE, json.dumps({"name": name, "dist": TOOLKITS[name].dist, "version": version, **extra}, indent=2))


def run_worker(name: str, script: Path, job: dict, log_path: Path, *,
               on_line: Callable[[str], None] | None = None, timeout: float | None = None,
               python: Path | None = None) -> dict:
    """Run ``script`` in toolkit ``name``'s venv with ``job`` on stdin; return its JSON result.

    stdout+stderr stream line by line into ``log_path`` (and ``on_line``). A non-zero exit, a
    missing result line or a result with ``"ok": false`` raises ``BuildError`` quoting the
    worker's error. The worker runs in its own process group and is killed with it on Ctrl-C.
    """
    py = python or (require_toolkit(name) / "bin" / "python")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)
    result = None
    with open(log_path, "a", encoding="utf-8") as log:
        proc = subprocess.Popen(
            [str(py), str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, env=env, start_new_session=True, bufsize=1,
        )
        try:
            assert proc.stdin and proc.stdout
            proc.stdin.write(json.dumps(job, default=str))
            proc.stdin.close()
            for line in proc.stdout:
                if line.startswith(RESULT_PREFIX):
                    result = json.loads(line[len(RESULT_PREFIX):])
                    continue
                log.write(line)
                log.flush()
                if on_line:
                    on_line(line.rstrip("\n"))
            rc = proc.wait(timeout=timeout)
        except BaseException:
            _kill_group(proc)
            raise
    tool = f"{TOOLKITS[name].dist} {(toolkit_info(name) or {}).get('version') or '(version unknown)'}".strip()
    if result is None:
        raise BuildError(f"{tool} worker exited with code {rc} without a result; see {log_path}")
    if not result.get("ok", False):
        raise BuildError(f"{tool}: {result.get('error', 'failed')} (log: {log_path})")
    return result


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def worker_python_for_tests() -> Path:
    """The current interpreter (tests run workers against fakes without a toolkit venv)."""
    return Path(sys.executable)
