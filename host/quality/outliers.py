"""Outlier report (``rkdeploy quality --outliers``): per linear layer of an LLM, activation and weight
statistics on the recipe's calibration JSON, a predicted quantization damage, ranked; checked against
the MEASURED per-layer-group sensitivity (``host.quality.sensitivity``) by Spearman rank correlation.

Per linear layer (activations: its input on the calibration items' prompt + answer tokens, through the
float model; ``host.transforms.calib_token_rows`` / ``collect_inputs``):

- ``act_absmax``: max |x| over every calibration token and channel;
- ``act_over6``: share of input channels whose max |x| exceeds 6.0 (bitsandbytes' LLM.int8() threshold);
- ``act_kurtosis``: Pearson kurtosis (a Gaussian has 3) of the sampled values of x, all channels pooled;
  ``act_chmax_kurtosis`` (JSONL only): of the per-channel max |x| (a few huge channels: large);
- ``w_absmax``, ``w_kurtosis`` (Pearson, all weights pooled), ``w_row_ratio``: mean over output channels
  of max|w| / mean|w| of the channel (what a per-output-channel scale wastes); ``w_row_ratio_max``;
- ``damage``: the predicted damage, ``|Q(layer)(x) - layer(x)|^2 / |layer(x)|^2`` on up to
  ``SAMPLE_ROWS`` calibration rows, with ONLY that layer fake-quantized under the scheme
  (``host.fakequant.fake_quantized``: the weights and activations exactly as the simulated rows) —
  one linear on cached inputs, no model evaluation.

The check: layer damages summed per sensitivity group (layer type x depth bucket; ``lm_head`` alone)
against the measured KLD increase of the same groups, Spearman's rho over the disjoint groups (n
printed). The measured side comes from the sensitivity cache when a ``--sensitivity`` run with the same
model, held-out text, tokens and scheme is there, else it runs on ``SENSITIVITY_TOKENS`` tokens.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from host.config import ModelSpec, Recipe
from host.errors import ConfigError

#: bitsandbytes LLM.int8(): input channels with |x| above this go through the fp16 path.
BNB_THRESHOLD = 6.0
#: Report format version (the JSONL's first field; bump when a field's meaning changes).
OUTLIERS_VERSION = 1
#: Columns of the table: (header, field, format).
TABLE = (("max|x|", "act_absmax", "{:.1f}"), ("ch>6", "act_over6", "{:.1%}"), ("kurt x", "act_kurtosis", "{:.1f}"),
         ("max|w|", "w_absmax", "{:.3f}"), ("w max/mean", "w_row_ratio", "{:.1f}"), ("kurt w", "w_kurtosis", "{:.1f}"),
         ("damage", "damage", "{:.2e}"))


def outlier_model(recipe: Recipe, model_name: str | None) -> ModelSpec:
    """The recipe's LLM to report on; one clear line when there is none or it has no calibration JSON."""
    if model_name is not None:
        named = [m for m in recipe.models if m.name == model_name]
        if not named:
            raise ConfigError(f"{recipe.path or recipe.name}: --model {model_name!r} is not in models "
                              f"(models: {', '.join(m.name for m in recipe.models)})")
        if named[0].kind != "llm":
            raise ConfigError(f"{recipe.path or recipe.name}: --model {model_name!r} is kind {named[0].kind}; "
                              "--outliers reports on LLMs (kind: llm)")
        m = named[0]
    else:
        llms = recipe.llms()
        if not llms:
            raise ConfigError(f"{recipe.path or recipe.name}: no model of kind llm for --outliers")
        m = llms[0]
    if m.calibration is None or not Path(m.calibration).is_file():
        raise ConfigError(f"{recipe.path or recipe.name}: models.{recipe.models.index(m)}.calibration: "
                          f"{'missing' if m.calibration is None else str(m.calibration) + ' does not exist'}; "
                          "--outliers needs the calibration JSON (`rkdeploy calib build`)")
    return m


def kurtosis(x) -> float:
    """Pearson kurtosis ``E[(x - mean)^4] / var^2`` of all values of ``x`` (a Gaussian: 3)."""
    x = x.double().reshape(-1)
    d = x - x.mean()
    var = (d * d).mean()
    return float((d ** 4).mean() / var ** 2) if var > 0 else 0.0


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman's rank correlation (ties get their average rank); nan when either side is constant."""
    if len(a) != len(b):
        raise ValueError(f"spearman: {len(a)} vs {len(b)} values")

    from host.results.stats import midranks

    ra, rb = midranks(a), midranks(b)
    n = len(a)
    ma, mb = sum(ra) / n, sum(rb) / n
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb, strict=True))
    va, vb = sum((x - ma) ** 2 for x in ra), sum((y - mb) ** 2 for y in rb)
    return cov / (va * vb) ** 0.5 if va > 0 and vb > 0 else float("nan")


def _input_producers(model) -> tuple[list[str], dict[str, str]]:
    """Linear layers whose inputs are collected, and for every linear the one whose input it shares
    (``k/v_proj`` read ``q_proj``'s input, ``up_proj`` reads ``gate_proj``'s)."""
    from host.fakequant import linear_layers

    names = list(linear_layers(model))
    share = {}
    for n in names:
        m = re.match(r"(.*\.)(k_proj|v_proj|up_proj)$", n)
        src = None
        if m:
            src = m.group(1) + ("q_proj" if m.group(2) != "up_proj" else "gate_proj")
        share[n] = src if src in names else n
    return sorted(set(share.values())), share


def _head_inputs(model):
    """A forward hook on the decoder's final norm: the rows ``lm_head`` reads (``collect_inputs`` runs the
    decoder body only). Returns ``(hook handle or None, collected rows)``."""
    body = getattr(model, "model", model)
    norm = getattr(body, "norm", None)
    rows: list = []
    if norm is None:
        return None, rows

    def f(_m, _args, out):
        rows.append(out.detach().reshape(-1, out.shape[-1]).float())
    return norm.register_forward_hook(f), rows


def layer_stats(model, token_rows, scheme: str, *, log=None) -> list[dict]:
    """One dict per linear layer of ``model`` (statistics above), most damaging first."""
    import torch

    from host.fakequant import fake_quantized, linear_layers
    from host.transforms import SAMPLE_ROWS, collect_inputs

    layers = linear_layers(model)
    collect, share = _input_producers(model)
    body_names = [n for n in collect if n != "lm_head"]
    handle, head_rows = _head_inputs(model) if "lm_head" in collect else (None, [])
    try:
        stats = collect_inputs(model, token_rows, body_names, log=log)
    finally:
        if handle is not None:
            handle.remove()
    if head_rows:
        x = torch.cat(head_rows)
        gen = torch.Generator().manual_seed(0)
        full = x
        if x.shape[0] > SAMPLE_ROWS:
            x = x[torch.randperm(x.shape[0], generator=gen)[:SAMPLE_ROWS]]
        stats["lm_head"] = {"max": full.abs().amax(0), "x": x}
    out = []
    with torch.no_grad():
        for i, (name, lin) in enumerate(layers.items()):
            st = stats.get(share[name])
            if st is None:
                continue
            if log:
                log(f"layer statistics {i + 1}/{len(layers)} {name}")
            x, chmax, w = st["x"], st["max"], lin.weight.detach().float()
            ref = lin(x)
            with fake_quantized(model, scheme, name.__eq__):
                q = lin(x)
            rowabs = w.abs()
            out.append({
                "layer": name, "kind": name.rsplit(".", 1)[-1], "in": lin.in_features, "out": lin.out_features,
                "act_absmax": float(chmax.max()), "act_over6": float((chmax > BNB_THRESHOLD).float().mean()),
                "act_kurtosis": kurtosis(x), "act_chmax_kurtosis": kurtosis(chmax),
                "w_absmax": float(rowabs.max()), "w_kurtosis": kurtosis(w),
                "w_row_ratio": float((rowabs.amax(1) / rowabs.mean(1).clamp(min=1e-12)).mean()),
                "w_row_ratio_max": float((rowabs.amax(1) / rowabs.mean(1).clamp(min=1e-12)).max()),
                "damage": float(((q - ref) ** 2).sum() / (ref ** 2).sum().clamp(min=1e-30)),
            })
    out.sort(key=lambda r: -r["damage"])
    return out


def group_damage(layers: list[dict], n_buckets: int = 3) -> dict[str, float]:
    """Predicted damage per DISJOINT sensitivity group (``host.fakequant.layer_groups``: a type's depth
    buckets, or ``type@all`` when one bucket spans every depth; ``lm_head`` alone): the layers' sum."""
    from host.fakequant import layer_groups

    groups = layer_groups([r["layer"] for r in layers], n_buckets)
    bucketed = {g.split("@")[0] for g in groups if "@" in g and not g.endswith("@all")}
    dmg = {r["layer"]: r["damage"] for r in layers}
    return {g: sum(dmg[n] for n in members) for g, members in groups.items()
            if not (g.endswith("@all") and g.split("@")[0] in bucketed)}


def check_against(layers: list[dict], measured: dict, n_buckets: int = 3) -> dict:
    """Spearman's rho between predicted group damage and measured KLD increase, over the disjoint groups
    both sides have; also over the layer types (``type@all``)."""
    from host.fakequant import layer_groups

    kld = {g["group"]: g["kld_increase"] for g in measured["groups"]}
    pred = group_damage(layers, n_buckets)
    common = [g for g in pred if g in kld]
    by_type = layer_groups([r["layer"] for r in layers], n_buckets)
    dmg = {r["layer"]: r["damage"] for r in layers}
    types = [g for g in by_type if (g.endswith("@all") or "@" not in g) and g in kld]
    type_pred = [sum(dmg[n] for n in by_type[g]) for g in types]
    return {"rho_groups": spearman([pred[g] for g in common], [kld[g] for g in common]) if len(common) > 1 else None,
            "n_groups": len(common),
            "rho_types": spearman(type_pred, [kld[g] for g in types]) if len(types) > 1 else None,
            "n_types": len(types),
            "groups": sorted(({"group": g, "predicted": pred[g], "kld_increase": kld[g]} for g in common),
                             key=lambda r: -r["kld_increase"])}


def outliers(recipe: Recipe, target: str, *, model_name: str | None = None, scheme: str | None = None,
             check: bool = True, tokens: int | None = None, log=None) -> dict:
    """The outlier report of one LLM of ``recipe``: per-layer rows (most damaging first), the scheme, the
    calibration used, the check against the measured sensitivity (on ``tokens`` held-out tokens, default
    ``SENSITIVITY_TOKENS`` as ``--sensitivity``: its cached result is reused), and the time of each step."""
    from host.fakequant import spec
    from host.models import resolve_model
    from host.quality.reference import load_torch_llm
    from host.quality.sensitivity import default_sensitivity_scheme, sensitivity
    from host.transforms import calib_token_rows

    m = outlier_model(recipe, model_name)
    scheme = scheme or default_sensitivity_scheme(m, target)
    try:
        sp = spec(scheme)
    except ValueError:
        raise ConfigError(f"--scheme {scheme}: no simulation for it (use w8a8, w8a8-gN, w4a16, w4a16-gN, w8a16, "
                          "fp16 or int8-dyn)") from None
    folder = resolve_model(m)
    t0 = time.monotonic()
    if log:
        log(f"{m.name}: loading the float model")
    model = load_torch_llm(folder)
    if sp.group:
        from host.fakequant import linear_layers

        bad = [n for n, lin in linear_layers(model).items() if lin.in_features % sp.group]
        if bad:
            raise ConfigError(f"--scheme {scheme}: group {sp.group} does not divide the input width of {bad[0]} "
                              f"({len(bad)} linear layers); pick a group that divides them")
    rows = calib_token_rows(folder, Path(m.calibration))
    layers = layer_stats(model, rows, scheme, log=log)
    t_stats = time.monotonic() - t0
    del model
    res = {"model": m.name, "scheme": scheme, "calibration": str(m.calibration), "calib_items": len(rows),
           "calib_tokens": sum(len(r) for r in rows), "layers": layers, "seconds_stats": round(t_stats, 1)}
    if check:
        t1 = time.monotonic()
        measured = sensitivity(recipe, target, scheme=scheme, model_name=m.name, log=log,
                               **({"tokens": tokens} if tokens else {}))
        res["check"] = {**check_against(layers, measured), "n_tokens": measured["n_tokens"],
                        "sensitivity_cached": bool(measured.get("cached")),
                        "seconds": round(time.monotonic() - t1, 1)}
    return res


def outlier_jsonl(res: dict) -> str:
    """One JSON object per layer (rank order), then one ``summary`` object (the check, times)."""
    head = {"outliers_version": OUTLIERS_VERSION, "model": res["model"], "scheme": res["scheme"]}

    def line(obj) -> str:   # strict JSON: a nan (Spearman of a constant side, kurtosis of nothing) is null
        return json.dumps(_no_nan(obj), allow_nan=False)

    lines = [line({**head, "record": "layer", "rank": i, **r}) for i, r in enumerate(res["layers"], 1)]
    summary = {k: v for k, v in res.items() if k != "layers"}
    lines.append(line({**head, "record": "summary", **summary}))
    return "\n".join(lines) + "\n"


def _no_nan(v):
    if isinstance(v, float) and (v != v or v in (float("inf"), float("-inf"))):
        return None
    if isinstance(v, dict):
        return {k: _no_nan(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_no_nan(x) for x in v]
    return v


def render_outliers(res: dict, *, top: int = 15, jsonl_path: Path | None = None):
    from rich import box
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    t = Table(title=f"outliers of {res['model']}: linear layers by predicted {res['scheme']} damage "
              f"({res['calib_items']} calibration items, {res['calib_tokens']} tokens)", title_justify="left",
              box=box.SIMPLE_HEAD, padding=(0, 1))
    t.add_column("rank", justify="right")
    t.add_column("layer", no_wrap=True)
    for head, _f, _fmt in TABLE:
        t.add_column(head, justify="right", no_wrap=True)
    for i, r in enumerate(res["layers"][:top], 1):
        t.add_row(str(i), r["layer"], *(fmt.format(r[f]) for _h, f, fmt in TABLE))
    lines = [f"{len(res['layers'])} linear layers ({min(top, len(res['layers']))} shown). max|x|, ch>6 (share of input "
             f"channels whose max |x| > {BNB_THRESHOLD:g}, bitsandbytes' threshold), kurt x (Pearson kurtosis of the "
             "input values, Gaussian = 3) on the calibration JSON; w max/mean: mean over output channels of "
             f"max|w|/mean|w|; damage: relative output error |Q(y) - y|^2/|y|^2 with only that layer under "
             f"{res['scheme']} (torch fake-quant, a prediction, not a model evaluation)."]
    c = res.get("check")
    if c:
        def rho(v):
            return "n/a" if v is None or v != v else f"{v:+.2f}"
        src = "cached --sensitivity result" if c["sensitivity_cached"] else "measured now"
        lines.append(f"check: Spearman rho(predicted damage, measured KLD increase) = {rho(c['rho_groups'])} over "
                     f"n={c['n_groups']} layer groups (type x depth bucket), {rho(c['rho_types'])} over n={c['n_types']} "
                     f"layer types; measured sensitivity: {c['n_tokens']} held-out tokens, {src} ({c['seconds']:.0f} s).")
        top_m = ", ".join(g["group"] for g in c["groups"][:3])
        top_p = ", ".join(g["group"] for g in sorted(c["groups"], key=lambda g: -g["predicted"])[:3])
        lines.append(f"most damaging groups — measured: {top_m}; predicted: {top_p}.")
    lines.append(f"statistics: {res['seconds_stats']:.0f} s" + (f"; JSONL: {jsonl_path}" if jsonl_path else ""))
    return Group(t, Text("\n".join(lines)))


def outlier_report(recipe: Recipe, target: str, *, jsonl_path: Path | None = None, as_json: bool = False,
                   **kw):
    """Run ``outliers`` (with a status line on stderr), write its JSONL (atomic) and return what to print:
    the rich table, or the JSONL text with ``as_json``."""
    from host.fsutil import atomic_write_text
    from host.ui import err_console

    outlier_model(recipe, kw.get("model_name"))     # bad input: one line before the status line starts
    with err_console.status("outliers …") as status:
        res = outliers(recipe, target, log=lambda s: status.update(f"outliers: {s}"), **kw)
    text = outlier_jsonl(res)
    if jsonl_path is not None:
        atomic_write_text(jsonl_path, text)
    return text if as_json else render_outliers(res, jsonl_path=jsonl_path)
