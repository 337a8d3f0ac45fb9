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


def build_genai(src: Path, out_dir: Path, scheme: str, log, *, threads: int, board_threads: int,
                options: dict | None = None) -> dict:
    """Build ``scheme`` (``int8`` | ``int4``) into ``out_dir``; ``options`` are the builder's ``--extra_options``
    (``key=value``, e.g. ``accuracy_level``, ``block_size``, ``prune_lm_head``), recorded in the manifest."""
    options = dict(options or {})
    shown = [f"{k}={_option_text(v)}" for k, v in sorted(options.items())]
    fixes = run_builder(src, out_dir, scheme, log, threads=threads, board_threads=board_threads,
                        extra_args=["--extra_options", *shown] if shown else [], what=" ".join(shown))
    block = options.get("block_size", 32)
    graph = f"onnxruntime-genai model builder -p {scheme} -e cpu (MatMulNBits, block {block})"
    return {"format": "onnx-genai", "graph": graph, "builder_options": options,
            **({"builder_fixes": fixes} if fixes else {})}


def run_builder(src: Path, out_dir: Path, scheme: str, log, *, threads: int, board_threads: int,
                extra_args=(), what: str = "") -> list[str]:
    """Run the model builder (``-p scheme`` plus ``extra_args``) into ``out_dir`` through the worker with the
    family's config fixes, its output in the kept-on-failure log; a failure is one ``BuildError`` line (tool
    version, family, the builder's error, a known workaround). Sets the board's intra-op threads in
    genai_config.json. Returns the fixes applied."""
    from host.families import family_label, genai_fixes, known_issue
    from host.models import read_config

    cfg = read_config(src)
    fixes = genai_fixes(cfg)
    # Beside the temp artifact folder and named after it, so a killed build's leftovers are
    # ``host.fsutil.stale_atomic_dirs`` of the artifact (removed by the next export).
    cache = out_dir.with_name(f"{out_dir.name}.genai-cache")
    logfile = log_path(out_dir)
    cmd = [sys.executable, str(WORKER), *[a for f in fixes for a in ("--fix", f)], "--",
           "-i", str(src), "-o", str(out_dir), "-p", scheme, "-e", "cpu", "-c", str(cache), *extra_args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": str(threads),
           "MKL_NUM_THREADS": str(threads)}
    log(f"onnxruntime-genai builder -p {scheme}{' ' + what if what else ''} ({threads} threads"
        + (f"; fixes: {', '.join(fixes)}" if fixes else "") + ")")
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
    return fixes


def _option_text(value) -> str:
    """The builder's spelling of an extra option value (``true``/``false`` for booleans)."""
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def _genai_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("onnxruntime-genai")
    except metadata.PackageNotFoundError:
        return "(not installed)"


#: The nodes genai's ``prune_lm_head`` puts before the lm_head MatMul: Gather(last position) + Unsqueeze.
PRUNE_NODES = ("/lm_head/prune/Gather", "/lm_head/prune/Unsqueeze")


def full_logits_graph(path: Path) -> bytes | None:
    """The serialized graph of ``path`` with genai's ``prune_lm_head`` undone (logits for EVERY position,
    the lm_head MatMul reading the final norm's output again; same weights, same kernels), or ``None``
    when the graph is not pruned. The quality evaluation needs every position's log-probs; generation
    only the last one (the pruned graph saves the prompt's lm_head rows in prefill)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    nodes = {n.name: n for n in proto.graph.node}
    if not all(name in nodes for name in PRUNE_NODES):
        return None
    gather, unsqueeze = (nodes[name] for name in PRUNE_NODES)
    source, pruned = gather.input[0], unsqueeze.output[0]
    for node in proto.graph.node:
        for i, name in enumerate(node.input):
            if name == pruned:
                node.input[i] = source
    keep = [n for n in proto.graph.node if n.name not in PRUNE_NODES]
    del proto.graph.node[:]
    proto.graph.node.extend(keep)
    # the values after the lm_head (softcap, cast, ... on some families) were annotated with one position:
    # drop those annotations (onnxruntime infers them again) and give the logits output its sequence axis
    after, grew = {source}, True
    while grew:
        grew = False
        for node in proto.graph.node:
            if any(i in after for i in node.input) and not set(node.output) <= after:
                after.update(node.output)
                grew = True
    keep_info = [vi for vi in proto.graph.value_info if vi.name not in after or vi.name == source]
    del proto.graph.value_info[:]
    proto.graph.value_info.extend(keep_info)
    for out in proto.graph.output:
        dims = out.type.tensor_type.shape.dim
        if out.name == "logits" and len(dims) == 3:
            dims[1].Clear()
            dims[1].dim_param = "sequence_length"
    # the weights stay in the artifact's external data file (a model over 2 GB cannot be one protobuf message):
    # the board backend's session resolves them against the artifact folder (``board.backends.onnxruntime._session``)
    return proto.SerializeToString()
