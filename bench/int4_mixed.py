#!/usr/bin/env python3
"""Issue 16: equivalent transforms + sensitivity-driven int4/int8 mix for the ONNX LLM, measured.

    python bench/int4_mixed.py                                  # default recipe, budget 0.25, AWQ(w4a16-g32)
    python bench/int4_mixed.py --budget 0.2 --no-transform --out /tmp/mix
    python bench/int4_mixed.py --simulated w4a16-g64,w8a8 --transform smoothquant:w8a8

Steps (each shows progress on stderr):
1. the float checkpoint with the transform folded in (``host.transforms``; cached under
   ~/.cache/rkdeploy/transformed/<model>-<method>-<key>, key = model sha256 + calibration sha256 + transform);
2. per layer type × depth sensitivity under ``w4a16-g32`` (what MatMulNBits block 32 does) on the
   transformed model (``host.quality.sensitivity``, 1,024 held-out tokens; JSON cached in --out);
3. ``host.build.mixed.plan_mixed``: the greedy size-vs-predicted-KLD frontier and the mix within the budget;
4. the ONNX artifact built by onnxruntime-genai's builder (int4 body, chosen MatMuls int8, embedding int4),
   measured like every ONNX row (the board's onnxruntime backend, all held-out tokens, KLD vs the ORIGINAL
   float model). ``--simulated`` adds torch fake-quant rows of the original and the transformed model.
5. ``--gptq``: a copy of that artifact with every int4 MatMulNBits node re-rounded by GPTQ (``host.gptq``:
   Hessians from the calibration JSON through the checkpoint the artifact was built from, the builder's
   own grid), measured the same way beside the round-to-nearest row.

``--plain`` skips 2-3: int4 everywhere except lm_head at int8 (the 0.22x fp32 baseline); ``--int8 lm_head,down_proj``
names the int8 linears by hand instead (AWQ + that mix: 0.245x fp32).

    python bench/int4_mixed.py --plain --no-transform --gptq      # RTN vs GPTQ, plain int4, no AWQ

Prints one JSON line per row (``--jsonl`` appends them to a file too).
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--recipe", default=str(ROOT / "configs/models/smollm2-135m.yaml"))
    ap.add_argument("--budget", type=float, default=0.25, help="artifact weights <= budget x fp32 bytes")
    ap.add_argument("--transform", default="awq:w4a16-g32", help="METHOD:SCHEME (awq, smoothquant)")
    ap.add_argument("--no-transform", action="store_true")
    ap.add_argument("--simulated", default="", help="comma list of schemes to simulate before/after the transform")
    ap.add_argument("--out", default="/tmp/rkdeploy-int4-mixed")
    ap.add_argument("--windows", type=int, default=0, help="evaluate on the first N windows only (0: all)")
    ap.add_argument("--jsonl", default="")
    ap.add_argument("--sensitivity", default="", help="a saved sensitivity JSON (w4a16-g32) to plan from instead")
    ap.add_argument("--plain", action="store_true", help="no sensitivity plan: int4 body, lm_head int8 (= --int8 lm_head)")
    ap.add_argument("--int8", default="", help="no sensitivity plan: these linears int8 (comma list of name parts, "
                    "e.g. lm_head,down_proj; none: all int4, lm_head tied to the embedding), the rest int4")
    ap.add_argument("--gptq", action="store_true", help="also measure the artifact with GPTQ rounding (host.gptq)")
    ap.add_argument("--act-order", action="store_true", help="GPTQ in decreasing Hessian-diagonal order")
    ap.add_argument("--gptq-only", action="store_true", help="with --gptq: measure only the GPTQ artifact")
    ap.add_argument("--damp", type=float, default=0.01, help="GPTQ dampening (fraction of the mean diagonal)")
    a = ap.parse_args()

    from host.config import load_recipe
    from host.errors import ConfigError
    from host.quality.reference import eval_windows, float_reference, llm_eval, load_torch_llm, torch_logprobs
    from host.transforms import parse_transform, transformed_checkpoint

    if not 0 < a.budget <= 1:
        sys.exit(f"--budget {a.budget}: a fraction of the fp32 size in (0, 1]")
    if not 0 < a.damp < 1:
        sys.exit(f"--damp {a.damp}: a fraction of the Hessian's mean diagonal in (0, 1)")
    t = None
    if not a.no_transform:
        if ":" not in a.transform:
            sys.exit(f"--transform {a.transform!r}: expected METHOD:SCHEME, e.g. awq:w4a16-g32")
        method, scheme = a.transform.split(":", 1)
        try:
            t = parse_transform({method: {"scheme": scheme}}, "--transform")
        except ConfigError as e:
            sys.exit(str(e))
    recipe = load_recipe(a.recipe)
    m = recipe.llms()[0]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    ev = llm_eval(recipe, m)
    windows = eval_windows(recipe, ev)
    ref = float_reference(recipe, ev, windows, log=log)
    n = a.windows or len(windows)
    rows = []

    def emit(row: dict) -> None:
        row = {"model": m.name, "n_tokens": n * (ev.window - 1), **row}
        rows.append(row)
        print(json.dumps(row), flush=True)
        if a.jsonl:
            with open(a.jsonl, "a") as f:
                f.write(json.dumps(row) + "\n")

    def measure(lm_logprobs) -> dict:
        from host.quality.metrics import TokenStats

        st = TokenStats.empty()
        for i, w in enumerate(windows[:n]):
            st.add(ref[i], lm_logprobs(w), w)
        x = st.metrics()
        return {k: round(x[k], 4) for k in ("ppl_ratio", "kld_mean", "kld_p99", "top1_agree")}

    src, label = ev.model_dir, "none"
    if t is not None:
        t0 = time.monotonic()
        src, rec = transformed_checkpoint(ev.model_dir, m.calibration, t, text=recipe.text.heldin, log=log)
        label = t.label()
        log(f"transform {label}: {src} (built in {rec['seconds']} s; {rec['scaled']}/{rec['groups']} groups scaled, "
            f"mean exponent {rec['mean_exponent']}; this call {time.monotonic() - t0:.1f} s)")
        model_t = load_torch_llm(src)
        emit({"row": "float", "transform": label, **measure(lambda w: torch_logprobs(model_t, w))})
        del model_t

    if a.simulated:
        from host.quality.runtimes import TorchFakeQuant

        for which, folder in (("none", ev.model_dir), (label, src)):
            if which == label and t is None:
                continue
            model = load_torch_llm(folder)
            for s in a.simulated.split(","):
                log(f"simulated {s} (transform {which})")
                with TorchFakeQuant(model, s) as rt:
                    emit({"row": f"simulated {s}", "method": "simulated", "transform": which, **measure(rt.logprobs)})

    if a.plain or a.int8:
        from host.build.mixed import onnx_node
        from host.fakequant import linear_layers

        parts = [x for x in (a.int8 or "lm_head").split(",") if x and x != "none"]
        names = list(linear_layers(load_torch_llm(src)))
        int8 = tuple(sorted({onnx_node(n) for n in names if any(x in n for x in parts)}))
        if parts and not int8:
            sys.exit(f"--int8 {a.int8}: matches none of the model's linears")
        parts = parts or ["none"]
        return build_and_measure(a, m, src, label, int8, "+".join(parts), out, emit, measure, log)

    # 2. sensitivity of the (transformed) model under the int4 scheme
    sens_path = out / f"sensitivity-{label.replace('(', '-').replace(')', '')}.json"
    if a.sensitivity:
        sens = json.loads(Path(a.sensitivity).read_text())
        log(f"sensitivity from {a.sensitivity} ({sens['scheme']}, {sens['n_tokens']} tokens)")
    elif sens_path.is_file():
        sens = json.loads(sens_path.read_text())
    else:
        sens = sensitivity_of(recipe, m, src, log)
        sens_path.write_text(json.dumps(sens, indent=1))

    # 3. plan
    from host.build.mixed import plan_mixed, units_from_sensitivity
    from host.fakequant import linear_layers

    model = load_torch_llm(src)
    fp32 = 4.0 * sum(p.numel() for p in model.parameters())
    linears = linear_layers(model)
    emb = model.get_input_embeddings().weight
    # every distinct weight once (a tied lm_head is the embedding's matrix)
    lin_params = sum(mod.weight.numel() for mod in linears.values() if mod.weight is not emb)
    units = units_from_sensitivity(model, sens["groups"])
    from host.build.mixed import INT4_BYTES

    # the embedding is int4 (GatherBlockQuantized) in every mix; norms stay fp32
    other = emb.numel() * INT4_BYTES + 4.0 * (sum(p.numel() for p in model.parameters()) - lin_params - emb.numel())
    plan = plan_mixed(units, fp32_bytes=fp32, budget=a.budget, other_bytes=other)
    del model
    log("size-vs-predicted-KLD frontier (predicted = sum of per-unit int4 KLD increases, an estimate):")
    for p in plan.frontier:
        log(f"  {p['ratio']:.3f}x fp32  predicted KLD {p['predicted_kld']:.4f}  + {p['units'][-1] if p['units'] else '(all int4)'}")
    emit({"row": "plan", "budget": a.budget, "transform": label, "int8_nodes": list(plan.int8_nodes),
          "predicted_ratio": round(plan.bytes / fp32, 4), "frontier": plan.frontier})

    build_and_measure(a, m, src, label, plan.int8_nodes, a.budget, out, emit, measure, log)


def build_and_measure(a, m, src: Path, label: str, int8_nodes, budget, out: Path, emit, measure, log) -> None:
    """4. build the mix (round-to-nearest, the builder's) and measure it; 5. with ``--gptq``, a GPTQ copy too."""
    import shutil

    from host.build.mixed import build_genai_mixed
    from host.fsutil import atomic_dir, atomic_write_text
    from host.quality.reference import load_torch_llm
    from host.quality.runtimes import OrtCausalLm

    model = load_torch_llm(src)
    fp32 = 4.0 * sum(p.numel() for p in model.parameters())
    del model
    art = out / f"int4-mixed-{label.replace('(', '-').replace(')', '')}-{budget}"
    if not (art / "genai_config.json").is_file():
        t0 = time.monotonic()
        with atomic_dir(art) as tmp:
            build_genai_mixed(src, tmp, int8_nodes, log, threads=2, board_threads=2)
        log(f"built {art} in {time.monotonic() - t0:.0f} s")
    arts = [(art, "rtn", {})]
    if a.gptq:
        from host.gptq import gptq_artifact
        from host.ui import progress

        g_art = art.with_name(f"{art.name}-gptq{'-act' if a.act_order else ''}-d{a.damp}")
        rec_path = g_art / "rkdeploy-gptq.json"
        if not rec_path.is_file():
            with atomic_dir(g_art) as tmp, progress() as bar:
                tasks: dict = {}

                def step(what, done, total):
                    if what not in tasks:
                        tasks[what] = bar.add_task(what, total=total)
                    bar.update(tasks[what], completed=done)

                for f in art.iterdir():
                    shutil.copy2(f, tmp / f.name)
                rec = gptq_artifact(tmp, src, m.calibration, damp=a.damp, act_order=a.act_order, log=log,
                                    progress=step)
                atomic_write_text(tmp / "rkdeploy-gptq.json", json.dumps(rec, indent=1))
            log(f"GPTQ {g_art}: {rec['nodes']} nodes in {rec['seconds']} s (weighted error GPTQ/RTN median "
                f"{rec['weighted_error_ratio_median']}, max {rec['weighted_error_ratio_max']})")
        rec = json.loads(rec_path.read_text())
        arts.append((g_art, "gptq" + ("+act-order" if a.act_order else ""),
                     {"gptq_seconds": rec["seconds"], "gptq_nodes": rec["nodes"],
                      "weighted_error_ratio_median": rec["weighted_error_ratio_median"]}))
    for folder, rounding, extra in arts[1:] if a.gptq and a.gptq_only else arts:
        size = sum(f.stat().st_size for f in folder.iterdir() if f.name.startswith("model.onnx"))
        lm = OrtCausalLm(folder, {"format": "onnx-genai", "entry": "model.onnx", "scheme": "int4"})
        try:
            emit({"row": "onnx int4 mixed", "method": "measured", "backend": "onnxruntime", "transform": label,
                  "rounding": rounding, "budget": budget, "size_mb": round(size / 1e6, 1),
                  "size_ratio_fp32": round(size / fp32, 4), "int8_nodes": len(int8_nodes), **extra,
                  **measure(lm.logprobs)})
        finally:
            lm.close()


def sensitivity_of(recipe, m, folder: Path, log) -> dict:
    """``host.quality.sensitivity`` on ``folder`` (the transformed checkpoint) vs the original float reference."""
    import host.quality.sensitivity as sens_mod

    real = sens_mod.load_torch_llm
    sens_mod.load_torch_llm = lambda _d: real(folder)
    try:
        return sens_mod.sensitivity(recipe, "rk3576", scheme="w4a16-g32", buckets=3, log=log)
    finally:
        sens_mod.load_torch_llm = real


if __name__ == "__main__":
    main()
