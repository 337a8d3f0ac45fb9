"""onnxruntime-genai's model builder (ONNX ``int8`` / ``int4`` LLMs), run as a child process.

It runs through ``host/workers/genai_builder.py``, which applies the config workarounds the model
family needs (``host.families.genai_fixes``: e.g. Gemma 3's nested ``rope_parameters`` under
transformers 5). Its whole output goes to ``<artifact folder>.genai.log`` beside the artifact,
which is KEPT after a failure; the error is one line naming the tool version, the model family,
the builder's last error line, a workaround when the family table knows one, and the log's path.
A successful build removes its log (nothing to read) and its cache.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from host.errors import BuildError

WORKER = Path(__file__).resolve().parent.parent / "workers" / "genai_builder.py"
_ERROR_LINE = re.compile(r"^\s*(\w+(Error|Exception)\b|RuntimeError|AssertionError|NotImplementedError)")


def log_path(out_dir: Path) -> Path:
    """``<artifact folder>.genai.log`` beside the artifact (``out_dir`` may be its ``atomic_dir`` temp)."""
    m = re.fullmatch(r"\.tmp-(.+)-[a-z0-9_]{8}", out_dir.name)
    return out_dir.with_name(f"{m.group(1) if m else out_dir.name}.genai.log")


def last_error_line(text: str) -> str:
    """The builder's own error (the last ``SomethingError: …`` line), else its last non-empty line."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if _ERROR_LINE.match(ln)]
    return (errors or lines or ["no output"])[-1][:300]


def failure_message(*, version: str, label: str, rc: int, tail: str, logfile: Path, workaround: str = "") -> str:
    hint = f"; workaround: {workaround}" if workaround else ""
    return (f"onnxruntime-genai {version} model builder failed for {label} (exit {rc}): {tail}{hint} "
            f"(log: {logfile})")


def build_genai(src: Path, out_dir: Path, scheme: str, log, *, threads: int, board_threads: int) -> dict:
    from host.families import family_label, genai_fixes, known_issue
    from host.models import read_config

    cfg = read_config(src)
    fixes = genai_fixes(cfg)
    # Beside the temp artifact folder and named after it, so a killed build's leftovers are
    # ``host.fsutil.stale_atomic_dirs`` of the artifact (removed by the next export).
    cache = out_dir.with_name(f"{out_dir.name}.genai-cache")
    logfile = log_path(out_dir)
    cmd = [sys.executable, str(WORKER), *[a for f in fixes for a in ("--fix", f)], "--",
           "-i", str(src), "-o", str(out_dir), "-p", scheme, "-e", "cpu", "-c", str(cache)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": str(threads),
           "MKL_NUM_THREADS": str(threads)}
    log(f"onnxruntime-genai builder -p {scheme} ({threads} threads" + (f"; fixes: {', '.join(fixes)}" if fixes else "")
        + ")")
    try:
        with open(logfile, "w") as lf:
            rc = subprocess.run(cmd, stdout=lf, stderr=subprocess.STDOUT, env=env).returncode
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    if rc != 0:
        text = logfile.read_text(errors="replace")
        issue = known_issue(cfg, "onnxruntime-genai", text)
        workaround = (issue.workaround or (f"rkdeploy applies the '{issue.fix}' fix; it did not help here — "
                      f"{issue.when}")) if issue else ""
        raise BuildError(failure_message(version=_genai_version(), label=family_label(cfg), rc=rc,
                                         tail=last_error_line(text), logfile=logfile, workaround=workaround))
    logfile.unlink(missing_ok=True)
    cfg_path = out_dir / "genai_config.json"
    gcfg = json.loads(cfg_path.read_text())
    gcfg["model"]["decoder"]["session_options"]["intra_op_num_threads"] = board_threads
    cfg_path.write_text(json.dumps(gcfg, indent=4))
    graph = f"onnxruntime-genai model builder -p {scheme} -e cpu (MatMulNBits, block 32)"
    return {"format": "onnx-genai", "graph": graph, **({"builder_fixes": fixes} if fixes else {})}


def _genai_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("onnxruntime-genai")
    except metadata.PackageNotFoundError:
        return "(not installed)"
