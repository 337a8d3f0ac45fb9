"""Quality metrics: PPL, PPL ratio, KLD (mean, p99) and top-1 agreement per LLM token; cosine and
nearest-neighbour agreement of sentence embeddings."""

from __future__ import annotations

from dataclasses import dataclass


def log_softmax(x):
    """Float32 log-softmax over the last axis: the board backends' own (``board.backends.onnxruntime``)."""
    import numpy as np

    from board.backends.onnxruntime import log_softmax as _ls

    return _ls(np, x)


@dataclass
class TokenStats:
    """Per-token arrays accumulated over windows."""

    nll_ref: list
    nll: list
    kld: list
    top1: list

    @classmethod
    def empty(cls) -> TokenStats:
        return cls([], [], [], [])

    def add(self, lp_ref, lp, ids) -> None:
        import numpy as np

        lp_ref = log_softmax(lp_ref[:-1])
        lp = np.asarray(lp[:-1], dtype=np.float32)
        nxt = ids[1:]
        rows = np.arange(len(nxt))
        self.nll_ref.append(-lp_ref[rows, nxt])
        self.nll.append(-lp[rows, nxt])
        self.kld.append((np.exp(lp_ref) * (lp_ref - lp)).sum(-1))
        self.top1.append(lp_ref.argmax(-1) == lp.argmax(-1))

    def metrics(self) -> dict:
        import numpy as np

        nll_ref, nll = np.concatenate(self.nll_ref), np.concatenate(self.nll)
        kld = np.concatenate(self.kld)
        ppl_ref, ppl = float(np.exp(nll_ref.mean())), float(np.exp(nll.mean()))
        return {"ppl": ppl, "ppl_ratio": ppl / ppl_ref, "kld_mean": float(kld.mean()),
                "kld_p99": float(np.percentile(kld, 99)), "top1_agree": float(np.concatenate(self.top1).mean()),
                "n_tokens": int(nll.size), "ppl_float": ppl_ref}


def mean_pool(hidden, mask):
    """Mean-pooled, L2-normalised sentence embeddings."""
    import numpy as np

    mask = mask[..., None].astype(np.float32)
    v = (hidden * mask).sum(1) / np.clip(mask.sum(1), 1e-9, None)
    return v / np.clip(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12, None)


def embedding_metrics(ref, emb) -> dict:
    import numpy as np

    cos = (ref * emb).sum(-1)
    sim_r, sim_a = ref @ ref.T, emb @ emb.T
    np.fill_diagonal(sim_r, -np.inf)
    np.fill_diagonal(sim_a, -np.inf)
    nn = float((sim_r.argmax(-1) == sim_a.argmax(-1)).mean())
    return {"cos_mean": float(cos.mean()), "cos_min": float(cos.min()), "nn_agree": nn}
