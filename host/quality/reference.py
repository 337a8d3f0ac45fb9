"""The float side of quality: held-out token windows and the float model's cached log-probs.

LLMs: the held-out documents are tokenized and cut into windows of ``quality.window`` tokens
(enough windows for ``quality.eval_tokens`` scored tokens). Windows follow the tokenizer's own BOS
rule (``host.families.tokenizer_bos``): a tokenizer that adds a BOS (Gemma ``<bos>``, Llama 3
``<|begin_of_text|>``) gets it at the start of every window, as the model saw text in training; one
that adds none (SmolLM2, Qwen) gets plain text windows — and the cache key, windows and numbers of
such a model are exactly those of before the rule. The float model (PyTorch fp32) runs
once per model × text × window config and its next-token log-probabilities are cached on disk
(float16).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from host.config import ModelSpec, Recipe
from host.errors import ConfigError
from host.fsutil import atomic_dir, atomic_write_text, sha256_file
from host.manifest import inputs_hash
from host.textdata import read_docs

#: Bump when the evaluation changes (invalidates cached float references and rows).
EVAL_VERSION = 2   # 2: int8 graphs evaluated with exact int32 accumulation; rows carry the arithmetic path
SENSITIVITY_TOKENS = 1024
#: Float references kept in the quality cache, in GB (``$RKDEPLOY_QUALITY_CACHE_GB``); least recently used
#: ones go first. One is 1.4-2.3 GB for a 135M-0.5B model at the default 4,096 tokens (vocab x tokens x 2 bytes).
FLOAT_CACHE_GB = 8.0


def quality_cache() -> Path:
    """``$RKDEPLOY_QUALITY_CACHE`` or ``quality/`` beside the model cache (float references, finished rows)."""
    from host.models import cache_root

    env = os.environ.get("RKDEPLOY_QUALITY_CACHE")
    return Path(env).expanduser() if env else cache_root().parent / "quality"


def threads() -> int:
    return int(os.environ.get("RKDEPLOY_THREADS") or os.cpu_count() or 1)


@dataclass(frozen=True)
class LlmEval:
    """The evaluation setup of one LLM: token windows and the cache key of its float reference."""

    model: ModelSpec
    model_dir: Path
    model_sha: str
    window: int
    n_windows: int
    key: str
    bos: tuple[int, ...] = ()   # ids the tokenizer puts before a text; start of every window

    @property
    def n_tokens(self) -> int:
        return self.n_windows * (self.window - 1)


def llm_eval(recipe: Recipe, model: ModelSpec, *, eval_tokens: int | None = None) -> LlmEval:
    from host.families import tokenizer_bos
    from host.models import model_sha256, resolve_model

    folder = resolve_model(model)
    sha = model_sha256(folder)
    q = recipe.quality
    want = eval_tokens or q.eval_tokens
    window = min(q.window, want + 1)
    n_win = -(-want // (window - 1))
    bos = tuple(tokenizer_bos(folder)) if (folder / "tokenizer.json").is_file() else ()
    what = {"v": EVAL_VERSION, "model": sha, "text": sha256_file(recipe.text.heldout), "window": window,
            "n_windows": n_win}
    if bos:   # only then: a model without BOS keeps its cached float reference and rows
        what["bos"] = list(bos)
    return LlmEval(model, folder, sha, window, n_win, inputs_hash(what), bos)


def eval_windows(recipe: Recipe, ev: LlmEval):
    """``[n_windows, window]`` int64 token ids from the held-out text (documents joined by blank lines),
    each window starting with the tokenizer's BOS ids when it adds any (``LlmEval.bos``)."""
    import numpy as np
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(ev.model_dir / "tokenizer.json"))
    ids = tok.encode("\n\n".join(read_docs(recipe.text.heldout)), add_special_tokens=False).ids
    body = ev.window - len(ev.bos)
    need = ev.n_windows * body
    if len(ids) < need:
        raise ConfigError(f"{recipe.text.heldout}: held-out text has {len(ids)} tokens, quality needs {need} "
                          f"({ev.n_windows} windows of {ev.window}); add text or lower quality.eval_tokens")
    text = np.asarray(ids[:need], dtype=np.int64).reshape(ev.n_windows, body)
    if not ev.bos:
        return text
    return np.concatenate([np.tile(np.asarray(ev.bos, dtype=np.int64), (ev.n_windows, 1)), text], axis=1)


def load_torch(folder: Path, auto_class: str):
    """A float32 transformers model from a local folder (offline, explicit threads, no progress bars)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    import transformers
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    torch.set_num_threads(threads())
    return getattr(transformers, auto_class).from_pretrained(str(folder), dtype=torch.float32).eval()


def load_torch_llm(folder: Path):
    return load_torch(folder, "AutoModelForCausalLM")


def load_torch_encoder(folder: Path):
    return load_torch(folder, "AutoModel")


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
        prune_float_references(keep=folder, log=log)
    else:
        os.utime(folder)   # least recently used goes first
    return np.load(path, mmap_mode="r")


def prune_float_references(*, keep: Path | None = None, limit_gb: float | None = None, log=None) -> list[Path]:
    """Remove the least recently used ``float-*`` references until the rest fit ``limit_gb`` (never ``keep``)."""
    import shutil

    limit = limit_gb if limit_gb is not None else float(os.environ.get("RKDEPLOY_QUALITY_CACHE_GB") or FLOAT_CACHE_GB)
    root = quality_cache()
    refs = [(p.stat().st_mtime, p, sum(f.stat().st_size for f in p.iterdir() if f.is_file()))
            for p in root.glob("float-*") if p.is_dir()] if root.is_dir() else []
    total, removed = sum(r[2] for r in refs), []
    for _mtime, p, size in sorted(refs, key=lambda r: r[0]):
        if total <= limit * 1e9:
            break
        if keep is not None and p == keep:
            continue
        shutil.rmtree(p, ignore_errors=True)
        total -= size
        removed.append(p)
        if log:
            log(f"quality cache over {limit:g} GB: removed the float reference {p.name} ({size / 1e9:.2f} GB)")
    return removed
