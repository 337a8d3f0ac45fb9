"""Tiny random decoder models built from a config (no model files), shared by the transform and rotation tests:
Llama (optionally with attention/MLP biases), Qwen2 (q/k/v biases) and Gemma 3, with non-trivial norms and a few
outlier input channels like real LLMs, and a word-level tokenizer to save them as HF folders."""

from __future__ import annotations

TINY = dict(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=128)
FAMILIES = ("llama", "llama-bias", "qwen2", "gemma3")


def tiny_model(family: str, **config):
    """A seeded tiny model of ``family`` (one of ``FAMILIES``), in eval mode; ``config`` overrides its config's
    fields (e.g. Gemma 3's ``layer_types``)."""
    import torch
    import transformers

    torch.manual_seed(0)
    if family in ("llama", "llama-bias"):
        extra = dict(attention_bias=True, mlp_bias=True) if family == "llama-bias" else {}
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**TINY, **config}, tie_word_embeddings=True,
                                                                       **extra))
    elif family == "qwen2":    # q/k/v biases
        model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**{**TINY, **config}, tie_word_embeddings=True))
    elif family == "gemma3":
        model = transformers.Gemma3ForCausalLM(transformers.Gemma3TextConfig(
            **{**TINY, "head_dim": 16, "sliding_window": 16, "query_pre_attn_scalar": 16, **config}))
    else:
        raise ValueError(f"tiny_model: family {family!r}, expected one of {FAMILIES}")
    with torch.no_grad():    # random init has no outliers: non-trivial norms and biases, a few large input channels
        for _n, p in model.named_parameters():
            if p.ndim == 1:
                p.add_(torch.rand_like(p) * (0.5 if family == "gemma3" else 1.0))
        for layer in model.model.layers:
            layer.input_layernorm.weight[:3] *= 20
    return model.eval()


def tiny_tokenizer():
    """A word-level tokenizer over a-z (enough for ``save_pretrained`` of a tiny model's folder)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {c: i for i, c in enumerate("abcdefghijklmnopqrstuvwxyz")}
    vocab["[UNK]"] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return tok
