"""A failed llama.cpp tool reads as one line: the known meaning, or the tool's own last error line."""

from __future__ import annotations

from host.build.gguf import failure_line

TRACE = """INFO:hf-to-gguf:Loading model: smollm2-135m-qwen2
Traceback (most recent call last):
  File "/x/convert_hf_to_gguf.py", line 10, in <module>
    main()
  File "/x/conversion/base.py", line 1953, in get_vocab_base_pre
    raise NotImplementedError("BPE pre-tokenizer was not recognized - update get_vocab_base_pre()")
NotImplementedError: BPE pre-tokenizer was not recognized - update get_vocab_base_pre()
"""


def test_known_failure_names_its_meaning_and_a_way_out():
    line = failure_line("convert_hf_to_gguf (f16)", 1, TRACE)
    assert "\n" not in line and "Traceback" not in line and "File " not in line
    assert "does not know this model's BPE pre-tokenizer" in line and "drop the gguf schemes" in line
    assert "llama-cpp-python" in line


def test_unknown_failure_keeps_the_tools_own_error_line_not_the_traceback():
    out = TRACE.replace("BPE pre-tokenizer was not recognized", "something new")
    line = failure_line("llama-quantize", 1, out.replace("NotImplementedError", "ValueError"))
    assert line == ("llama-quantize failed (exit 1): ValueError: something new - update get_vocab_base_pre()")
    # no Python error line at all: the last two output lines
    assert failure_line("llama-imatrix", 2, "loading\nfailed to open file x\n") == (
        "llama-imatrix failed (exit 2): loading | failed to open file x")
