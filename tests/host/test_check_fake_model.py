"""`rkdeploy check` on a fake model folder (config, tokenizer, a safetensors header with the layer shapes and
zero weights): the chip and scheme rules of the fast tier, no built-in model needed (tests/host/test_check.py
runs the same rules on the real SmolLM2)."""

from __future__ import annotations

import json
import struct

import pytest
import yaml

from tests.conftest import ROOT
from tests.host.test_malformed_inputs import rk

#: SmolLM2-135M's shapes, one layer: 576 wide, k/v 192, MLP 1536 (group 128 divides neither 576 nor 192).
LAYERS = {"model.layers.0.self_attn.q_proj": (576, 576), "model.layers.0.self_attn.k_proj": (192, 576),
          "model.layers.0.self_attn.v_proj": (192, 576), "model.layers.0.self_attn.o_proj": (576, 576),
          "model.layers.0.mlp.gate_proj": (1536, 576), "model.layers.0.mlp.up_proj": (1536, 576),
          "model.layers.0.mlp.down_proj": (576, 1536)}


def fake_llm(folder, layers=LAYERS):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({
        "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 576, "intermediate_size": 1536,
        "num_hidden_layers": 1, "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152,
        "max_position_embeddings": 8192, "tie_word_embeddings": True}))
    (folder / "tokenizer.json").write_text(json.dumps({"model": {"type": "BPE", "vocab": {}, "merges": []}}))
    header, offset = {}, 0
    for name, (out_f, in_f) in layers.items():
        size = out_f * in_f * 2
        header[f"{name}.weight"] = {"dtype": "F16", "shape": [out_f, in_f], "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(offset))
    return folder


@pytest.fixture
def recipe(tmp_path):
    """``recipe(targets)``: the default recipe's LLM entry on the fake folder, these targets only."""
    def make(targets: dict, **llm) -> str:
        base = ROOT / "configs" / "models"
        data = {"name": "fake", "models": [{
            "name": "fake-llm", "kind": "llm", "source": str(fake_llm(tmp_path / f"m{len(list(tmp_path.iterdir()))}")),
            "max_context": 4096, "calibration": str((base / "../../calib_data/smollm2-135m-instruct.calib.json").resolve()),
            "onnx": [], "targets": targets, **llm}],
            "text": {k: str((base / f"../../calib_data/text/{k}.txt").resolve()) for k in ("heldin", "heldout")}}
        path = tmp_path / "recipe.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return str(path)
    return make


def errors(res) -> list[str]:
    assert "Traceback" not in res.out + res.err
    return [ln.removeprefix("rkdeploy: error: ") for ln in res.err.splitlines() if ln.strip()]


@pytest.mark.parametrize(("target", "scheme"), [("rk3576", "w4a16"), ("rk3576", "w4a16-g64"), ("rk3576", "w4a16-g32"),
                                                ("rk3576", "w8a8"), ("rk3588", "w8a8")])
def test_schemes_that_fit_pass(recipe, target, scheme):
    res = rk("check", "-r", recipe({target: [scheme]}), "-t", target)
    assert res.rc == 0 and f"ok: fake on {target}" in res.out, res.err


def test_group_that_does_not_divide_a_layer_names_layer_and_fitting_groups(recipe):
    res = rk("check", "-r", recipe({"rk3576": ["w4a16-g128"]}), "-t", "rk3576")
    (err,) = errors(res)
    assert res.rc == 1 and "group size 128 does not divide layer model.layers.0." in err and "576 % 128 = 64" in err
    assert "w4a16-g32, w4a16-g64" in err


def test_scheme_the_chip_lacks_names_the_allowed_ones(recipe):
    res = rk("check", "-r", recipe({"rk3588": ["w4a16"]}), "-t", "rk3588")
    (err,) = errors(res)
    assert res.rc == 1 and "'w4a16' is not allowed for rkllm on rk3588" in err and "allowed: w8a8" in err


@pytest.mark.parametrize(("llm", "words"), [
    ({"max_context": 4090}, "multiple of 32"),
    ({"max_context": 32768}, "16384"),
])
def test_max_context_rules(recipe, llm, words):
    res = rk("check", "-r", recipe({"rk3576": ["w8a8"]}, **llm), "-t", "rk3576")
    assert res.rc == 1 and any(words in e for e in errors(res)), res.err


def test_unknown_target_names_the_known_ones(recipe):
    res = rk("check", "-r", recipe({"rk3576": ["w8a8"]}), "-t", "rk9999")
    (err,) = errors(res)
    assert res.rc == 1 and "unknown target 'rk9999'" in err and "known: rk3562, rk3576, rk3588, rv1126b" in err


def test_group_refusal_quotes_the_input_width_groups_run_along(tmp_path):
    """w8a8-g256 on a Qwen2-0.5B-like head (151936x896): the input width 896 is what 256 must divide."""
    from types import SimpleNamespace

    from host.targets import _group_problems, get_target

    model = SimpleNamespace(name="q", kind="llm")
    wide_in = fake_llm(tmp_path / "a", {"lm_head": (151936, 896)})
    (p,) = _group_problems(model, wide_in, get_target("rk3588"), "w8a8-g256")
    assert "layer lm_head (151936x896: input width 896 % 256 = 128;" in p
    only_out = fake_llm(tmp_path / "b", {"lm_head": (49153, 512)})
    (p,) = _group_problems(model, only_out, get_target("rk3588"), "w8a8-g256")
    assert "(49153x512: output width 49153 % 256 = 1;" in p
