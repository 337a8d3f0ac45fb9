#!/usr/bin/env python3
"""``calib build`` answer generation: the one-prompt-at-a-time loop vs batched (and bf16), side by side.

    python bench/calib_speed.py                                # default recipe: 20 prompts x 128 new tokens
    python bench/calib_speed.py --recipe R --modes 1:float32,8:float32,8:bfloat16

Each mode runs ``host.calib_gen.generate_answers`` on the same templated prompts with a fresh
partial file (nothing resumed); ``1:float32`` is the loop ``calib build`` ran before batching (one
``generate`` per prompt, KV cache, fp32). Prints wall minutes per mode, the ratio to the first mode,
and how many answers are identical to the first mode's (left padding and bf16 change float rounding,
so a greedy answer can diverge after a few tokens).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipe", default="configs/models/smollm2-135m.yaml")
    ap.add_argument("--modes", default="1:float32,8:float32,8:bfloat16")
    ap.add_argument("--n-prompts", type=int)
    ap.add_argument("--max-new-tokens", type=int)
    a = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM

    from host.calib import ModelText, _pick_model, heldin_prompts
    from host.calib_gen import Progress, generate_answers
    from host.config import load_recipe
    from host.models import resolve_model

    recipe = load_recipe(a.recipe)
    spec = _pick_model(recipe, None)
    folder = resolve_model(spec, fetch=True)
    text = ModelText(folder)
    n = a.n_prompts or recipe.calib.n_prompts
    new = a.max_new_tokens or recipe.calib.max_new_tokens
    inputs = [text.apply_chat_template([{"role": "user", "content": p}]) if text.chat_template else p
              for p in heldin_prompts(recipe, n)]
    pad = text.tokenizer.token_to_id(text._special("eos_token") or "") or 0
    print(f"{spec.name}: {n} prompts x {new} new tokens, torch {torch.__version__}, {torch.get_num_threads()} threads")
    results = []
    for mode in a.modes.split(","):
        batch, dtype = mode.split(":")
        lm = AutoModelForCausalLM.from_pretrained(str(folder), dtype=getattr(torch, dtype)).eval()
        eos = lm.generation_config.eos_token_id
        eos_ids = [e for e in (eos if isinstance(eos, list) else [eos]) if isinstance(e, int)]
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.monotonic()
            ans = generate_answers(lm, text.encode, lambda ids: text.tokenizer.decode(ids, skip_special_tokens=True),
                                   inputs, [f"{mode}:{i}" for i in range(n)], max_new_tokens=new, pad_id=pad,
                                   eos_ids=eos_ids, batch=int(batch), partial=Path(tmp) / "p.jsonl",
                                   progress=Progress(f"batch {batch} {dtype}", n, every=60))
            dt = time.monotonic() - t0
        results.append((mode, dt, ans))
        same = sum(x == y for x, y in zip(ans, results[0][2], strict=True))
        print(f"{mode:>12}: {dt / 60:6.2f} min  x{results[0][1] / dt:5.2f} vs {results[0][0]}  "
              f"identical answers {same}/{n}", flush=True)
        del lm


if __name__ == "__main__":
    main()
