"""Layer sensitivity: KLD(float ‖ model with only one layer group fake-quantized) minus the float
baseline, per group, most sensitive first; a hint for the recipe's ``sensitive_layers``. A finished
result is cached in the quality cache (``sensitivity/``; ``--outliers`` checks its prediction against it)."""

from __future__ import annotations

import json
from pathlib import Path

from host.config import ModelSpec, Recipe
from host.errors import ConfigError
from host.fsutil import atomic_write_text
from host.manifest import inputs_hash
from host.quality.metrics import TokenStats
from host.quality.reference import (
                                    SENSITIVITY_TOKENS,
                                    eval_windows,
                                    float_reference,
                                    llm_eval,
                                    load_torch_llm,
                                    quality_cache,
)
from host.quality.runtimes import TorchFakeQuant


def default_sensitivity_scheme(model: ModelSpec, target: str) -> str:
    """The target's 8-bit scheme when it has one (what ``int8-dyn`` exclusions are about), else its first."""
    from host.schemes import base_dtype

    listed = model.targets.get(target.lower()) or []
    return next((s for s in listed if base_dtype(s) == "w8a8"), listed[0] if listed else "int8-dyn")


def sensitivity(recipe: Recipe, target: str, *, scheme: str | None = None, model_name: str | None = None,
                tokens: int = SENSITIVITY_TOKENS, buckets: int = 3, log=None) -> dict:
    """KLD(float ‖ model with only one layer group quantized under ``scheme``) minus the float baseline,
    per group (layer type × depth bucket, and layer type at every depth), most sensitive first."""
    from host.fakequant import spec

    llms = [m for m in recipe.llms() if model_name in (None, m.name)]
    if not llms:
        raise ConfigError(f"recipe {recipe.name}: no LLM{' named ' + model_name if model_name else ''} for --sensitivity")
    m = llms[0]
    scheme = scheme or default_sensitivity_scheme(m, target)
    try:
        spec(scheme)
    except ValueError:
        raise ConfigError(f"--scheme {scheme}: no simulation for it (use w8a8, w8a8-gN, w4a16, w4a16-gN, w8a16, "
                          "fp16 or int8-dyn)") from None
    ev = llm_eval(recipe, m, eval_tokens=min(tokens, recipe.quality.eval_tokens))
    cache = sensitivity_cache(ev, scheme, buckets)
    try:
        return {**json.loads(cache.read_text()), "cached": True}
    except (OSError, ValueError):
        pass
    res = {"model": m.name, "scheme": scheme,
           **measure_groups(recipe, ev, scheme, buckets, log=log)}
    atomic_write_text(cache, json.dumps(res, indent=1))
    return res


def measure_groups(recipe: Recipe, ev, scheme: str, buckets: int, *, model_dir: Path | None = None,
                   full: bool = True, log=None) -> dict:
    """The measurement itself (the ONE copy: ``--sensitivity``, ``--outliers``' check and the int4-mixed plan):
    KLD of the float reference (``ev``'s model) against ``model_dir``'s model (default: the same model; the
    int4 mix measures its transformed checkpoint) with only one layer group under ``scheme``, minus that
    model's own float KLD (``kld_float``, 0 for the same model), per group, most damaging first;
    ``kld_full`` (every layer quantized) when ``full``."""
    from host.fakequant import layer_groups, linear_layers

    windows = eval_windows(recipe, ev)
    ref = float_reference(recipe, ev, windows, log=log)
    model = load_torch_llm(model_dir or ev.model_dir)

    def kld(select) -> float:
        stats = TokenStats.empty()
        with TorchFakeQuant(model, scheme, select) as rt:
            for i, w in enumerate(windows):
                stats.add(ref[i], rt.logprobs(w), w)
        return stats.metrics()["kld_mean"]

    groups = layer_groups(list(linear_layers(model)), buckets)
    base = kld(lambda _n: False)
    res: dict = {"n_tokens": ev.n_tokens, "kld_float": base}
    if full:
        res["kld_full"] = kld(None) - base
    out = []
    for gi, (name, members) in enumerate(groups.items()):
        if log:
            log(f"{gi + 1}/{len(groups)} {name}")
        sel = set(members)
        out.append({"group": name, "layers": len(members), "kld_increase": kld(sel.__contains__) - base})
    out.sort(key=lambda r: -r["kld_increase"])
    res["groups"] = out
    return res


def sensitivity_cache(ev, scheme: str, buckets: int) -> Path:
    """Where a finished sensitivity result is kept: keyed by the float reference's key (model sha256,
    held-out text, windows), the scheme, the bucket count and the fake-quant version."""
    from host.fakequant import FAKEQUANT_VERSION

    key = inputs_hash({"eval": ev.key, "scheme": scheme, "buckets": buckets, "fq": FAKEQUANT_VERSION})
    return quality_cache() / "sensitivity" / f"{ev.model.name}-{scheme}-{key[:24]}.json"


def sensitivity_report(recipe: Recipe, target: str, *, scheme: str | None = None, top: int = 10, **kw):
    """Run ``sensitivity`` (with a status line) and render it."""
    from host.ui import err_console

    with err_console.status("sensitivity …") as status:
        res = sensitivity(recipe, target, scheme=scheme, log=lambda s: status.update(f"sensitivity: {s}"), **kw)
    return render_sensitivity(res, top=top)


def render_sensitivity(res: dict, *, top: int = 10):
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    t = Table(title=f"sensitivity of {res['model']} under {res['scheme']} ({res['n_tokens']} held-out tokens)",
              title_justify="left")
    for col in ("rank", "layer group", "layers", "KLD increase", "share of full"):
        t.add_column(col, justify="left" if col == "layer group" else "right")
    for i, g in enumerate(res["groups"][:top], 1):
        share = g["kld_increase"] / res["kld_full"] if res["kld_full"] > 0 else 0.0
        t.add_row(str(i), g["group"], str(g["layers"]), f"{g['kld_increase']:.5f}", f"{share:.0%}")
    kinds = [g["group"].split("@")[0] for g in res["groups"] if g["group"].endswith("@all")][:2]
    hint = Text(
        f"Whole model under {res['scheme']}: KLD {res['kld_full']:.5f}. A group 'X@a-b' quantizes only layer type X "
        "in decoder layers a..b ('X@all': every depth). The int8-dyn artifact keeps in float the layers whose "
        f"dotted name ends with a `sensitive_layers` pattern ('*' = one name part); the top types here suggest: sensitive_layers: [{', '.join(kinds)}] "
        "(edit the recipe, then `rkdeploy export` rebuilds only int8-dyn).")
    return Group(t, hint)
