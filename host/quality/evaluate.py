"""Quality rows for the built artifacts of a recipe × target, and simulated rows for its vendor schemes.

Every artifact runs through the runtime the board uses (``host.quality.runtimes``: the board's
onnxruntime backend for ONNX, rkllm-toolkit's logits for ``.rkllm``); a vendor scheme with no
artifact runs as torch fake-quant (``method: simulated``). Rows are cached by artifact sha256 (or
model sha256 + scheme for simulated rows), so a second ``export`` with nothing changed prints the
table without running a model or importing torch.
"""

from __future__ import annotations

import time
from pathlib import Path

from host.config import ModelSpec, Recipe
from host.errors import RkdeployError
from host.manifest import inputs_hash, load_artifact
from host.quality.metrics import TokenStats
from host.quality.reference import EVAL_VERSION, eval_windows, float_reference, llm_eval, load_torch_llm
from host.quality.rows import Pending, RowCache, error_row, for_target, quality_row, row_env, split_cached, store_rows
from host.quality.runtimes import LlamaCppLm, OrtCausalLm, TorchFakeQuant, arithmetic_env


def _artifacts(recipe: Recipe, target: str, root, schemes) -> dict[str, list]:
    """Built artifacts we measure, per model name: ONNX, and ``.rkllm`` when rkllm-toolkit is installed
    (its host-side logits of the quantized model; without it the scheme keeps its simulated row)."""
    from host.manifest import read_manifest
    from host.plan import plan
    from host.toolkits import toolkit_info

    kinds = ("onnx", "gguf", "rkllm") if toolkit_info("rkllm") else ("onnx", "gguf")
    out: dict[str, list] = {}
    for job in plan(recipe, target, root=root, kinds=kinds, schemes=schemes):
        try:
            read_manifest(job.out_dir)
        except RkdeployError:
            continue
        out.setdefault(job.model.name, []).append(load_artifact(job.out_dir))
    return out


def _simulated_schemes(model: ModelSpec, target: str, schemes) -> list[str]:
    from host.fakequant import spec

    out = []
    for s in model.targets.get(target, []):
        if schemes is not None and s not in schemes:
            continue
        try:
            spec(s)
        except ValueError:
            continue
        out.append(s)
    return out


def evaluate(recipe: Recipe, target: str, *, root: Path | str | None = None, simulated: bool = True,
             schemes: tuple[str, ...] | None = None, store: Path | str | None = None, log=None,
             eval_tokens: int | None = None) -> list[dict]:
    """Quality rows: measured for built ONNX artifacts, simulated for the target's vendor schemes, and
    the rows vendor builders recorded for the vendor artifacts built now (e.g. rknn ``simulator``)."""
    from host.quality.encoder import evaluate_encoder

    target = target.lower()
    arts = _artifacts(recipe, target, root, schemes)
    cache = RowCache()
    rows: list[dict] = []
    for m in recipe.models:
        if m.kind == "llm":
            rows += _evaluate_llm(recipe, m, target, arts.get(m.name, []), cache, simulated, schemes, log, eval_tokens)
        else:
            rows += evaluate_encoder(recipe, m, target, arts.get(m.name, []), cache, simulated, schemes, log)
    if rows:
        store_rows(rows, store)
    ours = {r["env"]["quality_key"] for r in rows}
    vendor = [r for r in vendor_rows(recipe, target, root=root, schemes=schemes, store=store)
              if (r.get("env") or {}).get("quality_key") not in ours]
    order = {m.name: i for i, m in enumerate(recipe.models)}
    return sorted(rows + vendor, key=lambda r: order.get(r["model"], len(order)))   # stable: per model, ours first


def vendor_rows(recipe: Recipe, target: str, *, root=None, schemes=None, store=None) -> list[dict]:
    """Quality rows in the store whose ``artifact_sha256`` is a vendor artifact (.rknn, .rkllm) built now.

    Vendor builders record their own rows (the rknn builder: ``method: simulator``, rknn-toolkit2's
    x86 simulator vs float); the newest row per model × scheme × method is shown.
    """
    from host.plan import plan
    from host.results import ResultStore

    shas = set()
    for job in plan(recipe, target.lower(), root=root, kinds=("rknn", "rkllm"), schemes=schemes):
        try:
            shas.add(load_artifact(job.out_dir).sha256)
        except RkdeployError:
            continue
    if not shas:
        return []
    newest: dict[tuple, dict] = {}
    with ResultStore(store) as st:
        for r in st.rows(kind="quality", target=target.lower()):
            if r.artifact_sha256 in shas:
                d = r.to_dict()
                newest[(d["model"], d["scheme"], d["method"], d["backend"])] = d
    return list(newest.values())


def pending(m: ModelSpec, target: str, arts, ref_key: str, simulated: bool, schemes,
            heldin: Path | None = None) -> list[Pending]:
    """What to measure. Keys name the computation only (not the target: an ONNX artifact copied to
    another target, or a scheme simulated for two chips, is computed once)."""
    from host.build.source import transform_for, transform_inputs
    from host.fakequant import FAKEQUANT_VERSION

    todo = [Pending(m, a.manifest.scheme, "measured", inputs_hash({"v": EVAL_VERSION, "a": a.sha256, "ref": ref_key}), a)
            for a in arts]
    if simulated:   # a vendor scheme the recipe's transform serves is simulated on the transformed float model
        todo += [Pending(m, s, "simulated", inputs_hash({"v": EVAL_VERSION, "fq": FAKEQUANT_VERSION, "s": s, "ref": ref_key,
                                                         **({"t": tr} if (tr := transform_inputs(m, s, heldin)) else {})}),
                         transform=transform_for(m, s))
                 for s in _simulated_schemes(m, target, schemes)]
    return todo


def _runtime(p: Pending, windows, ev, log, torch_model):
    """The runtime that gives this row's log-probs: ``(runtime, backend name, cleanup)``."""
    if p.method == "measured" and p.artifact.manifest.artifact_kind == "rkllm":
        from host.build.rkllm import RkllmToolkitLm

        if log:
            log(f"{ev.model.name}/{p.scheme}: rkllm-toolkit logits on {ev.n_tokens} held-out tokens")
        lm = RkllmToolkitLm(p.artifact.path, windows, log=log)
        return lm, lm.backend, lm.close
    if p.method == "measured" and p.artifact.manifest.artifact_kind == "gguf":
        if log:
            log(f"{ev.model.name}/{p.scheme}: llama.cpp on {ev.n_tokens} held-out tokens")
        lm = LlamaCppLm(p.artifact.path, p.artifact.manifest.to_dict(), ev.window)
        return lm, lm.name, lm.close
    if p.method == "measured":
        if log:
            log(f"{ev.model.name}/{p.scheme}: onnxruntime on {ev.n_tokens} held-out tokens")
        lm = OrtCausalLm(p.artifact.path, p.artifact.manifest)
        return lm, lm.name, lm.close
    if log:
        on = f" of the {p.transform.label()} checkpoint" if p.transform is not None else ""
        log(f"{ev.model.name}/{p.scheme}: simulated (torch fake-quant{on}) on {ev.n_tokens} held-out tokens")
    lm = TorchFakeQuant(torch_model(p.transform), p.scheme)
    lm.__enter__()
    return lm, lm.name, lambda: lm.__exit__(None, None, None)


def _evaluate_llm(recipe, m, target, arts, cache, simulated, schemes, log, eval_tokens) -> list[dict]:
    ev = llm_eval(recipe, m, eval_tokens=eval_tokens)
    todo = pending(m, target, arts, ev.key, simulated, schemes, recipe.text.heldin)
    done, missing = split_cached(todo, cache, target)
    if missing:
        windows = eval_windows(recipe, ev)
        ref = float_reference(recipe, ev, windows, log=log)
        models: dict = {}

        def torch_model(transform=None):
            """The float model (one at a time in memory): the original, or ``transform`` folded in (cached)."""
            key = transform.label() if transform is not None else None
            if key not in models:
                models.clear()
                folder = ev.model_dir
                if transform is not None:
                    from host.transforms import transformed_checkpoint

                    folder, _rec = transformed_checkpoint(ev.model_dir, m.calibration, transform,
                                                          text=recipe.text.heldin, log=log)
                models[key] = load_torch_llm(folder)
            return models[key]

        for p in missing:
            t0 = time.monotonic()
            stats = TokenStats.empty()
            rkllm = p.method == "measured" and p.artifact.manifest.artifact_kind == "rkllm"
            try:
                lm, backend, close = _runtime(p, windows, ev, log, torch_model)
            except (RkdeployError, ValueError) as e:   # rkllm-toolkit failed; a group size that does not divide a layer
                if p.method == "measured" and not rkllm:
                    raise
                done[p.key] = error_row(m, target, p, str(e).splitlines()[0],
                                        backend="rkllm-toolkit" if rkllm else "torch-fakequant")
                continue
            try:
                for i, w in enumerate(windows):
                    stats.add(ref[i], lm.logprobs(w), w)
            finally:
                close()
            arith = (arithmetic_env("onnxruntime", lm.sess, p.artifact.manifest) if backend == "onnxruntime"
                     else arithmetic_env(backend))
            metrics = stats.metrics()
            env = row_env(p, target, {"ppl_float": metrics["ppl_float"], "window": ev.window, "n_windows": ev.n_windows,
                                      "text": str(recipe.text.heldout), "seconds": round(time.monotonic() - t0, 1),
                                      **arith})
            row = quality_row(m, target, p.scheme, p.method, backend, metrics, artifact=p.artifact, env=env,
                              transform=p.transform.label() if p.transform is not None else None)
            cache.put(p.key, row)
            done[p.key] = for_target(row, p, target)
    return [done[p.key] for p in todo if p.key in done]


def evaluate_export(report, *, store: Path | str | None = None) -> list[dict]:
    """Quality rows for the artifacts of an export run (its root and schemes)."""
    from host.ui import err_console

    jobs = [r.job for r in report.results]
    if not jobs:
        return []
    root = jobs[0].out_dir.parent.parent.parent
    schemes = tuple(sorted({j.scheme for j in jobs}))
    with err_console.status("quality …") as status:
        return evaluate(report.recipe, report.target, root=root, schemes=schemes, store=store,
                        log=lambda s: status.update(f"quality: {s}"))
