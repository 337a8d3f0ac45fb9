"""ONNX CPU artifacts: generation-ready LLM folders and encoder graphs, float and INT8.

LLM schemes (``format: onnx-genai``; KV-cache I/O named as onnxruntime-genai does):

- ``int8`` / ``int4``: onnxruntime-genai's model builder, weight-only MatMulNBits (block 32), with
  ``GENAI_OPTIONS`` (the builder's extra options: the lm_head pruned to the last position in prefill).
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

int8-qdq options measured (MinMax kept): ``host.build.onnx_encoder``.

``inputs()`` stays import-light (no torch): the up-to-date check must be fast.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
from importlib import metadata
from pathlib import Path

from host.build.int8_format import FORMAT as INT8_FORMAT
from host.build.int8_format import FORMAT_NOTE as INT8_FORMAT_NOTE
from host.build.int8_format import convert_file

# the kind's recipe checks and sensitive-layer matching (onnx_checks), the encoder graphs (onnx_encoder)
from host.build.onnx_checks import (  # noqa: F401 - re-exported
    exclusions,
    layer_of_node,
    pattern_matches,
    recipe_problems,
    sensitive_matches,
    sensitive_nodes,
)
from host.build.onnx_encoder import (  # noqa: F401 - re-exported
    ENCODING_FIELDS,
    _build_encoder,
    _quantize_qdq,
    encode_batch,
    encoder_input_names,
    export_encoder,
)
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
#: onnxruntime-genai builder ``--extra_options`` per scheme (recorded in ``inputs``: a change rebuilds that
#: scheme only; and in the manifest as ``builder_options``). Measured on SmolLM2-135M (issue 19, README
#: "CPU levers"; CPU time of one intra-op thread, 128-token prefill, Intel Xeon AVX-512/VNNI):
#: ``prune_lm_head`` (lm_head for the last prompt position only) prefill 508 -> 405 ms int8, 578 -> 495 ms
#: int4, decode unchanged, the same logits (the quality evaluation restores every position's logits in
#: memory: ``host.build.genai.full_logits_graph``). Not taken: ``accuracy_level`` 1 (fp32 activations;
#: 4 = int8 is the builder's CPU default) int8 prefill 1.9x and decode 22x the CPU time; int4 prefill
#: 0.87x but decode 1.13x, quality the same (PPL ratio 1.3243 vs 1.3287, KLD 0.421 vs 0.424).
GENAI_OPTIONS: dict[str, dict] = {
    "int8": {"prune_lm_head": True},
    "int4": {"prune_lm_head": True},
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
LLM_SCHEMES = ("fp32", "int8", "int4", "int4-mixed", "int8-dyn")
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
    if m.kind == "llm" and job.scheme in GENAI_OPTIONS:
        data["genai_options"] = dict(GENAI_OPTIONS[job.scheme])
    if (m.kind, job.scheme) in SCHEME_REVISION:
        data["scheme_revision"] = SCHEME_REVISION[(m.kind, job.scheme)]
    if job.scheme in SENSITIVE_SCHEMES[m.kind]:
        data["sensitive_layers"] = m.float_layers
    if m.kind == "llm":
        from host.build.mixed import mix_inputs
        from host.build.source import heldin_of, transform_inputs

        tr = transform_inputs(m, job.scheme, heldin_of(job))   # only the schemes the recipe's transform serves
        if tr is not None:
            data["transform"] = tr
        if job.scheme == "int4-mixed":
            data["mix"] = mix_inputs(m, job.recipe)
        from host.gptq import rounding_inputs

        rounding = rounding_inputs(m, job.scheme, heldin_of(job))   # recipe rounding: gptq (int4 / int4-mixed)
        if rounding is not None:
            data["rounding"] = rounding
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
    from host.build.source import source_for

    src, transform = source_for(job, log)    # the transformed checkpoint when the recipe's transform serves the scheme
    extra = _build_llm_from(job, src, out_dir, log)
    if transform is not None:
        extra["transform"] = transform
    from host.gptq import round_built_artifact

    rounding = round_built_artifact(job, src, out_dir, log)   # recipe rounding: gptq rewrites the int4 nodes
    if rounding is not None:
        extra.setdefault("builder_options", {})["rounding"] = rounding
    return extra


def _build_llm_from(job, src: Path, out_dir: Path, log) -> dict:
    if job.scheme == "int4":
        from host.gptq import rounding_symmetric

        return _genai_builder(src, out_dir, job.scheme, log, symmetric=rounding_symmetric(job.model))
    if job.scheme == "int8":
        return _genai_builder(src, out_dir, job.scheme, log)
    if job.scheme == "int4-mixed":
        from host.build.mixed import build_mixed_for_job

        return build_mixed_for_job(job, src, out_dir, log, threads=build_threads(), board_threads=BOARD_THREADS)
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
                                        sensitive_nodes(tmp / "model.onnx", job.model.float_layers), log=log)
    shutil.rmtree(tmp)
    write_genai_config(src, out_dir)
    return {"format": "onnx-genai", "graph": "torch.onnx.export + quantize_dynamic(MatMul, QInt8 per-channel)",
            "exclusions": exclusions(job.model.float_layers, excluded, LLM_EXCLUSION_WHY)}


def _genai_builder(src: Path, out_dir: Path, scheme: str, log, *, symmetric: bool = True) -> dict:
    from host.build.genai import build_genai

    options = dict(GENAI_OPTIONS.get(scheme) or {})
    if not symmetric:      # the recipe's rounding asks for uint4 with a zero point per block
        options["is_symmetric"] = False
    return build_genai(src, out_dir, scheme, log, threads=build_threads(), board_threads=BOARD_THREADS,
                       options=options)


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


def quantize_dynamic_matmuls(src_onnx: Path, out_onnx: Path, exclude: list[str], *, log) -> list[str]:
    """quantize_dynamic MatMul/QInt8 per channel (LLM and encoder int8-dyn); the MatMul nodes named in
    ``exclude`` (``sensitive_nodes``) stay float. Returns ``exclude``."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    log(f"quantize_dynamic MatMul QInt8 per-channel, {len(exclude)} sensitive MatMuls kept float")
    quantize_dynamic(str(src_onnx), str(out_onnx), op_types_to_quantize=["MatMul"], weight_type=QuantType.QInt8,
                     per_channel=True, nodes_to_exclude=exclude)
    convert_file(out_onnx, log=log)
    return exclude
