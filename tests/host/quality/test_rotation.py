"""host.rotation + the ``rotate`` transform: Hadamard construction and recipe forms (fast, numpy only);
folded rotations keep the float logits of tiny random Llama / Qwen2 / Gemma 3 models (slow: real torch +
transformers, built from a config, no model files)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from host.errors import ConfigError
from host.rotation import hadamard, rotation_matrix
from host.transforms import Chain, Rotation, Transform, parse_transform
from tests.host.quality.tiny_models import TINY
from tests.host.quality.tiny_models import tiny_model as _tiny
from tests.host.quality.tiny_models import tiny_tokenizer as _tokenizer


@pytest.mark.parametrize("n", [1, 2, 4, 12, 20, 28, 36, 64, 576, 640, 896, 960, 1536, 2048, 3584])
def test_hadamard_is_plus_minus_one_and_orthogonal(n):
    h = hadamard(n)     # 576 = 36 x 16 (SmolLM2), 640 = 20 x 32 (Gemma 3 270M), 896 = 28 x 32 (Qwen2 0.5B)
    assert h is not None and h.shape == (n, n)
    assert set(np.unique(h)) <= {-1.0, 1.0}
    assert np.array_equal(h @ h.T, n * np.eye(n))


@pytest.mark.parametrize("n", [3, 6, 10, 22])
def test_no_hadamard_order_falls_back_to_a_seeded_random_orthogonal(n):
    assert hadamard(n) is None      # no Hadamard matrix of these orders exists
    q, what = rotation_matrix(n, "hadamard", 5)
    assert what == "random orthogonal"
    assert np.allclose(q.T @ q, np.eye(n), atol=1e-12)
    assert np.array_equal(q, rotation_matrix(n, "hadamard", 5)[0])
    assert not np.allclose(q, rotation_matrix(n, "hadamard", 6)[0])


def test_randomized_hadamard_is_orthogonal_and_seeded():
    q, what = rotation_matrix(576, "hadamard", 0)
    assert what == "randomized Hadamard"
    assert np.allclose(q @ q.T, np.eye(576), atol=1e-12)
    assert np.allclose(np.abs(q), 1 / np.sqrt(576))     # every entry the same size: no channel kept apart
    assert not np.array_equal(q, rotation_matrix(576, "hadamard", 1)[0])
    r, what = rotation_matrix(576, "random", 0)
    assert what == "random orthogonal" and np.allclose(r @ r.T, np.eye(576), atol=1e-10)


def test_parse_rotate_forms():
    assert parse_transform("rotate") == Rotation()
    assert parse_transform({"rotate": None}) == Rotation()
    assert parse_transform({"rotate": "random"}) == Rotation("random", 0)
    r = parse_transform({"rotate": {"kind": "random", "seed": 3}})
    assert r.label() == "rotate(random, seed 3)" and r.scheme is None
    assert parse_transform(r.to_dict()) == r
    # rotate + one search, rotate applied first whatever the written order
    c = parse_transform({"awq": {"scheme": "w4a16-g64"}, "rotate": {}})
    assert isinstance(c, Chain) and c.label() == "rotate+awq(w4a16-g64)" and c.scheme == "w4a16-g64"
    assert [type(s) for s in c.steps()] == [Rotation, Transform]
    assert parse_transform(c.to_dict()) == c and list(c.to_dict()) == ["rotate", "awq"]


@pytest.mark.parametrize("value,fragment", [
    ({"rotate": {"kind": "givens"}}, "transform.rotate.kind: 'givens' (allowed: hadamard, random)"),
    ({"rotate": {"seed": -1}}, "transform.rotate.seed: a whole number"),
    ({"rotate": {"seed": True}}, "transform.rotate.seed: a whole number"),
    ({"rotate": {"angle": 1}}, "transform.rotate: allowed keys are kind, seed"),
    ({"rotate": {}, "awq": {}, "smoothquant": {}}, "one searched method per transform, got awq and smoothquant"),
    ({"rotate": {}, "gptx": {}}, "unknown method 'gptx'"),
    ({}, "expected one of"),
])
def test_bad_rotate_is_one_line_naming_the_field(value, fragment):
    with pytest.raises(ConfigError) as e:
        parse_transform(value)
    assert fragment in str(e.value) and "\n" not in str(e.value)


# ---------------------------------------------------------------- torch (slow tier)

def _logits(model, ids):
    import torch

    with torch.no_grad():
        return model(ids).logits


def _ids(length: int = 32):
    import torch

    g = torch.Generator().manual_seed(1)
    return torch.randint(0, TINY["vocab_size"], (1, length), generator=g)


@pytest.mark.slow     # real torch + transformers: ~1 s per test after a ~5 s import (2-core Xeon)
@pytest.mark.parametrize("family", ["llama", "llama-bias", "qwen2", "gemma3"])
@pytest.mark.parametrize("kind", ["hadamard", "random"])
def test_rotate_keeps_float_logits(family, kind):
    import torch

    from host.rotation import rotate_model

    model = _tiny(family)
    ids = _ids()
    before = _logits(model, ids)
    w_before = {n: p.detach().clone() for n, p in model.named_parameters()}
    summary = rotate_model(model, kind=kind, seed=3)
    after = _logits(model, ids)
    assert torch.allclose(before, after, rtol=1e-4, atol=1e-4 * before.abs().max().item())
    changed = {n for n, p in model.named_parameters() if n not in w_before or not torch.equal(p, w_before[n])}
    assert any("v_proj" in n for n in changed) and any("o_proj" in n for n in changed)   # R2, every family
    if family == "gemma3":      # sandwich norms: no residual rotation, the record says why
        assert summary["r1"] is None and "post-attention" in summary["r1_skipped"]
        assert not any("embed_tokens" in n or "layernorm" in n or "q_proj" in n for n in changed)
        return
    assert summary["r1"]["size"] == 64 and summary["untied_lm_head"] and summary["untied_extra_params"] == 96 * 64
    assert any("embed_tokens" in n for n in changed) and any("down_proj" in n for n in changed)
    assert model.lm_head.weight is not model.model.embed_tokens.weight and not model.config.tie_word_embeddings
    norms = [p for n, p in model.named_parameters() if n.endswith("norm.weight")]
    assert norms and all(torch.equal(p, torch.ones_like(p)) for p in norms)    # folded into the readers


@pytest.mark.slow
@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_rotate_then_awq_keeps_float_logits(family):
    import torch

    from host.rotation import rotate_model
    from host.transforms import apply_transform

    model = _tiny(family)
    ids = _ids()
    before = _logits(model, ids)
    rotate_model(model)
    rows = [_ids(24)[0].tolist() for _ in range(3)]
    summary = apply_transform(model, rows, Transform("awq", "w4a16-g32"))
    assert summary["groups"] > 0
    assert torch.allclose(before, _logits(model, ids), rtol=1e-4, atol=1e-4 * before.abs().max().item())


@pytest.mark.slow
def test_rotated_checkpoint_is_an_untied_hf_folder_without_calibration(tmp_path):
    import torch
    import transformers

    from host.transforms import transformed_checkpoint

    model = _tiny("llama")
    src = tmp_path / "src"
    model.save_pretrained(str(src))
    transformers.PreTrainedTokenizerFast(tokenizer_object=_tokenizer()).save_pretrained(str(src))
    t = parse_transform("rotate")
    folder, rec = transformed_checkpoint(src, None, t, cache=tmp_path / "cache")   # searches nothing
    assert rec["calibration"] is None and rec["rotation"]["r1"]["matrix"] == "randomized Hadamard"
    assert json.loads((folder / "config.json").read_text())["tie_word_embeddings"] is False
    out = transformers.AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    assert out.lm_head.weight.data_ptr() != out.model.embed_tokens.weight.data_ptr()
    ids = _ids()
    assert torch.allclose(_logits(model, ids), _logits(out, ids), atol=1e-4)
    # rotate + awq needs the calibration JSON: one line before any work, nothing created
    with pytest.raises(ConfigError, match="calibration file None does not exist"):
        transformed_checkpoint(src, None, parse_transform({"rotate": {}, "awq": {}}), cache=tmp_path / "c2")
    assert not (tmp_path / "c2").exists()


@pytest.mark.slow
def test_rotate_refuses_fused_projections_in_one_line_before_changing_weights():
    """Phi-3 fuses q/k/v and gate/up: the rotation names the missing module instead of an AttributeError mid-way."""
    import torch
    from transformers import Phi3Config, Phi3ForCausalLM

    from host.rotation import rotate_model

    torch.manual_seed(0)
    m = Phi3ForCausalLM(Phi3Config(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                                   num_attention_heads=4, num_key_value_heads=4, pad_token_id=0)).eval()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(ConfigError, match=r"Phi3ForCausalLM layer 0 has no self_attn.q_proj .*fused"):
        rotate_model(m)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


@pytest.mark.slow
def test_a_second_process_waits_for_the_builder_of_the_same_key_and_reuses_its_folder(tmp_path):
    """Two exports with one transform: the second waits on the key's lock and takes the first one's folder; it
    never rebuilds nor replaces a folder the first one's builders are reading (review finding)."""
    import fcntl
    import threading

    import transformers

    from host.transforms import transformed_checkpoint

    src = tmp_path / "src"
    _tiny("llama").save_pretrained(str(src))
    transformers.PreTrainedTokenizerFast(tokenizer_object=_tokenizer()).save_pretrained(str(src))
    t, cache = parse_transform("rotate"), tmp_path / "cache"
    folder, rec = transformed_checkpoint(src, None, t, cache=cache)           # the key's folder name
    built_at = (folder / "model.safetensors").stat().st_mtime_ns
    (folder / "rkdeploy-transform.json").unlink()                             # as if a builder were still at it
    got, holder = {}, open(cache / f".{folder.name}.lock", "w")
    fcntl.flock(holder, fcntl.LOCK_EX)
    th = threading.Thread(target=lambda: got.update(r=transformed_checkpoint(src, None, t, cache=cache)))
    th.start()
    th.join(1.0)
    assert th.is_alive()                                                      # waiting for the holder
    (folder / "rkdeploy-transform.json").write_text(json.dumps({**rec, "by": "the other process"}))
    holder.close()                                                            # the holder finishes
    th.join(60)
    assert not th.is_alive() and got["r"][0] == folder and got["r"][1]["by"] == "the other process"
    assert (folder / "model.safetensors").stat().st_mtime_ns == built_at     # not rebuilt
