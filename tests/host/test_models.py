"""Built-in models materialise offline, are reused from the cache, and load with plain transformers."""

from __future__ import annotations

import json
import subprocess
import sys
import time

from host.models import RECORD, fetch_builtin, hash_folder


def test_cache_reuse_is_fast(builtin_models):
    """Reuse only checks the cache (no copy, no re-hash). Order-of-magnitude bound (goal < 1 s: bench/speed_goals.py)."""
    t0 = time.monotonic()
    for name in builtin_models:
        fetch_builtin(name)
    assert time.monotonic() - t0 < 10.0


def test_record_has_sha256_of_every_file(llm_dir):
    record = json.loads((llm_dir / RECORD).read_text())
    assert record["files"] == hash_folder(llm_dir)
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= set(record["files"])
    assert len(record["sha256"]) == 64
    assert "Q4_1" in record["note"]


def test_plain_from_pretrained_continues_sensibly(llm_dir):
    code = f"""
import os; os.environ["HF_HUB_OFFLINE"] = "1"
from transformers import AutoModelForCausalLM, AutoTokenizer
tok = AutoTokenizer.from_pretrained({str(llm_dir)!r})
model = AutoModelForCausalLM.from_pretrained({str(llm_dir)!r})
ids = tok("The capital of France is", return_tensors="pt")
out = model.generate(**ids, max_new_tokens=8, do_sample=False)
print(tok.decode(out[0][ids.input_ids.shape[1]:]))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Paris" in proc.stdout


def test_cli_fetch_into_custom_cache_prints_sha(rk, tmp_path, encoder_dir):
    proc = rk("models", "fetch", "--cache", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "all-minilm-l6-v2" in proc.stdout and "sha256" in proc.stdout
    assert (tmp_path / "all-minilm-l6-v2" / RECORD).is_file()
    assert (tmp_path / "smollm2-135m-instruct" / "model.safetensors").is_file()


def test_copy_tokenizer_copies_the_one_list_that_the_folder_has(tmp_path):
    from host.models import TOKENIZER_FILES, copy_tokenizer

    src, out = tmp_path / "model", tmp_path / "out"
    src.mkdir()
    out.mkdir()
    for name in ("tokenizer.json", "chat_template.jinja", "config.json", "model.safetensors"):
        (src / name).write_text(name)
    (out / "tokenizer.json").write_text("the converter's own")
    assert copy_tokenizer(src, out, keep_existing=True) == ["chat_template.jinja"]
    assert (out / "tokenizer.json").read_text() == "the converter's own" and not (out / "config.json").exists()
    assert copy_tokenizer(src, out, extra=("config.json",)) == ["tokenizer.json", "chat_template.jinja", "config.json"]
    assert (out / "tokenizer.json").read_text() == "tokenizer.json" and not (out / "model.safetensors").exists()
    assert len(set(TOKENIZER_FILES)) == len(TOKENIZER_FILES) and "tokenizer.json" in TOKENIZER_FILES
