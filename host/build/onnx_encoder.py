"""ONNX encoder artifacts (``format: onnx-encoder``): fp32 export, int8-dyn and int8-qdq (see
``host.build.onnx_int8``, which builds through ``_build_encoder`` and re-exports these names).

int8-qdq options measured on all-MiniLM-L6-v2 with the FFN output float (cos mean / NN agreement vs
fp32; 256 held-out sentences unless noted): MinMax 0.990/0.89; Percentile 99.999 0.990/0.91;
CalibMovingAverage 0.991/0.90; on 64 sentences: MinMax 0.990/0.95, Entropy identical to MinMax,
256 calibration sentences 0.990/0.92, Percentile 99.99 0.957/0.81 (clipping MiniLM's outliers
hurts), symmetric int8 activations 0.983/0.88 — no option measurably better, so plain MinMax stays.
16-bit activations (QUInt16) reach 0.9995/1.0 but are not an int8 scheme (contrib Q/DQ ops).
Also keeping ``intermediate.dense`` float: 0.996/0.93 for +10 MB more.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from host.build.int8_format import convert_file
from host.errors import BuildError

# --- encoder --------------------------------------------------------------------------------------

def _build_encoder(job, src: Path, out_dir: Path, log) -> dict:
    from host.build.onnx_int8 import (
        ENCODER_EXCLUSION_WHY,
        _calib_sentences,
        _sha256_text,
        exclusions,
        quantize_dynamic_matmuls,
        sensitive_nodes,
    )

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

    from host.build.onnx_int8 import OPSET, build_threads

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

