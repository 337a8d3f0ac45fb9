"""Orthogonal rotations folded into a float checkpoint (QuaRot / SpinQuant, weight-only part).

QuaRot (Ashkboos et al. 2024) and SpinQuant (Liu et al. 2024): an RMSNorm only divides by the
norm of its input, which an orthogonal ``Q`` keeps, so once every RMSNorm weight is folded into
the linears that read it, the whole residual stream can be expressed in a rotated basis
(row vectors, ``y = x W^T``):

- ``R1`` (residual stream, ``d x d``): embedding ``E -> E Q``; every reader (``q/k/v_proj``,
  ``gate/up_proj``, ``lm_head`` with the final norm folded in) ``W -> W Q``; every writer
  (``o_proj``, ``down_proj``) ``W -> Q^T W`` (bias ``b -> b Q``). The norm weights become 1.
  A tied ``lm_head`` must be untied (``E Q`` and ``W_head diag(g) Q`` differ): the head's
  ``vocab x d`` matrix is stored twice.
- ``R2`` (per attention head, ``head_dim x head_dim``): ``v_proj``'s rows of each KV head
  ``W_h -> R^T W_h`` and the matching ``o_proj`` input columns ``-> W R`` (attention mixes tokens,
  not channels, so ``R`` passes through it; one ``R`` for every head, so GQA needs nothing more).

Neither needs a runtime op: the result is a normal HF folder of the same architecture that any
vendor toolkit converts. The rotations that do need one (QuaRot's online Hadamard before
``down_proj``, the ``q``/``k`` rotation around RoPE) are not done.

Gemma 2/3 put an RMSNorm *after* ``o_proj`` and ``down_proj`` (``post_attention_layernorm``,
``post_feedforward_layernorm``): its ``diag(1 + w)`` sits between the writer and the residual and
does not commute with ``Q``, so ``R1`` cannot be folded there; those models get ``R2`` only
(the record says so).

``Q`` is a randomized Hadamard matrix ``diag(+-1) H / sqrt(d)`` when ``d = 2^k m`` with ``m`` a
Paley order (``p + 1`` for a prime ``p = 3 mod 4``, ``2 (p + 1)`` for ``p = 1 mod 4``; Sylvester
doubling for ``2^k``), else a seeded random orthogonal matrix (QR of a Gaussian); ``kind: random``
asks for the latter at every width. Rotating spreads an outlier channel over all channels, which
4-bit per-group scales like; nothing looks at the grid the checkpoint's weights may lie on.
"""

from __future__ import annotations

from functools import lru_cache

from host.errors import ConfigError

KINDS = ("hadamard", "random")


# ---------------------------------------------------------------- matrices (numpy, float64)

def _is_prime(n: int) -> bool:
    return n >= 2 and all(n % p for p in range(2, int(n ** 0.5) + 1))


def _jacobsthal(q: int):
    import numpy as np

    residues = {(i * i) % q for i in range(1, q)}
    chi = np.array([0] + [1 if i in residues else -1 for i in range(1, q)], dtype=np.float64)
    idx = (np.arange(q)[None, :] - np.arange(q)[:, None]) % q
    return chi[idx]


def _paley(m: int):
    """A Hadamard matrix of order ``m`` by Paley's constructions over a prime field, or None."""
    import numpy as np

    q = m - 1
    if _is_prime(q) and q % 4 == 3:            # Paley I: order q + 1
        s = np.zeros((m, m))
        s[0, 1:] = 1
        s[1:, 0] = -1
        s[1:, 1:] = _jacobsthal(q)
        return np.eye(m) + s
    q = m // 2 - 1
    if m % 2 == 0 and _is_prime(q) and q % 4 == 1:   # Paley II: order 2 (q + 1)
        c = np.zeros((q + 1, q + 1))
        c[0, 1:] = 1
        c[1:, 0] = 1
        c[1:, 1:] = _jacobsthal(q)
        return np.kron(c, np.array([[1.0, -1.0], [-1.0, -1.0]])) + np.kron(np.eye(q + 1),
                                                                          np.array([[1.0, 1.0], [1.0, -1.0]]))
    return None


@lru_cache(maxsize=32)
def hadamard(n: int):
    """A ``n x n`` matrix of +-1 with ``H H^T = n I``: Sylvester ``2^k`` times a Paley order, or None."""
    import numpy as np

    if n < 1:
        return None
    k = (n & -n).bit_length() - 1            # the largest power of two dividing n
    for j in range(k, -1, -1):
        m = n >> j
        base = np.ones((1, 1)) if m == 1 else np.array([[1.0, 1.0], [1.0, -1.0]]) if m == 2 else _paley(m)
        if base is None:
            continue
        h = base
        for _ in range(j):
            h = np.block([[h, h], [h, -h]])
        return h
    return None


def rotation_matrix(n: int, kind: str, seed: int):
    """An orthogonal ``n x n`` float64 matrix: ``diag(+-1) H / sqrt(n)`` (``hadamard`` when an order-n
    Hadamard matrix is known) else a random orthogonal one; ``(Q, what)``."""
    import numpy as np

    rng = np.random.default_rng(seed)
    h = hadamard(n) if kind == "hadamard" else None
    if h is not None:
        signs = rng.choice([-1.0, 1.0], size=n)
        return signs[:, None] * h / np.sqrt(n), "randomized Hadamard"
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r))[None, :], "random orthogonal"


# ---------------------------------------------------------------- folding into a model (torch)

def _decoder(model, who: str = "rotate"):
    inner = getattr(model, "model", None)
    if getattr(inner, "layers", None) is None and getattr(inner, "language_model", None) is not None:
        inner = inner.language_model
    if getattr(inner, "layers", None) is None:
        raise ConfigError(f"{who}: {type(model).__name__} has no model.layers (only Llama/Qwen/Gemma-style decoders)")
    return inner


def untie_head(model) -> bool:
    """Give a tied ``lm_head`` its own copy of the embedding (configs say untied). True if it was tied."""
    import torch

    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    if head is None or head.weight is not emb.weight:
        return False
    head.weight = torch.nn.Parameter(emb.weight.detach().clone(), requires_grad=False)
    model.config.tie_word_embeddings = False
    text = getattr(model.config, "text_config", None)
    if text is not None:
        text.tie_word_embeddings = False
    return True


def _is_gemma_norm(norm) -> bool:
    return "gemma" in type(norm).__name__.lower()


def _norm_scale(norm):
    """The per-channel multiplier of an RMSNorm (``1 + w`` for Gemma's)."""
    w = norm.weight.detach().double()
    return 1 + w if _is_gemma_norm(norm) else w


def _set_unit(norm) -> None:
    import torch

    with torch.no_grad():
        norm.weight.fill_(0.0 if _is_gemma_norm(norm) else 1.0)
    if getattr(norm, "bias", None) is not None:
        raise ConfigError(f"rotate: {type(norm).__name__} has a bias (only RMSNorm without bias folds)")


def _set(param, value) -> None:
    import torch

    with torch.no_grad():
        param.copy_(value.to(param.dtype))


def _fold_norm_into(norm, linears) -> None:
    g = _norm_scale(norm)
    for lin in linears:
        _set(lin.weight, lin.weight.detach().double() * g[None, :])
    _set_unit(norm)


#: The modules a rotation folds into, per decoder layer (Llama/Qwen/Gemma layout).
LAYOUT = (("self_attn", ("q_proj", "k_proj", "v_proj", "o_proj")), ("mlp", ("gate_proj", "up_proj", "down_proj")))


def _check_layout(model, layers) -> None:
    """One line naming the first missing module, before any weight changes: a fused qkv/gate_up (Phi-3) or an
    unknown decoder has nothing the rotation knows how to fold into."""
    arch = type(model).__name__
    if not layers:
        raise ConfigError(f"rotate: {arch} has no decoder layers to rotate")
    for i, layer in enumerate(layers):
        for block, names in LAYOUT:
            mod = getattr(layer, block, None)
            missing = [n for n in names if getattr(mod, n, None) is None]
            if mod is None or missing:
                what = block if mod is None else f"{block}.{missing[0]}"
                raise ConfigError(f"rotate: {arch} layer {i} has no {what} (the rotation folds into separate "
                                  "q/k/v/o and gate/up/down projections; fused ones, as in Phi-3, are not supported)")
        for norm in ("input_layernorm", "post_attention_layernorm"):
            if getattr(layer, norm, None) is None:
                raise ConfigError(f"rotate: {arch} layer {i} has no {norm}")


def rotate_model(model, *, kind: str = "hadamard", seed: int = 0, log=None) -> dict:
    """Fold the rotations into ``model`` in place (float function unchanged). Returns a summary."""
    import torch

    if kind not in KINDS:
        raise ConfigError(f"rotate.kind: {kind!r} (allowed: {', '.join(KINDS)})")
    cfg = getattr(model.config, "text_config", None) or model.config
    dec = _decoder(model)
    layers = list(dec.layers)
    _check_layout(model, layers)
    sandwich = any(getattr(layer, "post_feedforward_layernorm", None) is not None for layer in layers)
    summary: dict = {"kind": kind, "seed": seed}

    # R2: per-head rotation of v_proj's output rows and o_proj's input columns
    heads = cfg.num_attention_heads
    kv = getattr(cfg, "num_key_value_heads", None) or heads
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    r2, what2 = rotation_matrix(hd, kind, seed + 1)
    r2 = torch.from_numpy(r2)
    n_r2 = 0
    for i, layer in enumerate(layers):
        at = layer.self_attn
        if getattr(at, "v_norm", None) is not None or at.v_proj.out_features != kv * hd \
                or at.o_proj.in_features != heads * hd:
            continue                              # a norm on v (Gemma 3n) or an odd shape: R2 would not pass
        wv = at.v_proj.weight.detach().double().reshape(kv, hd, -1)
        _set(at.v_proj.weight, torch.einsum("ji,hjd->hid", r2, wv).reshape(kv * hd, -1))
        if at.v_proj.bias is not None:
            _set(at.v_proj.bias, (at.v_proj.bias.detach().double().reshape(kv, hd) @ r2).reshape(-1))
        wo = at.o_proj.weight.detach().double().reshape(-1, heads, hd)
        _set(at.o_proj.weight, torch.einsum("ohj,ji->ohi", wo, r2).reshape(-1, heads * hd))
        n_r2 += 1
        if log:
            log(f"rotate R2 layer {i + 1}/{len(layers)}")
    summary["r2"] = {"layers": n_r2, "size": hd, "matrix": what2}

    if sandwich:
        summary["r1"] = None
        summary["r1_skipped"] = ("post-attention/post-feedforward RMSNorms sit between the writers and the residual "
                                 "(Gemma 2/3): a residual rotation cannot be folded without runtime ops")
        return summary

    # R1: fold every RMSNorm into its readers, then rotate the residual stream
    emb = model.get_input_embeddings()
    head = model.get_output_embeddings()
    tied = untie_head(model)
    for layer in layers:
        at, mlp = layer.self_attn, layer.mlp
        _fold_norm_into(layer.input_layernorm, [at.q_proj, at.k_proj, at.v_proj])
        _fold_norm_into(layer.post_attention_layernorm, [mlp.gate_proj, mlp.up_proj])
    _fold_norm_into(dec.norm, [head] if head is not None else [])
    d = emb.weight.shape[1]
    q, what1 = rotation_matrix(d, kind, seed)
    q = torch.from_numpy(q)
    _set(emb.weight, emb.weight.detach().double() @ q)
    readers = [head] if head is not None else []
    for i, layer in enumerate(layers):
        at, mlp = layer.self_attn, layer.mlp
        readers += [at.q_proj, at.k_proj, at.v_proj, mlp.gate_proj, mlp.up_proj]
        for w in (at.o_proj, mlp.down_proj):
            _set(w.weight, q.T @ w.weight.detach().double())
            if w.bias is not None:
                _set(w.bias, w.bias.detach().double() @ q)
        if log:
            log(f"rotate R1 layer {i + 1}/{len(layers)}")
    for lin in readers:
        _set(lin.weight, lin.weight.detach().double() @ q)
    summary["r1"] = {"size": d, "matrix": what1}
    summary["untied_lm_head"] = bool(tied)
    if tied:
        summary["untied_extra_params"] = int(head.weight.numel())
    return summary
