#!/usr/bin/env python3
"""Issue 16: 4-bit roundings simulated exactly in torch, side by side on the held-out tokens.

    python bench/int4_search.py                          # the README's ladder (MatMulNBits block 32)
    python bench/int4_search.py --model <awq folder> --hessians <its .pt> --rows gptq-search-asym+down8
    python bench/int4_search.py --offgrid 7 --rows rtn-sym,gptq-search-asym+down8      # the off-grid check
    python bench/int4_search.py --vendor w4a16-g64 [--model <rotated folder>]   # host.prequant onto the vendor grid

A row replaces every linear's weight by exactly what the artifact would hold (dequantized): the int4 body on
MatMulNBits' grid (block 32; ``sym`` = onnxruntime's signed int4, ``asym`` = a zero point per block), rounded by
``rtn`` (the builder's min/max), ``search`` (``host.gptq.searched_params``: importance-weighted scale search) or
``gptq-*`` (``host.gptq.gptq``, act-order, on builder or searched grids); lm_head int8 (block 32), ``+down8``
also every down_proj; the embedding int4 like genai's (block 32, the body's symmetry). KLD is vs the ORIGINAL
float model over all held-out windows. Hessians: ``--hessians`` (a ``~/.cache/rkdeploy/gptq-hessians`` file of
this checkpoint), else collected on the recipe's calibration JSON (``--offgrid`` always collects: the fold changes
the inputs). ``--vendor w4a16-g64``: every linear (lm_head untied, the embedding float) pre-rounded by ``host.prequant``
(the ``gptq`` transform: GPTQ onto the simulated toolkit grid, absmax / 7 per group of 64 with searched ranges, each
group's extreme on ±7 so the simulated toolkit recomputes the same scale; Hessians on the float model's inputs from
the recipe's calibration JSON plus ``--heldin-tokens`` of its held-in text, default the transform's 16,384), then the
simulated row (``host.fakequant``) — valid only if the real toolkit rounds as the simulation.
One JSON line per row on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

ROWS = ("rtn-sym", "search-sym", "search-asym", "gptq-builder-sym", "gptq-search-sym", "gptq-search-asym",
        "gptq-search-asym+down8")


def log(s: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {s}", file=sys.stderr, flush=True)


def quantized(w, h, bits: int, symmetric: bool, method: str):
    """What the artifact holds for ``w`` under ``method`` (rtn | search | gptq-builder | gptq-search), dequantized."""
    import torch

    from host.gptq import Grid, dequantize, gptq, rtn, searched_rtn

    grid = Grid(bits, 32, symmetric)
    if method == "rtn" or h is None:
        return dequantize(*rtn(w, grid), grid)
    if method == "search":
        return dequantize(*searched_rtn(w, torch.diag(h).float(), grid), grid)
    q, s, z = gptq(w, h, grid, act_order=True, grid_scales=method.split("-")[1])
    return dequantize(q, s, z, grid)


def hessian_key(name: str) -> str:
    """q/k/v share q_proj's input, up_proj gate_proj's (as host.gptq collects them)."""
    for a, b in (("k_proj", "q_proj"), ("v_proj", "q_proj"), ("up_proj", "gate_proj")):
        if name.endswith(a):
            return name[: -len(a)] + b
    return name


def vendor_rows(model, token_rows, scheme: str, damp: float, evaluate) -> None:
    from host.prequant import prequantize

    evaluate(f"vendor {scheme}: toolkit RTN (simulated)", sim=scheme)
    rec = prequantize(model, token_rows, scheme, damp=damp, log=log)["prequant"]
    log(f"GPTQ onto the {scheme} grid: {rec['seconds']} s; {rec['extremes_moved']} of {rec['groups']} groups' "
        "extreme moved onto the top code")
    evaluate(f"vendor {scheme}: GPTQ pre-rounded ({rec['calibration_tokens']} calibration tokens, damp {damp}), then toolkit RTN "
             "(simulated)", sim=scheme)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--recipe", default=str(ROOT / "configs/models/smollm2-135m.yaml"))
    ap.add_argument("--model", default="", help="checkpoint folder (default: the recipe's LLM)")
    ap.add_argument("--hessians", default="", help="cached Hessians of that checkpoint (.pt; comma-separated: later "
                    "files fill inputs the earlier lack, e.g. lm_head's from the original model under AWQ)")
    ap.add_argument("--rows", default=",".join(ROWS))
    ap.add_argument("--offgrid", type=int, default=-1, help="fold seeded random per-channel scales first")
    ap.add_argument("--vendor", default="", help="e.g. w4a16-g64: GPTQ pre-rounding onto the simulated toolkit grid")
    ap.add_argument("--heldin-tokens", type=int, default=16384, help="--vendor: also calibrate on this many tokens of the "
                    "recipe's held-in text (windows of 512; never the held-out text)")
    ap.add_argument("--damp", type=float, default=0.01, help="--vendor: GPTQ's damping (share of mean diag(H))")
    a = ap.parse_args()

    import torch

    from host.config import load_recipe
    from host.fakequant import fake_quantized
    from host.gptq import collect_hessians
    from host.quality.metrics import TokenStats
    from host.quality.reference import eval_windows, float_reference, llm_eval, load_torch_llm, torch_logprobs
    from host.transforms import calib_token_rows

    recipe = load_recipe(a.recipe)
    m = recipe.llms()[0]
    ev = llm_eval(recipe, m)
    windows = eval_windows(recipe, ev)
    ref = float_reference(recipe, ev, windows, log=log)
    model = load_torch_llm(Path(a.model) if a.model else ev.model_dir)
    if a.offgrid >= 0:
        from rotation import offgrid

        offgrid(model, a.offgrid)
    emb = model.get_input_embeddings()
    emb0 = emb.weight.detach().clone()
    fp32 = 4 * sum(p.numel() for p in model.parameters())         # a tied matrix once
    if model.lm_head.weight is emb.weight:                         # untie: lm_head and embedding quantized apart
        model.lm_head.weight = torch.nn.Parameter(emb0.clone())
    lins = {n: mod for n, mod in model.named_modules() if isinstance(mod, torch.nn.Linear)}
    orig = {n: mod.weight.detach().clone() for n, mod in lins.items()}

    def evaluate(label: str, size: float | None = None, sim: str | None = None) -> None:
        st, t0 = TokenStats.empty(), time.monotonic()
        for i, w in enumerate(windows):
            if sim:
                with fake_quantized(model, sim):
                    st.add(ref[i], torch_logprobs(model, w), w)
            else:
                st.add(ref[i], torch_logprobs(model, w), w)
        x = st.metrics()
        print(json.dumps({"row": label, "model": m.name, "offgrid": a.offgrid if a.offgrid >= 0 else None,
                          **({"size_x_fp32": round(size / fp32, 4)} if size else {}),
                          **{k: round(x[k], 4) for k in ("ppl_ratio", "kld_mean", "kld_p99", "top1_agree")},
                          "n_tokens": sum(len(w) - 1 for w in windows), "eval_s": round(time.monotonic() - t0, 1)}),
              flush=True)

    if a.vendor:
        rows = calib_token_rows(ev.model_dir, m.calibration)
        if a.heldin_tokens:
            from host.transforms import text_token_rows

            rows += text_token_rows(ev.model_dir, recipe.text.heldin, a.heldin_tokens)
        log(f"calibration: {len(rows)} rows, {sum(map(len, rows))} tokens")
        vendor_rows(model, rows, a.vendor, a.damp, evaluate)
        return
    if a.hessians and a.offgrid < 0:
        hess = {}
        for f in a.hessians.split(","):          # a later file fills the inputs the earlier ones lack
            for k, v in torch.load(f, weights_only=True).items():
                hess.setdefault(k, v.double())
    else:
        t0 = time.monotonic()
        names = sorted({hessian_key(n) for n in lins})
        hess = collect_hessians(model, calib_token_rows(ev.model_dir, m.calibration), names)
        log(f"Hessians of {len(names)} inputs: {time.monotonic() - t0:.0f} s")
    if a.offgrid >= 0:
        evaluate(f"offgrid:{a.offgrid} float")
    for row in [r for r in a.rows.split(",") if r]:
        body, _, extra = row.partition("+")
        method, sym = body.rsplit("-", 1)
        if method not in ("rtn", "search", "gptq-builder", "gptq-search") or sym not in ("sym", "asym"):
            sys.exit(f"--rows {row!r}: one of {', '.join(ROWS)} (+down8)")
        symmetric, t0, size = sym == "sym", time.monotonic(), 0.0
        i4, i8 = 0.5 + 4 / 32 + (0 if symmetric else 0.5 / 32), 1 + 4 / 32
        for n, w0 in orig.items():
            is8 = n == "lm_head" or (extra == "down8" and n.endswith("down_proj"))
            lins[n].weight.data = quantized(w0, hess.get(hessian_key(n)), 8 if is8 else 4,
                                            True if is8 else symmetric, "rtn" if is8 else method)
            size += w0.numel() * (i8 if is8 else i4)
        emb.weight.data = quantized(emb0, None, 4, symmetric, "rtn")
        size += emb0.numel() * i4 + 4 * (sum(p.numel() for p in model.parameters()) - emb0.numel()
                                         - sum(w.numel() for w in orig.values()))
        log(f"{row}: quantized in {time.monotonic() - t0:.0f} s")
        evaluate(row, size)


if __name__ == "__main__":
    main()
