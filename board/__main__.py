"""``python3 -m board bench|doctor|info|logprobs`` — the board-side command line (stdlib argparse).

Run it as ``python3 -m board ...`` from the folder holding ``board/``, or as
``python3 -I -S path/to/board ...`` (isolated, stdlib only). Exit codes: 0 ok, 1 a known failure (one line on stderr, an error row written for bench),
2 usage error or a bug (traceback only with ``--debug``).
"""

from __future__ import annotations

if __package__ in (None, ""):
    # Run as ``python3 -I -S path/to/board CMD``: isolated mode (-I) never puts the current folder on
    # sys.path, so ``-m board`` cannot find us there; the folder form can. Re-enter as the package.
    import os
    import sys

    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    from board.__main__ import main as _main

    sys.exit(_main())

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import traceback  # noqa: E402
from typing import List, Optional  # noqa: E402

from . import RUNNER_VERSION, SCHEMA_VERSION  # noqa: E402
from .rows import ROW_SCHEMA_VERSION  # noqa: E402

assert SCHEMA_VERSION == ROW_SCHEMA_VERSION


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python3 -m board", description="rkdeploy board runner %s" % RUNNER_VERSION)
    p.add_argument("--debug", action="store_true", help="print tracebacks for unexpected errors")
    sub = p.add_subparsers(dest="cmd")
    b = sub.add_parser("bench", help="benchmark one artifact; JSONL rows on stdout (or --out)")
    b.add_argument("--artifact", required=True, help="artifact folder (holds manifest.json)")
    b.add_argument("--backend", required=True, help="runtime backend: onnxruntime, rkllm, rknnlite, fake, ...")
    b.add_argument("--n-prompt", type=int, default=128, help="prompt tokens (default 128, the vendor method)")
    b.add_argument("--n-gen", type=int, default=64, help="generated tokens (default 64)")
    b.add_argument("--reps", type=int, default=5, help="timed repetitions (default 5)")
    b.add_argument("--warmup", type=int, default=1, help="untimed warmup runs (default 1)")
    b.add_argument("--threads", type=int, default=None, help="CPU threads (default: all CPUs this process may use)")
    b.add_argument("--batch", type=int, default=None, help="encoder batch (default: manifest inputs.batch)")
    b.add_argument("--seq-len", type=int, default=None, help="encoder sequence length (default: manifest inputs.seq_len)")
    b.add_argument("--board", default=None, help="board name recorded in the row (default: hostname)")
    b.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                   help="backend option, repeatable (onnxruntime: engine=auto|genai|ort)")
    b.add_argument("--rkllm-abi", default=None, help="rkllm: force the librkllmrt ABI (1.2.1, 1.3.0); default from the artifact")
    b.add_argument("--rkllm-lib", default=None, help="rkllm: path of librkllmrt.so (default $RKLLM_LIB, /usr/lib, ...)")
    b.add_argument("--sysfs-root", default="/", help=argparse.SUPPRESS)
    b.add_argument("--out", default=None, help="append JSONL here instead of stdout")
    d = sub.add_parser("doctor", help="check clocks, DDR devfreq, NPU driver, RAM, thermals; one line per check")
    d.add_argument("--sysfs-root", default="/", help="root to read proc/ and sys/ from (tests use a fake tree)")
    d.add_argument("--artifact", default=None, help="also check free RAM against this artifact")
    d.add_argument("--json", action="store_true", help="print checks as JSON")
    lp = sub.add_parser("logprobs", help="next-token log-probs of an LLM artifact on token windows (float16 file)")
    lp.add_argument("--artifact", required=True, help="artifact folder (holds manifest.json)")
    lp.add_argument("--ids", required=True, help="JSON [[token ids], ...] windows of one length, or - for stdin")
    lp.add_argument("--out", required=True, help="write [windows, window, vocab] float16 (little-endian) here")
    lp.add_argument("--threads", type=int, default=None, help="CPU threads (default: the fastest cluster)")
    lp.add_argument("--sysfs-root", default="/", help=argparse.SUPPRESS)
    i = sub.add_parser("info", help="runner version, backends available here, environment fingerprint (JSON)")
    i.add_argument("--sysfs-root", default="/", help=argparse.SUPPRESS)
    return p


def _emit(lines: List[str], out: Optional[str]) -> None:
    if out:
        with open(out, "a", encoding="utf-8") as f:
            f.write("".join(line + "\n" for line in lines))
    else:
        sys.stdout.write("".join(line + "\n" for line in lines))
        sys.stdout.flush()


def cmd_bench(a: argparse.Namespace) -> int:
    from .runner import BenchConfig, error_row, run_bench

    # Every argument is checked before the first line goes out: a usage error leaves --out untouched.
    bad = [kv for kv in a.opt if "=" not in kv or not kv.split("=", 1)[0].strip()]
    if bad:
        sys.stderr.write("board: error: --opt takes KEY=VALUE, got %r\n" % bad[0])
        return 2
    opts = dict(kv.split("=", 1) for kv in a.opt)
    if a.out is not None:
        parent = os.path.dirname(os.path.abspath(a.out))
        if "\0" in a.out or os.path.isdir(a.out) or not os.path.isdir(parent):
            sys.stderr.write("board: error: --out %r must be a file in an existing folder\n" % a.out)
            return 2
    if a.rkllm_abi:
        opts["rkllm_abi"] = a.rkllm_abi
    if a.rkllm_lib:
        opts["rkllm_lib"] = os.environ["RKLLM_LIB"] = a.rkllm_lib
    try:
        cfg = BenchConfig(artifact=a.artifact, backend=a.backend, n_prompt=a.n_prompt, n_gen=a.n_gen, reps=a.reps,
                          warmup=a.warmup, threads=a.threads, board=a.board, sysfs_root=a.sysfs_root,
                          batch=a.batch, seq_len=a.seq_len, fresh_process=True,
                          backend_params=opts, debug=a.debug)
    except ValueError as e:
        sys.stderr.write("board: error: %s\n" % e)
        return 2
    hello = {"type": "hello", "runner_version": RUNNER_VERSION, "schema_version": SCHEMA_VERSION}
    try:
        _emit([json.dumps(hello)], a.out)
    except OSError as e:
        sys.stderr.write("board: error: --out %s: %s\n" % (a.out, e.strerror or e))
        return 2
    try:
        row = run_bench(cfg)
    except Exception as e:  # noqa: BLE001 - a bug still yields an error row for the table
        if a.debug:
            traceback.print_exc()
        row = error_row(cfg, "internal error: %s: %s" % (type(e).__name__, e))
    _emit([json.dumps(dict(type="row", **row.to_dict()))], a.out)
    if row.status != "ok":
        sys.stderr.write("board: error: %s\n" % ((row.error or "unknown error").splitlines() or [""])[0])
        return 1
    return 0


def cmd_doctor(a: argparse.Namespace) -> int:
    from .artifact import ArtifactError, artifact_size, read_artifact
    from .sysinfo import doctor

    artifact_mb = manifest = None
    if a.artifact:
        try:
            manifest = read_artifact(a.artifact)
            artifact_mb = artifact_size(manifest) / (1024.0 * 1024.0)
        except ArtifactError as e:
            sys.stderr.write("board: error: %s\n" % e)
            return 1
    checks = doctor(a.sysfs_root, artifact_mb)
    if manifest is not None:  # runtime-specific checks for this artifact
        from .rkllm_doctor import rkllm_checks
        from .rknn_doctor import rknn_checks
        from .sysinfo import fingerprint

        fp = fingerprint(a.sysfs_root)
        checks += rkllm_checks(a.sysfs_root, manifest, fp) + rknn_checks(a.sysfs_root, manifest, fp)
    if a.json:
        print(json.dumps([c.to_dict() for c in checks], indent=1))
    else:
        for c in checks:
            print(c.line())
    return 1 if any(c.status == "fail" for c in checks) else 0


def cmd_logprobs(a: argparse.Namespace) -> int:
    from .logprobs import main as logprobs_main

    return logprobs_main(a)


def cmd_info(a: argparse.Namespace) -> int:
    from .backends import BACKENDS, backend_status
    from .sysinfo import fingerprint

    backends = {}
    for name in sorted(BACKENDS):
        ok, why = backend_status(name)
        backends[name] = {"available": ok, "detail": why}
    print(json.dumps({"type": "info", "runner_version": RUNNER_VERSION, "schema_version": SCHEMA_VERSION,
                      "backends": backends, "env": fingerprint(a.sysfs_root)}, indent=1))
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    p = _parser()
    a = p.parse_args(argv)
    if a.cmd is None:
        p.print_help()
        return 2
    try:
        return {"bench": cmd_bench, "doctor": cmd_doctor, "info": cmd_info, "logprobs": cmd_logprobs}[a.cmd](a)
    except KeyboardInterrupt:
        sys.stderr.write("board: interrupted\n")
        return 130
    except Exception as e:  # noqa: BLE001 - a bug: one line, traceback only with --debug
        if a.debug:
            raise
        first = (str(e).strip().splitlines() or [""])[0][:300]
        sys.stderr.write("board: internal error: %s: %s (run with --debug for the traceback)\n" % (type(e).__name__, first))
        return 2


if __name__ == "__main__":
    sys.exit(main())
