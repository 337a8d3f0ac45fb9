"""``.rkllm`` builder: rkllm-toolkit in its own venv, driven through ``host/workers/rkllm_worker.py``.

The host never imports ``rkllm``. ``toolkit_args(job)`` turns a ``BuildJob`` into the exact
``load_huggingface`` / ``build`` keyword arguments (scheme spelling from ``host.schemes``, the
vendor's defaults for the rest); the worker runs them and checks return codes AND exceptions.
The toolkit's log streams to ``<artifact folder>.rkllm-build.log`` beside the artifact (kept after
a failure). ``rkllm_logits`` replays the same arguments and asks the quantized model for its
host-side logits (``get_logits``) for measured quality rows.

Vendor defaults (ROCKCHIP.md §2): ``normal`` for w8a8; ``grq`` for w4a16 when a GPU is present,
else ``normal`` (the manifest says so); ``optimization_level`` 0 (benchmark builds);
``num_npu_core`` = all cores of the target.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from host.errors import BuildError, ConfigError, RkdeployError
from host.plan import BuildJob
from host.schemes import base_dtype, describe, rkllm_dtype
from host.toolkits import TOOLKITS, require_toolkit, run_worker, toolkit_info

TOOLKIT = "rkllm"
WORKER = Path(__file__).resolve().parent.parent / "workers" / "rkllm_worker.py"
#: keyword arguments of ``RKLLM.build`` that typed recipe fields own (``rkllm.extra`` may not override them).
TYPED_BUILD_ARGS = ("do_quantization", "optimization_level", "quantized_dtype", "quantized_algorithm",
                    "target_platform", "num_npu_core", "dataset", "hybrid_rate", "max_context")
_TOOL_ERROR = re.compile(r"^\s*(E |ERROR|Error|\w*Error:|rkdeploy-worker: .*(failed|raised))")


# --- the recipe → toolkit arguments (pure; no toolkit needed) -----------------------------------

def gpu_present() -> bool:
    """A CUDA GPU the toolkit could use. ``RKDEPLOY_GPU=0|1`` overrides the probe."""
    forced = os.environ.get("RKDEPLOY_GPU")
    if forced in ("0", "1"):
        return forced == "1"
    gpus = Path("/proc/driver/nvidia/gpus")
    return Path("/dev/nvidia0").exists() or (gpus.is_dir() and any(gpus.iterdir()))


def resolve_algorithm(requested: str, scheme: str, gpu: bool, prerounded: str | None = None) -> tuple[str, str | None]:
    """(``quantized_algorithm``, note for the manifest or None). ``prerounded``: the label of a ``gptq`` transform
    whose checkpoint already lies on ``scheme``'s grid (``normal`` keeps it; grq/gdq search their own ranges)."""
    if requested != "auto":
        return requested, None
    if base_dtype(scheme) != "w4a16":
        return "normal", None
    if prerounded:
        return "normal", (f"quantized_algorithm 'normal': the checkpoint is pre-rounded onto {scheme}'s grid by "
                          f"{prerounded}; round-to-nearest keeps those codes (grq would search its own ranges)")
    if gpu:
        return "grq", None
    return "normal", ("quantized_algorithm 'normal' instead of the vendor-recommended 'grq' for w4a16: "
                      "no GPU on the build host (grq needs one); expect slightly lower accuracy")


def target_platform(target: str) -> str:
    """rkllm-toolkit ``target_platform`` spelling (the vendor's examples write ``RK3588``)."""
    return target.upper()


def toolkit_args(job: BuildJob, *, model_dir: Path | None = None, gpu: bool | None = None) -> dict:
    """``{"load": {...}, "build": {...}, "notes": [...]}`` for ``RKLLM.load_huggingface`` / ``build``."""
    from host.targets import get_target

    if job.kind != "rkllm":
        raise ConfigError(f"{job.label}: not an rkllm job (kind {job.kind!r})")
    opts = job.model.rkllm
    gpu = gpu_present() if gpu is None else gpu
    algorithm, note = resolve_algorithm(opts.algorithm, job.scheme, gpu, _prerounded(job.model, job.scheme))
    device = opts.device if opts.device != "auto" else ("cuda" if gpu else "cpu")
    target = get_target(job.target)
    clash = sorted(set(opts.extra) & set(TYPED_BUILD_ARGS))
    if clash:
        raise ConfigError(f"{job.model.name}: rkllm.extra sets {', '.join(clash)}; use the typed recipe fields "
                          "(rkllm.algorithm, optimization_level, hybrid_rate, num_npu_core, max_context) instead")
    if job.model.calibration is None:
        raise BuildError(f"{job.model.name}: no calibration JSON in the recipe (field 'calibration'); "
                         "run `rkdeploy calib build`")
    if model_dir is None:
        from host.models import resolve_model

        model_dir = resolve_model(job.model)
    build = {
        "do_quantization": True,
        "optimization_level": opts.optimization_level,
        "quantized_dtype": rkllm_dtype(job.scheme),
        "quantized_algorithm": algorithm,
        "target_platform": target_platform(job.target),
        "num_npu_core": opts.num_npu_core or target.npu_cores,
        "dataset": str(job.model.calibration),
        "hybrid_rate": opts.hybrid_rate,
        "max_context": job.model.max_context,
        **opts.extra,
    }
    load = {"model": str(model_dir), "device": device, "dtype": opts.dtype}
    return {"load": load, "build": build, "notes": [note] if note else []}


def _prerounded(model, scheme: str) -> str | None:
    """The label of the ``gptq`` pre-rounding serving ``scheme`` (``host.prequant``), or None."""
    from host.build.source import transform_for

    t = transform_for(model, scheme)
    return t.label() if t is not None and t.exact else None


def scheme_problems(model, target, scheme: str) -> list[str]:
    """Recipe problems of one rkllm scheme (targets check): grq/gdq need a w4a16 scheme; a checkpoint pre-rounded
    onto the scheme's grid needs round-to-nearest and no hybrid layers."""
    algo = model.rkllm.algorithm
    if algo in ("grq", "gdq") and base_dtype(scheme) != "w4a16":
        return [f"{model.name}: rkllm.algorithm {algo!r} only works with w4a16 schemes, not {scheme!r} "
                "(use 'normal' or 'auto')"]
    pre = _prerounded(model, scheme)
    if pre and algo in ("grq", "gdq"):
        return [f"{model.name}: rkllm.algorithm {algo!r} would re-round the checkpoint {pre} put on {scheme}'s grid "
                "(use 'normal' or 'auto')"]
    if pre and model.rkllm.hybrid_rate:
        return [f"{model.name}: rkllm.hybrid_rate {model.rkllm.hybrid_rate} mixes other grids into {scheme}, whose "
                f"checkpoint {pre} pre-rounds onto one grid (set hybrid_rate 0 or drop the gptq transform)"]
    return []


def _calibration_sha256(job: BuildJob) -> str | None:
    from host.fsutil import sha256_file

    calib = job.model.calibration
    return sha256_file(calib) if calib and Path(calib).is_file() else None


def inputs(job: BuildJob) -> dict:
    """What the artifact depends on besides the model: toolkit version, arguments, calibration hash.

    Raises ``ToolkitMissingError`` when rkllm-toolkit is not installed (export lists the job as skipped).
    """
    require_toolkit(TOOLKIT)
    info = toolkit_info(TOOLKIT) or {}
    args = toolkit_args(job, model_dir=Path("<model>"))
    build = {k: v for k, v in args["build"].items() if k != "dataset"}
    out = {"builder": "rkllm/1", "toolkit_version": info.get("version"), "load": {k: v for k, v in args["load"].items()
           if k != "model"}, "build": build, "calibration_sha256": _calibration_sha256(job)}
    if info.get("test_double"):  # a double's artifact is never "up to date" for the vendor toolkit of the same version
        out["toolkit_test_double"] = True
    from host.build.source import heldin_of, transform_inputs

    tr = transform_inputs(job.model, job.scheme, heldin_of(job))   # only the schemes the transform serves
    if tr is not None:
        out["transform"] = tr
    if mix_hybrid(job):
        from host.build.mixed import mix_inputs

        out["mix"] = mix_inputs(job.model, job.recipe)
    return out


def mix_hybrid(job: BuildJob) -> bool:
    """Does ``sensitive_layers: auto`` set this build's ``hybrid_rate``? For an ungrouped 4-bit scheme
    (w4a16, w4a8) whose recipe leaves ``rkllm.hybrid_rate`` at 0: the toolkit's hybrid_rate mixes that share
    of grouped (more accurate) layers into a plain 4-bit model (ROCKCHIP.md §2; for a grouped dtype it
    mixes in ungrouped layers, for speed, so it is left alone there). The toolkit has no per-layer choice:
    the share is what transfers from the ONNX plan, not which layers."""
    from host.schemes import group_size, weight_bits

    return (job.model.sensitive_layers == "auto" and job.model.rkllm.hybrid_rate == 0.0
            and weight_bits(job.scheme) == 4 and group_size(job.scheme) is None
            and _prerounded(job.model, job.scheme) is None)    # a pre-rounded checkpoint keeps one grid


def hybrid_rate_from_plan(share: float) -> float:
    """rkllm ``hybrid_rate`` (in [0, 1)) for the share of linear weights the budgeted plan moved to 8 bits."""
    return min(0.99, max(0.0, round(share, 3)))


def artifact_name(job: BuildJob) -> str:
    return f"{job.model.name}-{job.scheme}-{job.target}.rkllm"


def build_log_path(job: BuildJob) -> Path:
    return job.out_dir.with_name(job.out_dir.name + ".rkllm-build.log")


# --- running the worker -------------------------------------------------------------------------

class _Lines:
    """Forwards worker progress to ``log`` and remembers the toolkit's last error line."""

    def __init__(self, log: Callable[[str], None]):
        self.log = log
        self.last_error: str | None = None

    def __call__(self, line: str) -> None:
        text = line.strip()
        if not text:
            return
        if _TOOL_ERROR.match(text) and not text.startswith("Traceback"):
            self.last_error = text
        if text.startswith(("rkdeploy-worker:", "E ", "W ")):
            self.log(text)


def _run(job_json: dict, log_path: Path, log: Callable[[str], None], label: str) -> dict:
    lines = _Lines(log)
    try:
        return run_worker(TOOLKIT, WORKER, job_json, log_path, on_line=lines)
    except BuildError as e:
        said = f"; toolkit said: {lines.last_error}" if lines.last_error and lines.last_error not in str(e) else ""
        raise BuildError(f"{label}: {e}{said}") from None


def _family(model_dir) -> str:
    """The model family for failure lines (``host.families``), e.g. ``gemma3 (Gemma3ForCausalLM)``."""
    from host.families import family_label
    from host.models import read_config

    try:
        return family_label(read_config(Path(model_dir)))
    except RkdeployError:
        return "family unknown: config.json unreadable"


def build(job: BuildJob, out_dir: Path, *, log: Callable[[str], None]) -> dict:
    """Build ``job``'s ``.rkllm`` into ``out_dir``; return the extra manifest fields."""
    require_toolkit(TOOLKIT)  # ToolkitMissingError before any work
    info = toolkit_info(TOOLKIT) or {}
    from host.build.source import source_for

    model_dir, transform = source_for(job, log)   # the transformed checkpoint when the recipe's transform serves it
    args = toolkit_args(job, model_dir=model_dir)
    mix = None
    if mix_hybrid(job):
        from host.build.mixed import plan_share

        share, mix = plan_share(job, model_dir, log)
        rate = hybrid_rate_from_plan(share)
        args["build"]["hybrid_rate"] = rate
        log(f"hybrid_rate {rate}: the share of linear weights the ONNX plan (budget {job.model.budget}) keeps at "
            "8 bits; the toolkit chooses which layers")
        mix = {**mix, "hybrid_rate": rate}
    calib = Path(args["build"]["dataset"])
    if not calib.is_file():
        raise BuildError(f"{job.model.name}: calibration file {calib} not found; run `rkdeploy calib build`")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / artifact_name(job)
    log_path = build_log_path(job)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.write_text(f"# rkdeploy: {job.label} with {TOOLKITS[TOOLKIT].dist} {info.get('version')}\n"
                        f"# load_huggingface {json.dumps(args['load'])}\n# build {json.dumps(args['build'])}\n")
    for note in args["notes"]:
        log(f"note: {note}")
    log(f"rkllm-toolkit {info.get('version')}: {args['build']['quantized_dtype']} "
        f"{args['build']['quantized_algorithm']} {args['build']['target_platform']} "
        f"cores={args['build']['num_npu_core']} (log: {log_path})")
    try:
        result = _run({"mode": "build", "load": args["load"], "build": args["build"], "output": str(out)},
                      log_path, log, f"{job.label} ({_family(args['load']['model'])})")
    except BaseException:
        for p in out_dir.glob("*.rkllm"):
            p.unlink(missing_ok=True)
        for p in out_dir.glob(".tmp-*"):
            p.unlink(missing_ok=True)
        raise
    if not out.is_file():
        raise BuildError(f"{job.label}: the worker reported success but {out} does not exist (log: {log_path})")
    model_dir = Path(args["load"]["model"])
    from host.models import copy_tokenizer, read_config

    copied = copy_tokenizer(model_dir, out_dir)

    config = read_config(model_dir)
    version = result.get("toolkit_version") or info.get("version")
    double = bool(result.get("test_double") or info.get("test_double"))  # what the worker imported, or the venv
    if double:
        log(f"note: built with rkdeploy's TEST DOUBLE of rkllm-toolkit ({info.get('venv')}): the manifest says so "
            "and the .rkllm runs on no board")
    b = args["build"]
    return {
        "format": "rkllm",
        "artifact_kind": "rkllm",
        "entry": out.name,
        **({"tokenizer": "tokenizer.json"} if "tokenizer.json" in copied else {}),
        "toolkit": {"name": TOOLKITS[TOOLKIT].dist, "version": version, "test_double": double},
        "vocab_size": config.get("vocab_size"),
        "scheme_description": describe(job.scheme),
        "rkllm": {
            "dtype": b["quantized_dtype"], "algorithm": b["quantized_algorithm"],
            "algorithm_note": args["notes"][0] if args["notes"] else None,
            "target_platform": b["target_platform"], "num_npu_core": b["num_npu_core"],
            "max_context": b["max_context"], "optimization_level": b["optimization_level"],
            "hybrid_rate": b["hybrid_rate"], "device": args["load"]["device"], "dtype_load": args["load"]["dtype"],
            "calibration": str(calib), "calibration_sha256": _calibration_sha256(job),
            "extra": dict(job.model.rkllm.extra), "load_args": args["load"], "build_args": b,
        },
        "build_log": str(log_path),
        **({"transform": transform} if transform else {}),
        **({"mix": mix} if mix else {}),
    }


# --- measured quality: host-side logits of the quantized model ----------------------------------

def _args_from(job_or_artifact: BuildJob | Path | str) -> tuple[dict, str]:
    if isinstance(job_or_artifact, BuildJob):   # a built artifact's manifest replays exactly (hybrid_rate included)
        from host.build.source import source_for

        if mix_hybrid(job_or_artifact):   # its hybrid_rate comes from a sensitivity plan made at build time
            raise BuildError(f"{job_or_artifact.label}: hybrid_rate comes from the sensitivity plan "
                             "(sensitive_layers: auto): take the logits of the built artifact, not of the job")
        require_toolkit(TOOLKIT)
        model_dir, _transform = source_for(job_or_artifact, lambda _line: None)
        return toolkit_args(job_or_artifact, model_dir=model_dir), job_or_artifact.label
    from host.manifest import read_manifest

    folder = Path(job_or_artifact)
    m = read_manifest(folder)
    r = m.rkllm or {}
    if m.format != "rkllm" or "build_args" not in r:
        raise BuildError(f"{folder}: not an rkllm artifact built by rkdeploy (manifest has no rkllm.build_args)")
    require_toolkit(TOOLKIT)
    return {"load": r["load_args"], "build": r["build_args"]}, f"{m.model}/{m.target}/{m.scheme}"


def rkllm_logits(job_or_artifact: BuildJob | Path | str, token_windows: Sequence[Sequence[int]], *,
                 out: Path | None = None, log: Callable[[str], None] | None = None) -> Path:
    """Logits of the quantized model for each token window → float32 ``.npy`` (windows, tokens, vocab).

    ``job_or_artifact``: a ``BuildJob`` or a built artifact folder (its manifest's exact toolkit
    arguments are replayed). Quantizes in the toolkit (as the build does), then ``get_logits``
    per window. Raises ``ToolkitMissingError`` when rkllm-toolkit is absent (quality then stays
    ``simulated``), ``BuildError`` on failure.
    """
    return _logits_run(job_or_artifact, token_windows, out=out, log=log)[0]


def _logits_run(job_or_artifact, token_windows, *, out, log) -> tuple[Path, dict]:
    """``rkllm_logits``, also returning the worker's result (toolkit version, test double or not)."""
    args, label = _args_from(job_or_artifact)
    windows = [[int(t) for t in w] for w in token_windows]
    if not windows or len({len(w) for w in windows}) != 1 or not windows[0]:
        raise BuildError(f"{label}: token windows must be non-empty and of equal length")
    if out is None:
        out = Path(tempfile.mkdtemp(prefix="rkdeploy-rkllm-logits-")) / "logits.npy"
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    log_path = out.with_suffix(".log")
    result = _run({"mode": "logits", "load": args["load"], "build": args["build"], "windows": windows,
                   "output": str(out)}, log_path, log or (lambda _line: None), label)
    return out, result


def _built_by_double(artifact_dir) -> bool:
    from host.manifest import read_manifest

    try:
        return read_manifest(Path(artifact_dir)).built_by_test_double
    except (RkdeployError, OSError):
        return False


class RkllmToolkitLm:
    """Drop-in for the quality loop: ``logprobs(window)`` of a built ``.rkllm`` artifact's quantized model.

    All windows go to the toolkit in ONE worker run (it quantizes the model again, as the build
    did), then each ``logprobs(ids)`` is a lookup + log-softmax. ``method`` is ``"measured"`` and
    ``backend`` names the toolkit, ending in ``" (test double)"`` when the toolkit that computed the
    logits is rkdeploy's double (the worker reads its marker) or the artifact was built by one.
    """

    def __init__(self, artifact_dir: Path | str, windows: Sequence[Sequence[int]], *,
                 log: Callable[[str], None] | None = None):
        import numpy as np

        self._tmp = Path(tempfile.mkdtemp(prefix="rkdeploy-rkllm-q-"))
        keyed = [tuple(int(t) for t in w) for w in windows]
        self.path, result = _logits_run(artifact_dir, keyed, out=self._tmp / "logits.npy", log=log)
        self.logits = np.load(self.path, mmap_mode="r")
        self.index = {w: i for i, w in enumerate(keyed)}
        info = toolkit_info(TOOLKIT) or {}
        built_by_double = _built_by_double(artifact_dir)
        double = bool(result.get("test_double") or info.get("test_double") or built_by_double)
        version = result.get("toolkit_version") or info.get("version")
        self.backend = f"rkllm-toolkit {version}" + (" (test double)" if double else "")

    def logprobs(self, ids):
        import numpy as np

        x = np.asarray(self.logits[self.index[tuple(int(t) for t in ids)]], dtype=np.float64)
        m = x.max(axis=-1, keepdims=True)
        return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))

    def close(self) -> None:
        self.logits = None
        shutil.rmtree(self._tmp, ignore_errors=True)
