"""board onnxruntime backend, genai engine: a sliding-window GQA graph (Gemma 2/3) gets a KV buffer of at least its
window (genai's max_length), while exactly n_gen tokens still come out. The real failure this guards: Gemma 3 270M
int8 benched with 32+16 tokens -> "sliding_window_cache: KV cache capacity (48) must be at least" (2026-12-03).
Fast tier: a recording stand-in for the onnxruntime_genai module (the real run is in the issue-14 report)."""

from __future__ import annotations

import json

import pytest

from board.backends.onnxruntime import _GenaiLLM


class FakeOg:
    def __init__(self):
        self.search = None

    def Config(self, path):  # noqa: N802 - the genai API's names
        class C:
            def overlay(self, text):
                json.loads(text)
        return C()

    def Model(self, config):  # noqa: N802
        return object()

    def GeneratorParams(self, model):  # noqa: N802
        og = self

        class P:
            def set_search_options(self, **kw):
                og.search = kw
        return P()

    def Generator(self, model, params):  # noqa: N802
        class G:
            n = 0

            def append_tokens(self, ids):
                self.n = len(ids)

            def is_done(self):
                return False

            def generate_next_token(self):
                self.n += 1

            def get_next_tokens(self):
                return [self.n]
        return G()


@pytest.mark.parametrize(("window", "max_length"), [(512, 512), (None, 48), (8, 48)])
def test_kv_capacity_covers_the_sliding_window(tmp_path, window, max_length):
    dec = {"sliding_window": {"window_size": window}} if window else {}
    (tmp_path / "genai_config.json").write_text(json.dumps({"model": {"vocab_size": 10, "decoder": dec}}))
    og, got = FakeOg(), []
    _GenaiLLM(og, str(tmp_path), 2).generate(list(range(32)), 16, got.append)
    assert og.search == {"max_length": max_length, "min_length": 48, "do_sample": False}
    assert got == list(range(33, 49))          # exactly n_gen tokens


@pytest.mark.parametrize("model", [
    {"vocab_size": 10, "decoder": {"sliding_window": 512}},           # a number where an object belongs
    {"vocab_size": 10, "decoder": [1, 2]},
    {"vocab_size": True, "decoder": {"sliding_window": {"window_size": True}}},
    {"vocab_size": "10", "decoder": {"sliding_window": {"window_size": "512"}}},
])
def test_malformed_genai_config_sections_are_ignored_not_a_traceback(tmp_path, model):
    """genai_config.json comes with the artifact (untrusted): odd shapes of the optional window section mean no
    window, never an AttributeError in the runner."""
    (tmp_path / "genai_config.json").write_text(json.dumps({"model": model}))
    og = FakeOg()
    _GenaiLLM(og, str(tmp_path), 2).generate(list(range(32)), 16, lambda t: None)
    assert og.search["max_length"] == 48
