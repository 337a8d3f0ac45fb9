"""``rkdeploy quality --board NAME``: the board's own onnxruntime on the target's ONNX LLM artifacts.

The host picks ``tokens`` held-out tokens (one window; a virtual board is emulated and ~75x slower,
so keep it to 64-128), computes the float reference and its own evaluation of each artifact on
exactly those tokens, pushes the runner and the artifacts (content-addressed: nothing when current),
and runs ``python3 -m board logprobs`` there over the SSH transport. The board sends back its
log-probs as float16 over the full vocabulary (``board/logprobs.py`` says why), one file per
artifact, removed from the board after the copy.

Each board row is a ``quality`` row with ``board`` = NAME and ``env`` = the board's fingerprint
(``arch``, ``emulated``, ...) plus ``vs_host``: KLD(host ‖ board), top-1 agreement and the largest
log-prob difference between the board's and this host's run of the same artifact on the same
tokens, and the host's own PPL ratio/KLD/top-1 there. Board rows go to the results store; the host
rows are printed beside them only.

For int8 artifacts ``vs_host`` also holds ``host_self``: the same comparison between two runs on THIS
host, ORT_ENABLE_ALL vs ORT_DISABLE_ALL (other float kernels, the same exact integer ops). Dynamic
activation quantization (int8-dyn) rounds every activation tensor, so a last-bit float difference
upstream flips a rounding now and then and the flips multiply layer by layer: the board's aarch64
kernels are as far from this host's as this host is from itself (``bench/int8_arm_vs_x86.py``: every
DynamicQuantizeLinear and MatMulInteger spec-exact on both; the first flip x/s = 72.5000226 vs 72.4999967).
Compare such a board with float (``kld_mean``, ``ppl_ratio``), not digit by digit with the host.
"""

from __future__ import annotations

import json
import os
from pathlib import Path, PurePosixPath

from host.config import Recipe
from host.errors import ConfigError, DeployError, RkdeployError
from host.manifest import inputs_hash, load_artifact
from host.quality.metrics import TokenStats
from host.quality.reference import eval_windows, float_reference, llm_eval
from host.quality.rows import quality_row, store_rows
from host.quality.runtimes import OrtCausalLm, arithmetic_env

DEFAULT_TOKENS = 64
#: An emulated board runs a 64-token window of SmolLM2-135M in about a minute; leave room.
BOARD_TIMEOUT = 1800.0


def find_board(name: str, inventory: Path | str | None = None):
    from host.deploy.inventory import load_inventory

    inv = load_inventory(inventory)
    if name not in inv.boards:
        known = ", ".join(sorted(inv.boards)) or "(none)"
        raise ConfigError(f"--board {name!r}: no such board in {inv.source}; known: {known}")
    return inv.boards[name]


def llm_artifacts(recipe: Recipe, target: str, *, root=None, schemes=None) -> list:
    """``[(model, Artifact)]``: the built ONNX artifacts of the recipe's LLMs for ``target``."""
    from host.plan import plan

    if not recipe.llms():
        raise ConfigError(f"recipe {recipe.name}: no LLM; quality --board evaluates ONNX LLM artifacts")
    out, seen = [], []
    for job in plan(recipe, target, root=root, kinds=("onnx",), schemes=schemes):
        seen.append(job)
        if job.model.kind != "llm" or not (job.out_dir / "manifest.json").is_file():
            continue
        out.append((job.model, load_artifact(job.out_dir)))
    if not out:
        what = f" (scheme {', '.join(schemes)})" if schemes else ""
        if schemes and seen and all(j.model.kind != "llm" for j in seen):
            raise ConfigError(f"--scheme {', '.join(schemes)}: only encoder artifacts have it; quality --board "
                              "evaluates ONNX LLM artifacts")
        raise DeployError(f"no ONNX LLM artifact built for {target}{what} under {root or 'artifacts/'}; "
                          f"run: rkdeploy export --target {target}")
    return out


def _stats(ref, lps, windows):
    stats = TokenStats.empty()
    for i, w in enumerate(windows):
        stats.add(ref[i], lps[i], w)
    return stats.metrics()


def compare(host_lp, board_lp) -> dict:
    """The board's log-probs vs this host's on the same artifact and tokens (scored positions only)."""
    import numpy as np

    h = np.asarray(host_lp[:, :-1], dtype=np.float32)
    b = np.asarray(board_lp[:, :-1], dtype=np.float32)
    kld = (np.exp(h) * (h - b)).sum(-1)
    return {"kld_mean": float(kld.mean()), "kld_max": float(kld.max()),
            "top1_agree": float((h.argmax(-1) == b.argmax(-1)).mean()),
            "max_abs_logprob_diff": float(np.abs(h - b).max())}


def host_self(a, windows, host_lp) -> dict:
    """This host's ORT_DISABLE_ALL run of an int8 artifact vs its ORT_ENABLE_ALL run (``host_lp``): how far
    float rounding alone moves it here (``compare`` plus ``what``)."""
    import numpy as np

    from board.backends.onnxruntime import OnnxRuntimeBackend
    from host.quality.reference import threads
    from host.quality.runtimes import ort_graph

    graph, _n = ort_graph(a.path, a.manifest)
    be = OnnxRuntimeBackend()
    be.load(str(a.path), {"manifest": a.manifest, "threads": threads(), "engine": "ort", "graph": graph,
                          "graph_optimization": "none"})
    try:
        lp = np.stack([be.logprobs(w) for w in windows])
    finally:
        be.close()
    return {**compare(host_lp, lp), "what": "this host: ORT_ENABLE_ALL vs ORT_DISABLE_ALL (float kernels differ, "
                                            "integer ops exact in both)"}


def board_logprobs(t, workdir: PurePosixPath, remote_artifact: PurePosixPath, windows, tag: str, local_tmp: Path):
    """Run ``board logprobs`` on the board; ``(log-probs [n, window, vocab] float32, summary dict)``."""
    import numpy as np

    out = workdir / f".logprobs-{tag}-{os.getpid()}.f16"
    argv = [t.board.python, "-m", "board", "logprobs", "--artifact", str(remote_artifact), "--ids", "-",
            "--out", str(out)]
    try:
        res = t.run(argv, input=json.dumps([[int(x) for x in w] for w in windows]).encode(), cwd=workdir / "runner",
                    timeout=BOARD_TIMEOUT, silent_ok=True)
        try:
            summary = json.loads(res.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise DeployError(f"board {t.board.name}: board logprobs printed no summary line") from None
        local = local_tmp / f"{tag}.f16"
        t.get(out, local)
    finally:
        try:
            t.run([t.board.python, "-c", "import os, sys\ntry: os.unlink(sys.argv[1])\nexcept OSError: pass", str(out)],
                  check=False)
        except RkdeployError:
            pass   # the board went away: the first error is the one to report
    shape = tuple(summary.get("shape") or ())
    data = np.frombuffer(local.read_bytes(), dtype="<f2")
    if not shape or data.size != int(np.prod(shape)):
        raise DeployError(f"board {t.board.name}: log-probs file holds {data.size} values, summary says shape {list(shape)}")
    return data.reshape(shape).astype(np.float32), summary


def evaluate_board(recipe: Recipe, target: str, board, *, tokens: int = DEFAULT_TOKENS, root=None,
                   schemes=None, inventory=None, transport=None, store=None, log=None) -> list[dict]:
    """Board rows (stored) and the host's rows on the same tokens (not stored), per ONNX LLM artifact.

    ``board``: an inventory name, or a ``host.deploy.inventory.Board``."""
    import tempfile

    from host.deploy.push import artifact_dir, push_board, runner_dir
    from host.deploy.remote_bench import remote_workdir
    from host.deploy.ssh import SshTransport
    from host.plan import artifacts_root

    if tokens < 2:
        raise ConfigError(f"--tokens {tokens}: at least 2")
    say = log or (lambda s: None)
    target = target.lower()
    board = find_board(board, inventory) if isinstance(board, str) else board
    root = artifacts_root(root)
    arts = llm_artifacts(recipe, target, root=root, schemes=schemes)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="rkdeploy-qboard-") as tmp, (transport or SshTransport)(board) as t:
        pushed = [artifact_dir(a.path, root) for _m, a in arts]
        res = push_board(t, [runner_dir(artifacts=pushed), *pushed])
        say(f"{board.name}: pushed {res.sent / 1e6:.1f} MB ({res.skipped / 1e6:.1f} MB already there)")
        wd = remote_workdir(t)
        for m, a in arts:
            ev = llm_eval(recipe, m, eval_tokens=tokens)
            windows = eval_windows(recipe, ev)
            ref = float_reference(recipe, ev, windows, log=say)
            say(f"{m.name}/{a.manifest.scheme}: this host's onnxruntime on {ev.n_tokens} tokens")
            lm = OrtCausalLm(a.path, a.manifest)
            import numpy as np

            host_lp = np.stack([lm.logprobs(w) for w in windows])
            arith = arithmetic_env("onnxruntime", lm.sess, a.manifest)
            lm.close()
            say(f"{m.name}/{a.manifest.scheme}: board {board.name} onnxruntime on {ev.n_tokens} tokens")
            rel = a.path.resolve().relative_to(root.resolve()).as_posix()
            try:
                board_lp, summary = board_logprobs(t, wd, wd / "artifacts" / rel, windows, a.sha256[:16], Path(tmp))
            except RkdeployError as e:
                msg = str(e).splitlines()[0].removeprefix(f"board {board.name}: ")
                raise DeployError(f"board {board.name}: {m.name}/{a.manifest.scheme}: {msg}") from None
            selfd = host_self(a, windows, host_lp) if a.manifest.scheme.startswith("int8") else None
            host_m = _stats(ref, host_lp, windows)
            board_m = _stats(ref, board_lp, windows)
            common = {"ppl_float": board_m["ppl_float"], "window": ev.window, "n_windows": ev.n_windows,
                      "text": str(recipe.text.heldout)}
            host_row = quality_row(m, target, a.manifest.scheme, "measured", "onnxruntime", host_m, artifact=a,
                                   env={**common, **arith, "where": "host"})
            benv = dict(summary.get("env") or {})
            vs = {**compare(host_lp, board_lp), "host": {k: host_m[k] for k in ("ppl_ratio", "kld_mean", "top1_agree")}}
            if selfd is not None:
                vs["host_self"] = selfd
            benv.update(common, where="board", transfer="float16 log-probs, full vocabulary",
                        board_runtime=summary.get("backend"), board_threads=summary.get("threads"),
                        seconds=summary.get("seconds"), vs_host=vs)
            row = quality_row(m, target, a.manifest.scheme, "measured", "onnxruntime", board_m, artifact=a, env=benv)
            row["board"] = board.name
            row["env"]["quality_key"] = inputs_hash({"board": board.name, "a": a.sha256, "ref": ev.key, "t": target,
                                                     "time": row["test_time"]})
            rows += [host_row, row]
    store_rows([r for r in rows if r.get("board")], store)
    return rows


def _cell(d: dict, key: str, digits: int) -> str:
    return "" if d.get(key) is None else f"{d[key]:.{digits}f}"


def board_table(rows: list[dict], *, title: str = "quality on the board"):
    """Host and board rows side by side: PPL ratio, KLD, top-1 vs float; the board vs this host."""
    from rich import box
    from rich.table import Table

    t = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 1))
    for col in ("model", "scheme", "where", "tokens", "PPL ratio", "KLD", "top-1", "KLD vs host", "top-1 vs host",
                "max |Δ log p|", "host vs itself"):
        t.add_column(col, justify="left" if col in ("model", "scheme", "where") else "right", overflow="fold")
    for r in rows:
        env = r.get("env") or {}
        vs = env.get("vs_host") or {}
        where = "host" if not r.get("board") else (
            f"{r['board']} ({env.get('arch', '?')}{', emulated' if env.get('emulated') else ''})")
        t.add_row(r["model"], r["scheme"], where, str(r.get("n_tokens", "")), f"{r['ppl_ratio']:.4f}",
                  f"{r['kld_mean']:.4f}", f"{r['top1_agree']:.3f}", _cell(vs, "kld_mean", 5), _cell(vs, "top1_agree", 3),
                  _cell(vs, "max_abs_logprob_diff", 4), _cell(vs.get("host_self") or {}, "kld_mean", 5))
    return t
