"""Builders: one module per artifact kind, same small interface, found through one dict.

A builder module defines two functions:

- ``inputs(job) -> dict``: everything the artifact depends on besides the recipe model's own
  fields (tool versions, calibration sha256, builder options …). ``host.export`` hashes it with
  the model sha256 into ``inputs_hash``: same hash + intact files = "up to date".
- ``build(job, out_dir, *, log) -> dict``: build into ``out_dir`` (an empty temp folder that
  ``host.export`` renames into place on success) and return extra manifest fields (at least
  ``format`` and ``entry``). ``log`` takes one line of text. Raise ``ToolkitMissingError`` before
  any work when the vendor toolkit is absent (the job is then listed as skipped), ``BuildError``
  for failures.
"""

from __future__ import annotations

import importlib
from types import ModuleType

#: artifact kind → module (imported lazily: heavy deps stay out of start-up).
BUILDERS = {
    "onnx": "host.build.onnx_int8",
    "rkllm": "host.build.rkllm",
    "rknn": "host.build.rknn",
}


def builder_for(kind: str) -> ModuleType:
    if kind not in BUILDERS:
        raise KeyError(f"no builder for artifact kind {kind!r} (known: {', '.join(BUILDERS)})")
    return importlib.import_module(BUILDERS[kind])
