"""host.transplant: a Llama checkpoint re-expressed as Qwen2ForCausalLM computes the same logits (tiny random models)."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")


def _tiny_llama(tmp_path, family="llama"):
    from tests.host.quality.tiny_models import tiny_model

    m = tiny_model(family)       # seeded, non-trivial norms: a wrong norm mapping cannot hide behind ones
    m.save_pretrained(str(tmp_path / "llama"))
    return tmp_path / "llama", m


def test_transplant_keeps_the_function_and_unties_the_head(tmp_path):
    from transformers import AutoModelForCausalLM

    from host.transplant import to_qwen2

    src, llama = _tiny_llama(tmp_path)
    out = tmp_path / "qwen2"
    diff = to_qwen2(src, out, name="tiny-qwen2", tokens=list(range(1, 40)))
    assert diff <= 1e-5
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "qwen2" and cfg["architectures"] == ["Qwen2ForCausalLM"]
    assert cfg["tie_word_embeddings"] is False
    qwen = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    sd = qwen.state_dict()
    assert "model.layers.0.self_attn.q_proj.bias" in sd and float(sd["model.layers.0.self_attn.q_proj.bias"].abs().max()) == 0
    assert qwen.lm_head.weight.data_ptr() != qwen.model.embed_tokens.weight.data_ptr()   # untied, equal values
    assert torch.equal(qwen.lm_head.weight, llama.model.embed_tokens.weight)
    ids = torch.tensor([[5, 9, 13, 2, 77, 31, 8]])
    with torch.no_grad():
        assert torch.allclose(qwen(ids).logits, llama(ids).logits, atol=1e-5)


def test_transplant_refuses_what_qwen2_cannot_express(tmp_path):
    from host.errors import ModelError
    from host.transplant import to_qwen2

    src, _ = _tiny_llama(tmp_path, "llama-bias")
    with pytest.raises(ModelError, match="biases of its own"):
        to_qwen2(src, tmp_path / "out", name="x", tokens=[1, 2, 3])
    assert not (tmp_path / "out").exists()


def test_transplant_check_catches_a_changed_function(tmp_path, monkeypatch):
    """The equivalence check before writing is real: a Qwen2 whose RoPE base differs is refused, nothing written."""
    import host.transplant as tp
    from host.errors import ModelError

    src, _ = _tiny_llama(tmp_path)
    real = tp.qwen2_config

    def wrong(cfg):
        q = real(cfg)
        q.rope_parameters = {"rope_type": "default", "rope_theta": 10.0}
        return q

    monkeypatch.setattr(tp, "qwen2_config", wrong)
    with pytest.raises(ModelError, match="logits differ"):
        tp.to_qwen2(src, tmp_path / "out", name="x", tokens=list(range(1, 30)))
    assert not (tmp_path / "out").exists()
