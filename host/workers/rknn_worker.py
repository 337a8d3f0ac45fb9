"""rknn-toolkit2 worker: runs INSIDE the rknn venv (``.venvs/rknn``), never imports ``host``.

Reads one JSON job on stdin, drives the toolkit, prints ``RKDEPLOY_RESULT {json}`` as the last
stdout line (``host.toolkits.run_worker`` protocol). Flow (ROCKCHIP.md §4):

  RKNN() → config(target_platform, quantized_dtype, quantized_algorithm, quantized_method)
  → load_onnx(model, inputs, input_size_list)  (fixed shapes)
  → build(do_quantization, dataset=dataset.txt, auto_hybrid) → export_rknn
  → init_runtime()  (no target = x86 simulator; it only runs a model built in this process)
  → inference on held-out inputs, compared with onnxruntime fp32 on the same inputs
  → accuracy_analysis(inputs, output_dir)  (per-layer cosine) → release()

Every toolkit call is checked for a non-zero return code AND for exceptions; the first failure
ends the job with ``{"ok": false, "error": "<step>: <one line>"}``.

Job fields: onnx (the graph the toolkit converts), reference_onnx (the float graph onnxruntime runs as the
reference; default: onnx), input_names, input_shapes, target_platform, config (dict for RKNN.config),
do_quantization, auto_hybrid, dataset, eval_inputs (list of samples, each a list of .npy paths
in input order), mask_input (name or null), rknn_path, accuracy_dir, accuracy_keep (file names
kept from the accuracy dump; the per-layer tensor dumps are hundreds of MB).
"""

import contextlib
import json
import os
import shutil
import sys
import time
import traceback

os.environ.setdefault("TQDM_DISABLE", "1")  # the toolkit's progress bars would flood the log

RESULT_PREFIX = "RKDEPLOY_RESULT "


class StepError(Exception):
    """A toolkit step failed (return code or exception); message names the step."""


def _one_line(exc):
    lines = [s.strip() for s in str(exc).splitlines() if s.strip() and not s.strip().startswith(("File ", "Traceback"))]
    text = lines[-1] if lines else type(exc).__name__
    return text.replace("\x1b[0m", "").replace("\x1b[1;31m", "")


def _step(name, fn, *args, quiet=False, **kwargs):
    """Call a toolkit method; raise StepError on an exception or a non-zero return code."""
    if not quiet:
        print(f"rkdeploy-worker: {name}", flush=True)
    try:
        rc = fn(*args, **kwargs)
    except Exception as e:  # noqa: BLE001 - vendor code raises anything; reported as one line
        traceback.print_exc()
        raise StepError(f"{name} failed: {_one_line(e)}") from None
    if isinstance(rc, int) and rc != 0:
        raise StepError(f"{name} returned {rc} (see the log)")
    return rc


# --- metrics (numpy only) ---------------------------------------------------------------------

def _cos_rows(a, b):
    import numpy as np

    na = np.linalg.norm(a, axis=-1)
    nb = np.linalg.norm(b, axis=-1)
    return (a * b).sum(-1) / np.maximum(na * nb, 1e-12)


def compare(got, ref, masks):
    """Per-output cosine/abs-error (attended tokens only) + mean-pooled sentence metrics.

    ``got``/``ref``: per sample, list of output arrays; ``masks``: per sample, mask array or None.
    """
    import numpy as np

    n_out = len(ref[0])
    outputs = []
    for k in range(n_out):
        cos_all, err = [], 0.0
        for g, r, m in zip(got, ref, masks, strict=True):
            a = np.asarray(g[k], dtype=np.float64).reshape(np.asarray(r[k]).shape)
            b = np.asarray(r[k], dtype=np.float64)
            if b.ndim == 3 and m is not None:      # [batch, seq, hidden]: attended tokens only
                sel = np.asarray(m).reshape(b.shape[:2]) > 0
                a, b = a[sel], b[sel]
            else:
                a, b = a.reshape(1, -1), b.reshape(1, -1)
            cos_all.append(_cos_rows(a, b))
            err = max(err, float(np.abs(a - b).max()) if a.size else 0.0)
        c = np.concatenate(cos_all)
        outputs.append({"index": k, "cos_mean": float(c.mean()), "cos_min": float(c.min()), "max_abs_err": err,
                        "n_vectors": int(c.size)})
    result = {"outputs": outputs}
    first = np.asarray(ref[0][0])
    if first.ndim == 3 and masks[0] is not None:
        emb_got, emb_ref = [], []
        for g, r, m in zip(got, ref, masks, strict=True):
            b = np.asarray(r[0], dtype=np.float64)
            a = np.asarray(g[0], dtype=np.float64).reshape(b.shape)
            w = (np.asarray(m).reshape(b.shape[:2]) > 0).astype(np.float64)[..., None]
            emb_ref.append((b * w).sum(1) / np.maximum(w.sum(1), 1))
            emb_got.append((a * w).sum(1) / np.maximum(w.sum(1), 1))
        eg, er = np.concatenate(emb_got), np.concatenate(emb_ref)
        sc = _cos_rows(eg, er)
        result["sentence"] = {"cos_mean": float(sc.mean()), "cos_min": float(sc.min()),
                              "nn_agree": _nn_agree(eg, er), "n_sentences": int(len(sc))}
    return result


def _nn_agree(got, ref):
    """Share of sentences whose nearest other sentence (cosine) is the same in both spaces."""
    import numpy as np

    if len(ref) < 2:
        return None

    def nn(x):
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        s = x @ x.T
        np.fill_diagonal(s, -np.inf)
        return s.argmax(1)

    return float((nn(got) == nn(ref)).mean())


# --- the job ------------------------------------------------------------------------------------

def _reference(job, samples):
    import onnxruntime as ort

    sess = ort.InferenceSession(job.get("reference_onnx") or job["onnx"], providers=["CPUExecutionProvider"])
    names = job["input_names"]
    return [sess.run(None, dict(zip(names, s, strict=True))) for s in samples]


def _load_samples(job):
    import numpy as np

    return [[np.load(p) for p in paths] for paths in job["eval_inputs"]]


def _trim_accuracy_dir(path, keep):
    """Keep the per-layer report; drop the golden/simulator tensor dumps (hundreds of MB)."""
    if not os.path.isdir(path):
        return []
    for name in os.listdir(path):
        if name not in keep:
            full = os.path.join(path, name)
            shutil.rmtree(full) if os.path.isdir(full) else os.unlink(full)
    return sorted(os.listdir(path))


def run(job):
    import importlib.metadata as md

    if not os.path.isfile(job["onnx"]):
        raise StepError(f"ONNX file {job['onnx']} not found")
    from rknn.api import RKNN

    version = md.version("rknn-toolkit2")
    seconds = {}
    rknn = RKNN(verbose=bool(job.get("verbose", False)))
    try:
        t = time.monotonic()
        _step("config", rknn.config, target_platform=job["target_platform"], **job["config"])
        _step("load_onnx", rknn.load_onnx, job["onnx"], inputs=job["input_names"],
              input_size_list=job["input_shapes"])
        build_kw = {"do_quantization": bool(job["do_quantization"])}
        if job["do_quantization"]:
            build_kw["dataset"] = job["dataset"]
            build_kw["auto_hybrid"] = bool(job.get("auto_hybrid", False))
        _step("build", rknn.build, **build_kw)
        _step("export_rknn", rknn.export_rknn, job["rknn_path"])
        seconds["build"] = round(time.monotonic() - t, 2)

        t = time.monotonic()
        _step("init_runtime (simulator)", rknn.init_runtime)
        samples = _load_samples(job)
        got = []
        print(f"rkdeploy-worker: inference ({len(samples)} held-out samples)", flush=True)
        for s in samples:
            out = _step("inference", rknn.inference, inputs=s, quiet=True)
            if out is None:
                raise StepError("inference returned no outputs (see the log)")
            got.append(out)
        ref = _reference(job, samples)
        mask_at = job["input_names"].index(job["mask_input"]) if job.get("mask_input") in job["input_names"] else None
        masks = [s[mask_at] if mask_at is not None else None for s in samples]
        metrics = compare(got, ref, masks)
        seconds["simulate"] = round(time.monotonic() - t, 2)

        t = time.monotonic()
        acc_inputs = job["eval_inputs"][0]
        _step("accuracy_analysis", rknn.accuracy_analysis, inputs=acc_inputs, output_dir=job["accuracy_dir"])
        kept = _trim_accuracy_dir(job["accuracy_dir"], set(job.get("accuracy_keep", ())))
        seconds["accuracy_analysis"] = round(time.monotonic() - t, 2)
    finally:
        with contextlib.suppress(Exception):
            rknn.release()
    return {"ok": True, "toolkit_version": version, "metrics": metrics, "seconds": seconds,
            "accuracy_files": kept, "n_eval_samples": len(job["eval_inputs"])}


def main():
    try:
        job = json.loads(sys.stdin.read())
        result = run(job)
    except StepError as e:
        result = {"ok": False, "error": str(e)}
    except Exception as e:  # noqa: BLE001 - reported to the host as one line; traceback in the log
        traceback.print_exc()
        result = {"ok": False, "error": f"{type(e).__name__}: {_one_line(e)}"}
    sys.stdout.flush()
    sys.stderr.flush()
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0 if result.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
