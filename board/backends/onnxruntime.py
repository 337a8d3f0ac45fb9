"""onnxruntime (CPU) backend: LLM generation with KV cache, and encoder forward passes.

LLM artifacts (format ``onnx-genai``: genai folder with ``genai_config.json``) generate through
onnxruntime-genai when it imports, else through a plain onnxruntime + numpy greedy loop over the
same graph (boards on Python 3.10 get onnxruntime <= 1.23.2 and no genai wheel). ``params``:
``threads`` (always set explicitly: genai's default ran 2x slower on a 2-core host) and
``engine`` = ``auto`` | ``genai`` | ``ort``. Encoder artifacts (``onnx-encoder``) run
``input_ids``/``attention_mask``/[``token_type_ids``] -> ``last_hidden_state`` + mean pooling.

``logprobs(ids)`` (LLM artifacts): per-position next-token log-probabilities ``[len(ids), vocab]``
(float32) of one full window with an empty KV cache, always through plain onnxruntime (the ONE
implementation of feeding a genai decoder graph; the host's quality evaluation uses it too). A graph
whose logits hold the last position only (genai's ``prune_lm_head``, our int8/int4 default: faster
prefill) is fed one token at a time with the KV cache (``len(ids)`` runs; its int8-activation MatMuls
then take their one-row kernels, which round differently from the prompt pass: KLD 0.007 between
the two on SmolLM2 int8). The host restores the full-logits graph in memory instead. The
host may pass ``params["graph"]`` (serialized ModelProto bytes) to run an in-memory rewrite of the
entry graph (exact u8u8 weights, ``host.build.int8_format``) instead of the file, and
``params["graph_optimization"]`` = ``all`` (default) | ``extended`` | ``basic`` | ``none``: onnxruntime's
graph optimization level. Other levels run other float kernels (fused RMSNorm, SiLU, ...), the same integer
ops: ``rkdeploy quality --board`` uses ``none`` to measure how far float rounding alone moves an int8-dyn
artifact's log-probs on one machine (``bench/int8_arm_vs_x86.py``).
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .base import Backend, BackendError, BackendUnavailable, encoder_feeds, mean_pool


def available() -> Tuple[bool, str]:
    try:
        import onnxruntime
    except ImportError as e:
        return False, "onnxruntime does not import (%s); pip install onnxruntime" % e
    return True, "onnxruntime %s" % onnxruntime.__version__


def _genai():
    try:
        import onnxruntime_genai
    except ImportError:
        return None
    return onnxruntime_genai


# --- reading an .onnx file's opsets without the onnx package (for a clear "too old" message) --

def _varint(buf: bytes, i: int) -> Tuple[int, int]:
    shift = result = 0
    while True:
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7


def onnx_opsets(path: str) -> Dict[str, int]:
    """``{domain: version}`` from ModelProto.opset_import (field 8); {} if unreadable."""
    out: Dict[str, int] = {}
    try:
        with open(path, "rb") as f:
            buf = f.read()
        i = 0
        while i < len(buf):
            key, i = _varint(buf, i)
            field, wire = key >> 3, key & 7
            if wire == 0:
                _, i = _varint(buf, i)
            elif wire == 2:
                n, i = _varint(buf, i)
                if field == 8:
                    out.update([_opset_entry(buf[i:i + n])])
                i += n
            elif wire == 1:
                i += 8
            elif wire == 5:
                i += 4
            else:
                return out
    except (OSError, IndexError, ValueError):
        return out
    return out


def _opset_entry(buf: bytes) -> Tuple[str, int]:
    domain, version, i = "", 0, 0
    while i < len(buf):
        key, i = _varint(buf, i)
        if key == (1 << 3 | 2):
            n, i = _varint(buf, i)
            domain = buf[i:i + n].decode("utf-8", "replace")
            i += n
        elif key == (2 << 3 | 0):
            version, i = _varint(buf, i)
        else:
            raise ValueError("unexpected field in OperatorSetIdProto")
    return domain, version


def log_softmax(np: Any, x: Any) -> Any:
    """Log-softmax over the last axis in float32 (``np`` is numpy, passed in: this module's core is stdlib)."""
    x = np.asarray(x, dtype=np.float32)
    m = x.max(-1, keepdims=True)
    return x - (m + np.log(np.exp(x - m).sum(-1, keepdims=True)))


OPT_LEVELS = ("all", "extended", "basic", "none")


def _session(path: str, threads: int, graph: Optional[bytes] = None, optimization: str = "all"):
    """A CPU session on ``path`` (or on ``graph``, the serialized bytes of that file rewritten in memory)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    levels = ort.GraphOptimizationLevel
    so.graph_optimization_level = {"all": levels.ORT_ENABLE_ALL, "extended": levels.ORT_ENABLE_EXTENDED,
                                   "basic": levels.ORT_ENABLE_BASIC, "none": levels.ORT_DISABLE_ALL}[optimization]
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    if graph is not None:
        # an in-memory graph may keep its weights in the artifact's external data file (a graph with its
        # weights inlined cannot pass 2 GB: protobuf's limit); ORT resolves them against the file's folder
        so.add_session_config_entry("session.model_external_initializers_file_folder_path",
                                    os.path.dirname(os.path.abspath(path)))
    try:
        return ort.InferenceSession(path if graph is None else graph, sess_options=so, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - ORT raises several unrelated types for a bad graph
        msg = str(e).strip()
        name = os.path.basename(path)
        if "opset" in msg.lower():
            # Gate: boards on Python 3.8/3.9 only get onnxruntime <= 1.19.2, which cannot run the opset-22
            # graphs the genai builder writes (onnxruntime >= 1.20 needs Python >= 3.10).
            raise BackendError(
                "onnxruntime %s cannot run %s: graph opset %s is newer than this onnxruntime supports; genai-builder "
                "graphs (opset 22) need onnxruntime >= 1.20 (Python >= 3.10) — the int8-dyn/fp32 exports still run"
                % (ort.__version__, name, onnx_opsets(path).get("", "?"))) from None
        first = msg.splitlines()[0][:300] if msg else type(e).__name__
        raise BackendError("onnxruntime %s cannot load %s: %s" % (ort.__version__, name, first)) from None


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(self) -> None:
        self.engine: Optional[str] = None
        self.threads = 1
        self.vocab_size = 0
        self._impl: Any = None
        self._info: Dict[str, Any] = {}
        self._dir = ""
        self._params: Dict[str, Any] = {}

    def load(self, artifact_dir: str, params: Dict[str, Any]) -> None:
        import onnxruntime as ort

        manifest = params.get("manifest") or {}
        self.threads = int(params.get("threads") or 1)
        self._dir, self._params = artifact_dir, dict(params)
        fmt = manifest.get("format")
        want = params.get("engine", "auto")
        if want not in ("auto", "genai", "ort"):
            raise BackendError("onnxruntime engine %r; allowed: auto, genai, ort" % want)
        if params.get("graph_optimization", "all") not in OPT_LEVELS:
            raise BackendError("onnxruntime graph_optimization %r; allowed: %s"
                               % (params.get("graph_optimization"), ", ".join(OPT_LEVELS)))
        self._info = {"name": self.name, "version": ort.__version__, "threads": self.threads, "format": fmt}
        if fmt == "onnx-encoder" or manifest.get("model_kind") == "encoder":
            self.engine = "ort"
            self._impl = _Encoder(artifact_dir, manifest, self.threads, params.get("graph"), self._opt())
        elif fmt == "onnx-genai" or os.path.exists(os.path.join(artifact_dir, "genai_config.json")):
            og = _genai() if want in ("auto", "genai") else None
            if want == "genai" and og is None:
                raise BackendUnavailable("onnxruntime-genai does not import; use engine=ort")
            if og is not None:
                self.engine = "genai"
                self._info["genai_version"] = getattr(og, "__version__", None)
                self._impl = _GenaiLLM(og, artifact_dir, self.threads)
            else:
                self.engine = "ort"
                self._impl = _OrtLLM(artifact_dir, manifest, self.threads, params.get("graph"), self._opt())
        else:
            raise BackendError("onnxruntime backend runs formats onnx-genai and onnx-encoder, not %r" % fmt)
        self.vocab_size = self._impl.vocab_size
        self._info["engine"] = self.engine
        self._info["runtime"] = ("onnxruntime-genai %s" % self._info.get("genai_version") if self.engine == "genai"
                                 else "onnxruntime %s" % ort.__version__)

    def generate(self, prompt_ids: Sequence[int], n_gen: int, on_token: Callable[[int], None]) -> None:
        if not hasattr(self._impl, "generate"):
            raise BackendError("this artifact is an encoder; it has no generate test")
        self._impl.generate(prompt_ids, n_gen, on_token)

    def encode(self, batch: List[List[int]]) -> Any:
        if not hasattr(self._impl, "encode"):
            raise BackendError("this artifact is an LLM; it has no encode test")
        return self._impl.encode(batch)

    def logprobs(self, ids: Sequence[int]) -> Any:
        """``[len(ids), vocab]`` float32 next-token log-probs of one window (plain onnxruntime, empty KV cache)."""
        if isinstance(self._impl, _Encoder):
            raise BackendError("this artifact is an encoder; log-probabilities are for LLM artifacts")
        if self._impl is None:
            raise BackendError("onnxruntime backend: logprobs before load")
        if not isinstance(self._impl, _OrtLLM):   # genai generates; log-probs of a window go through plain ORT
            self._impl = _OrtLLM(self._dir, self._params.get("manifest") or {}, self.threads, self._params.get("graph"),
                                 self._opt())
            self.engine = self._info["engine"] = "ort"
        return self._impl.logprobs(ids)

    def _opt(self) -> str:
        return str(self._params.get("graph_optimization") or "all")

    def close(self) -> None:
        self._impl = None
        self._params = {}

    def info(self) -> Dict[str, Any]:
        return dict(self._info)


def _read_genai_config(artifact_dir: str) -> Dict[str, Any]:
    path = os.path.join(artifact_dir, "genai_config.json")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise BackendError("%s unreadable: %s" % (path, e)) from None


def _obj(d: Dict[str, Any], key: str) -> Dict[str, Any]:
    """``d[key]`` when it is a JSON object, else ``{}`` (an absent or malformed optional section)."""
    v = d.get(key) if isinstance(d, dict) else None
    return v if isinstance(v, dict) else {}


def _whole(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 < v < 2 ** 31


class _GenaiLLM:
    def __init__(self, og: Any, artifact_dir: str, threads: int) -> None:
        self.og = og
        cfg = _read_genai_config(artifact_dir)
        model = _obj(cfg, "model")     # untrusted file: every level must be an object, every number a number
        vocab = model.get("vocab_size")
        self.vocab_size = vocab if _whole(vocab) else 0
        # sliding-window GroupQueryAttention (Gemma 2/3) refuses a KV buffer (max_length, shared past/present)
        # smaller than its window: "KV cache capacity (48) must be at least ..." for a 32+16-token bench
        window = _obj(_obj(model, "decoder"), "sliding_window").get("window_size")
        self.min_capacity = window if _whole(window) else 0
        try:
            config = og.Config(artifact_dir)
            # genai 0.18: Config.overlay merges JSON into genai_config (session_options of the decoder).
            config.overlay(json.dumps({"model": {"decoder": {"session_options": {
                "intra_op_num_threads": threads, "inter_op_num_threads": 1}}}}))
            self.model = og.Model(config)
        except Exception as e:  # noqa: BLE001 - genai raises RuntimeError/OrtException variants
            raise BackendError("onnxruntime-genai cannot load %s: %s" % (artifact_dir, str(e).splitlines()[0][:300])) from None

    def generate(self, prompt_ids: Sequence[int], n_gen: int, on_token: Callable[[int], None]) -> None:
        og = self.og
        params = og.GeneratorParams(self.model)
        total = len(prompt_ids) + n_gen
        # min_length = prompt + n_gen: EOS is suppressed, the loop takes exactly n_gen tokens (greedy).
        params.set_search_options(max_length=max(total, self.min_capacity), min_length=total, do_sample=False)
        gen = og.Generator(self.model, params)
        try:
            gen.append_tokens(list(prompt_ids))
            for _ in range(n_gen):
                if gen.is_done():
                    break
                gen.generate_next_token()
                on_token(int(gen.get_next_tokens()[0]))
        finally:
            del gen


class _OrtLLM:
    """Greedy loop over a genai-style decoder graph with KV cache, onnxruntime + numpy only."""

    def __init__(self, artifact_dir: str, manifest: Dict[str, Any], threads: int, graph: Optional[bytes] = None,
                 optimization: str = "all") -> None:
        import numpy as np

        self.np = np
        entry = manifest.get("entry") or "model.onnx"
        self.sess = _session(os.path.join(artifact_dir, entry), threads, graph, optimization)
        ins = {i.name: i for i in self.sess.get_inputs()}
        self.input_names = set(ins)
        self.past = sorted((n for n in ins if n.startswith("past_key_values.")),
                           key=lambda n: (int(n.split(".")[1]), n.split(".")[2]))
        if "input_ids" not in ins or not self.past:
            raise BackendError("%s: expected inputs input_ids and past_key_values.N.key/value, got %s"
                               % (entry, ", ".join(sorted(ins))))
        dt = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
        self.past_shape = {}
        self.past_dtype = {}
        dec = (_read_genai_config(artifact_dir).get("model") or {}).get("decoder") or {} \
            if os.path.exists(os.path.join(artifact_dir, "genai_config.json")) else {}
        for n in self.past:
            shape = list(ins[n].shape)
            # genai graphs leave heads/head_size symbolic ("kv_cache_dim"): take them from genai_config
            heads = shape[1] if isinstance(shape[1], int) else dec.get("num_key_value_heads")
            size = shape[3] if isinstance(shape[3], int) else dec.get("head_size")
            if not isinstance(heads, int) or not isinstance(size, int):
                raise BackendError("%s: %s has symbolic heads/head_size %s and genai_config does not give them"
                                   % (entry, n, shape))
            # sliding-window GroupQueryAttention (genai graphs of Gemma 2/3) wants a KV buffer of at least its
            # window even when empty ("KV cache capacity (0) must be at least local_window_size"): give the
            # window's capacity; the attention mask marks none of it as valid
            window = (dec.get("sliding_window") or {}).get("window_size") if shape[2] == "past_sliding_length" else 0
            self.past_shape[n] = (1, heads, int(window or 0), size)
            self.past_dtype[n] = dt.get(ins[n].type, np.float32)
        self.outputs = [o.name for o in self.sess.get_outputs()]
        logits_shape = self.sess.get_outputs()[0].shape
        # [batch, 1, vocab]: logits of the last position only (a pruned lm_head), whatever the input length
        self.last_only = bool(logits_shape and len(logits_shape) == 3 and logits_shape[1] == 1)
        v = logits_shape[-1] if logits_shape and isinstance(logits_shape[-1], int) else 0
        self.vocab_size = int(v or (manifest.get("vocab_size") or 0))

    def _feeds(self, ids: Any, pos: int, past: Dict[str, Any]) -> Dict[str, Any]:
        """Inputs of one step: ``ids`` [1, n] after ``pos`` cached positions held in ``past``."""
        np = self.np
        n = ids.shape[1]
        feeds = {"input_ids": ids}
        if "attention_mask" in self.input_names:
            feeds["attention_mask"] = np.ones((1, pos + n), dtype=np.int64)
        if "position_ids" in self.input_names:
            feeds["position_ids"] = np.arange(pos, pos + n, dtype=np.int64)[None, :]
        feeds.update(past)
        return feeds

    def _empty_past(self) -> Dict[str, Any]:
        return {n: self.np.zeros(self.past_shape[n], dtype=self.past_dtype[n]) for n in self.past}

    def logprobs(self, ids: Sequence[int]) -> Any:
        np = self.np
        x = np.asarray(ids, dtype=np.int64).reshape(1, -1)
        if self.last_only and x.shape[1] > 1:
            return self._logprobs_stepwise(x)
        name = "logits" if "logits" in self.outputs else self.outputs[0]
        logits = self.sess.run([name], self._feeds(x, 0, self._empty_past()))[0][0]
        return log_softmax(np, logits)

    @property
    def _logits_at(self) -> int:
        """Index of the ``logits`` output (by name, as ``logprobs`` reads it; else the first output)."""
        return self.outputs.index("logits") if "logits" in self.outputs else 0

    def _keep_present(self, outs: Sequence[Any], past: Dict[str, Any]) -> None:
        for name, value in zip(self.outputs, outs):  # noqa: B905 (strict= is Python 3.10+; board runs on 3.8)
            if name.startswith("present."):
                past["past_key_values." + name[len("present."):]] = value

    def _logprobs_stepwise(self, x: Any) -> Any:
        """Log-probs of every position from a graph whose logits hold the LAST position only (genai's
        ``prune_lm_head``): one token per run with the KV cache (n runs; the host's quality evaluation
        restores the full-logits graph in memory instead, ``host.build.genai.full_logits_graph``)."""
        np = self.np
        past = self._empty_past()
        rows = []
        for pos in range(x.shape[1]):
            outs = self.sess.run(self.outputs, self._feeds(x[:, pos:pos + 1], pos, past))
            self._keep_present(outs, past)
            rows.append(outs[self._logits_at][0, -1])
        return log_softmax(np, np.stack(rows))

    def generate(self, prompt_ids: Sequence[int], n_gen: int, on_token: Callable[[int], None]) -> None:
        np = self.np
        ids = np.asarray([list(prompt_ids)], dtype=np.int64)
        past = self._empty_past()
        pos = 0
        for _ in range(n_gen):
            n = ids.shape[1]
            outs = self.sess.run(self.outputs, self._feeds(ids, pos, past))
            tok = int(outs[self._logits_at][0, -1].argmax())
            on_token(tok)
            self._keep_present(outs, past)
            pos += n
            ids = np.asarray([[tok]], dtype=np.int64)


def _tokenizer_vocab(artifact_dir: str, manifest: Dict[str, Any]) -> int:
    """Vocabulary size from tokenizer.json (prompt ids must stay inside the embedding table)."""
    try:
        with open(os.path.join(artifact_dir, manifest.get("tokenizer") or "tokenizer.json"), encoding="utf-8") as f:
            tok = json.load(f)
        vocab = (tok.get("model") or {}).get("vocab") or {}
        return len(vocab) + len(tok.get("added_tokens") or [])
    except (OSError, ValueError, AttributeError):
        return 0


class _Encoder:
    def __init__(self, artifact_dir: str, manifest: Dict[str, Any], threads: int, graph: Optional[bytes] = None,
                 optimization: str = "all") -> None:
        import numpy as np

        self.np = np
        entry = manifest.get("entry") or "model.onnx"
        self.sess = _session(os.path.join(artifact_dir, entry), threads, graph, optimization)
        self.input_names = [i.name for i in self.sess.get_inputs()]
        for need in ("input_ids", "attention_mask"):
            if need not in self.input_names:
                raise BackendError("%s: encoder input %s missing (inputs: %s)" % (entry, need, ", ".join(self.input_names)))
        outs = [o.name for o in self.sess.get_outputs()]
        self.output = "last_hidden_state" if "last_hidden_state" in outs else outs[0]
        self.vocab_size = int(manifest.get("vocab_size") or _tokenizer_vocab(artifact_dir, manifest) or 30522)

    def encode(self, batch: List[List[int]]) -> Any:
        names = ["input_ids", "attention_mask"] + (["token_type_ids"] if "token_type_ids" in self.input_names else [])
        feeds = encoder_feeds(self.np, batch, names)
        hidden = self.sess.run([self.output], feeds)[0]
        return mean_pool(self.np, hidden, feeds["attention_mask"])

    def hidden(self, feeds: Dict[str, Any]) -> Any:
        """``last_hidden_state`` for prepared ``feeds`` (e.g. padded with a mask); inputs the graph lacks are dropped."""
        names = set(self.input_names)
        return self.sess.run([self.output], {k: v for k, v in feeds.items() if k in names})[0]


BACKEND = OnnxRuntimeBackend
