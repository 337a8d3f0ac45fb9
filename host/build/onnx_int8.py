"""ONNX CPU artifacts: generation-ready LLM folders and encoder graphs, float and INT8.

LLM schemes (``format: onnx-genai``; KV-cache I/O named as onnxruntime-genai does):

- ``int8`` / ``int4``: onnxruntime-genai's model builder, weight-only MatMulNBits (block 32).
- ``fp32``: ``torch.onnx.export`` (TorchScript exporter, opset 17) of a thin wrapper around the HF
  model with an explicit KV cache: ``input_ids``, ``attention_mask``, ``position_ids``,
  ``past_key_values.N.key|value`` → ``logits``, ``present.N.key|value``. Plain ONNX ops only, so
  onnxruntime ≥ 1.16 on a board runs it (genai's GroupQueryAttention graphs need a recent one).
  A tied embedding / lm_head is stored once (``tie_lm_head``: SmolLM2 656 → 539 MB, same logits).
- ``int8-dyn``: ``quantize_dynamic`` (MatMul, QInt8 weights per output channel, dynamic uint8
  activations per tensor) of that graph, with the MatMuls of the recipe's ``sensitive_layers``
  kept in float (plain quantize_dynamic ruins the LLM). Per-channel weights: measured on the
  default models, encoder cos 0.960 → 0.993, LLM PPL ratio 1.062 → 1.056 (1,024 tokens). The int8
  weights are then stored unsigned (``int8_format``: exact int32 accumulation on every CPU).

Encoder schemes (``format: onnx-encoder``): ``fp32`` export of the HF encoder
(``input_ids``, ``attention_mask``, ``token_type_ids`` → ``last_hidden_state``), ``int8-dyn``
(quantize_dynamic MatMul, per-channel) and ``int8-qdq`` (quantize_static, QDQ, per-channel QInt8
weights, per-tensor QUInt8 activations, MinMax over 64 held-in sentences); both keep the recipe's
``sensitive_layers`` (default: the FFN output dense layers) in float. Every artifact carries the
tokenizer files.

``sensitive_layers`` patterns (``pattern_matches``) match the END of a linear layer's dotted name
component by component, ``*`` within one component: ``down_proj``, ``layer.*.output.dense``
(not ``attention.output.dense``). The manifest's ``exclusions`` lists the MatMuls kept float.

int8-qdq options measured on all-MiniLM-L6-v2 with the FFN output float (cos mean / NN agreement vs
fp32; 256 held-out sentences unless noted): MinMax 0.990/0.89; Percentile 99.999 0.990/0.91;
CalibMovingAverage 0.991/0.90; on 64 sentences: MinMax 0.990/0.95, Entropy identical to MinMax,
256 calibration sentences 0.990/0.92, Percentile 99.99 0.957/0.81 (clipping MiniLM's outliers
hurts), symmetric int8 activations 0.983/0.88 — no option measurably better, so plain MinMax stays.
16-bit activations (QUInt16) reach 0.9995/1.0 but are not an int8 scheme (contrib Q/DQ ops).
Also keeping ``intermediate.dense`` float: 0.996/0.93 for +10 MB more.

``inputs()`` stays import-light (no torch): the up-to-date check must be fast.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from host.build.int8_format import FORMAT as INT8_FORMAT
from host.build.int8_format import FORMAT_NOTE as INT8_FORMAT_NOTE
from host.build.int8_format import convert_file
from host.build.onnx_checks import recipe_problems  # noqa: F401 - the kind's recipe checks (host.build.registry)
from host.errors import BuildError

#: Bump when a change here changes the artifacts (forces a rebuild of ONNX artifacts).
BUILDER_VERSION = 1
#: Per-(model kind, scheme) revisions: bump one when a change alters only those artifacts, so the
#: others (and the .rknn files converted from the encoder's fp32 graph) stay up to date.
SCHEME_REVISION = {
    ("llm", "fp32"): 2,            # 2: tied embedding / lm_head stored once (656 -> 539 MB)
    ("llm", "int8-dyn"): 3,        # 2: weights per output channel; 3: unsigned weights (u8u8, int8_format)
    ("encoder", "int8-dyn"): 4,    # 2: per channel; 3: sensitive_layers (FFN output dense) kept float; 4: u8u8
    ("encoder", "int8-qdq"): 3,    # 2: sensitive_layers (FFN output dense) kept float; 3: u8u8
}
LLM_EXCLUSION_WHY = "the most sensitive layers under 8-bit, see `rkdeploy quality --sensitivity`"
#: What a manifest says of the exclusion: only the rule, never numbers measured on another model (the
#: all-MiniLM-L6-v2 measurements behind the default are in the docstring above and the README).
ENCODER_EXCLUSION_WHY = ("BERT-style encoders' FFN output projection sees the widest activations; this artifact's "
                         "own effect is its quality row vs the fp32 artifact")
OPSET = 17
#: ``intra_op_num_threads`` written into genai_config.json: the big cores of RK3588/RK3576.
#: onnxruntime-genai is ~2x slower without an explicit thread count (ROCKCHIP.md §9).
BOARD_THREADS = 4
TOOLS = ("torch", "transformers", "onnx", "onnxruntime", "onnxruntime-genai")
#: What onnxruntime-genai reads beside the tokenizer (``host.models.TOKENIZER_FILES``).
GENAI_MODEL_FILES = ("generation_config.json", "config.json")
LLM_SCHEMES = ("fp32", "int8", "int4", "int8-dyn")
ENCODER_SCHEMES = ("fp32", "int8-dyn", "int8-qdq")
QDQ_CALIB_SENTENCES = 64
#: The schemes that keep the recipe's ``sensitive_layers`` in float, per model kind.
SENSITIVE_SCHEMES = {"llm": ("int8-dyn",), "encoder": ("int8-dyn", "int8-qdq")}


def tool_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in TOOLS:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def build_threads() -> int:
    return int(os.environ.get("RKDEPLOY_THREADS") or os.cpu_count() or 1)


def _sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _calib_sentences(job) -> list[str]:
    from host.textdata import recipe_sentences

    return recipe_sentences(job.recipe.text, "heldin", QDQ_CALIB_SENTENCES)


def inputs(job) -> dict:
    """What an ONNX artifact depends on besides the model's weights (no target: ONNX is target-free)."""
    m = job.model
    allowed = LLM_SCHEMES if m.kind == "llm" else ENCODER_SCHEMES
    if job.scheme not in allowed:
        raise BuildError(f"{m.name}: ONNX scheme {job.scheme!r} is not built for {m.kind} models "
                         f"(allowed: {', '.join(allowed)})")
    data: dict = {"builder": "onnx", "builder_version": BUILDER_VERSION, "scheme": job.scheme, "opset": OPSET,
                  "tools": tool_versions(), "board_threads": BOARD_THREADS}
    if (m.kind, job.scheme) in SCHEME_REVISION:
        data["scheme_revision"] = SCHEME_REVISION[(m.kind, job.scheme)]
    if job.scheme in SENSITIVE_SCHEMES[m.kind]:
        data["sensitive_layers"] = list(m.sensitive_layers)
    if m.kind == "encoder":
        data["shape"] = {"batch": m.batch, "seq_len": m.seq_len}
    if job.scheme == "int8-qdq":
        data["calibration_sha256"] = _sha256_text("\n".join(_calib_sentences(job)))
    return data


def build(job, out_dir: Path, *, log) -> dict:
    from host.models import resolve_model

    src = resolve_model(job.model, fetch=True)
    out_dir = Path(out_dir)
    with _quiet_root_logger():   # onnxruntime.quantization warns "consider pre-processing" on the root logger
        if job.model.kind == "llm":
            extra = _build_llm(job, src, out_dir, log)
        else:
            extra = _build_encoder(job, src, out_dir, log)
    _copy_tokenizer(src, out_dir)
    extra.setdefault("entry", "model.onnx")
    extra["tokenizer"] = "tokenizer.json" if (out_dir / "tokenizer.json").is_file() else None
    extra["toolkit"] = {"name": "onnxruntime", "version": tool_versions()["onnxruntime"]}
    extra["tool_versions"] = tool_versions()
    extra["scheme_definition"] = _definition(job.scheme)
    if job.scheme in ("int8-dyn", "int8-qdq"):
        extra["int8_weights"] = INT8_FORMAT
        extra["int8_weights_note"] = INT8_FORMAT_NOTE
    return extra


@contextlib.contextmanager
def _quiet_root_logger():
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _definition(scheme: str) -> str:
    from host.schemes import describe

    return describe(scheme)


def _copy_tokenizer(src: Path, out_dir: Path) -> None:
    from host.models import copy_tokenizer

    copy_tokenizer(src, out_dir, extra=GENAI_MODEL_FILES, keep_existing=True)  # the genai builder's own files stay


# --- LLM ------------------------------------------------------------------------------------------

def _build_llm(job, src: Path, out_dir: Path, log) -> dict:
    if job.scheme in ("int8", "int4"):
        return _genai_builder(src, out_dir, job.scheme, log)
    if job.scheme == "fp32":
        export_llm(src, out_dir / "model.onnx", log=log)
        tied = tie_lm_head(out_dir / "model.onnx", log=log)
        write_genai_config(src, out_dir)
        return {"format": "onnx-genai", "graph": "torch.onnx.export (TorchScript, opset 17), plain ONNX ops",
                "tied_weights": tied}
    # int8-dyn: quantize the float graph, keeping the sensitive layers' MatMuls in float. Built from the
    # untied export: quantize_dynamic gives a tied Gemm(transB) its own int8 copy anyway (measured:
    # same 330 MB, same PPL ratio 1.056), so tying buys nothing here.
    tmp = out_dir / ".float"
    tmp.mkdir()
    export_llm(src, tmp / "model.onnx", log=log)
    excluded = quantize_dynamic_matmuls(tmp / "model.onnx", out_dir / "model.onnx",
                                        sensitive_nodes(tmp / "model.onnx", job.model.sensitive_layers), log=log)
    shutil.rmtree(tmp)
    write_genai_config(src, out_dir)
    return {"format": "onnx-genai", "graph": "torch.onnx.export + quantize_dynamic(MatMul, QInt8 per-channel)",
            "exclusions": exclusions(job.model.sensitive_layers, excluded, LLM_EXCLUSION_WHY)}


def _genai_builder(src: Path, out_dir: Path, scheme: str, log) -> dict:
    # Beside the temp artifact folder and named after it, so a killed build's leftovers are
    # ``host.fsutil.stale_atomic_dirs`` of the artifact (removed by the next export).
    cache = out_dir.with_name(f"{out_dir.name}.genai-cache")
    logfile = out_dir.with_name(f"{out_dir.name}.genai.log")
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(src), "-o", str(out_dir),
           "-p", scheme, "-e", "cpu", "-c", str(cache)]
    threads = str(build_threads())
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": threads,
           "MKL_NUM_THREADS": threads}
    log(f"onnxruntime-genai builder -p {scheme} ({threads} threads)")
    try:
        with open(logfile, "w") as lf:
            rc = subprocess.run(cmd, stdout=lf, stderr=subprocess.STDOUT, env=env).returncode
        if rc != 0:
            tail = [ln for ln in logfile.read_text(errors="replace").splitlines() if ln.strip()][-1:]
            raise BuildError(f"onnxruntime-genai builder failed (exit {rc}): {tail[0][:300] if tail else 'no output'}")
    finally:
        shutil.rmtree(cache, ignore_errors=True)
        logfile.unlink(missing_ok=True)
    cfg_path = out_dir / "genai_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["model"]["decoder"]["session_options"]["intra_op_num_threads"] = BOARD_THREADS
    cfg_path.write_text(json.dumps(cfg, indent=4))
    return {"format": "onnx-genai", "graph": f"onnxruntime-genai model builder -p {scheme} -e cpu (MatMulNBits, block 32)"}


def _llm_dims(src: Path) -> tuple[int, int, int]:
    from host.models import read_config

    c = read_config(src)
    head = c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]
    return c["num_hidden_layers"], c.get("num_key_value_heads", c["num_attention_heads"]), head


def io_names(n_layers: int) -> tuple[list[str], list[str]]:
    past = [f"past_key_values.{i}.{k}" for i in range(n_layers) for k in ("key", "value")]
    present = [f"present.{i}.{k}" for i in range(n_layers) for k in ("key", "value")]
    return ["input_ids", "attention_mask", "position_ids", *past], ["logits", *present]


def export_llm(src: Path, path: Path, *, log) -> None:
    """``torch.onnx.export`` of the HF causal LM with explicit KV-cache inputs/outputs (genai names)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.cache_utils import DynamicCache

    torch.set_num_threads(build_threads())
    log("torch.onnx.export of the float LLM")
    model = AutoModelForCausalLM.from_pretrained(str(src), attn_implementation="eager", dtype=torch.float32).eval()
    n_layers, kv_heads, head = _llm_dims(src)

    class KvWrapper(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask, position_ids, *past):
            cache = DynamicCache(config=self.m.config)
            for i in range(n_layers):
                cache.update(past[2 * i], past[2 * i + 1], i)
            out = self.m(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         past_key_values=cache, use_cache=True)
            present = []
            for layer in out.past_key_values.layers[:n_layers]:
                present += [layer.keys, layer.values]
            return (out.logits, *present)

    seq, past_len = 5, 3   # a non-empty past traces the concat path; sizes are dynamic
    ids = torch.randint(0, 1000, (1, seq))
    mask = torch.ones(1, past_len + seq, dtype=torch.int64)
    pos = torch.arange(past_len, past_len + seq)[None]
    past = [torch.zeros(1, kv_heads, past_len, head) for _ in range(2 * n_layers)]
    in_names, out_names = io_names(n_layers)
    dyn = {"input_ids": {0: "batch_size", 1: "sequence_length"},
           "attention_mask": {0: "batch_size", 1: "total_sequence_length"},
           "position_ids": {0: "batch_size", 1: "sequence_length"}, "logits": {0: "batch_size", 1: "sequence_length"}}
    dyn.update({n: {0: "batch_size", 2: "past_sequence_length"} for n in in_names[3:]})
    dyn.update({n: {0: "batch_size", 2: "total_sequence_length"} for n in out_names[1:]})
    import warnings

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(KvWrapper(model), (ids, mask, pos, *past), str(path), input_names=in_names,
                          output_names=out_names, dynamic_axes=dyn, opset_version=OPSET, dynamo=False)


def tie_lm_head(path: Path, *, log) -> dict | None:
    """Store a tied embedding / lm_head weight once (SmolLM2: 113 MB saved).

    TorchScript export writes the lm_head MatMul's weight as its own initializer, the transpose of
    the embedding table. When it is exactly that transpose, the MatMul becomes
    ``Reshape(x, [-1, H]) → Gemm(·, embedding, transB=1) → Reshape(·, [*x.shape[:-1], V])``:
    plain ONNX ops, no transposed copy in the file, and MLAS runs the same sgemm (logits
    identical). Returns what changed, or ``None`` when the weights are not tied.
    """
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    head = next((n for n in g.node if n.op_type == "MatMul" and "logits" in n.output and n.input[1] in inits), None)
    gather = next((n for n in g.node if n.op_type == "Gather" and n.input[0] in inits
                   and len(inits[n.input[0]].dims) == 2), None)
    if head is None or gather is None:
        return None
    emb_init, w_init = inits[gather.input[0]], inits[head.input[1]]
    if list(w_init.dims) != list(emb_init.dims)[::-1]:
        return None
    emb = numpy_helper.to_array(emb_init)
    if not np.array_equal(numpy_helper.to_array(w_init).T, emb):
        return None
    vocab, hidden = emb.shape
    x, out = head.input[0], head.output[0]
    p = "/lm_head_tied/"
    consts = [numpy_helper.from_array(np.array([-1, hidden], np.int64), p + "flat_shape"),
              numpy_helper.from_array(np.array([0], np.int64), p + "zero"),
              numpy_helper.from_array(np.array([-1], np.int64), p + "minus_one"),
              numpy_helper.from_array(np.array([vocab], np.int64), p + "vocab")]
    nodes = [helper.make_node("Shape", [x], [p + "x_shape"], name=p + "Shape"),
             helper.make_node("Slice", [p + "x_shape", p + "zero", p + "minus_one"], [p + "lead"], name=p + "Slice"),
             helper.make_node("Concat", [p + "lead", p + "vocab"], [p + "out_shape"], name=p + "Concat", axis=0),
             helper.make_node("Reshape", [x, p + "flat_shape"], [p + "x2d"], name=p + "Reshape"),
             helper.make_node("Gemm", [p + "x2d", emb_init.name], [p + "y2d"], name="/m/lm_head/Gemm", transB=1),
             helper.make_node("Reshape", [p + "y2d", p + "out_shape"], [out], name=p + "Reshape_1")]
    at = list(g.node).index(head)
    g.node.remove(head)
    for i, n in enumerate(nodes):
        g.node.insert(at + i, n)
    g.initializer.remove(w_init)
    g.initializer.extend(consts)
    onnx.checker.check_model(model)
    tmp = path.with_name(path.name + ".tied")
    onnx.save(model, str(tmp))
    os.replace(tmp, path)
    saved = int(np.prod(w_init.dims)) * 4
    log(f"lm_head tied to {emb_init.name} (Gemm transB=1): {saved / 1e6:.0f} MB not stored twice")
    return {"lm_head": "Gemm(transB=1) on the embedding initializer (tied weights stored once)",
            "embedding": emb_init.name, "bytes_saved": saved}


def write_genai_config(src: Path, out_dir: Path, filename: str = "model.onnx") -> None:
    """genai_config.json for a plain-ops graph with position_ids (KV cache grows by concat)."""
    from host.models import read_config

    c = read_config(src)
    n_layers, kv_heads, head = _llm_dims(src)
    ctx = int(c.get("max_position_embeddings", 2048))
    eos = c.get("eos_token_id", 2)
    cfg = {
        "model": {
            "bos_token_id": c.get("bos_token_id", 1), "context_length": ctx,
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "intra_op_num_threads": BOARD_THREADS,
                                    "provider_options": []},
                "filename": filename, "head_size": head, "hidden_size": c["hidden_size"],
                "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask", "position_ids": "position_ids",
                           "past_key_names": "past_key_values.%d.key", "past_value_names": "past_key_values.%d.value"},
                "outputs": {"logits": "logits", "present_key_names": "present.%d.key",
                            "present_value_names": "present.%d.value"},
                "num_attention_heads": c["num_attention_heads"], "num_hidden_layers": n_layers,
                "num_key_value_heads": kv_heads,
            },
            "eos_token_id": eos, "pad_token_id": c.get("pad_token_id") or (eos[0] if isinstance(eos, list) else eos),
            "type": c.get("model_type", "llama"), "vocab_size": c["vocab_size"],
        },
        "search": {"diversity_penalty": 0.0, "do_sample": False, "early_stopping": True, "length_penalty": 1.0,
                   "max_length": ctx, "min_length": 0, "no_repeat_ngram_size": 0, "num_beams": 1,
                   "num_return_sequences": 1, "past_present_share_buffer": False, "repetition_penalty": 1.0,
                   "temperature": 1.0, "top_k": 50, "top_p": 1.0},
    }
    (out_dir / "genai_config.json").write_text(json.dumps(cfg, indent=4))


def layer_of_node(node_name: str) -> str | None:
    """``/m/model/layers.0/mlp/down_proj/MatMul`` → ``model.layers.0.mlp.down_proj`` (TorchScript scopes)."""
    parts = [p for p in node_name.split("/") if p]
    if len(parts) < 2 or not parts[-1].startswith("MatMul"):
        return None
    if parts[0] == "m":
        parts = parts[1:]
    return ".".join(parts[:-1])


def pattern_matches(name: str, pattern: str) -> bool:
    """A ``sensitive_layers`` pattern matches the END of a dotted layer name, component by component.

    ``*`` (or any fnmatch wildcard) stays inside one component, never across a dot:
    ``down_proj`` → ``model.layers.3.mlp.down_proj``; ``layer.*.output.dense`` → ``encoder.layer.3.output.dense``
    but not ``encoder.layer.3.attention.output.dense`` (there the component before ``output`` is ``attention``).
    """
    from fnmatch import fnmatchcase

    want, have = pattern.split("."), name.split(".")
    return len(want) <= len(have) and all(fnmatchcase(h, w) for h, w in zip(have[-len(want):], want, strict=True))


def sensitive_matches(layers, patterns) -> list[str]:
    """Linear layer names matched by any of the recipe's ``sensitive_layers`` patterns (see ``pattern_matches``)."""
    return sorted(name for name in layers if any(pattern_matches(name, p) for p in patterns))


def sensitive_nodes(onnx_path: Path, patterns, *, required: bool = True) -> list[str]:
    """Names of the weight MatMuls (B an initializer: linear layers) of an exported graph whose layer
    name (``layer_of_node``) is matched by any of ``patterns`` (none matched: an error when ``required``)."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    weights = {i.name for i in graph.initializer}
    nodes = [n.name for n in graph.node if n.op_type == "MatMul" and n.input[1] in weights
             and (layer := layer_of_node(n.name)) and any(pattern_matches(layer, p) for p in patterns)]
    if patterns and not nodes and required:
        raise BuildError(f"sensitive_layers {list(patterns)} matched no MatMul node of the exported graph")
    return nodes


def exclusions(patterns, nodes: list[str], why: str) -> dict:
    """The manifest's record of the MatMuls a quantized artifact keeps in float, and why."""
    return {"rule": f"linear layers matched by any of {list(patterns)} stay float (recipe field sensitive_layers: "
                    f"a pattern matches the end of a layer name, `*` = one component; {why})",
            "patterns": list(patterns), "nodes": nodes, "count": len(nodes)}


def quantize_dynamic_matmuls(src_onnx: Path, out_onnx: Path, exclude: list[str], *, log) -> list[str]:
    """quantize_dynamic MatMul/QInt8 per channel (LLM and encoder int8-dyn); the MatMul nodes named in
    ``exclude`` (``sensitive_nodes``) stay float. Returns ``exclude``."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    log(f"quantize_dynamic MatMul QInt8 per-channel, {len(exclude)} sensitive MatMuls kept float")
    quantize_dynamic(str(src_onnx), str(out_onnx), op_types_to_quantize=["MatMul"], weight_type=QuantType.QInt8,
                     per_channel=True, nodes_to_exclude=exclude)
    convert_file(out_onnx, log=log)
    return exclude


# --- encoder --------------------------------------------------------------------------------------

def _build_encoder(job, src: Path, out_dir: Path, log) -> dict:
    m = job.model
    shape = {"batch": m.batch, "seq_len": m.seq_len}
    base = {"format": "onnx-encoder", "inputs": shape, "pooling": "mean", "output": "last_hidden_state"}
    if job.scheme == "fp32":
        export_encoder(src, out_dir / "model.onnx", log=log)
        return {**base, "graph": "torch.onnx.export (TorchScript, opset 17)"}
    tmp = out_dir / ".float"
    tmp.mkdir()
    export_encoder(src, tmp / "model.onnx", log=log)
    excluded = sensitive_nodes(tmp / "model.onnx", m.sensitive_layers, required=m.sensitive_layers_required)
    why = ENCODER_EXCLUSION_WHY if excluded or not m.sensitive_layers else \
        "the built-in default (BERT-like FFN output) matches no layer of this model: nothing kept float"
    record = exclusions(m.sensitive_layers, excluded, why)
    if job.scheme == "int8-dyn":
        quantize_dynamic_matmuls(tmp / "model.onnx", out_dir / "model.onnx", excluded, log=log)
        shutil.rmtree(tmp)
        return {**base, "graph": "quantize_dynamic(MatMul, QInt8 per-channel)", "exclusions": record}
    sents = _calib_sentences(job)
    _quantize_qdq(src, tmp / "model.onnx", out_dir / "model.onnx", sents, m.seq_len, excluded, log=log)
    shutil.rmtree(tmp)
    return {**base, "graph": "quantize_static QDQ, per-channel QInt8 weights, QUInt8 activations (MinMax)",
            "exclusions": record,
            "calibration": {"source": str(job.recipe.text.heldin), "sentences": len(sents),
                            "sha256": _sha256_text("\n".join(sents))}}


def encoder_input_names(src: Path) -> list[str]:
    from host.models import read_config

    names = ["input_ids", "attention_mask"]
    if read_config(src).get("type_vocab_size", 0):
        names.append("token_type_ids")
    return names


def export_encoder(src: Path, path: Path, *, log) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import warnings

    import torch
    from transformers import AutoModel

    torch.set_num_threads(build_threads())
    log("torch.onnx.export of the float encoder")
    model = AutoModel.from_pretrained(str(src), attn_implementation="eager", dtype=torch.float32).eval()
    names = encoder_input_names(src)

    class EncoderWrapper(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, *args):
            return self.m(**dict(zip(names, args, strict=True))).last_hidden_state

    dummy = [torch.ones(1, 8, dtype=torch.int64) for _ in names]
    dyn = {n: {0: "batch", 1: "sequence"} for n in [*names, "last_hidden_state"]}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(EncoderWrapper(model), tuple(dummy), str(path), input_names=names,
                          output_names=["last_hidden_state"], dynamic_axes=dyn, opset_version=OPSET, dynamo=False)


#: encoder graph input → field of a ``tokenizers.Encoding``
ENCODING_FIELDS = {"input_ids": "ids", "attention_mask": "attention_mask", "token_type_ids": "type_ids"}


def encode_batch(tokenizer_dir: Path, texts: list[str], seq_len: int, names: list[str]) -> list[dict]:
    """One feed dict per sentence (``[1, seq_len]`` int64 per input), padded with the tokenizer's own
    pad token and truncated to ``seq_len`` (the artifact's fixed shape)."""
    import numpy as np
    from tokenizers import Tokenizer

    tok_path = Path(tokenizer_dir) / "tokenizer.json"
    if not tok_path.is_file():
        raise BuildError(f"{tokenizer_dir}: tokenizer.json missing (needed to tokenize sentences)")
    unknown = [n for n in names if n not in ENCODING_FIELDS]
    if unknown:
        raise BuildError(f"ONNX inputs {', '.join(unknown)} cannot be made from a tokenizer "
                         f"(known: {', '.join(ENCODING_FIELDS)})")
    tok = Tokenizer.from_file(str(tok_path))
    tok.enable_truncation(seq_len)
    pad = tok.padding or {}
    tok.enable_padding(length=seq_len, pad_id=pad.get("pad_id", 0), pad_token=pad.get("pad_token", "[PAD]"))
    return [{n: np.array([getattr(enc, ENCODING_FIELDS[n])], np.int64) for n in names}
            for enc in tok.encode_batch(texts)]


def _quantize_qdq(src: Path, float_onnx: Path, out_onnx: Path, sents: list[str], seq_len: int, exclude: list[str],
                  *, log) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    feeds = encode_batch(src, sents, seq_len, encoder_input_names(src))

    class HeldInReader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(feeds)

        def get_next(self):
            return next(self._it, None)

    log(f"quantize_static QDQ per-channel, {len(feeds)} held-in sentences, {len(exclude)} sensitive MatMuls kept float")
    quantize_static(str(float_onnx), str(out_onnx), HeldInReader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8, op_types_to_quantize=["MatMul"],
                    nodes_to_exclude=exclude)
    convert_file(out_onnx, log=log)

