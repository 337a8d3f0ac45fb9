"""The model-family table (host/families.py) and what reads it: detection, the tokenizer's BOS rule in the
quality windows, the genai builder's config fixes and its one-line failures, and `check`'s family lines.
Fast tier: hand-made config dicts, a tiny real `tokenizers` tokenizer, fake model folders, a fake builder."""

from __future__ import annotations

import importlib.util
import json
import os
import stat
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from host import families
from host.errors import BuildError
from tests.conftest import ROOT

GEMMA3_ROPE = {"full_attention": {"rope_theta": 1000000.0, "rope_type": "default"},
               "sliding_attention": {"rope_theta": 10000.0, "rope_type": "default"}}
CONFIGS = {
    "llama": {"model_type": "llama", "architectures": ["LlamaForCausalLM"]},
    "qwen2": {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"]},
    "qwen3": {"model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"]},
    "gemma2": {"model_type": "gemma2", "architectures": ["Gemma2ForCausalLM"]},
    "gemma3": {"model_type": "gemma3_text", "architectures": ["Gemma3ForCausalLM"], "rope_parameters": GEMMA3_ROPE},
    "phi3": {"model_type": "phi3", "architectures": ["Phi3ForCausalLM"]},
    "minicpm": {"model_type": "minicpm", "architectures": ["MiniCPMForCausalLM"]},
    "minicpm3": {"model_type": "minicpm3", "architectures": ["MiniCPM3ForCausalLM"]},
}


def test_every_family_is_detected_from_model_type_and_from_architectures():
    assert {f.name for f in families.FAMILIES} == set(CONFIGS)   # completeness: a new family needs a case here
    for name, cfg in CONFIGS.items():
        assert families.detect(cfg).name == name
        assert families.detect({"architectures": cfg["architectures"]}).name == name
    assert families.detect({"model_type": "mamba", "architectures": ["MambaForCausalLM"]}) is None
    assert families.family_label(CONFIGS["gemma3"]) == "gemma3 (Gemma3ForCausalLM)"
    assert "unknown family model_type='mamba'" in families.family_label({"model_type": "mamba"})


def test_records_are_well_formed():
    for f in families.FAMILIES:
        assert f.bos in ("required", "tokenizer") and f.head in ("tied", "untied", "either")
        assert "down_proj" in f.linear and (f.sensitive is None or set(f.sensitive) <= set(f.linear))
        assert f.rkllm_since is None or families._vtuple(f.rkllm_since) >= (1, 0, 0)
    assert families.BY_NAME["gemma3"].bos == "required" and families.BY_NAME["gemma3"].sensitive == ("down_proj",)


def _tokenizer(folder: Path, *, bos: bool) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    words = ["<unk>", "<bos>", "the", "a", "of", "Hello", "world", "and", "to", "in"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if bos:
        tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    return folder


def test_tokenizer_bos_is_read_from_the_tokenizer_itself(tmp_path):
    assert families.tokenizer_bos(_tokenizer(tmp_path / "with", bos=True)) == [1]
    assert families.tokenizer_bos(_tokenizer(tmp_path / "without", bos=False)) == []


def _eval_setup(tmp_path, bos: bool):
    from host.quality.reference import eval_windows, llm_eval

    folder = _tokenizer(tmp_path / ("b" if bos else "n"), bos=bos)
    (folder / "config.json").write_text("{}")
    heldout = ROOT / "calib_data" / "text" / "heldout.txt"
    recipe = SimpleNamespace(text=SimpleNamespace(heldout=heldout),
                             quality=SimpleNamespace(eval_tokens=64, window=33))
    model = SimpleNamespace(builtin=None, source=str(folder), name="m")
    ev = llm_eval(recipe, model)
    return ev, eval_windows(recipe, ev), folder, heldout


def test_windows_follow_the_tokenizers_bos_rule(tmp_path):
    from tokenizers import Tokenizer

    from host.textdata import read_docs

    ev_n, w_n, folder, heldout = _eval_setup(tmp_path, bos=False)
    ev_b, w_b, _, _ = _eval_setup(tmp_path, bos=True)
    stream = Tokenizer.from_file(str(folder / "tokenizer.json")).encode(
        "\n\n".join(read_docs(heldout)), add_special_tokens=False).ids
    # no BOS: exactly the windows of before the rule (plain reshape of the stream), same scored-token count
    assert ev_n.bos == () and w_n.shape == (2, 33)
    assert np.array_equal(w_n, np.asarray(stream[:66]).reshape(2, 33))
    # BOS: every window starts with it, then the next window-1 text tokens; the cache key differs
    assert ev_b.bos == (1,) and w_b.shape == (2, 33) and (w_b[:, 0] == 1).all()
    assert np.array_equal(w_b[:, 1:], np.asarray(stream[:64]).reshape(2, 32))
    assert ev_b.n_tokens == ev_n.n_tokens == 64 and ev_b.key != ev_n.key


def test_the_no_bos_cache_key_is_the_key_of_before(tmp_path):
    """SmolLM2's tokenizer adds no BOS: its float reference and rows stay cached (same key formula as before)."""
    from host.fsutil import sha256_file
    from host.manifest import inputs_hash
    from host.models import model_sha256
    from host.quality.reference import EVAL_VERSION

    ev, _, folder, heldout = _eval_setup(tmp_path, bos=False)
    old = inputs_hash({"v": EVAL_VERSION, "model": model_sha256(folder), "text": sha256_file(heldout), "window": 33,
                       "n_windows": 2})
    assert ev.key == old


def test_gemma3_nested_rope_gets_the_genai_fix_and_the_fix_adds_the_flat_fields():
    assert families.genai_fixes(CONFIGS["gemma3"]) == ["gemma3-rope"]
    assert families.genai_fixes({**CONFIGS["gemma3"], "rope_parameters": {"rope_type": "default"}}) == []
    assert families.genai_fixes(CONFIGS["llama"]) == []
    spec = importlib.util.spec_from_file_location("genai_worker", ROOT / "host" / "workers" / "genai_builder.py")
    worker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(worker)
    cfg = SimpleNamespace(rope_parameters=json.loads(json.dumps(GEMMA3_ROPE)))
    worker.FIXES["gemma3-rope"](cfg)
    assert cfg.rope_parameters["rope_type"] == "default" and cfg.rope_theta == 1e6 and cfg.rope_local_base_freq == 1e4
    assert cfg.rope_parameters["sliding_attention"] == GEMMA3_ROPE["sliding_attention"]   # weights load as before


def test_genai_failure_is_one_line_with_version_family_workaround_and_kept_log(tmp_path, monkeypatch):
    from host.build import genai

    fake = tmp_path / "fake_builder.py"
    fake.write_text("import sys\nprint('Traceback (most recent call last):')\nprint('  File x, line 1')\n"
                    "print(\"KeyError: 'rope_type'\")\nsys.exit(1)\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setattr(genai, "WORKER", fake)
    src = tmp_path / "model"
    src.mkdir()
    (src / "config.json").write_text(json.dumps(CONFIGS["gemma3"]))
    out = tmp_path / "art" / ".tmp-int8-abcd1234"
    out.mkdir(parents=True)
    with pytest.raises(BuildError) as e:
        genai.build_genai(src, out, "int8", lambda s: None, threads=1, board_threads=4)
    msg = str(e.value)
    log = tmp_path / "art" / "int8.genai.log"
    assert "\n" not in msg and msg.startswith("onnxruntime-genai ") and "gemma3 (Gemma3ForCausalLM)" in msg
    assert "KeyError: 'rope_type'" in msg and "gemma3-rope" in msg and f"(log: {log})" in msg
    assert log.is_file() and "Traceback" in log.read_text()


def _folder(tmp_path, cfg: dict, *, bos: bool) -> Path:
    folder = _tokenizer(tmp_path / cfg["model_type"], bos=bos)
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def _problems(folder, schemes, **kw):
    return families.family_problems(SimpleNamespace(kind="llm", name="m", **kw), folder, schemes)


def test_check_names_each_unsupported_combination(tmp_path, monkeypatch):
    import host.toolkits

    gemma_nobos = _folder(tmp_path, CONFIGS["gemma3"], bos=False)
    (p,) = _problems(gemma_nobos, [])
    assert "tokenizer adds no BOS" in p and "gemma3 (Gemma3ForCausalLM)" in p and "tokenizer.json" in p
    gemma = _folder(tmp_path / "ok", CONFIGS["gemma3"], bos=True)
    assert _problems(gemma, ["fp32", "int8-dyn"]) == []
    monkeypatch.setattr(families, "genai_architectures", lambda: {"LlamaForCausalLM"})
    (p,) = _problems(gemma, ["int8", "int4", "fp32"])
    assert "has no model builder for gemma3 (Gemma3ForCausalLM): ONNX int8, int4 cannot be built" in p
    monkeypatch.setattr(host.toolkits, "toolkit_info", lambda name: {"version": "1.1.0"})
    (p,) = _problems(gemma, ["w8a8"])
    assert "rkllm-toolkit 1.1.0 does not convert gemma3 (Gemma3ForCausalLM) (from 1.2.0 on)" in p
    mamba = _folder(tmp_path, {"model_type": "mamba", "architectures": ["MambaForCausalLM"]}, bos=False)
    (p,) = _problems(mamba, ["w8a8"])
    assert "unknown family model_type='mamba'" in p and "not a family rkllm-toolkit converts" in p


def test_version_compare():
    assert families.version_at_least("1.2.1", "1.2.0") and not families.version_at_least("1.1.9", "1.2.0")
    assert not families.version_at_least(None, "1.0.0") and families.version_at_least("v1.3.0b2", "1.3.0")


def test_installed_genai_builder_lists_the_families_it_builds():
    archs = families.genai_architectures()
    if archs is None:
        pytest.skip("onnxruntime-genai not installed")
    assert {"LlamaForCausalLM", "Qwen2ForCausalLM", "Gemma3ForCausalLM"} <= archs
    assert os.path.basename(str(families.__file__)) == "families.py"


def test_version_gates_pad_short_versions():
    from host.families import version_at_least

    assert version_at_least("1.2", "1.2.0") and version_at_least("1.2.0", "1.2")
    assert not version_at_least("1.1.9", "1.2") and not version_at_least(None, "1.0")
