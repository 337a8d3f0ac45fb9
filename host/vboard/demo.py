"""What ``make demo`` needs around the virtual board besides ``up``: the toolkit venvs for its export
(the real rkllm-toolkit when installed, else its labelled test double) and the librknnrt shim's specs
for the real ``.rknn`` artifacts it will run.

``python -m host.vboard toolkits`` prints the folder to use as ``RKDEPLOY_VENVS`` for the board's
export: the project's own ``.venvs`` when rkllm-toolkit is set up there (``make setup-rkllm``), else
``<cache>/toolkits`` holding a link to ``.venvs/rknn`` (the real rknn-toolkit2) and the rkllm-toolkit
double (``host/testing/fake_rkllm``): every ``.rkllm`` it builds says ``toolkit.test_double: true``
and its bench rows say so too.

``python -m host.vboard rknn-specs [ROOT]``: for every rk3588 ``.rknn`` under ROOT (default: the
artifacts root), the shim's spec (input names, batch, seq_len, output width, ``RKNN_SPEC_RUN_MS``)
from its manifest, stored on the running board as ``RKNN_SPECS/<fnv1a64 of the model>.spec``. The
real .rknn bytes go to ``rknn_init`` untouched; the shim never reads the network inside.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from board.manifest import Manifest
from host.vboard.config import NAME, RKNN_SPEC_RUN_MS, RKNN_SPECS, Paths, VBoardError, cache_root
from host.vboard.run import status


def toolkit_venvs() -> Path:
    """``RKDEPLOY_VENVS`` for the board's export (see the module doc)."""
    from host.testing.fake_rkllm import install_fake_toolkit
    from host.toolkits import toolkit_venv, venvs_root

    if toolkit_venv("rkllm") is not None:
        return venvs_root()
    rknn = toolkit_venv("rknn")
    if rknn is None:
        raise VBoardError("rknn-toolkit2 is not set up (.venvs/rknn); run make setup")
    out = cache_root() / "toolkits"
    out.mkdir(parents=True, exist_ok=True)
    link = out / "rknn"
    if not link.is_symlink() or link.resolve() != rknn.resolve():
        tmp = out / ".rknn.tmp"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(rknn.resolve(), target_is_directory=True)
        tmp.replace(link)
    if toolkit_venv_at(out, "rkllm") is None:
        install_fake_toolkit(out, "1.3.0")
    return out


def toolkit_venv_at(root: Path, name: str) -> Path | None:
    from host.toolkits import INFO_FILE

    venv = root / name
    return venv if (venv / INFO_FILE).is_file() and (venv / "bin" / "python").exists() else None


def hidden_width(manifest: Manifest) -> int:
    """Width of ``last_hidden_state``: the source model's ``hidden_size`` (its config.json), else 384."""
    src = (manifest.get("source_onnx") or {}).get("path")
    for folder in ([Path(src).parent] if src else []):
        cfg = folder / "config.json"
        if cfg.is_file():
            return int(json.loads(cfg.read_text()).get("hidden_size") or 384)
    return 384


def write_rknn_specs(root: Path, name: str = NAME, say: Callable[[str], None] = print) -> list[Path]:
    """The shim's spec of every rk3588 ``.rknn`` artifact under ``root``, on the running board."""
    from board.testing.rknn_artifacts import model_key, spec_for_manifest

    if not status(name)["running"]:
        raise VBoardError(f"{name} is not up; run make board-up first")
    out = Paths(name).root / RKNN_SPECS.lstrip("/")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for mf in sorted(Path(root).glob("*/rk3588/*/manifest.json")):
        m = Manifest.read(str(mf))
        if m.artifact_kind != "rknn" or m.get("shim") is not None or not m.entry:
            continue  # shim models carry their shapes themselves
        key = model_key((mf.parent / m.entry).read_bytes())
        spec = out / f"{key}.spec"
        tmp = spec.with_suffix(".tmp")
        tmp.write_bytes(spec_for_manifest(m, run_ms=RKNN_SPEC_RUN_MS, hidden=hidden_width(m)))
        tmp.replace(spec)
        written.append(spec)
        say(f"{name}: librknnrt shim spec for {mf.parent.relative_to(root)} ({key}.spec, {RKNN_SPEC_RUN_MS:g} ms/run)")
    return written
