"""The float checkpoint a builder reads: the model's folder, or that folder with the recipe's
``transform`` folded in (``host.transforms``, cached under ~/.cache/rkdeploy/transformed/<key>).

A transform serves the schemes of its kind (``host.config.transform_family``: weight bits +
activation kind of the scheme its search ran under): ``awq(w4a16-g64)`` the 4-bit weight-only
schemes (ONNX ``int4``/``int4-mixed``, rkllm ``w4a16*``), ``smoothquant(w8a8)`` the 8-bit
weight+activation ones (rkllm ``w8a8*``, ONNX ``int8-dyn``). Only the ONNX LLM and rkllm kinds
(and the simulated rows of vendor schemes) read it: fp32, GGUF and rknn never do. A transform with
no ``scheme`` (a method that searches nothing) serves every quantized scheme of those kinds. A ``gptq``
pre-rounding (``host.prequant``, not equivalent) serves exactly the scheme whose grid it rounds onto (the rkllm
dtype and its simulated row), ahead of any transform of that scheme's kind; never an ONNX build.

``transform_inputs`` is what a builder adds to its ``inputs()`` (the transform, its version and the
calibration JSON's sha256: a change rebuilds only the artifacts it serves); ``source_for`` builds or
reuses the checkpoint; ``transform_record`` is the manifest's ``transform`` field.
"""

from __future__ import annotations

from pathlib import Path

from host.errors import ConfigError

#: Artifact kinds whose builders read the transformed checkpoint.
KINDS = ("onnx", "rkllm")


def transform_for(model, scheme: str):
    """The ``host.transforms.Transform`` of ``model`` serving ``scheme``, or None."""
    from host.build import registry
    from host.config import transform_family
    from host.schemes import weight_bits

    if model.kind != "llm" or not getattr(model, "transform", None):
        return None
    kind = registry.kind_for(model, scheme)
    if kind is None or kind.name not in KINDS or weight_bits(scheme) >= 16:
        return None
    ts = model.transforms()
    exact = [t for t in ts if t.exact]
    for t in exact:                     # a pre-rounding serves exactly its grid's scheme, before any family
        if t.scheme == scheme:
            return t
    fam = transform_family(scheme)
    for t in ts:
        if t.exact:
            continue
        s = getattr(t, "scheme", None)
        if s is None or transform_family(s) == fam:
            return t
    return None


def heldin_of(job) -> Path | None:
    """The held-in text of ``job``'s recipe (``text.heldin``; read by ``gptq`` steps and rounding), or None."""
    return getattr(getattr(getattr(job, "recipe", None), "text", None), "heldin", None)


def transform_inputs(model, scheme: str, heldin: Path | None = None) -> dict | None:
    """What the transform serving ``scheme`` adds to an artifact's inputs (None: no transform); ``heldin``: the
    recipe's held-in text (``text.heldin``), read by a ``gptq`` step."""
    from host.fsutil import sha256_file
    from host.transforms import TRANSFORM_VERSION, heldin_sha256, prequant_version, text_tokens_wanted

    t = transform_for(model, scheme)
    if t is None:
        return None
    if getattr(t, "scheme", None) is None:     # a lone rotate reads no calibration
        return {"transform": t.to_dict(), "version": TRANSFORM_VERSION}
    calib = model.calibration
    if calib is None or not Path(calib).is_file():
        raise ConfigError(f"{model.name}: transform {t.label()} searches on the calibration JSON, and "
                          f"{calib or 'none'} is not a file (recipe field 'calibration'; `rkdeploy calib build`)")
    out = {"transform": t.to_dict(), "version": TRANSFORM_VERSION, "calibration_sha256": sha256_file(calib),
           **prequant_version(t)}
    if text_tokens_wanted(t):          # a gptq step calibrates on the recipe's held-in text too
        out["text_sha256"] = heldin_sha256(heldin, f"{model.name}: transform {t.label()} calibrates on",
                                           "; or gptq text_tokens: 0")
    return out


def source_for(job, log) -> tuple[Path, dict | None]:
    """``(folder, transform record or None)``: the checkpoint ``job``'s builder reads."""
    from host.models import resolve_model
    from host.transforms import transformed_checkpoint

    src = resolve_model(job.model, fetch=True)
    t = transform_for(job.model, job.scheme)
    if t is None:
        return src, None
    log(f"transform {t.label()}: the float checkpoint with it folded in (cached by model + calibration + transform)")
    folder, rec = transformed_checkpoint(src, job.model.calibration, t, text=job.recipe.text.heldin, log=log)
    pq = rec.get("prequant")
    what = (f"{pq['linears']} linears rounded onto {pq['scheme']}'s grid over {pq['calibration_tokens']} tokens"
            if pq else f"{rec.get('scaled')}/{rec.get('groups')} groups scaled")
    log(f"transform {t.label()}: {folder.name} ({what}, built in {rec.get('seconds')} s)")
    return folder, transform_record(t, rec)


def transform_record(t, rec: dict) -> dict:
    """The manifest's ``transform`` field (``board.manifest``: ``label`` is what rows and tables show)."""
    keep = ("version", "key", "calibration", "calibration_items", "seconds", "groups", "scaled", "mean_exponent",
            "prequant")
    return {"label": t.label(), **t.to_dict(), **{k: rec[k] for k in keep if k in rec}}


def check_lines(recipe, target: str, scheme: str | None = None) -> list[str]:
    """What ``rkdeploy check`` prints about transforms and budgeted mixes: per artifact, the transform its
    builder will read and the mix it will plan (no work done)."""
    from host.build import registry
    from host.build.rkllm import mix_hybrid
    from host.gptq import ROUNDED_SCHEMES, parse_rounding
    from host.plan import BuildJob

    lines = []
    for m in recipe.llms():
        for kind, s in registry.wanted(m, target):
            if scheme is not None and s != scheme:
                continue
            t = transform_for(m, s)
            what = [] if t is None else [
                f"transform {t.label()} " + ("rounds the checkpoint onto this scheme's grid (not equivalent)"
                                             if t.exact else "folded into the float checkpoint")]
            if kind.name == "onnx" and s == "int4-mixed" and m.sensitive_layers == "auto":
                what.append(f"int4/int8 mix within {m.budget}x fp32 by sensitivity")
            elif kind.name == "onnx" and s == "int4-mixed":
                what.append(f"int4 with {', '.join(m.float_layers)} at int8"
                            + (f" (checked within {m.budget}x fp32)" if m.budget is not None else ""))
            r = parse_rounding(m.rounding) if kind.name == "onnx" and s in ROUNDED_SCHEMES else None
            if r is not None:
                what.append(f"GPTQ rounding ({'act-order, ' if r.act_order else ''}{r.scales} scales, "
                            f"{'symmetric' if r.symmetric else 'zero points'})")
            elif kind.name == "rkllm" and mix_hybrid(BuildJob(m, target, kind.name, s, Path(), recipe)):
                what.append(f"hybrid_rate from the int4/int8 plan within {m.budget}x fp32")
            if what:
                lines.append(f"{m.name}/{target}/{s} ({kind.name}): {'; '.join(what)}")
        used = {transform_for(m, s) for _k, s in registry.wanted(m, target)}
        idle = [t.label() for t in m.transforms() if t not in used]
        if idle:        # e.g. a gptq pre-rounding for a scheme this target does not build
            lines.append(f"{m.name}: transform {', '.join(idle)} serves no scheme built for {target}")
    return lines
