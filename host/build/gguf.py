"""GGUF builder (llama.cpp on the CPU): HF folder -> GGUF F16 -> ``llama-quantize`` to the scheme's type.

Steps, all with the llama.cpp this host built once (host/build/llamacpp_tools.py, the sources vendored
in the llama-cpp-python sdist):

1. ``convert_hf_to_gguf.py --outtype f16`` (the vendored converter and its own gguf-py, on
   PYTHONPATH, run by this venv's Python: torch, transformers, numpy are already here);
2. for k-quants (``gguf-q4_k_m``): ``llama-imatrix`` over the recipe's calibration JSON (the same
   prompts + answers rkllm-toolkit calibrates on, as plain text), so the quantizer weighs the columns
   that matter on our data;
3. ``llama-quantize [--imatrix] f16.gguf model.gguf <TYPE>``; ``gguf-f16`` keeps step 1's file.

SmolLM2-135M is 576 wide: 576 % 256 != 0, so for Q4_K_M llama-quantize falls back to a 32-block type
(Q5_0/Q8_0) for every tensor whose rows are not a multiple of 256 — the manifest records the counts
llama-quantize printed (``fallback_tensors``), so the size and the speed of that artifact are read
knowing it is not "pure" Q4_K.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from host.errors import BuildError

BUILDER_VERSION = 1
#: Calibration text for llama-imatrix: context per chunk (tokens) and the most chunks it reads.
#: (24 x 128 = 3,072 tokens: ~75 s for SmolLM2-135M F16 on 2 busy cores; 64 chunks took 170 s)
IMATRIX_CTX = 128
IMATRIX_CHUNKS = 24
IMATRIX_SCHEMES = frozenset({"gguf-q4_k_m"})


def _threads() -> int:
    return int(os.environ.get("RKDEPLOY_THREADS") or os.cpu_count() or 1)


def _tools():
    from host.build import llamacpp_tools

    return llamacpp_tools


def quant_type(scheme: str) -> str:
    from host.schemes import gguf_type

    return gguf_type(scheme)


def calibration_text(path: Path | str) -> str:
    """The calibration JSON (``[{"input", "target"}, ...]``, rkllm's format) as one text: prompt + answer."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise BuildError(f"{path}: calibration JSON unreadable ({e})") from None
    if not isinstance(data, list) or not all(isinstance(d, dict) and isinstance(d.get("input"), str) for d in data):
        raise BuildError(f"{path}: calibration JSON must be a list of objects with a string 'input'")
    return "\n\n".join(d["input"] + str(d.get("target") or "") for d in data)


def check(job) -> list[str]:
    if job.model.kind != "llm":
        return [f"{job.model.name}: GGUF (llama.cpp) artifacts are built for LLMs only"]
    if job.scheme in IMATRIX_SCHEMES and job.model.calibration is None:
        return [f"{job.model.name}: {job.scheme} needs an importance matrix from the recipe's calibration JSON "
                "(field 'calibration'); run `rkdeploy calib build`"]
    return []


def inputs(job) -> dict:
    from host.fsutil import sha256_file

    t = _tools()
    data = {"builder": "gguf", "builder_version": BUILDER_VERSION, "scheme": job.scheme, "type": quant_type(job.scheme),
            "llamacpp": {"version": t.VERSION, "sdist_sha256": t.SDIST_SHA256}}
    if job.scheme in IMATRIX_SCHEMES:
        calib = job.model.calibration
        data["imatrix"] = {"ctx": IMATRIX_CTX, "chunks": IMATRIX_CHUNKS,
                           "calibration_sha256": sha256_file(calib) if calib and Path(calib).is_file() else None}
    return data


def _run(cmd: list[str], log, what: str, env: dict | None = None) -> str:
    log(f"{what}: {' '.join(Path(c).name if i == 0 else c for i, c in enumerate(cmd))}")
    t0 = time.monotonic()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    out = (r.stdout or "") + (r.stderr or "")
    log(f"{what}: exit {r.returncode} after {time.monotonic() - t0:.1f} s")
    if r.returncode != 0:
        raise BuildError(failure_line(what, r.returncode, out))
    return out


#: llama.cpp tool failures a user meets on models of their own: (symptom in the output, what it means + what to do)
KNOWN_FAILURES = (
    ("BPE pre-tokenizer was not recognized",
     "llama.cpp's converter does not know this model's BPE pre-tokenizer (the hash of its tokenizer's output is not "
     "in convert_hf_to_gguf's get_vocab_base_pre table), so llama.cpp could not tokenize text as the model does; "
     "no GGUF is written. Use a GGUF of the model made upstream as a recipe `source:`, or drop the gguf schemes"),
    ("Model architecture not supported",
     "this llama.cpp's converter has no class for the model's architecture; drop the gguf schemes"),
)


def failure_line(what: str, code: int, out: str) -> str:
    """One line for a failed llama.cpp tool: the known meaning when the output shows one, else the tool's own
    last error line (a Python traceback's final ``XxxError: …``), never the traceback itself."""
    t = _tools()
    for symptom, meaning in KNOWN_FAILURES:
        if symptom in out:
            return f"{what} (llama.cpp from llama-cpp-python {t.VERSION}) failed: {meaning} [{symptom}]"
    lines = [ln.strip() for ln in out.strip().splitlines() if ln.strip()]
    errors = [ln for ln in lines if re.match(r"^[A-Za-z_.]*(Error|Exception|Interrupt)\b.*:", ln)]
    last = errors[-1] if errors else " | ".join(lines[-2:])
    return f"{what} failed (exit {code}): {last[-400:]}"


def convert_f16(src: Path, out: Path, log) -> None:
    root = _tools().build_dir()
    py = root / "py"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(py / "gguf-py"), str(py)]), NO_LOCAL_GGUF="")
    _run([sys.executable, str(py / "convert_hf_to_gguf.py"), str(src), "--outtype", "f16", "--outfile", str(out)],
         log, "convert_hf_to_gguf (f16)", env=env)


def imatrix(f16: Path, calib: Path, out: Path, log) -> dict:
    text = out.with_suffix(".txt")
    text.write_text(calibration_text(calib), encoding="utf-8")
    t = _tools()
    res = _run([str(t.tool("llama-imatrix")), "-m", str(f16), "-f", str(text), "-o", str(out), "-c", str(IMATRIX_CTX),
                "--chunks", str(IMATRIX_CHUNKS), "-t", str(_threads()), "--no-ppl"], log, "llama-imatrix")
    chunks = re.findall(r"computing over (\d+) chunks", res)
    return {"ctx": IMATRIX_CTX, "chunks": int(chunks[-1]) if chunks else None, "text_chars": len(text.read_text())}


def quantize(f16: Path, out: Path, qtype: str, log, imatrix_file: Path | None = None) -> dict:
    t = _tools()
    cmd = [str(t.tool("llama-quantize"))]
    if imatrix_file is not None:
        cmd += ["--imatrix", str(imatrix_file)]
    res = _run([*cmd, str(f16), str(out), qtype, str(_threads())], log, f"llama-quantize {qtype}")
    # "WARNING: 180 of 272 tensor(s) required fallback quantization" (576 % 256 != 0 for the k-quants)
    m = re.search(r"(\d+) of (\d+) tensor\(s\) required fallback", res)
    types: dict[str, int] = {}
    for t in re.findall(r"converting to (\w+)", res):
        types[t] = types.get(t, 0) + 1
    return {"fallback_tensors": int(m.group(1)) if m else 0, "tensors": int(m.group(2)) if m else None,
            "tensor_types": types}


def build(job, out_dir: Path, *, log) -> dict:
    from host.models import copy_tokenizer, resolve_model

    t = _tools()
    t.tool("llama-quantize")          # a clear "make llamacpp" error before any work
    src = resolve_model(job.model, fetch=True)
    out_dir = Path(out_dir)
    qtype = quant_type(job.scheme)
    extra: dict = {}
    with tempfile.TemporaryDirectory(prefix=out_dir.name + ".gguf-", dir=out_dir.parent) as tmp:
        f16 = out_dir / "model.gguf" if qtype == "F16" else Path(tmp) / "f16.gguf"
        convert_f16(src, f16, log)
        if qtype != "F16":
            imat = None
            if job.scheme in IMATRIX_SCHEMES:
                imat = Path(tmp) / "imatrix.gguf"
                extra["imatrix"] = {**imatrix(f16, Path(job.model.calibration), imat, log),
                                    "calibration": str(job.model.calibration)}
            extra["quantize"] = quantize(f16, out_dir / "model.gguf", qtype, log, imat)
    copy_tokenizer(src, out_dir)
    config = json.loads((src / "config.json").read_text())
    from host.schemes import describe

    return {"format": "gguf", "entry": "model.gguf", "model_kind": "llm", "model_type": config.get("model_type"),
            "vocab_size": config.get("vocab_size"),
            "tokenizer": "tokenizer.json" if (out_dir / "tokenizer.json").is_file() else None,
            "toolkit": {"name": "llama.cpp", "version": f"llama-cpp-python {t.VERSION} sdist"},
            "llamacpp_build": t.build_dir().name, "gguf_type": qtype,
            "scheme_definition": describe(job.scheme), **extra}
