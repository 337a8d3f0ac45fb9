"""Backend registry: name -> module path, imported lazily (vendor runtimes load only when used).

Adding a backend = one module in this folder + one line here. A module exposes ``BACKEND``
(the class) and ``available() -> (bool, reason)``; see ``board/backends/base.py`` for the protocol.
"""

from __future__ import annotations

import importlib
from typing import Dict, Optional, Tuple

from .base import Backend, BackendError, BackendUnavailable

BACKENDS: Dict[str, Optional[str]] = {
    "onnxruntime": "board.backends.onnxruntime",
    "fake": "board.backends.fake",
    "rkllm": "board.backends.rkllm",
    "rknnlite": "board.backends.rknnlite",
    "llamacpp": "board.backends.llamacpp",
}

# Which backends run an artifact format, preferred first (the host picks the first available).
BACKENDS_FOR_FORMAT: Dict[str, Tuple[str, ...]] = {
    "onnx-genai": ("onnxruntime",),
    "onnx-encoder": ("onnxruntime",),
    "rkllm": ("rkllm",),
    "rknn": ("rknnlite",),
    "gguf": ("llamacpp",),
    "fake": ("fake",),
}

__all__ = ["BACKENDS_FOR_FORMAT", "BACKENDS", "Backend", "BackendError", "BackendUnavailable", "backend_status", "load_backend"]


def _module(name: str):
    if name not in BACKENDS:
        raise BackendUnavailable("unknown backend %r; known: %s" % (name, ", ".join(sorted(BACKENDS))))
    path = BACKENDS[name]
    if path is None:
        raise BackendUnavailable("backend %r is not available in this runner version (not implemented yet)" % name)
    if not path.startswith("board.backends."):  # registered from outside board/ (a test's toy kind)
        return importlib.import_module(path)
    # package-relative, so board/ works when copied under any folder name
    return importlib.import_module("." + path.rsplit(".", 1)[1], __name__)


def load_backend(name: str) -> Backend:
    """A fresh, unloaded backend instance; BackendUnavailable (one line) when it cannot run here."""
    mod = _module(name)
    ok, reason = mod.available()
    if not ok:
        raise BackendUnavailable("backend %r not available here: %s" % (name, reason))
    return mod.BACKEND()


def backend_status(name: str) -> Tuple[bool, str]:
    """(available, reason-or-version) without raising."""
    try:
        return _module(name).available()
    except BackendUnavailable as e:
        return False, str(e)
