"""host.transforms: AWQ / SmoothQuant scaling folded into a float checkpoint (real torch + transformers
on tiny random Llama / Qwen2 / Gemma 3 models built from a config; no model files)."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.slow   # real torch + transformers: 1-5 s per test on the 2-core Xeon unloaded (import ~5 s)

from host.errors import ConfigError  # noqa: E402
from host.transforms import (  # noqa: E402
    Transform,
    apply_transform,
    groups,
    parse_transform,
    transformed_checkpoint,
)
from tests.host.quality.tiny_models import TINY  # noqa: E402
from tests.host.quality.tiny_models import tiny_model as _tiny  # noqa: E402
from tests.host.quality.tiny_models import tiny_tokenizer as _tokenizer  # noqa: E402


def _rows(n: int = 4, length: int = 24):
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, TINY["vocab_size"], (length,), generator=g).tolist() for _ in range(n)]


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma3"])
@pytest.mark.parametrize("method,scheme", [("awq", "w4a16-g32"), ("smoothquant", "w8a8")])
def test_folded_transform_keeps_float_logits(family, method, scheme):
    model = _tiny(family)
    ids = torch.tensor([_rows(1, 32)[0]])
    with torch.no_grad():
        before = model(ids).logits
    w_before = {n: p.detach().clone() for n, p in model.named_parameters()}
    summary = apply_transform(model, _rows(), Transform(method, scheme))
    with torch.no_grad():
        after = model(ids).logits
    # equivalent: the float function is unchanged up to fp32 rounding ...
    assert torch.allclose(before, after, rtol=1e-4, atol=1e-4 * before.abs().max().item())
    # ... but the weights did change (the search picked a non-trivial scale for some groups)
    assert summary["scaled"] > 0
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, w_before[n])]
    assert any("q_proj" in n for n in changed) and any("input_layernorm" in n for n in changed)
    assert not any("embed_tokens" in n or "lm_head" in n for n in changed)


def test_awq_lowers_the_quantized_error_it_searched_for():
    """On the searched scheme, the transformed model's quantized logits are closer to float ones."""
    from host.fakequant import fake_quantized

    model = _tiny("llama")
    ids = torch.tensor([_rows(1, 32)[0]])

    def err(m):
        with torch.no_grad():
            ref = m(ids).logits
            with fake_quantized(m, "w4a16-g32", lambda n: "layers" in n):
                q = m(ids).logits
        return float(((q - ref) ** 2).mean())

    e0 = err(model)
    apply_transform(model, _rows(), Transform("awq", "w4a16-g32"))
    assert err(model) < e0


def test_groups_cover_every_decoder_linear_once_with_gqa_repeat():
    model = _tiny("llama")
    gs = groups(model)
    names = [n for g in gs for n, _l in g.linears]
    decoder = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".layers." in n]
    assert sorted(names) == sorted(decoder)
    o = [g for g in gs if g.name.endswith(".o")]
    assert o and all(g.repeat == 2 and g.head_dim == 16 for g in o)   # 4 query heads share 2 KV heads


@pytest.mark.parametrize("value,fragment", [
    ({"gptx": {}}, "unknown method 'gptx'"),
    ({"awq": {"scheme": "int4"}}, "awq.scheme: 'int4' has no fake-quant"),
    ({"awq": {"scheme": "fp16"}}, "quantizes no weights"),
    ({"awq": {"grid": [0.5, 2]}}, "grid: a non-empty list of exponents in [0, 1]"),
    ({"awq": {"alpha": 1}}, "allowed keys are scheme, grid"),
    ("awq", "expected one of"),
])
def test_bad_transform_is_one_line_naming_the_field(value, fragment):
    with pytest.raises(ConfigError) as e:
        parse_transform(value, "models[0].transform")
    assert fragment in str(e.value) and str(e.value).startswith("models[0].transform")
    assert "\n" not in str(e.value)


def test_parse_defaults_and_short_form():
    assert parse_transform({"awq": "w4a16"}) == Transform("awq", "w4a16")
    assert parse_transform({"smoothquant": {}}).scheme == "w8a8"
    assert parse_transform(None) is None


def test_transformed_checkpoint_is_a_cached_hf_folder(tmp_path):
    model = _tiny("llama")
    src = tmp_path / "src"
    model.save_pretrained(str(src))
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=_tokenizer())
    tok.save_pretrained(str(src))
    calib = tmp_path / "calib.json"
    calib.write_text(json.dumps([{"input": "a b c d e f g h", "target": "i j k"}] * 3))
    t = Transform("awq", "w4a16-g32")
    folder, rec = transformed_checkpoint(src, calib, t, cache=tmp_path / "cache")
    assert (folder / "tokenizer.json").is_file() and (folder / "config.json").is_file()
    assert rec["transform"] == {"awq": {"scheme": "w4a16-g32", "grid": list(t.grid)}}
    out = transformers.AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, out(ids).logits, atol=1e-4)
    mtime = (folder / "rkdeploy-transform.json").stat().st_mtime_ns
    again, _ = transformed_checkpoint(src, calib, t, cache=tmp_path / "cache")
    assert again == folder and (folder / "rkdeploy-transform.json").stat().st_mtime_ns == mtime   # cached
    with pytest.raises(ConfigError, match="calibration file .* does not exist"):
        transformed_checkpoint(src, tmp_path / "nope.json", t, cache=tmp_path / "cache2")
    assert not (tmp_path / "cache2").exists()
