"""Shared fixtures: the real built-in models (materialised once), the default recipe, the CLI."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from host.testing.sshd import TestSshd

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_RECIPE = ROOT / "configs" / "models" / "smollm2-135m.yaml"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def builtin_models() -> dict[str, Path]:
    """The default models, materialised into the user cache (reused across runs)."""
    from host.models import fetch_all

    return fetch_all()


@pytest.fixture(scope="session")
def llm_dir(builtin_models) -> Path:
    return builtin_models["smollm2-135m-instruct"]


@pytest.fixture(scope="session")
def encoder_dir(builtin_models) -> Path:
    return builtin_models["all-minilm-l6-v2"]


@pytest.fixture(scope="session")
def default_recipe_data() -> dict:
    """The default recipe as a dict with every relative path made absolute."""
    data = yaml.safe_load(DEFAULT_RECIPE.read_text())
    base = DEFAULT_RECIPE.parent
    for m in data["models"]:
        if m.get("calibration"):
            m["calibration"] = str((base / m["calibration"]).resolve())
    data["text"] = {k: str((base / v).resolve()) for k, v in data["text"].items()}
    return data


@pytest.fixture
def make_recipe(tmp_path, default_recipe_data):
    """``make_recipe(edit)`` writes a copy of the default recipe changed by ``edit(dict)``; returns its path."""
    counter = {"n": 0}

    def make(edit=None, name: str | None = None) -> Path:
        data = copy.deepcopy(default_recipe_data)
        if edit:
            edit(data)
        counter["n"] += 1
        path = tmp_path / (name or f"recipe{counter['n']}.yaml")
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    return make


def run_cli(*args: str, timeout: float = 600, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``rkdeploy ARGS`` in a subprocess (as a user would) and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "host.cli", *map(str, args)], capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "COLUMNS": "200", **(env or {})}, cwd=cwd or ROOT,
    )


@pytest.fixture
def rk():
    return run_cli


# >>> export / quality (issue 3)
#: Quality evaluation cut for tests (the default recipe's 4,096 tokens are for `make export`).
QUALITY_TEST = {"eval_tokens": 1024, "window": 513, "sentences": 64}


@pytest.fixture(scope="session")
def onnx_export(tmp_path_factory, default_recipe_data, builtin_models):
    """Every ONNX artifact of the default recipe for rk3576, built ONCE per session into a temp root.

    Quality caches (float reference, rows) and the results store live in the same temp folder.
    """
    from types import SimpleNamespace

    from host.export import export

    base = tmp_path_factory.mktemp("onnx-export")
    data = copy.deepcopy(default_recipe_data)
    data["quality"] = dict(QUALITY_TEST)
    recipe = base / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(data, sort_keys=False))
    schemes = tuple(dict.fromkeys(s for m in data["models"] for s in m["onnx"]))
    mp = pytest.MonkeyPatch()
    mp.setenv("RKDEPLOY_QUALITY_CACHE", str(base / "quality-cache"))
    rep = export(recipe, "rk3576", only=schemes, root=base / "artifacts", progress=False)
    yield SimpleNamespace(base=base, recipe=recipe, data=data, root=base / "artifacts", report=rep, schemes=schemes,
                          store=base / "results.sqlite", qcache=base / "quality-cache")
    mp.undo()
# <<< export / quality (issue 3)
# >>> deploy: one real OpenSSH sshd per test module, its known_hosts, no agent (issue 5)


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    with TestSshd.start(tmp_path_factory.mktemp("sshd")) as s:
        yield s


@pytest.fixture(scope="module")
def known(sshd, tmp_path_factory):
    return sshd.write_known_hosts(tmp_path_factory.mktemp("kh") / "known_hosts")


@pytest.fixture(autouse=True)
def _no_ssh_agent(monkeypatch):
    """Keys only: an agent on the developer's machine must not make a wrong-key test pass."""
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
# <<< deploy
