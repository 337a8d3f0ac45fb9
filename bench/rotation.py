#!/usr/bin/env python3
"""Issue 16 part C: rotation (QuaRot/SpinQuant weight-only) alone and before AWQ, measured side by side.

    python bench/rotation.py                                       # SmolLM2: none, awq, rotate, rotate+awq
    python bench/rotation.py --variants none,rotate:random:1 --onnx-int4 none,rotate:random:1   # the off-grid check
    python bench/rotation.py --recipe configs/models/gemma3-270m.yaml --variants none,rotate

A variant is ``none`` or transforms joined by ``+``: ``rotate`` (randomized Hadamard, seed 0),
``rotate:random:SEED`` / ``rotate:hadamard:SEED``, ``awq:SCHEME``, ``smoothquant:SCHEME``
(``rotate+awq:w4a16-g64`` = ``{rotate: {}, awq: {scheme: w4a16-g64}}``). Per variant: the
transformed float checkpoint (``host.transforms.transformed_checkpoint``, cached), its float row
(an equivalent transform keeps PPL ratio 1 and KLD ~0), then the simulated vendor rows
(``host.fakequant``: torch round-to-nearest, labelled ``method: simulated``), and with
``--onnx-int4`` the onnxruntime-genai int4 artifact (builder defaults: MatMulNBits block 32, RTN)
measured with onnxruntime. Every row: all held-out tokens, KLD vs the ORIGINAL float model.

``rotate:random:SEED`` is the off-grid model: an exactly equivalent float model whose weights lie
on no 4-bit grid (the default SmolLM2's are Q4_1-rounded), to check that a method's gain is not
a grid match. It is itself a rotation, so it cannot be the baseline *for* ``rotate``: ``offgrid:SEED``
(bench only, in memory, simulated rows only) is the other off-grid model, every AWQ-style layer group
scaled by a seeded random per-channel ``s = exp(U(-0.3, 0.3))`` folded as AWQ folds its scales (exactly
equivalent, off the grid in every linear but ``lm_head``, channel structure kept): ``offgrid:7`` vs
``offgrid:7+rotate`` measures the rotation on an off-grid model. One JSON line per row on stdout (``--jsonl`` appends them to a file too).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def log(s: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {s}", file=sys.stderr, flush=True)


def variant_transform(text: str, search: dict | None = None):
    """``rotate+awq:w4a16-g64`` → ``host.transforms.parse_transform`` of ``{rotate: {}, awq: {scheme: …}}``."""
    from host.transforms import parse_transform

    if text == "none":
        return None
    value: dict = {}
    for part in text.split("+"):
        if part.startswith("offgrid:"):
            continue
        name, _, rest = part.partition(":")
        if name == "rotate":
            kind, _, seed = rest.partition(":")
            value["rotate"] = {"kind": kind or "hadamard", "seed": int(seed or 0)}
        else:
            value[name] = {**({"scheme": rest} if rest else {}), **(search or {})}
    return parse_transform(value, f"--variants {text}") if value else None


def offgrid_seed(text: str) -> int | None:
    first = text.split("+")[0]
    return int(first.split(":")[1]) if first.startswith("offgrid:") else None


def offgrid(model, seed: int) -> int:
    """Fold seeded random per-channel scales ``exp(U(-0.3, 0.3))`` into every layer group (equivalent)."""
    import torch

    from host.transforms import fold, groups

    gen = torch.Generator().manual_seed(seed)
    gs = groups(model)
    for g in gs:
        n = g.linears[0][1].in_features // (g.repeat if g.repeat > 1 else 1)
        fold(g, torch.exp((torch.rand(n, generator=gen, dtype=torch.float64) - 0.5) * 0.6).float())
    return len(gs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--recipe", default=str(ROOT / "configs/models/smollm2-135m.yaml"))
    ap.add_argument("--variants", default="none,awq:w4a16-g64,rotate,rotate+awq:w4a16-g64")
    ap.add_argument("--simulated", default="w4a16,w4a16-g64,w8a8", help="comma list of schemes ('' = none)")
    ap.add_argument("--onnx-int4", default="", help="comma list of variants also built as ONNX int4 (genai)")
    ap.add_argument("--out", default="/tmp/rkdeploy-rotation")
    ap.add_argument("--windows", type=int, default=0, help="evaluate on the first N windows only (0: all)")
    ap.add_argument("--jsonl", default="")
    ap.add_argument("--calibration", default="", help="calibration JSON for searched transforms (default: recipe's)")
    ap.add_argument("--search", default="", help='JSON merged into every searched step, e.g. {"grid": [0, 0.5, 1], '
                    '"samples": 256} (a reduced search)')
    ap.add_argument("--no-float", action="store_true", help="skip the float row of each variant (equivalence check)")
    a = ap.parse_args()

    from host.config import load_recipe
    from host.errors import ConfigError
    from host.quality.metrics import TokenStats
    from host.quality.reference import eval_windows, float_reference, llm_eval, load_torch_llm
    from host.quality.runtimes import TorchFakeQuant
    from host.transforms import transformed_checkpoint

    names = [v for v in a.variants.split(",") if v]
    onnx = [v for v in a.onnx_int4.split(",") if v]
    try:
        ts = {v: variant_transform(v, json.loads(a.search) if a.search else None)
              for v in dict.fromkeys(names + onnx)}
    except (ConfigError, ValueError) as e:
        sys.exit(str(e))
    recipe = load_recipe(a.recipe)
    m = recipe.llms()[0]
    ev = llm_eval(recipe, m)
    windows = eval_windows(recipe, ev)
    ref = float_reference(recipe, ev, windows, log=log)
    n = a.windows or len(windows)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)

    def emit(row: dict) -> None:
        row = {"model": m.name, "n_tokens": n * (ev.window - 1), **row}
        print(json.dumps(row), flush=True)
        if a.jsonl:
            with open(a.jsonl, "a") as f:
                f.write(json.dumps(row) + "\n")

    def measure(lm_logprobs) -> dict:
        st = TokenStats.empty()
        t0 = time.monotonic()
        for i, w in enumerate(windows[:n]):
            st.add(ref[i], lm_logprobs(w), w)
        x = st.metrics()
        return {**{k: round(x[k], 4) for k in ("ppl_ratio", "kld_mean", "kld_p99", "top1_agree")},
                "eval_s": round(time.monotonic() - t0, 1)}

    def source(v: str):
        t = ts[v]
        if offgrid_seed(v) is not None:
            return ev.model_dir, v, {}
        if t is None:
            return ev.model_dir, "none", {}
        t0 = time.monotonic()
        folder, rec = transformed_checkpoint(ev.model_dir, Path(a.calibration) if a.calibration else m.calibration,
                                             t, text=recipe.text.heldin, log=log)
        log(f"{t.label()}: {folder} (built in {rec['seconds']} s; this call {time.monotonic() - t0:.1f} s)")
        return folder, t.label(), rec

    for v in names:
        folder, label, rec = source(v)
        model = load_torch_llm(folder)
        if offgrid_seed(v) is not None:
            from host.rotation import rotate_model

            log(f"offgrid: random per-channel scales folded into {offgrid(model, offgrid_seed(v))} groups")
            if ts[v] is not None:   # only rotate composes in memory here
                rec = {"rotation": rotate_model(model, kind=ts[v].kind, seed=ts[v].seed)}
        params = sum(p.numel() for p in model.parameters())
        extra = {"params": params, "tied_lm_head": model.get_output_embeddings().weight is
                 model.get_input_embeddings().weight}
        if "rotation" in rec:
            extra["rotation"] = {k: rec["rotation"][k] for k in ("r1", "r2") if k in rec["rotation"]}
        if not a.no_float:
            log(f"float ({label})")
            emit({"row": "float", "transform": label, **extra, **measure(TorchFakeQuant(model, None).logprobs)})
        for s in [s for s in a.simulated.split(",") if s]:
            log(f"simulated {s} ({label})")
            with TorchFakeQuant(model, s) as rt:
                emit({"row": f"simulated {s}", "method": "simulated", "transform": label, **measure(rt.logprobs)})
        del model

    for v in onnx:
        from host.build.genai import build_genai
        from host.fsutil import atomic_dir
        from host.quality.runtimes import OrtCausalLm

        folder, label, _rec = source(v)
        art = out / f"onnx-int4-{v.replace(':', '-').replace('+', '_')}"
        if not (art / "genai_config.json").is_file():
            t0 = time.monotonic()
            with atomic_dir(art) as tmp:
                build_genai(folder, tmp, "int4", log, threads=2, board_threads=2)
            log(f"built {art} in {time.monotonic() - t0:.0f} s")
        size = sum(f.stat().st_size for f in art.iterdir() if f.name.startswith("model.onnx"))
        lm = OrtCausalLm(art, {"format": "onnx-genai", "entry": "model.onnx", "scheme": "int4"})
        try:
            log(f"onnx int4 ({label})")
            emit({"row": "onnx int4", "method": "measured", "backend": "onnxruntime", "transform": label,
                  "size_mb": round(size / 1e6, 1), **measure(lm.logprobs)})
        finally:
            lm.close()


if __name__ == "__main__":
    main()
