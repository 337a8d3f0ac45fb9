"""Greedy answers of the float model for ``calib build``: batched, resumable, with progress and an ETA.

- **Batched**: prompts run ``batch`` at a time (sorted by length so a batch pads little), LEFT-padded
  with an attention mask, KV cache on (``use_cache``), under ``torch.inference_mode``. A finished
  row stops counting once it has emitted EOS. ``batch=1`` is the unbatched vendor loop.
- **Resumable**: each answer is appended to ``<out>.partial.jsonl`` as one line written with one
  ``write`` + ``fsync`` (a line cut by a kill is ignored on the next read). A line carries the key of
  what produced it (model sha256, input, ``max_new_tokens``, dtype), so a rerun keeps exactly the
  answers that are still valid and generates the rest.
- **Progress**: a plain line on stderr every ``RKDEPLOY_PROGRESS_SECONDS`` (default 30) with the
  answers done, the elapsed time and an ETA — without a terminal too (CI logs, ``nohup``).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from host.manifest import inputs_hash

DEFAULT_BATCH = 8
PROGRESS_SECONDS = 30.0


def partial_path(out: Path) -> Path:
    return out.with_name(out.name + ".partial.jsonl")


def item_key(model_sha: str, inp: str, max_new_tokens: int, dtype: str, batch: int = 1) -> str:
    """An answer's identity: a batched answer depends on its batch's padding (left pad, float rounding),
    so the batch size is part of it (batches themselves are fixed: ``generate_answers``)."""
    return inputs_hash({"model": model_sha, "input": inp, "new": max_new_tokens, "dtype": dtype,
                        **({"batch": batch} if batch > 1 else {})})


def read_partial(path: Path) -> dict[str, str]:
    """``{key: answer}`` of the complete lines of a partial file (a torn last line is skipped)."""
    done: dict[str, str] = {}
    try:
        raw = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return done
    for line in raw.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("key"), str) and isinstance(rec.get("target"), str):
            done[rec["key"]] = rec["target"]
    return done


def append_line(path: Path, rec: dict) -> None:
    data = (json.dumps(rec, ensure_ascii=False) + "\n").encode("utf-8")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + data   # a line torn by a kill stays alone (and is skipped on reading)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


class Progress:
    """Plain progress lines on stderr every ``every`` seconds: answers done, elapsed, ETA.

    The ETA counts generated token steps (``plan``/``tick``, called by the generation loop each step) so a
    line comes every ``every`` seconds even while one batch of answers is still being generated."""

    def __init__(self, label: str, total: int, *, every: float | None = None, write=None, clock=time.monotonic):
        env = os.environ.get("RKDEPLOY_PROGRESS_SECONDS")
        self.every = every if every is not None else float(env) if env else PROGRESS_SECONDS
        self.label, self.total, self.clock = label, total, clock
        self.write = write or (lambda s: print(s, file=sys.stderr, flush=True))
        self.t0 = self.last = clock()
        self.done = self.start_done = 0
        self.units = self.units_done = 0

    def line(self) -> str:
        el = self.clock() - self.t0
        if self.units and self.units_done:
            eta = el / self.units_done * (self.units - self.units_done)
        else:
            fresh = self.done - self.start_done
            eta = (el / fresh * (self.total - self.done)) if fresh else None
        eta_s = f"ETA {eta / 60:.1f} min" if eta is not None else "ETA ?"
        return f"{self.label}: {self.done}/{self.total} answers, {el / 60:.1f} min elapsed, {eta_s}"

    def resumed(self, n: int) -> None:
        self.done = self.start_done = n
        if n:
            self.write(f"{self.label}: resuming, {n}/{self.total} answers kept from the partial file")

    def plan(self, units: int) -> None:
        self.units = units

    def tick(self, units_done: int) -> None:
        self.units_done = units_done
        self._maybe_write()

    def advance(self, n: int = 1) -> None:
        self.done += n
        self._maybe_write(force=self.done == self.total)

    def _maybe_write(self, force: bool = False) -> None:
        now = self.clock()
        if force or now - self.last >= self.every:
            self.last = now
            self.write(self.line())


def _ticker(progress: Progress, base: int, width: int):
    """A transformers stopping criterion that never stops: it reports each generated step to ``progress``."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class Tick(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            progress.tick(base + input_ids.shape[1] - width)
            return torch.zeros(input_ids.shape[0], dtype=torch.bool)

    return StoppingCriteriaList([Tick()])


def generate_answers(lm, encode: Callable[[str], list[int]], decode: Callable[[list[int]], str],
                     inputs: Sequence[str], keys: Sequence[str], *, max_new_tokens: int, pad_id: int,
                     eos_ids: Sequence[int], batch: int, partial: Path, progress: Progress) -> list[str]:
    """Greedy answers for ``inputs`` (same order), reusing and extending ``partial``."""
    import torch

    done = read_partial(partial)
    answers: dict[int, str] = {i: done[k] for i, k in enumerate(keys) if k in done}
    progress.resumed(len(answers))
    # Batches are fixed over ALL inputs (sorted by length, then by position), whatever the resume point:
    # an answer always comes from the same batch, so a resumed build writes what an uninterrupted one would.
    step = max(1, batch)
    order = sorted(range(len(inputs)), key=lambda i: (len(encode(inputs[i])), i))
    batches = [order[b:b + step] for b in range(0, len(order), step)]
    todo = [bt for bt in batches if any(i not in answers for i in bt)]
    eos = torch.tensor(sorted(set(eos_ids)) or [pad_id])
    progress.plan(len(todo) * max_new_tokens)
    with torch.inference_mode():
        for n, idx in enumerate(todo):
            base = n * max_new_tokens
            seqs = [encode(inputs[i]) for i in idx]
            width = max(len(s) for s in seqs)
            ids = torch.tensor([[pad_id] * (width - len(s)) + s for s in seqs])
            mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs])
            gen = lm.generate(ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                              use_cache=True, pad_token_id=pad_id, eos_token_id=eos.tolist(),
                              stopping_criteria=_ticker(progress, base, width))
            progress.tick(base + max_new_tokens)
            for row, i in zip(gen[:, width:].tolist(), idx, strict=True):
                if i in answers:  # kept from the partial file (its batch was cut short by a kill)
                    continue
                cut = next((k for k, t in enumerate(row) if t in set(eos.tolist())), len(row))
                answers[i] = decode(row[:cut]).strip() or "(no answer)"
                append_line(partial, {"key": keys[i], "target": answers[i]})
                progress.advance()
    return [answers[i] for i in range(len(inputs))]


# --- the ONNX int8 generator (``calib build --generator onnx``) -----------------------------------------------

#: The generator artifact ``--generator onnx`` builds on demand: onnxruntime-genai's int8 (MatMulNBits, the
#: export's ``int8`` scheme) WITHOUT ``prune_lm_head``, so a right-padded batch's prefill yields every row's
#: logits at its own last prompt token (``GenaiLM``). Cached by model sha256 + genai version.
GENERATOR_SCHEME = "int8"


def generator_cache_dir(model_sha: str, genai_version: str) -> Path:
    from host.models import cache_root

    return cache_root().parent / "calib-gen" / f"{model_sha[:16]}-{GENERATOR_SCHEME}-genai{genai_version}"


def onnx_generator(folder: Path, model_sha: str, log) -> Path:
    """The cached int8 genai folder of model ``folder`` (built once, atomically, by the export's builder)."""
    from host.build.genai import _genai_version, build_genai
    from host.fsutil import atomic_dir

    out = generator_cache_dir(model_sha, _genai_version())
    if (out / "genai_config.json").is_file():
        return out
    t0 = time.monotonic()
    with atomic_dir(out) as tmp:
        build_genai(folder, tmp, GENERATOR_SCHEME, log, threads=os.cpu_count() or 1, board_threads=os.cpu_count() or 1)
    log(f"calib build: ONNX int8 generator built in {time.monotonic() - t0:.0f} s: {out}")
    return out


def artifact_digest(path: Path) -> str:
    """sha256 over an ONNX artifact's graph and weight files (what the answers depend on)."""
    from host.fsutil import sha256_file

    files = sorted(p for p in path.iterdir() if p.is_file() and (p.suffix in (".onnx", ".data") or p.name == "genai_config.json"))
    return inputs_hash({p.name: sha256_file(p) for p in files})


class GenaiLM:
    """onnxruntime-genai behind the ``generate`` call ``generate_answers`` makes on a transformers model.

    onnxruntime-genai's GroupQueryAttention graphs take a batch RIGHT-padded (each row's length from its
    attention mask, the pad id never in a prompt); left padding gives garbage there. The first new token of a
    row comes from the prefill logits at that row's own last prompt token (``get_output('logits')``, all
    positions: an artifact built without ``prune_lm_head``), handed back with ``set_logits``; greedy from then
    on, each row at its own position. Measured on SmolLM2 (4 prompts x 24 tokens): every row identical to the
    same artifact run one prompt at a time. An artifact with a pruned lm_head runs rows of unequal length one
    at a time instead (same answers, slower)."""

    def __init__(self, path: Path, *, pad_id: int, eos_ids: Sequence[int], threads: int | None = None):
        import onnxruntime_genai as og

        self.og, self.pad = og, pad_id
        cfg = og.Config(str(path))
        cfg.overlay(json.dumps({"model": {"pad_token_id": pad_id, "eos_token_id": list(eos_ids),
                                          "decoder": {"session_options": {
                                              "intra_op_num_threads": threads or os.cpu_count() or 1}}}}))
        self.model = og.Model(cfg)
        self.pruned: bool | None = None

    def generate(self, ids, *, attention_mask, max_new_tokens, stopping_criteria=(), **kw):
        import numpy as np
        import torch

        rows = [[t for t, m in zip(r, mk, strict=True) if m] for r, mk in zip(ids.tolist(), attention_mask.tolist(), strict=True)]
        if self.pruned and len({len(r) for r in rows}) > 1:
            new = [self._run([r], max_new_tokens, stopping_criteria, ids.shape[1])[0] for r in rows]
        else:
            new = self._run(rows, max_new_tokens, stopping_criteria, ids.shape[1])
            if new is None:
                new = [self._run([r], max_new_tokens, stopping_criteria, ids.shape[1])[0] for r in rows]
        pad_out = kw.get("pad_token_id", self.pad)
        out = [n + [pad_out] * (max_new_tokens - len(n)) for n in new]
        return torch.cat([ids, torch.tensor(np.array(out, dtype=np.int64).reshape(len(rows), max_new_tokens))], dim=1)

    def _run(self, rows: list[list[int]], n: int, criteria, width: int) -> list[list[int]] | None:
        import numpy as np
        import torch

        og, b, w = self.og, len(rows), max(len(r) for r in rows)
        params = og.GeneratorParams(self.model)
        params.set_search_options(batch_size=b, max_length=w + n, do_sample=False)
        gen = og.Generator(self.model, params)
        gen.append_tokens(np.array([r + [self.pad] * (w - len(r)) for r in rows], dtype=np.int32))
        logits = gen.get_output("logits")
        if logits.shape[1] == 1:
            self.pruned = True
            if len({len(r) for r in rows}) > 1:
                return None     # a pruned lm_head gave the pad column's logits: run the rows one at a time
        else:
            self.pruned = False
            gen.set_logits(np.ascontiguousarray(np.stack([logits[i, len(r) - 1] for i, r in enumerate(rows)])))
        out: list[list[int]] = [[] for _ in rows]
        for k in range(n):
            if gen.is_done():
                break
            gen.generate_next_token()
            for i, t in enumerate(gen.get_next_tokens().tolist()):
                out[i].append(int(t))
            for c in criteria:
                c(torch.empty((b, width + k + 1), dtype=torch.long), None)
        return out
