"""rknn builder: float ONNX (the fp32 ONNX artifact) → ``.rknn`` with rknn-toolkit2, plus simulator accuracy.

The toolkit runs in its own venv (``.venvs/rknn``, ``make setup``) through
``host/workers/rknn_worker.py``. This module does everything else on the host side: fails fast
(scheme not allowed on the chip, fixed input shapes missing, ONNX file absent, toolkit missing),
tokenizes held-in sentences into the calibration set (``.npy`` files + ``dataset.txt``) and
held-out sentences into the evaluation set, stops any ``adb`` server the toolkit starts, keeps
the toolkit's log beside the artifact, and records the simulator's accuracy in the manifest
(``accuracy``); ``rows(job, manifest)`` turns it into the quality row (``method: simulator``) that
``host.export`` stores (a builder never writes the results store).

Source graph: ``artifacts/<model>/<target>/fp32/model.onnx`` (``host.build.onnx_int8``,
TorchScript exporter, opset 17, eager attention): ``depends_on(job)``, so the plan builds it first
(``--only w8a8`` plans it as an implied job). rknn-toolkit2
needs a float graph: it refuses ORT dynamic-quantized ONNX, hangs on QDQ, and reads opset <= 19
only. The toolkit gets a copy whose attention-mask fill is -20 instead of -3.4e38 (``MASK_FILL``);
onnxruntime runs the unmodified graph as the accuracy reference.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from pathlib import Path

from host.build.rknn_support import adb_pids, stopped_adb, tokenize, write_dataset, write_samples  # noqa: F401
from host.errors import BuildError, CheckError
from host.schemes import rknn_config
from host.textdata import recipe_sentences, sentence_source

BUILDER_VERSION = 2          # 2: attention-mask fill rewritten before conversion
WORKER = Path(__file__).resolve().parent.parent / "workers" / "rknn_worker.py"
ENTRY = "model.rknn"
LOG_NAME = "rknn-build.log"
ACCURACY_DIR = "accuracy"
#: kept from accuracy_analysis' output; its golden/ and simulator/ tensor dumps are ~200 MB.
ACCURACY_KEEP = ("error_analysis.txt", "map_name_to_file.txt")
MAX_ONNX_OPSET = 19          # rknn-toolkit2 2.5.0: "Unsupport onnx opset 20, need <= 19"
SOURCE_SCHEME = "fp32"       # the ONNX artifact the .rknn is converted from
BACKEND = "rknn-simulator"
#: Additive attention-mask fill written into the rknn source graph in place of float32's lowest value.
#: HF exports the mask as ``Where(mask, 0, -3.4e38)`` added to the attention scores; w8a8 quantizes
#: the sum per tensor, so a -3.4e38 (or -1e4) fill stretches its int8 range until every real score
#: rounds to the same value (uniform attention: simulator sentence cosine 0.42 on all-MiniLM-L6-v2;
#: 0.90 with -20). In float32 the attended tokens' outputs change by < 2e-6 (all-MiniLM-L6-v2).
MASK_FILL = -20.0
MASK_LOWEST = -1.0e30        # small float constants at or below this are rewritten to MASK_FILL


# --- what the artifact depends on -------------------------------------------------------------

def float_onnx_job(job):
    """The ONNX fp32 job whose ``model.onnx`` this artifact is converted from (same model, same target)."""
    from host.plan import BuildJob

    return BuildJob(job.model, job.target, "onnx", SOURCE_SCHEME, Path(job.out_dir).parent / SOURCE_SCHEME, job.recipe)


def depends_on(job) -> list:
    """The plan builds the fp32 ONNX source before this artifact."""
    return [float_onnx_job(job)]


def float_onnx_dir(job) -> Path:
    return float_onnx_job(job).out_dir


def _source_hash(job) -> str | None:
    from host.errors import RkdeployError
    from host.manifest import read_manifest

    try:
        return read_manifest(float_onnx_dir(job)).inputs_hash
    except (RkdeployError, OSError):
        return None


def _text_sha(path) -> str | None:
    from host.fsutil import sha256_file

    return sha256_file(path) if path and Path(path).is_file() else None


def inputs(job) -> dict:
    """Everything the .rknn depends on. Raises ``ToolkitMissingError`` when the rknn venv is absent
    (``host.export`` then lists the job as skipped, or failed under ``--require rknn``)."""
    from host.build import onnx_int8
    from host.toolkits import require_toolkit, toolkit_info

    require_toolkit("rknn")
    info = toolkit_info("rknn") or {}
    m = job.model
    return {
        "builder": "rknn", "builder_version": BUILDER_VERSION, "scheme": job.scheme, "target": job.target,
        "toolkit_version": info.get("version"), "rknn": _rknn_args(job), "options": m.rknn.model_dump(mode="json"),
        "shape": {"batch": m.batch, "seq_len": m.seq_len},
        # what the fp32 ONNX source depends on (it is built first when missing or stale)
        "source_onnx": onnx_int8.inputs(float_onnx_job(job)),
        # the files recipe_sentences reads (calibration and evaluation sentences)
        "heldin_sha256": _text_sha(sentence_source(job.recipe.text, "heldin")),
        "heldout_sha256": _text_sha(sentence_source(job.recipe.text, "heldout")),
        "eval_sentences": job.recipe.quality.sentences, "mask_fill": MASK_FILL,
    }


def _rknn_args(job) -> dict:
    """``RKNN.config`` keyword arguments + ``build`` flags (spelling from ``host.schemes.rknn_config``)."""
    cfg = rknn_config(job.scheme)
    opts = job.model.rknn
    if not cfg["do_quantization"]:
        return {"config": {"float_dtype": "float16"}, "do_quantization": False, "auto_hybrid": False}
    method = cfg.get("quantized_method", "channel")
    if method == "channel":
        method = opts.method
    config = {"quantized_dtype": cfg["quantized_dtype"], "quantized_algorithm": opts.algorithm,
              "quantized_method": method}
    if opts.auto_hybrid:
        config["auto_hybrid_cos_thresh"] = opts.auto_hybrid_cos
    return {"config": config, "do_quantization": True, "auto_hybrid": opts.auto_hybrid}


# --- fail fast ------------------------------------------------------------------------------------

def check(job) -> list[str]:
    """Pre-build problems (model kind, scheme on the chip, fixed shapes), one line each; no toolkit needed."""
    try:
        preflight(job, toolkit=False)
    except CheckError as e:
        return list(e.problems)
    except BuildError as e:
        return [str(e)]
    return []


def preflight(job, *, toolkit: bool = True) -> Path | None:
    """Every check that needs no work (model kind, scheme on the chip, fixed shapes, toolkit venv).

    Returns the toolkit venv. Runs before the float ONNX source is built or anything is tokenized.
    """
    from host.targets import _scheme_problems, get_target
    from host.toolkits import require_toolkit

    m = job.model
    if m.kind != "encoder":
        raise BuildError(f"{m.name}: rknn builds encoder models only (kind {m.kind!r}; LLMs go through rkllm)")
    problems = _scheme_problems(m, get_target(job.target), job.scheme)
    if problems:
        raise CheckError(problems)
    if "seq_len" not in m.model_fields_set:
        raise BuildError(f"{m.name}: input shapes missing: set seq_len (and batch, default 1) in the recipe; "
                         "rknn needs fixed input shapes")
    return require_toolkit("rknn") if toolkit else None


def source_onnx(job, *, log=None, ensure: bool = False) -> Path:
    """The float ONNX the .rknn is converted from: the fp32 ONNX artifact (``depends_on``: the plan
    builds it first). ``ensure`` is kept for callers; the plan, not this builder, builds the source."""
    del log, ensure
    path = float_onnx_dir(job) / "model.onnx"
    if not path.is_file():
        raise BuildError(f"{job.model.name}: float ONNX {path} not found (rknn converts it); "
                         f"run `rkdeploy export --target {job.target} --only {SOURCE_SCHEME}` first")
    return path


def onnx_input_shapes(path: Path, model: str, *, batch: int, seq_len: int) -> tuple[list[str], list[list[int]]]:
    """Graph input names and their fixed shapes: dim 0 = batch, dim 1 = seq_len, others must be fixed."""
    import onnx

    if not Path(path).is_file():
        raise BuildError(f"{model}: ONNX file {path} not found")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - any parse failure is one line for the user
        raise BuildError(f"{path}: not a readable ONNX file ({type(e).__name__}: {e})") from None
    opset = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset > MAX_ONNX_OPSET:
        raise BuildError(f"{path}: ONNX opset {opset}; rknn-toolkit2 reads opset <= {MAX_ONNX_OPSET} "
                         "(export with the TorchScript exporter, opset 17)")
    init = {i.name for i in proto.graph.initializer}
    names, shapes = [], []
    for inp in proto.graph.input:
        if inp.name in init:
            continue
        dims = inp.type.tensor_type.shape.dim
        shape = []
        for i, d in enumerate(dims):
            if d.HasField("dim_value") and d.dim_value > 0:
                shape.append(int(d.dim_value))
            elif i < 2:
                shape.append(batch if i == 0 else seq_len)
            else:
                raise BuildError(f"{model}: input shapes missing: ONNX input {inp.name!r} dim {i} is dynamic "
                                 f"({d.dim_param or '?'}); the recipe fixes only batch and seq_len")
        if not shape:
            raise BuildError(f"{model}: input shapes missing: ONNX input {inp.name!r} has no shape")
        names.append(inp.name)
        shapes.append(shape)
    return names, shapes


# --- the graph rknn-toolkit2 gets ---------------------------------------------------------------

def prepare_onnx(src: Path, dst: Path) -> list[str]:
    """Copy ``src`` to ``dst`` with float-lowest mask constants replaced by ``MASK_FILL``; returns the edits."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(src))
    edits = []

    def fix(t, where: str):
        a = numpy_helper.to_array(t)
        if a.dtype.kind == "f" and a.size and a.size <= 16 and float(a.min()) <= MASK_LOWEST:
            b = np.where(a <= MASK_LOWEST, np.asarray(MASK_FILL, a.dtype), a).astype(a.dtype)
            t.CopyFrom(numpy_helper.from_array(b, t.name))
            edits.append(f"{where}: {float(a.min()):.3g} -> {MASK_FILL:g}")

    for node in proto.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR:
                    fix(attr.t, f"Constant {node.name or node.output[0]}")
    for init in proto.graph.initializer:
        fix(init, f"initializer {init.name}")
    onnx.save(proto, str(dst))
    return edits


# --- build ---------------------------------------------------------------------------------------

def build(job, out_dir: Path, *, log) -> dict:
    from host.models import resolve_model
    from host.targets import get_target
    from host.toolkits import run_worker

    t0 = time.monotonic()
    venv = preflight(job)
    out_dir = Path(out_dir)
    m = job.model
    onnx_path = source_onnx(job, log=log)
    names, shapes = onnx_input_shapes(onnx_path, m.name, batch=m.batch, seq_len=m.seq_len)
    model_dir = resolve_model(job.model, fetch=True)
    args = _rknn_args(job)
    calib_texts = recipe_sentences(job.recipe.text, "heldin", m.rknn.calib_samples * m.batch)
    eval_texts = recipe_sentences(job.recipe.text, "heldout", job.recipe.quality.sentences)
    calib = tokenize(model_dir, calib_texts, names, shapes)
    evals = tokenize(model_dir, eval_texts, names, shapes)
    if not calib or not evals:
        raise BuildError(f"{m.name}: not enough held-in/held-out sentences for batch {m.batch} "
                         f"({len(calib_texts)} held-in, {len(eval_texts)} held-out)")
    log_path = out_dir / LOG_NAME
    with tempfile.TemporaryDirectory(prefix="rkdeploy-rknn-") as scratch:
        scratch = Path(scratch)
        rknn_onnx = scratch / "model.rknn-src.onnx"
        edits = prepare_onnx(onnx_path, rknn_onnx)
        for e in edits:
            log(f"rknn source graph: {e}")
        calib_paths = write_samples(scratch / "calib", calib, names)
        write_dataset(scratch / "dataset.txt", calib_paths)
        work = {
            "onnx": str(rknn_onnx), "reference_onnx": str(onnx_path), "input_names": names, "input_shapes": shapes,
            "target_platform": job.target, **args, "dataset": str(scratch / "dataset.txt"),
            "eval_inputs": write_samples(scratch / "eval", evals, names),
            "mask_input": "attention_mask" if "attention_mask" in names else None,
            "rknn_path": str(out_dir / ENTRY), "accuracy_dir": str(out_dir / ACCURACY_DIR),
            "accuracy_keep": list(ACCURACY_KEEP),
        }
        log(f"rknn-toolkit2: {job.label} ({args['config'].get('quantized_dtype') or 'fp16'}, "
            f"{len(calib)} calibration samples, {len(evals)} held-out samples)")

        def on_line(line: str) -> None:
            if line.startswith("rkdeploy-worker: "):
                log(line[len("rkdeploy-worker: "):])

        try:
            with stopped_adb(log):
                result = run_worker("rknn", WORKER, work, log_path, on_line=on_line,
                                    python=venv / "bin" / "python")
        except BuildError as e:
            kept = _keep_failed_log(job, log_path)
            raise BuildError(f"{job.label}: {str(e).split(' (log: ')[0]} (log: {kept})") from None
    from host.models import copy_tokenizer

    copy_tokenizer(model_dir, out_dir)
    metrics = result["metrics"]
    quality = summarize(metrics)
    rknn = {"target_platform": job.target, **args["config"], "do_quantization": args["do_quantization"],
            "auto_hybrid": args["auto_hybrid"]}
    extra = {
        "format": "rknn", "entry": ENTRY, "model_kind": "encoder",
        "tokenizer": "tokenizer.json" if (out_dir / "tokenizer.json").is_file() else None,
        "inputs": {"batch": m.batch, "seq_len": m.seq_len, "names": names, "shapes": shapes, "dtype": "int64"},
        "output": "last_hidden_state", "pooling": "mean",
        "npu_cores": get_target(job.target).npu_cores,  # the board backend's default core_mask: every core
        "toolkit": {"name": "rknn-toolkit2", "version": result["toolkit_version"]},
        "dtype": rknn.get("quantized_dtype") or rknn.get("float_dtype"),
        "rknn": rknn, "scheme_definition": describe_rknn(job.scheme, rknn),
        "source_onnx": {"path": str(onnx_path), "inputs_hash": _source_hash(job), "graph_edits": edits},
        "calibration": {"source": str(job.recipe.text.heldin), "samples": len(calib) if args["do_quantization"] else 0},
        "accuracy": {"method": "simulator", "reference": "onnxruntime fp32 (same ONNX)",
                     "text": str(job.recipe.text.heldout), **quality, "per_output": metrics["outputs"],
                     "report": f"{ACCURACY_DIR}/error_analysis.txt", "report_sample": 0,
                     "seconds": round(time.monotonic() - t0, 1)},
        "toolkit_seconds": result["seconds"], "log": LOG_NAME,
    }
    log(f"simulator vs float: sentence cos {quality['cos_mean']:.4f} (min {quality['cos_min']:.4f}), "
        f"token cos {quality['token_cos_mean']:.4f}, max abs err {quality['max_abs_err']:.3g}, "
        f"NN agree {quality.get('nn_agree')}")
    return extra


def describe_rknn(scheme: str, rknn: dict) -> str:
    from host.schemes import describe

    text = describe(scheme)
    if rknn.get("do_quantization"):
        text += f" (rknn-toolkit2 {rknn['quantized_algorithm']} calibration, {rknn['quantized_method']} weights"
        text += (f"; auto_hybrid: layers whose output cosine < {rknn['auto_hybrid_cos_thresh']} kept float16)"
                 if rknn.get("auto_hybrid") else ")")
    return text


def _keep_failed_log(job, log_path: Path) -> Path:
    """The temp artifact folder is removed on failure; keep its toolkit log beside the artifact."""
    dest = Path(job.out_dir).parent / f"{Path(job.out_dir).name}.{LOG_NAME}"
    with contextlib.suppress(OSError):
        shutil.copy2(log_path, dest)
        return dest
    return log_path


def summarize(metrics: dict) -> dict:
    """Quality-row numbers: sentence-embedding cos/NN (as the ONNX encoder rows) + token-level figures."""
    first = metrics["outputs"][0]
    out = {"token_cos_mean": first["cos_mean"], "token_cos_min": first["cos_min"],
           "max_abs_err": max(o["max_abs_err"] for o in metrics["outputs"])}
    sent = metrics.get("sentence")
    if sent:
        out.update(cos_mean=sent["cos_mean"], cos_min=sent["cos_min"], nn_agree=sent["nn_agree"],
                   n_sentences=sent["n_sentences"])
    else:
        out.update(cos_mean=first["cos_mean"], cos_min=first["cos_min"], nn_agree=None)
    return out


# --- quality rows --------------------------------------------------------------------------------

def rows(job, manifest) -> list:
    """The simulator's quality row of a built .rknn artifact (``method: simulator``, from its manifest's
    ``accuracy``), keyed by the artifact's sha256 (quality reports join on it). ``host.export`` stores it."""
    from board.rows import ResultRow
    from host.manifest import inputs_hash

    acc, tk, model = manifest.accuracy, manifest.toolkit, job.model
    if not acc or not tk:
        return []
    sha = manifest.sha256
    key = inputs_hash({"rknn-simulator": 1, "artifact": sha, "heldout": acc["text"], "n": acc.get("n_sentences")})
    return [ResultRow(
        kind="quality", test="embedding", model=model.name, target=job.target, scheme=job.scheme, backend=BACKEND,
        runtime=f"{tk['name']} {tk['version']} simulator", method="simulator", status="ok", test_time=manifest.built_at,
        cos_mean=acc["cos_mean"], cos_min=acc["cos_min"], nn_agree=acc.get("nn_agree"), seq_len=model.seq_len,
        batch=model.batch, artifact_sha256=sha, model_size=manifest.weights_size,
        env={"quality_key": key, "definition": manifest.scheme_definition, "reference": acc["reference"],
             "max_abs_err": acc["max_abs_err"], "token_cos_mean": acc["token_cos_mean"],
             "token_cos_min": acc["token_cos_min"], "sentences": acc.get("n_sentences"), "text": acc["text"],
             "toolkit": tk, "rknn": manifest.extra.get("rknn"), "seconds": acc.get("seconds")})]
