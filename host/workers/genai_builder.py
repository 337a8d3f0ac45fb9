"""Run onnxruntime-genai's model builder with config workarounds (``host.build.genai``).

Usage: ``python genai_builder.py [--fix NAME ...] -- <model builder arguments>``. Standalone (no
``host`` import): it runs in the main venv as a child process, so a builder crash stays a child's
exit status and its output goes to the build log.

A fix adjusts the ``transformers`` config OBJECT the builder reads (never the model's files):

- ``gemma3-rope``: transformers 5 writes Gemma 3's RoPE as ``rope_parameters`` nested per layer type
  (``{"full_attention": {...}, "sliding_attention": {...}}``); the builder reads
  ``rope_parameters["rope_type"]``, ``rope_theta`` and ``rope_local_base_freq`` (transformers 4
  names) and fails with ``KeyError: 'rope_type'``. The fix adds those three from the nested values;
  the nested dict stays, so the weights load as before.
"""

from __future__ import annotations

import runpy
import sys


def _gemma3_rope(config) -> None:
    rp = getattr(config, "rope_parameters", None)
    if not isinstance(rp, dict) or "rope_type" in rp:
        return
    full, local = rp.get("full_attention") or {}, rp.get("sliding_attention") or {}
    if "rope_theta" not in full:
        return
    rp["rope_type"] = full.get("rope_type", "default")
    config.rope_theta = full["rope_theta"]
    config.rope_local_base_freq = local.get("rope_theta", full["rope_theta"])


FIXES = {"gemma3-rope": _gemma3_rope}


def main(argv: list[str]) -> None:
    fixes = []
    while argv and argv[0] == "--fix":
        fixes.append(FIXES[argv[1]])
        argv = argv[2:]
    if argv and argv[0] == "--":
        argv = argv[1:]
    if fixes:
        from transformers import AutoConfig

        original = AutoConfig.from_pretrained.__func__

        def from_pretrained(cls, *a, **kw):
            config = original(cls, *a, **kw)
            for fix in fixes:
                fix(getattr(config, "text_config", None) or config)
                fix(config)
            return config

        AutoConfig.from_pretrained = classmethod(from_pretrained)
    sys.argv = ["onnxruntime_genai.models.builder", *argv]
    runpy.run_module("onnxruntime_genai.models.builder", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
