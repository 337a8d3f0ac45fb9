"""``python3 -m board logprobs``: next-token log-probabilities of an LLM artifact on token windows.

The board-side half of ``rkdeploy quality --board``: the host sends token windows (JSON
``[[id, ...], ...]``, from a file or ``-`` = stdin), the board runs them through its own runtime
(``backend.logprobs(ids)``, the same backend the benchmark uses) and writes

- ``--out FILE``: the log-probs as raw little-endian **float16**, shape ``[windows, window, vocab]``
  (row-major). Why float16 of the full vocabulary: KLD(float ‖ board) needs every token's
  probability, and float16 halves the transfer (SmolLM2: 96 KiB per token) while its rounding
  (relative 2^-11, ~1e-4 on the KLD of a healthy int8 model) stays far below what an arithmetic
  difference on the board would show; top-k would bias the KLD.
- stdout: one JSON line ``{"type": "logprobs", "shape", "dtype", "backend" (info), "env"
  (fingerprint: arch, emulated, ...), "seconds"}``.

The file is written atomically (temp, fsync, rename). Stdlib only at import; the backend brings
its own runtime (onnxruntime + numpy). Exit 0 ok, 1 a known failure (one line on stderr).
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Dict, List, Optional

from .artifact import ArtifactError, load_artifact

#: Which backend gives the log-probs of an artifact format.
LOGPROBS_BACKEND = {"onnx-genai": "onnxruntime", "rkllm": "rkllm", "gguf": "llamacpp"}
MAX_TOKENS = 1 << 16


class LogprobsError(Exception):
    """A known failure: one line for stderr."""


def read_windows(text: str, where: str) -> List[List[int]]:
    """Token windows from JSON text; every window a non-empty list of non-negative ints."""
    try:
        data = json.loads(text)
    except ValueError as e:
        raise LogprobsError("%s: not JSON (%s)" % (where, e)) from None
    if not isinstance(data, list) or not data or not all(isinstance(w, list) and w for w in data):
        raise LogprobsError("%s: expected a non-empty list of non-empty token-id lists" % where)
    for i, w in enumerate(data):
        if not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in w):
            raise LogprobsError("%s: window %d holds something that is not a token id (non-negative int)" % (where, i))
    if len({len(w) for w in data}) != 1:
        raise LogprobsError("%s: windows must have one length, got %s" % (where, sorted({len(w) for w in data})))
    if sum(len(w) for w in data) > MAX_TOKENS:
        raise LogprobsError("%s: more than %d tokens" % (where, MAX_TOKENS))
    return data


def _write_atomic(path: str, chunks: List[bytes]) -> None:
    tmp = "%s.tmp-%d" % (path, os.getpid())
    try:
        with open(tmp, "wb") as f:
            for c in chunks:
                f.write(c)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def run(artifact: str, windows: List[List[int]], out: str, *, threads: Optional[int] = None,
        params: Optional[Dict[str, Any]] = None, sysfs_root: str = "/") -> Dict[str, Any]:
    """Log-probs of every window into ``out``; returns the JSON summary line (as a dict)."""
    from .backends import BackendError, load_backend
    from .runner import default_threads
    from .sysinfo import fingerprint

    try:
        manifest = load_artifact(artifact)
    except ArtifactError as e:
        raise LogprobsError(str(e)) from None
    fmt = manifest.get("format")
    name = LOGPROBS_BACKEND.get(fmt)
    if name is None:
        raise LogprobsError("%s: format %r is not an LLM artifact; log-probabilities are for %s"
                            % (artifact, fmt, ", ".join(sorted(LOGPROBS_BACKEND))))
    try:
        import numpy  # noqa: F401 - the float16 transfer below (a backend without numpy returns plain lists)
    except ImportError:
        raise LogprobsError("%s: log-probabilities need numpy on the board (rkdeploy boards provision installs it)"
                            % artifact) from None
    n_threads = threads or default_threads(sysfs_root)
    t0 = time.monotonic()
    try:
        be = load_backend(name)
        be.load(artifact, dict(params or {}, manifest=manifest.to_dict(), threads=n_threads, engine="ort"))
        try:
            chunks = []
            shape = None
            for w in windows:
                lp = be.logprobs(w)
                shape = [len(windows)] + [int(d) for d in lp.shape]
                chunks.append(lp.astype("<f2").tobytes())
            info = be.info()
        finally:
            be.close()
    except BackendError as e:
        raise LogprobsError((str(e).splitlines() or [""])[0]) from None
    _write_atomic(out, chunks)
    return {"type": "logprobs", "shape": shape, "dtype": "float16", "backend": info, "threads": n_threads,
            "env": fingerprint(sysfs_root), "seconds": round(time.monotonic() - t0, 3)}


def main(a: Any) -> int:
    """``cmd_logprobs`` of ``board/__main__.py``: argparse namespace in, exit status out."""
    try:
        if a.ids == "-":
            windows = read_windows(sys.stdin.read(), "stdin")
        else:
            try:
                with open(a.ids, encoding="utf-8") as f:
                    text = f.read()
            except OSError as e:
                raise LogprobsError("--ids %s: %s" % (a.ids, e.strerror or e)) from None
            windows = read_windows(text, a.ids)
        parent = os.path.dirname(os.path.abspath(a.out))
        if os.path.isdir(a.out) or not os.path.isdir(parent):
            raise LogprobsError("--out %r must be a file in an existing folder" % a.out)
        summary = run(a.artifact, windows, a.out, threads=a.threads, sysfs_root=a.sysfs_root)
    except LogprobsError as e:
        sys.stderr.write("board: error: %s\n" % e)
        return 1
    sys.stdout.write(json.dumps(summary) + "\n")
    sys.stdout.flush()
    return 0
