"""host.prequant + the ``gptq`` transform (issue 16): recipe forms, errors and keys (fast); on tiny random Llama /
Qwen2 / Gemma 3 models (slow: real torch + transformers, no model files) the pre-rounded weights lie on the
simulated toolkit grid (its round-to-nearest gives back every code), GPTQ beats the toolkit's own rounding on the
logits, the layer-by-layer replay of the decoder reproduces the float forward (Gemma 3 with sliding and full
layers), lm_head's Hessian is its real input (Phi-2's final norm has another name), and the cached checkpoint is a
normal HF folder keyed by the held-in text."""

from __future__ import annotations

import json

import pytest

from host.errors import ConfigError
from host.transforms import Chain, Prequant, Rotation, parse_transform, prequant_version, transform_key
from tests.host.quality.tiny_models import TINY
from tests.host.quality.tiny_models import tiny_model as _tiny
from tests.host.quality.tiny_models import tiny_tokenizer as _tokenizer


def test_parse_gptq_forms_and_chain_order():
    assert parse_transform({"gptq": "w4a16-g64"}) == Prequant("w4a16-g64")
    p = parse_transform({"gptq": {"scheme": "w4a16-g32", "damp": 0.05, "text_tokens": 0}})
    assert p.label() == "gptq(w4a16-g32)" and p.exact and parse_transform(p.to_dict()) == p
    c = parse_transform({"gptq": {"scheme": "w4a16-g64"}, "rotate": {"kind": "random", "seed": 1}})  # any order
    assert isinstance(c, Chain) and [type(s) for s in c.steps()] == [Rotation, Prequant]
    assert c.label() == "rotate(random, seed 1)+gptq(w4a16-g64)" and c.scheme == "w4a16-g64" and c.exact
    assert list(c.to_dict()) == ["rotate", "gptq"] and parse_transform(c.to_dict()) == c
    a = parse_transform({"rotate": {}, "awq": "w4a16-g64"})
    assert a.method == "rotate-awq" and not a.exact        # the cached folders' names stay what they were
    assert Prequant("w4a16-g64").to_dict() == {"gptq": {"scheme": "w4a16-g64", "damp": 0.01, "text_tokens": 16384}}


def test_keys_move_with_the_prerounding_code_and_not_for_equivalent_transforms(monkeypatch):
    import host.gptq
    import host.prequant

    c = parse_transform({"rotate": {}, "gptq": "w4a16-g64"})
    a = parse_transform({"rotate": {}, "awq": "w4a16-g64"})
    # the keys of the equivalent transforms are what they were before the gptq step existed (cached folders hold)
    assert transform_key("m", "c", a) == "e54520e048f6bedbf37048b8ecec29796da7e9abc17ded277c8055078221a353"
    assert prequant_version(a) == {}
    before = transform_key("m", "c", c, "text")
    assert before != transform_key("m", "c", c, "other text") != transform_key("m", "c", c)
    monkeypatch.setattr(host.prequant, "PREQUANT_VERSION", 99)
    assert transform_key("m", "c", c, "text") != before
    monkeypatch.setattr(host.prequant, "PREQUANT_VERSION", 1)
    monkeypatch.setattr(host.gptq, "GPTQ_VERSION", 99)
    assert transform_key("m", "c", c, "text") != before


@pytest.mark.parametrize("value,fragment", [
    ({"gptq": {"scheme": "w8a8"}}, "transform.gptq.scheme: scheme 'w8a8' is not a 4-bit weight-only rkllm scheme"),
    ({"gptq": {"scheme": "w8a16"}}, "transform.gptq.scheme: scheme 'w8a16' is not a 4-bit weight-only rkllm scheme"),
    ({"gptq": {"scheme": "int4"}}, "transform.gptq.scheme: scheme 'int4' has no simulated grid"),
    ({"gptq": {}}, "transform.gptq: expected {scheme: SCHEME, damp: D, text_tokens: N}"),
    ({"gptq": {"scheme": "w4a16-g64", "order": 1}}, "transform.gptq: expected {scheme: SCHEME, damp: D"),
    ({"gptq": {"scheme": "w4a16-g64", "damp": 0}}, "transform.gptq.damp: GPTQ's damping"),
    ({"gptq": {"scheme": "w4a16-g64", "damp": True}}, "transform.gptq.damp: GPTQ's damping"),
    ({"gptq": {"scheme": 64}}, "transform.gptq.scheme: a scheme name"),
    ({"gptq": {"scheme": "w4a16-g64", "text_tokens": -1}}, "transform.gptq.text_tokens: tokens of the recipe's"),
    ({"gptq": {"scheme": "w4a16-g64", "text_tokens": 1.5}}, "transform.gptq.text_tokens: tokens of the recipe's"),
    ({"smoothquant": "w8a8", "gptq": "w4a16-g64"}, "smoothquant(w8a8) is searched for other schemes than "
                                                   "gptq(w4a16-g64)"),
])
def test_bad_gptq_is_one_line_naming_the_field(value, fragment):
    with pytest.raises(ConfigError) as e:
        parse_transform(value)
    assert fragment in str(e.value) and len(str(e.value).splitlines()) == 1, str(e.value)


# ---------------------------------------------------------------- slow: real torch on tiny models

def _rows(n: int = 6, length: int = 48, seed: int = 1):
    import torch

    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, TINY["vocab_size"], (length,), generator=g).tolist() for _ in range(n)]


def _logits(model, rows):
    import torch

    with torch.no_grad():
        return torch.cat([model(torch.tensor([r])).logits[0] for r in rows])


def _assert_on_grid(w, group, name):
    """Every group's weights are integer multiples (|code| <= 7, one on ±7) of its absmax / 7, and the toolkit's
    rounding (``host.fakequant.quant_weight``) gives back exactly those codes."""
    import torch

    from host.fakequant import quant_weight

    n, k = w.shape
    g = (group or k)
    blk = w.reshape(n, k // g, g)
    s = blk.abs().amax(-1, keepdim=True) / 7
    live = s[..., 0] > 0
    codes = blk / torch.where(s > 0, s, 1)
    assert float((codes - codes.round()).abs().max()) < 1e-4, name
    assert bool((codes.round().abs().amax(-1)[live] == 7).all()), name
    back = quant_weight(w, 4, group).reshape(n, k // g, g) / torch.where(s > 0, s, 1)
    assert torch.equal(back.round(), codes.round()), name


@pytest.mark.parametrize("group", [32, None])
def test_round_onto_grid_handles_per_channel_zero_groups_and_dead_columns(group):
    """Per-channel w4a16 and groups of 32; an all-zero group stays zero, a dead input column (no activation in
    the calibration) gets code 0 unless it holds the group's only extreme, and every code is the toolkit's."""
    import torch

    from host.prequant import round_onto_grid

    torch.manual_seed(0)
    w = torch.randn(8, 64)
    w[0, :32] = 0                                   # an all-zero group (per channel: half a row)
    x = torch.randn(256, 64)
    x[:, 5] = 0                                     # a dead column
    h = (x.T @ x).double() / 256
    wq, _moved = round_onto_grid(w, h, 4, group, damp=0.01, who="t")
    _assert_on_grid(wq, group, "t")
    if group:
        assert torch.equal(wq[0, :32], torch.zeros(32))
    assert float(((wq - w) ** 2).sum()) < float(((torch.zeros_like(w) - w) ** 2).sum()) / 20


def _kld(ref, got) -> float:
    import torch

    lp, lq = torch.log_softmax(ref, -1), torch.log_softmax(got, -1)
    return float((lp.exp() * (lp - lq)).sum(-1).mean())


@pytest.mark.slow
@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma3"])
def test_replayed_decoder_layers_reproduce_the_float_forward(family):
    """The pre-rounding replays each decoder layer with the arguments the model gave it (Gemma 3's sliding and
    full-attention layers each get their own mask and rotary tables: with one set for all, the replay differs):
    unrounded, the replay is the model's own forward; lm_head's Hessian is what the model feeds it."""
    import torch

    from host.gptq import collect_hessians
    from host.prequant import _call, _layer_inputs
    from host.rotation import _decoder

    extra = {"layer_types": ["sliding_attention", "full_attention"]} if family == "gemma3" else {}
    model = _tiny(family, **extra)
    rows = _rows(3, 40)
    layers = list(_decoder(model).layers)
    hs, calls, head_h = _layer_inputs(model, layers, rows, model.lm_head)
    if family == "gemma3":     # the two layers were really called with different masks
        m0, m1 = (c[1]["attention_mask"] for c in (calls[0][0], calls[1][0]))
        assert (m0 is None) != (m1 is None) or (m0 is not None and not torch.equal(m0, m1))
    for i, layer in enumerate(layers):
        with torch.no_grad():
            hs = [_call(layer, h, c) for h, c in zip(hs, calls[i], strict=True)]
    for h, r in zip(hs, rows, strict=True):
        with torch.no_grad():
            ref = model.model(input_ids=torch.tensor([r]), use_cache=False).last_hidden_state
        assert torch.allclose(_decoder(model).norm(h), ref, atol=1e-5 * ref.abs().max().item())
    want = collect_hessians(model, rows, ["lm_head"])["lm_head"]
    assert torch.allclose(head_h, want, rtol=1e-6, atol=1e-9)


@pytest.mark.slow
def test_lm_head_reads_the_final_norm_whatever_its_name_and_stray_linears_are_refused():
    """Phi-2 (rkllm supports it) names its final norm ``final_layernorm``: lm_head's Hessian is still what the
    model feeds it (review finding: a ``.norm`` lookup fell back to the raw residual); a linear outside the decoder
    layers and lm_head is refused in one line instead of being left to the toolkit's rounding."""
    import torch
    from transformers import PhiConfig, PhiForCausalLM

    from host.gptq import collect_hessians
    from host.prequant import _layer_inputs, prequantize
    from host.rotation import _decoder

    torch.manual_seed(0)
    cfg = PhiConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                    pad_token_id=0)
    model = PhiForCausalLM(cfg).eval()
    assert not hasattr(_decoder(model), "norm")
    rows = _rows(3, 40)
    _hs, _calls, head_h = _layer_inputs(model, list(_decoder(model).layers), rows, model.lm_head)
    assert torch.allclose(head_h, collect_hessians(model, rows, ["lm_head"])["lm_head"], rtol=1e-6, atol=1e-9)
    prequantize(model, rows, "w4a16-g32")          # every linear of Phi-2 is reached (q/k/v, dense, fc1, fc2, head)
    model.model.stray = torch.nn.Linear(64, 64)
    with pytest.raises(ConfigError, match=r"gptq: 1 linear layers of PhiForCausalLM are outside .* model.stray"):
        prequantize(model, rows, "w4a16-g32")


@pytest.mark.slow
@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma3"])
def test_prerounded_weights_are_on_the_toolkit_grid_and_beat_its_own_rounding(family):
    import torch

    from host.fakequant import fake_quantized, linear_layers
    from host.prequant import prequantize

    calib, held = _rows(8, 48, seed=1), _rows(4, 48, seed=2)
    model = _tiny(family)
    ref = _logits(model, held)
    with fake_quantized(model, "w4a16-g32"):              # what the toolkit makes of the float checkpoint
        rtn = _kld(ref, _logits(model, held))
    emb = model.get_input_embeddings().weight.detach().clone()
    tied = model.lm_head.weight is model.get_input_embeddings().weight
    rec = prequantize(model, calib, "w4a16-g32")["prequant"]
    lins = linear_layers(model)
    assert rec["linears"] == len(lins) and rec["untied_lm_head"] == tied
    for name, lin in lins.items():                        # the toolkit's rounding gives every code back
        _assert_on_grid(lin.weight.detach(), 32, name)
    assert torch.equal(model.get_input_embeddings().weight, emb)          # the embedding stays float
    assert model.lm_head.weight is not model.get_input_embeddings().weight
    got = _logits(model, held)
    with fake_quantized(model, "w4a16-g32"):
        assert torch.allclose(_logits(model, held), got, atol=1e-4 * got.abs().max().item())   # a no-op now
    assert _kld(ref, got) < 0.8 * rtn, (_kld(ref, got), rtn)


@pytest.mark.slow
def test_gptq_checkpoint_is_a_cached_hf_folder_on_the_grid(tmp_path):
    import transformers

    from host.fakequant import linear_layers
    from host.transforms import calib_token_rows, transformed_checkpoint

    src = tmp_path / "src"
    _tiny("llama").save_pretrained(str(src))
    transformers.PreTrainedTokenizerFast(tokenizer_object=_tokenizer()).save_pretrained(str(src))
    calib = tmp_path / "calib.json"
    calib.write_text(json.dumps([{"input": "a b c d e f g h i j", "target": "k l m n o"}] * 4))
    text = tmp_path / "heldin.txt"
    text.write_text(" ".join("abcdefghijklmnopqrstuvwxyz"[i % 26] for i in range(300)))
    t = parse_transform({"rotate": {}, "gptq": {"scheme": "w4a16-g32", "text_tokens": 200}})
    folder, rec = transformed_checkpoint(src, calib, t, text=text, cache=tmp_path / "cache")
    assert folder.name.startswith("src-rotate-gptq-") and rec["prequant"]["scheme"] == "w4a16-g32"
    assert rec["rotation"]["r1"] is not None and rec["calibration_items"] == 4
    # the calibration items' tokens + 200 of the held-in text's 300
    calib_tokens = sum(map(len, calib_token_rows(src, calib)))
    assert rec["prequant"]["text"] == str(text) and rec["prequant"]["calibration_tokens"] == calib_tokens + 200
    out = transformers.AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    assert json.loads((folder / "config.json").read_text())["tie_word_embeddings"] is False
    for name, lin in linear_layers(out).items():
        _assert_on_grid(lin.weight.detach(), 32, name)
    # the held-in text is part of the key: another text is another checkpoint
    other = tmp_path / "other.txt"
    other.write_text("z y x w v u " * 50)
    assert transformed_checkpoint(src, calib, t, text=other, cache=tmp_path / "cache")[0] != folder
    # no calibration, or no held-in text while text_tokens asks for it: one line before any work, nothing created
    with pytest.raises(ConfigError, match="calibration file None does not exist"):
        transformed_checkpoint(src, None, t, text=text, cache=tmp_path / "c2")
    with pytest.raises(ConfigError, match=r"held-in text None does not exist \(text.heldin; or set gptq's text_tokens"):
        transformed_checkpoint(src, calib, t, cache=tmp_path / "c2")
    assert not (tmp_path / "c2").exists()
