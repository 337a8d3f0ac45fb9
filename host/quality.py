"""Quality of every artifact vs the float model, on held-out text never used for calibration.

LLMs: the held-out documents are tokenized and cut into windows of ``quality.window`` tokens
(enough windows for ``quality.eval_tokens`` scored tokens). The float model (PyTorch fp32) runs
once per model × text × window config and its next-token log-probabilities are cached on disk
(float16). Each ONNX artifact's graph then runs through onnxruntime (full window, empty KV
cache) and gives: PPL, PPL ratio to float, mean and p99 KLD(float ‖ artifact) per token, and
top-1 agreement. Vendor schemes of the target are simulated with ``host.fakequant``
(``method: simulated``). Encoders: cosine of mean-pooled sentence embeddings vs float (mean,
min) and nearest-neighbour agreement on held-out sentences.

Rows are cached by artifact sha256 (or model sha256 + scheme for simulated rows), so a second
``export`` with nothing changed prints the table without running a model or importing torch.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from host import gate
from host.config import ModelSpec, Recipe
from host.errors import ConfigError, RkdeployError
from host.fsutil import atomic_dir, atomic_write_text, sha256_file
from host.manifest import inputs_hash, load_artifact, now_rfc3339
from host.textdata import read_docs, recipe_sentences

#: Bump when the evaluation changes (invalidates cached float references and rows).
EVAL_VERSION = 2   # 2: int8 graphs evaluated with exact int32 accumulation; rows carry the arithmetic path
SENSITIVITY_TOKENS = 1024


def quality_cache() -> Path:
    """``$RKDEPLOY_QUALITY_CACHE`` or ``quality/`` beside the model cache (float references, finished rows)."""
    from host.models import cache_root

    env = os.environ.get("RKDEPLOY_QUALITY_CACHE")
    return Path(env).expanduser() if env else cache_root().parent / "quality"


def _threads() -> int:
    return int(os.environ.get("RKDEPLOY_THREADS") or os.cpu_count() or 1)


# --- held-out text --------------------------------------------------------------------------------

@dataclass(frozen=True)
class LlmEval:
    """The evaluation setup of one LLM: token windows and the cache key of its float reference."""

    model: ModelSpec
    model_dir: Path
    model_sha: str
    window: int
    n_windows: int
    key: str

    @property
    def n_tokens(self) -> int:
        return self.n_windows * (self.window - 1)


def llm_eval(recipe: Recipe, model: ModelSpec, *, eval_tokens: int | None = None) -> LlmEval:
    from host.models import model_sha256, resolve_model

    folder = resolve_model(model)
    sha = model_sha256(folder)
    q = recipe.quality
    want = eval_tokens or q.eval_tokens
    window = min(q.window, want + 1)
    n_win = -(-want // (window - 1))
    key = inputs_hash({"v": EVAL_VERSION, "model": sha, "text": sha256_file(recipe.text.heldout), "window": window,
                "n_windows": n_win})
    return LlmEval(model, folder, sha, window, n_win, key)


def eval_windows(recipe: Recipe, ev: LlmEval):
    """``[n_windows, window]`` int64 token ids from the held-out text (documents joined by blank lines)."""
    import numpy as np
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(ev.model_dir / "tokenizer.json"))
    ids = tok.encode("\n\n".join(read_docs(recipe.text.heldout)), add_special_tokens=False).ids
    need = ev.n_windows * ev.window
    if len(ids) < need:
        raise ConfigError(f"{recipe.text.heldout}: held-out text has {len(ids)} tokens, quality needs {need} "
                          f"({ev.n_windows} windows of {ev.window}); add text or lower quality.eval_tokens")
    return np.asarray(ids[:need], dtype=np.int64).reshape(ev.n_windows, ev.window)


# --- numerics -------------------------------------------------------------------------------------

def log_softmax(x):
    import numpy as np

    x = np.asarray(x, dtype=np.float32)
    m = x.max(-1, keepdims=True)
    return x - (m + np.log(np.exp(x - m).sum(-1, keepdims=True)))


@dataclass
class TokenStats:
    """Per-token arrays accumulated over windows."""

    nll_ref: list
    nll: list
    kld: list
    top1: list

    @classmethod
    def empty(cls) -> TokenStats:
        return cls([], [], [], [])

    def add(self, lp_ref, lp, ids) -> None:
        import numpy as np

        lp_ref = log_softmax(lp_ref[:-1])
        lp = np.asarray(lp[:-1], dtype=np.float32)
        nxt = ids[1:]
        rows = np.arange(len(nxt))
        self.nll_ref.append(-lp_ref[rows, nxt])
        self.nll.append(-lp[rows, nxt])
        self.kld.append((np.exp(lp_ref) * (lp_ref - lp)).sum(-1))
        self.top1.append(lp_ref.argmax(-1) == lp.argmax(-1))

    def metrics(self) -> dict:
        import numpy as np

        nll_ref, nll = np.concatenate(self.nll_ref), np.concatenate(self.nll)
        kld = np.concatenate(self.kld)
        ppl_ref, ppl = float(np.exp(nll_ref.mean())), float(np.exp(nll.mean()))
        return {"ppl": ppl, "ppl_ratio": ppl / ppl_ref, "kld_mean": float(kld.mean()),
                "kld_p99": float(np.percentile(kld, 99)), "top1_agree": float(np.concatenate(self.top1).mean()),
                "n_tokens": int(nll.size), "ppl_float": ppl_ref}


# --- float reference (cached) -------------------------------------------------------------------

def _load_torch(folder: Path, auto_class: str):
    """A float32 transformers model from a local folder (offline, explicit threads, no progress bars)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    import transformers
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    torch.set_num_threads(_threads())
    return getattr(transformers, auto_class).from_pretrained(str(folder), dtype=torch.float32).eval()


def load_torch_llm(folder: Path):
    return _load_torch(folder, "AutoModelForCausalLM")


def torch_logprobs(model, ids):
    import torch

    with torch.no_grad():
        logits = model(torch.from_numpy(ids[None])).logits[0]
        return torch.log_softmax(logits.float(), -1).numpy()


def float_reference(recipe: Recipe, ev: LlmEval, windows, *, log=None):
    """Memory-mapped ``[n_windows, window, vocab]`` float16 log-probs of the float model (cached)."""
    import numpy as np

    folder = quality_cache() / f"float-{ev.key[:24]}"
    path = folder / "logprobs.npy"
    if not path.is_file():
        if log:
            log(f"{ev.model.name}: float reference (PyTorch fp32, {ev.n_windows} windows of {ev.window})")
        model = load_torch_llm(ev.model_dir)
        with atomic_dir(folder) as tmp:
            out = None
            for i, w in enumerate(windows):
                lp = torch_logprobs(model, w)
                if out is None:
                    out = np.lib.format.open_memmap(tmp / "logprobs.npy", mode="w+", dtype=np.float16,
                                                    shape=(len(windows), *lp.shape))
                out[i] = lp.astype(np.float16)
            out.flush()
            del out
            atomic_write_text(tmp / "meta.json", json.dumps({"model_sha256": ev.model_sha, "key": ev.key,
                                                             "window": ev.window, "n_windows": ev.n_windows}))
        del model
    return np.load(path, mmap_mode="r")


# --- onnxruntime on an artifact -----------------------------------------------------------------

def ort_session(folder: Path, manifest: dict):
    """The artifact's graph in a CPU onnxruntime session with explicit threads (quiet).

    An int8 graph with signed weights (not built by us as ``u8u8``) is rewritten to unsigned weights in
    memory first (``host.build.int8_format``: exact, same integers), so this host accumulates in int32
    exactly as the board does; ``sess.int8_rewritten`` says how many weights were rewritten.
    """
    import onnxruntime as ort

    from host.build.int8_format import FORMAT, signed_weight_count, to_unsigned_weights

    so = ort.SessionOptions()
    so.intra_op_num_threads = _threads()
    so.log_severity_level = 3
    path = folder / manifest.get("entry", "model.onnx")
    model, rewritten = str(path), 0
    if manifest.get("scheme") in ("int8-dyn", "int8-qdq") and manifest.get("int8_weights") != FORMAT:
        import onnx
        from onnx.external_data_helper import load_external_data_for_model

        proto = onnx.load(str(path), load_external_data=False)   # the scan needs only the tensor types
        if signed_weight_count(proto):
            load_external_data_for_model(proto, str(path.parent))
            rewritten = to_unsigned_weights(proto)
            model = proto.SerializeToString()
        del proto
    sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    sess.int8_rewritten = rewritten
    return sess


class OrtCausalLm:
    """The artifact's graph through plain onnxruntime: one full window, empty KV cache."""

    def __init__(self, folder: Path, manifest: dict):
        self.sess = ort_session(folder, manifest)
        dec = json.loads((folder / "genai_config.json").read_text())["model"]["decoder"]
        self.kv_heads, self.head = dec["num_key_value_heads"], dec["head_size"]
        self.inputs = [i.name for i in self.sess.get_inputs()]

    def logprobs(self, ids):
        import numpy as np

        n = len(ids)
        feeds = {"input_ids": ids[None].astype(np.int64), "attention_mask": np.ones((1, n), np.int64)}
        if "position_ids" in self.inputs:
            feeds["position_ids"] = np.arange(n, dtype=np.int64)[None]
        for name in self.inputs:
            if name.startswith("past_key_values."):
                feeds[name] = np.zeros((1, self.kv_heads, 0, self.head), np.float32)
        logits = self.sess.run(["logits"], feeds)[0][0]
        return log_softmax(logits)


# --- rows -----------------------------------------------------------------------------------------

def _row(model: ModelSpec, target: str, scheme: str, method: str, backend: str, metrics: dict, *,
         artifact=None, env: dict) -> dict:
    row = {"kind": "quality", "test": "ppl" if model.kind == "llm" else "embedding", "model": model.name,
           "target": target, "scheme": scheme, "backend": backend, "method": method, "status": "ok",
           "test_time": now_rfc3339(), "threads": _threads(), "env": env}
    row.update({k: v for k, v in metrics.items() if k in ROW_METRICS})
    if artifact is not None:
        row["artifact_sha256"] = artifact.sha256
        row["model_size"] = artifact.size
    return gate.apply(row)


def arithmetic_env(backend: str, session=None, manifest: dict | None = None) -> dict:
    """The arithmetic path that made a quality row: this host's CPU and the ISA features that change
    int8/fp16 kernels, the runtime versions, and how int8 MatMuls accumulated (``host.build.int8_format``)."""
    from board.sysinfo import _cpu, int8_u8s8_exact
    from host.build.onnx_int8 import tool_versions

    cpu = _cpu("/")
    env = {"host_cpu": {k: cpu.get(k) for k in ("arch", "vendor", "model", "isa")},
           "runtime_versions": {k: v for k, v in tool_versions().items() if k in ("torch", "onnxruntime")}}
    if backend == "onnxruntime":
        from host.build.int8_format import FORMAT

        rewritten = getattr(session, "int8_rewritten", 0)
        if rewritten:
            env["int8_matmul"] = f"exact int32 (signed weights rewritten to u8u8 for evaluation: {rewritten})"
        elif (manifest or {}).get("int8_weights") == FORMAT:
            env["int8_matmul"] = "exact int32 (u8u8 weights)"
        env["u8s8_exact_here"] = int8_u8s8_exact(cpu)
    return env


ROW_METRICS = ("ppl", "ppl_ratio", "kld_mean", "kld_p99", "top1_agree", "n_tokens", "cos_mean", "cos_min", "nn_agree")


class RowCache:
    """Finished quality rows on disk, keyed by what they measured."""

    def __init__(self) -> None:
        self.dir = quality_cache() / "rows"

    def get(self, key: str) -> dict | None:
        try:
            return json.loads((self.dir / f"{key}.json").read_text())
        except (OSError, ValueError):
            return None

    def put(self, key: str, row: dict) -> None:
        atomic_write_text(self.dir / f"{key}.json", json.dumps(row, indent=1, sort_keys=True))


def store_rows(rows: list[dict], store: Path | str | None = None) -> None:
    """Add rows to the results store (``host.results.ResultStore``) unless a row with the same key is there."""
    from host.results import ResultStore

    with ResultStore(store) as st:
        have = {(r.env or {}).get("quality_key") for r in st.rows(kind="quality")}
        for row in rows:
            if row["env"].get("quality_key") not in have:
                st.add(row)


# --- evaluation -----------------------------------------------------------------------------------

@dataclass
class _Pending:
    model: ModelSpec
    scheme: str
    method: str
    key: str
    artifact: object = None   # host.manifest.Artifact for measured rows


def _artifacts(recipe: Recipe, target: str, root, schemes) -> dict[str, list]:
    """Built artifacts we measure, per model name: ONNX, and ``.rkllm`` when rkllm-toolkit is installed
    (its host-side logits of the quantized model; without it the scheme keeps its simulated row)."""
    from host.manifest import read_manifest
    from host.plan import plan
    from host.toolkits import toolkit_info

    kinds = ("onnx", "rkllm") if toolkit_info("rkllm") else ("onnx",)
    out: dict[str, list] = {}
    for job in plan(recipe, target, root=root, kinds=kinds, schemes=schemes):
        try:
            read_manifest(job.out_dir)
        except RkdeployError:
            continue
        out.setdefault(job.model.name, []).append(load_artifact(job.out_dir))
    return out


def _simulated_schemes(model: ModelSpec, target: str, schemes) -> list[str]:
    from host.fakequant import spec

    out = []
    for s in model.targets.get(target, []):
        if schemes is not None and s not in schemes:
            continue
        try:
            spec(s)
        except ValueError:
            continue
        out.append(s)
    return out


def evaluate(recipe: Recipe, target: str, *, root: Path | str | None = None, simulated: bool = True,
             schemes: tuple[str, ...] | None = None, store: Path | str | None = None, log=None,
             eval_tokens: int | None = None) -> list[dict]:
    """Quality rows: measured for built ONNX artifacts, simulated for the target's vendor schemes, and
    the rows vendor builders recorded for the vendor artifacts built now (e.g. rknn ``simulator``)."""
    target = target.lower()
    arts = _artifacts(recipe, target, root, schemes)
    cache = RowCache()
    rows: list[dict] = []
    for m in recipe.models:
        if m.kind == "llm":
            rows += _evaluate_llm(recipe, m, target, arts.get(m.name, []), cache, simulated, schemes, log, eval_tokens)
        else:
            rows += _evaluate_encoder(recipe, m, target, arts.get(m.name, []), cache, simulated, schemes, log)
    if rows:
        store_rows(rows, store)
    ours = {r["env"]["quality_key"] for r in rows}
    vendor = [r for r in vendor_rows(recipe, target, root=root, schemes=schemes, store=store)
              if (r.get("env") or {}).get("quality_key") not in ours]
    order = {m.name: i for i, m in enumerate(recipe.models)}
    return sorted(rows + vendor, key=lambda r: order.get(r["model"], len(order)))   # stable: per model, ours first


def vendor_rows(recipe: Recipe, target: str, *, root=None, schemes=None, store=None) -> list[dict]:
    """Quality rows in the store whose ``artifact_sha256`` is a vendor artifact (.rknn, .rkllm) built now.

    Vendor builders record their own rows (the rknn builder: ``method: simulator``, rknn-toolkit2's
    x86 simulator vs float); the newest row per model × scheme × method is shown.
    """
    from host.plan import plan
    from host.results import ResultStore

    shas = set()
    for job in plan(recipe, target.lower(), root=root, kinds=("rknn", "rkllm"), schemes=schemes):
        try:
            shas.add(load_artifact(job.out_dir).sha256)
        except RkdeployError:
            continue
    if not shas:
        return []
    newest: dict[tuple, dict] = {}
    with ResultStore(store) as st:
        for r in st.rows(kind="quality", target=target.lower()):
            if r.artifact_sha256 in shas:
                d = r.to_dict()
                newest[(d["model"], d["scheme"], d["method"], d["backend"])] = d
    return list(newest.values())


def _pending(m: ModelSpec, target: str, arts, ref_key: str, simulated: bool, schemes) -> list[_Pending]:
    """What to measure. Keys name the computation only (not the target: an ONNX artifact copied to
    another target, or a scheme simulated for two chips, is computed once)."""
    from host.fakequant import FAKEQUANT_VERSION

    todo = [_Pending(m, a.manifest.scheme, "measured", inputs_hash({"v": EVAL_VERSION, "a": a.sha256, "ref": ref_key}), a)
            for a in arts]
    if simulated:
        todo += [_Pending(m, s, "simulated", inputs_hash({"v": EVAL_VERSION, "fq": FAKEQUANT_VERSION, "s": s, "ref": ref_key}))
                 for s in _simulated_schemes(m, target, schemes)]
    return todo


def _for_target(row: dict, p: _Pending, target: str) -> dict:
    """A computed (or cached) row made this target's row; ``env.quality_key`` is what the store dedupes on."""
    row = json.loads(json.dumps(row))
    row["target"] = target
    row["env"]["quality_key"] = inputs_hash({"k": p.key, "t": target})
    row["env"]["compute_key"] = p.key
    if p.artifact is not None:
        row["env"]["artifact"] = str(p.artifact.path)
    return row


def _split_cached(todo: list[_Pending], cache: RowCache, target: str) -> tuple[dict, list[_Pending]]:
    done, missing = {}, []
    for p in todo:
        row = cache.get(p.key)
        if row is None:
            missing.append(p)
        else:
            done[p.key] = _for_target(row, p, target)
    return done, missing


def _note(m: ModelSpec, scheme: str) -> str | None:
    from host.models import BUILTINS
    from host.schemes import weight_bits

    b = BUILTINS.get(m.builtin or "")
    if b and b.note and weight_bits(scheme) <= 4:
        return b.note
    return None


def _env(p: _Pending, target: str, extra: dict) -> dict:
    from host.fakequant import definition
    from host.schemes import describe

    env = {"definition": definition(p.scheme) if p.method == "simulated" else describe(p.scheme), **extra}
    note = _note(p.model, p.scheme)
    if note:
        env["note"] = note
    return env


def _evaluate_llm(recipe, m, target, arts, cache, simulated, schemes, log, eval_tokens) -> list[dict]:
    ev = llm_eval(recipe, m, eval_tokens=eval_tokens)
    todo = _pending(m, target, arts, ev.key, simulated, schemes)
    done, missing = _split_cached(todo, cache, target)
    if missing:
        windows = eval_windows(recipe, ev)
        ref = float_reference(recipe, ev, windows, log=log)
        model = None
        for p in missing:
            t0 = time.monotonic()
            stats = TokenStats.empty()
            if p.method == "measured" and p.artifact.manifest.artifact_kind == "rkllm":
                if log:
                    log(f"{m.name}/{p.scheme}: rkllm-toolkit logits on {ev.n_tokens} held-out tokens")
                try:
                    backend = _rkllm_stats(p, windows, ref, stats, log)
                except RkdeployError as e:
                    done[p.key] = _error_row(m, target, p, str(e).splitlines()[0], backend="rkllm-toolkit")
                    continue
            elif p.method == "measured":
                if log:
                    log(f"{m.name}/{p.scheme}: onnxruntime on {ev.n_tokens} held-out tokens")
                lm = OrtCausalLm(p.artifact.path, p.artifact.manifest)
                for i, w in enumerate(windows):
                    stats.add(ref[i], lm.logprobs(w), w)
                arith = arithmetic_env("onnxruntime", lm.sess, p.artifact.manifest)
                del lm
                backend = "onnxruntime"
            else:
                from host.fakequant import fake_quantized

                if log:
                    log(f"{m.name}/{p.scheme}: simulated (torch fake-quant) on {ev.n_tokens} held-out tokens")
                if model is None:
                    model = load_torch_llm(ev.model_dir)
                try:
                    with fake_quantized(model, p.scheme):
                        for i, w in enumerate(windows):
                            stats.add(ref[i], torch_logprobs(model, w), w)
                except ValueError as e:   # e.g. a group size that does not divide a layer
                    done[p.key] = _error_row(m, target, p, str(e))
                    continue
                backend = "torch-fakequant"
            if backend != "onnxruntime":
                arith = arithmetic_env(backend)
            metrics = stats.metrics()
            env = _env(p, target, {"ppl_float": metrics["ppl_float"], "window": ev.window, "n_windows": ev.n_windows,
                                   "text": str(recipe.text.heldout), "seconds": round(time.monotonic() - t0, 1),
                                   **arith})
            row = _row(m, target, p.scheme, p.method, backend, metrics, artifact=p.artifact, env=env)
            cache.put(p.key, row)
            done[p.key] = _for_target(row, p, target)
    return [done[p.key] for p in todo if p.key in done]


def _rkllm_stats(p: _Pending, windows, ref, stats: TokenStats, log) -> str:
    """A built ``.rkllm`` artifact measured through rkllm-toolkit's host-side logits; returns the backend."""
    from host.build.rkllm import RkllmToolkitLm

    lm = RkllmToolkitLm(p.artifact.path, windows, log=log)
    try:
        for i, w in enumerate(windows):
            stats.add(ref[i], lm.logprobs(w), w)
    finally:
        lm.close()
    return lm.backend


def _error_row(m: ModelSpec, target: str, p: _Pending, error: str, backend: str = "torch-fakequant") -> dict:
    row = _row(m, target, p.scheme, p.method, backend, {}, artifact=p.artifact, env=_env(p, target, {}))
    row.update(status="error", error=error)
    return _for_target(row, p, target)


# --- encoders -------------------------------------------------------------------------------------

def _mean_pool(hidden, mask):
    import numpy as np

    mask = mask[..., None].astype(np.float32)
    v = (hidden * mask).sum(1) / np.clip(mask.sum(1), 1e-9, None)
    return v / np.clip(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12, None)


def embedding_metrics(ref, emb) -> dict:
    import numpy as np

    cos = (ref * emb).sum(-1)
    sim_r, sim_a = ref @ ref.T, emb @ emb.T
    np.fill_diagonal(sim_r, -np.inf)
    np.fill_diagonal(sim_a, -np.inf)
    nn = float((sim_r.argmax(-1) == sim_a.argmax(-1)).mean())
    return {"cos_mean": float(cos.mean()), "cos_min": float(cos.min()), "nn_agree": nn}


def _torch_embeddings(model, feeds):
    import numpy as np
    import torch

    batch = {k: np.concatenate([f[k] for f in feeds]) for k in feeds[0]}   # one batch: same numbers, far faster
    with torch.no_grad():
        h = model(**{k: torch.from_numpy(v) for k, v in batch.items()}).last_hidden_state.numpy()
    return _mean_pool(h, batch["attention_mask"])


def _evaluate_encoder(recipe, m, target, arts, cache, simulated, schemes, log) -> list[dict]:
    import numpy as np

    from host.build.onnx_int8 import encode_batch, encoder_input_names
    from host.models import model_sha256, resolve_model

    folder = resolve_model(m)
    sents = recipe_sentences(recipe.text, "heldout", recipe.quality.sentences)
    ref_key = inputs_hash({"v": EVAL_VERSION, "model": model_sha256(folder), "sents": sents, "seq_len": m.seq_len})
    todo = _pending(m, target, arts, ref_key, simulated, schemes)
    done, missing = _split_cached(todo, cache, target)
    if not missing:
        return [done[p.key] for p in todo]
    feeds = encode_batch(folder, sents, m.seq_len, encoder_input_names(folder))
    ref_path = quality_cache() / f"embed-{ref_key[:24]}.npy"
    model = None
    if ref_path.is_file():
        ref = np.load(ref_path)
    else:
        if log:
            log(f"{m.name}: float reference (PyTorch fp32, {len(sents)} sentences)")
        model = _load_torch_encoder(folder)
        ref = _torch_embeddings(model, feeds)
        ref_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = ref_path.with_suffix(".tmp.npy")
        np.save(tmp, ref)
        os.replace(tmp, ref_path)
    for p in missing:
        if log:
            log(f"{m.name}/{p.scheme}: {p.method} on {len(sents)} held-out sentences")
        if p.method == "measured":
            emb, sess = _ort_embeddings(p.artifact, feeds)
            arith = arithmetic_env("onnxruntime", sess, p.artifact.manifest)
            backend = "onnxruntime"
        else:
            from host.fakequant import fake_quantized

            if model is None:
                model = _load_torch_encoder(folder)
            try:
                with fake_quantized(model, p.scheme):
                    emb = _torch_embeddings(model, feeds)
            except ValueError as e:
                done[p.key] = _error_row(m, target, p, str(e))
                continue
            backend = "torch-fakequant"
            arith = arithmetic_env(backend)
        env = _env(p, target, {"sentences": len(sents), "seq_len": m.seq_len, "text": str(recipe.text.heldout),
                               **arith})
        row = _row(m, target, p.scheme, p.method, backend, embedding_metrics(ref, emb), artifact=p.artifact, env=env)
        row["seq_len"], row["batch"] = m.seq_len, 1
        cache.put(p.key, row)
        done[p.key] = _for_target(row, p, target)
    return [done[p.key] for p in todo if p.key in done]


def _load_torch_encoder(folder: Path):
    return _load_torch(folder, "AutoModel")


def _ort_embeddings(artifact, feeds):
    import numpy as np

    sess = ort_session(artifact.path, artifact.manifest)
    names = {i.name for i in sess.get_inputs()}
    out = []
    for f in feeds:
        h = sess.run(["last_hidden_state"], {k: v for k, v in f.items() if k in names})[0]
        out.append(_mean_pool(h, f["attention_mask"])[0])
    return np.stack(out), sess


# --- export hook and table -------------------------------------------------------------------------

def evaluate_export(report, *, store: Path | str | None = None) -> list[dict]:
    """Quality rows for the artifacts of an export run (its root and schemes)."""
    from host.ui import err_console

    jobs = [r.job for r in report.results]
    if not jobs:
        return []
    root = jobs[0].out_dir.parent.parent.parent
    schemes = tuple(sorted({j.scheme for j in jobs}))
    with err_console.status("quality …") as status:
        return evaluate(report.recipe, report.target, root=root, schemes=schemes, store=store,
                        log=lambda s: status.update(f"quality: {s}"))


def _fmt(v, digits: int) -> str:
    return "" if v is None else f"{v:.{digits}f}"


#: (header, row field, digits) of the LLM and the encoder tables.
LLM_TABLE = (("PPL", "ppl", 2), ("PPL ratio", "ppl_ratio", 4), ("KLD", "kld_mean", 4), ("KLD p99", "kld_p99", 4),
             ("top-1", "top1_agree", 3))
ENCODER_TABLE = (("cos", "cos_mean", 4), ("cos min", "cos_min", 4), ("NN agree", "nn_agree", 3))


def quality_table(rows: list[dict], *, title: str = "quality"):
    """One compact table per model (LLM: PPL/KLD/top-1; encoder: cosine/NN), notes in the caption."""
    from rich import box
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    tables = []
    models = list(dict.fromkeys(r["model"] for r in rows))
    for model in models:
        mine = [r for r in rows if r["model"] == model]
        cols = LLM_TABLE if any(r.get("test") == "ppl" or r.get("ppl") is not None for r in mine) else ENCODER_TABLE
        t = Table(title=f"{title}: {model}", title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 1))
        t.add_column("scheme", no_wrap=True)
        t.add_column("method", overflow="fold")
        for head, _f, _d in cols:
            t.add_column(head, justify="right", no_wrap=True)
        t.add_column("note", overflow="fold")
        for r in mine:
            env = r.get("env") or {}
            note = f"error: {r.get('error')}" if r.get("status") == "error" else ("Q4_1 weights" if env.get("note") else "")
            if r.get("status") == gate.DEGRADED:
                note = f"DEGRADED: {r.get('gate')}" + (f"; {note}" if note else "")
            method = r["method"]
            if method == "measured" and r.get("backend") not in (None, "onnxruntime"):
                method = f"measured ({r['backend']})"
            t.add_row(r["scheme"], method, *(_fmt(r.get(f), d) for _h, f, d in cols), note)
        tables.append(t)
    return Group(*tables, Text(_caption(rows)))


def _caption(rows: list[dict]) -> str:
    lines = []
    llm = [r for r in rows if r.get("ppl") is not None and (r.get("env") or {}).get("n_windows")]
    if llm:
        e = llm[0]["env"]
        lines.append(f"LLM: {llm[0]['n_tokens']} held-out tokens ({e['n_windows']} windows of {e['window']}), "
                     f"float PPL {e['ppl_float']:.3f}; KLD = KL(float ‖ artifact) per token")
    sims = {r["scheme"]: (r.get("env") or {}).get("definition") for r in rows if r["method"] == "simulated"}
    if sims:
        from host.fakequant import SIMULATION

        lines.append(f"simulated = torch fake-quant of the scheme, not the vendor toolkit ({SIMULATION}):")
        lines += [f"  {s}: {(d or '').replace('; ' + SIMULATION, '')}" for s, d in sims.items()]
    if any(r["method"] == "simulator" for r in rows):
        lines.append("simulator = the vendor toolkit's x86 simulator of the built artifact vs float")
    notes = {(r.get("env") or {}).get("note") for r in rows} - {None}
    lines += sorted(f"note: {n}" for n in notes)
    return "\n".join(lines)


# --- sensitivity ------------------------------------------------------------------------------------

def default_sensitivity_scheme(model: ModelSpec, target: str) -> str:
    """The target's 8-bit scheme when it has one (what ``int8-dyn`` exclusions are about), else its first."""
    from host.schemes import base_dtype

    listed = model.targets.get(target.lower()) or []
    return next((s for s in listed if base_dtype(s) == "w8a8"), listed[0] if listed else "int8-dyn")


def sensitivity(recipe: Recipe, target: str, *, scheme: str | None = None, model_name: str | None = None,
                tokens: int = SENSITIVITY_TOKENS, buckets: int = 3, log=None) -> dict:
    """KLD(float ‖ model with only one layer group quantized under ``scheme``) minus the float baseline,
    per group (layer type × depth bucket, and layer type at every depth), most sensitive first."""
    from host.fakequant import fake_quantized, layer_groups, linear_layers, spec

    llms = [m for m in recipe.llms() if model_name in (None, m.name)]
    if not llms:
        raise ConfigError(f"recipe {recipe.name}: no LLM{' named ' + model_name if model_name else ''} for --sensitivity")
    m = llms[0]
    scheme = scheme or default_sensitivity_scheme(m, target)
    try:
        spec(scheme)
    except ValueError:
        raise ConfigError(f"--scheme {scheme}: no simulation for it (use w8a8, w8a8-gN, w4a16, w4a16-gN, w8a16, "
                          "fp16 or int8-dyn)") from None
    ev = llm_eval(recipe, m, eval_tokens=min(tokens, recipe.quality.eval_tokens))
    windows = eval_windows(recipe, ev)
    ref = float_reference(recipe, ev, windows, log=log)
    model = load_torch_llm(ev.model_dir)

    def kld(select) -> float:
        stats = TokenStats.empty()
        with fake_quantized(model, scheme, select):
            for i, w in enumerate(windows):
                stats.add(ref[i], torch_logprobs(model, w), w)
        return stats.metrics()["kld_mean"]

    groups = layer_groups(list(linear_layers(model)), buckets)
    base = kld(lambda _n: False)
    full = kld(None)
    out = []
    for gi, (name, members) in enumerate(groups.items()):
        if log:
            log(f"{gi + 1}/{len(groups)} {name}")
        sel = set(members)
        out.append({"group": name, "layers": len(members), "kld_increase": kld(sel.__contains__) - base})
    out.sort(key=lambda r: -r["kld_increase"])
    return {"model": m.name, "scheme": scheme, "n_tokens": ev.n_tokens, "kld_full": full - base, "groups": out}


def sensitivity_report(recipe: Recipe, target: str, *, scheme: str | None = None, top: int = 10, **kw):
    """Run ``sensitivity`` (with a status line) and render it."""
    from host.ui import err_console

    with err_console.status("sensitivity …") as status:
        res = sensitivity(recipe, target, scheme=scheme, log=lambda s: status.update(f"sensitivity: {s}"), **kw)
    return render_sensitivity(res, top=top)


def render_sensitivity(res: dict, *, top: int = 10):
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    t = Table(title=f"sensitivity of {res['model']} under {res['scheme']} ({res['n_tokens']} held-out tokens)",
              title_justify="left")
    for col in ("rank", "layer group", "layers", "KLD increase", "share of full"):
        t.add_column(col, justify="left" if col == "layer group" else "right")
    for i, g in enumerate(res["groups"][:top], 1):
        share = g["kld_increase"] / res["kld_full"] if res["kld_full"] > 0 else 0.0
        t.add_row(str(i), g["group"], str(g["layers"]), f"{g['kld_increase']:.5f}", f"{share:.0%}")
    kinds = [g["group"].split("@")[0] for g in res["groups"] if g["group"].endswith("@all")][:2]
    hint = Text(
        f"Whole model under {res['scheme']}: KLD {res['kld_full']:.5f}. A group 'X@a-b' quantizes only layer type X "
        "in decoder layers a..b ('X@all': every depth). The int8-dyn artifact keeps in float the layers whose "
        f"dotted name ends with a `sensitive_layers` pattern ('*' = one name part); the top types here suggest: sensitive_layers: [{', '.join(kinds)}] "
        "(edit the recipe, then `rkdeploy export` rebuilds only int8-dyn).")
    return Group(t, hint)
