"""Encoder quality: cosine of mean-pooled sentence embeddings vs float (mean, min) and
nearest-neighbour agreement on held-out sentences."""

from __future__ import annotations

import os

from host.manifest import inputs_hash
from host.quality.metrics import embedding_metrics, mean_pool
from host.quality.reference import EVAL_VERSION, load_torch_encoder, quality_cache
from host.quality.rows import for_target, quality_row, row_env, split_cached
from host.quality.runtimes import OrtEncoder, TorchFakeQuant, arithmetic_env
from host.textdata import recipe_sentences


def torch_embeddings(model, feeds):
    import numpy as np
    import torch

    batch = {k: np.concatenate([f[k] for f in feeds]) for k in feeds[0]}   # one batch: same numbers, far faster
    with torch.no_grad():
        h = model(**{k: torch.from_numpy(v) for k, v in batch.items()}).last_hidden_state.numpy()
    return mean_pool(h, batch["attention_mask"])


def evaluate_encoder(recipe, m, target, arts, cache, simulated, schemes, log) -> list[dict]:
    import numpy as np

    from host.build.onnx_int8 import encode_batch, encoder_input_names
    from host.models import model_sha256, resolve_model
    from host.quality.evaluate import pending
    from host.quality.rows import error_row

    folder = resolve_model(m)
    sents = recipe_sentences(recipe.text, "heldout", recipe.quality.sentences)
    ref_key = inputs_hash({"v": EVAL_VERSION, "model": model_sha256(folder), "sents": sents, "seq_len": m.seq_len})
    todo = pending(m, target, arts, ref_key, simulated, schemes)
    done, missing = split_cached(todo, cache, target)
    if not missing:
        return [done[p.key] for p in todo]
    feeds = encode_batch(folder, sents, m.seq_len, encoder_input_names(folder))
    ref_path = quality_cache() / f"embed-{ref_key[:24]}.npy"
    model = None
    if ref_path.is_file():
        ref = np.load(ref_path)
    else:
        if log:
            log(f"{m.name}: float reference (PyTorch fp32, {len(sents)} sentences)")
        model = load_torch_encoder(folder)
        ref = torch_embeddings(model, feeds)
        ref_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = ref_path.with_suffix(".tmp.npy")
        np.save(tmp, ref)
        os.replace(tmp, ref_path)
    for p in missing:
        if log:
            log(f"{m.name}/{p.scheme}: {p.method} on {len(sents)} held-out sentences")
        if p.method == "measured":
            rt = OrtEncoder(p.artifact.path, p.artifact.manifest)
            emb = rt.embed(feeds)
            arith = arithmetic_env("onnxruntime", rt.sess, p.artifact.manifest)
            backend = rt.name
        else:
            if model is None:
                model = load_torch_encoder(folder)
            try:
                with TorchFakeQuant(model, p.scheme) as rt:
                    emb = rt.embed(feeds)
            except ValueError as e:
                done[p.key] = error_row(m, target, p, str(e))
                continue
            backend = rt.name
            arith = arithmetic_env(backend)
        env = row_env(p, target, {"sentences": len(sents), "seq_len": m.seq_len, "text": str(recipe.text.heldout),
                                  **arith})
        row = quality_row(m, target, p.scheme, p.method, backend, embedding_metrics(ref, emb), artifact=p.artifact,
                          env=env)
        row["seq_len"], row["batch"] = m.seq_len, 1
        cache.put(p.key, row)
        done[p.key] = for_target(row, p, target)
    return [done[p.key] for p in todo if p.key in done]
