"""Quality of every artifact vs the float model, on held-out text never used for calibration.

One package, one job per module:

- ``reference``: held-out token windows, the float model's cached next-token log-probs;
- ``runtimes``: what runs an artifact — the board's own backends (``logprobs(ids)``), torch
  fake-quant for a scheme with no artifact (``method: simulated``), rkllm-toolkit's logits;
- ``metrics``: PPL, PPL ratio, mean and p99 KLD(float ‖ artifact) per token, top-1 agreement;
  cosine and nearest-neighbour agreement of sentence embeddings;
- ``evaluate`` (+ ``encoder``): rows for a recipe × target, cached by what they measured;
- ``rows``: rows built through ``board.rows.ResultRow``, the row cache, the results store;
- ``table``, ``sensitivity``: rendering and the per-layer-group sensitivity report;
- ``outliers``: per-linear-layer outlier statistics and predicted damage, rank-checked against ``sensitivity``;
- ``board``: the same evaluation with a board's own runtime over SSH (``rkdeploy quality --board``).

Rows are cached by artifact sha256 (or model sha256 + scheme for simulated rows), so a second
``export`` with nothing changed prints the table without running a model or importing torch.
"""

from __future__ import annotations

from host.quality.evaluate import evaluate, evaluate_export, vendor_rows
from host.quality.metrics import TokenStats, embedding_metrics, log_softmax, mean_pool
from host.quality.outliers import outlier_report, outliers, render_outliers, spearman
from host.quality.reference import (
                                    EVAL_VERSION,
                                    SENSITIVITY_TOKENS,
                                    LlmEval,
                                    eval_windows,
                                    float_reference,
                                    llm_eval,
                                    load_torch_llm,
                                    quality_cache,
                                    torch_logprobs,
)
from host.quality.rows import ROW_METRICS, RowCache, quality_row, store_rows
from host.quality.runtimes import OrtCausalLm, OrtEncoder, TorchFakeQuant, arithmetic_env, ort_session
from host.quality.sensitivity import default_sensitivity_scheme, render_sensitivity, sensitivity, sensitivity_report
from host.quality.table import ENCODER_TABLE, LLM_TABLE, quality_table

_mean_pool = mean_pool   # the name tests and older callers import

__all__ = ["ENCODER_TABLE", "EVAL_VERSION", "LLM_TABLE", "ROW_METRICS", "SENSITIVITY_TOKENS", "LlmEval", "OrtCausalLm",
           "OrtEncoder", "RowCache", "TokenStats", "TorchFakeQuant", "arithmetic_env", "default_sensitivity_scheme",
           "embedding_metrics", "eval_windows", "evaluate", "evaluate_export", "float_reference", "llm_eval",
           "load_torch_llm", "log_softmax", "mean_pool", "ort_session", "outlier_report", "outliers", "quality_cache", "quality_row",
           "quality_table", "render_outliers", "render_sensitivity", "sensitivity", "sensitivity_report", "store_rows",
           "spearman", "torch_logprobs", "vendor_rows"]
