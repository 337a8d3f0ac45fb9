"""rknn-toolkit-lite2 backend: ``.rknn`` encoders on the NPU (``from rknnlite.api import RKNNLite``).

The wheel is aarch64-only and imported lazily (``available()`` and ``load()``), so this module is
stdlib-only at import. ``load`` = ``RKNNLite().load_rknn(entry)`` + ``init_runtime(core_mask=...)``;
both report failure by a non-zero return code, ``inference`` by returning ``None`` (the wheel's
documented behaviour) — each becomes a one-line ``BackendError``, so the runner writes an error row.

``core_mask``: ``params["core_mask"]`` (``auto``, ``0``, ``1``, ``2``, ``0_1``, ``0_1_2``, ``all``)
or, by default, every NPU core of the artifact's target (manifest ``npu_cores``, written by the
host from targets.yaml): 3 cores → ``NPU_CORE_0_1_2``, 2 → ``NPU_CORE_0_1``, else ``NPU_CORE_AUTO``
(single-core chips take no mask). ``encode`` runs one forward pass of ``input_ids`` /
``attention_mask`` / [``token_type_ids``] in the manifest's input order and mean-pools
``last_hidden_state``; the runner owns all timing (latency mean/p50/p99, sequences/s).
"""

from __future__ import annotations

import re
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .base import Backend, BackendError, BackendUnavailable, encoder_feeds, mean_pool

#: ``params["core_mask"]`` spelling -> RKNNLite attribute.
CORE_MASKS = {
    "auto": "NPU_CORE_AUTO", "0": "NPU_CORE_0", "1": "NPU_CORE_1", "2": "NPU_CORE_2",
    "0_1": "NPU_CORE_0_1", "0_1_2": "NPU_CORE_0_1_2", "all": "NPU_CORE_ALL",
}
#: number of NPU cores of the target -> default mask (every core).
MASK_FOR_CORES = {3: "0_1_2", 2: "0_1"}
INPUT_ORDER = ("input_ids", "attention_mask", "token_type_ids")


def _api() -> Any:
    try:
        from rknnlite.api import RKNNLite
    except ImportError as e:
        raise BackendUnavailable("rknnlite.api does not import (%s); install the rknn-toolkit-lite2 wheel "
                                 "for this board's Python (aarch64 only)" % e) from None
    return RKNNLite


def _lite_version() -> Optional[str]:
    try:
        from importlib import metadata
        return metadata.version("rknn-toolkit-lite2")
    except Exception:  # noqa: BLE001 - unknown version is fine (a vendored copy has no metadata)
        return None


def available() -> Tuple[bool, str]:
    try:
        _api()
    except BackendUnavailable as e:
        return False, str(e)
    return True, "rknn-toolkit-lite2 %s" % (_lite_version() or "?")


def core_mask_name(params: Dict[str, Any], manifest: Dict[str, Any]) -> str:
    """The ``CORE_MASKS`` key to use: explicit ``params["core_mask"]`` or every core of the target."""
    want = params.get("core_mask")
    if want is not None:
        key = str(want).lower().replace("npu_core_", "")
        if key not in CORE_MASKS:
            raise BackendError("core_mask %r; allowed: %s" % (want, ", ".join(CORE_MASKS)))
        return key
    try:
        cores = int(manifest.get("npu_cores") or 0)
    except (TypeError, ValueError):
        cores = 0
    return MASK_FOR_CORES.get(cores, "auto")


def sdk_versions(text: Any) -> Tuple[Optional[str], Optional[str]]:
    """(runtime, driver) from ``get_sdk_version()``: the 2.x wheel returns a banner
    ``===\nRKNN VERSION:\n  API: 2.3.2 (...)\n  DRV: 0.9.8\n===`` (seen on aarch64), not one version."""
    if not text:
        return None, None
    text = str(text)
    api = re.search(r"API:\s*([^\n]+)", text)
    drv = re.search(r"DRV:\s*([^\n]+)", text)
    if api is None:
        return (" ".join(text.split()) or None), None
    return api.group(1).strip(), drv.group(1).strip() if drv else None


class RknnLiteBackend(Backend):
    name = "rknnlite"

    def __init__(self) -> None:
        self.np: Any = None
        self.lite: Any = None
        self.vocab_size = 0
        self.input_names: List[str] = []
        self.batch = 1
        self.seq_len = 0
        self._info: Dict[str, Any] = {}

    def load(self, artifact_dir: str, params: Dict[str, Any]) -> None:
        import os

        import numpy as np

        manifest = params.get("manifest") or {}
        if manifest.get("format") != "rknn":
            raise BackendError("rknnlite backend runs format rknn, not %r" % manifest.get("format"))
        if manifest.get("model_kind") != "encoder":
            raise BackendError("rknnlite backend runs encoder artifacts (model_kind %r)" % manifest.get("model_kind"))
        RKNNLite = _api()
        mask_key = core_mask_name(params, manifest)
        mask = getattr(RKNNLite, CORE_MASKS[mask_key], None)
        if mask is None:
            raise BackendError("this rknn-toolkit-lite2 has no RKNNLite.%s (core_mask %s)" % (CORE_MASKS[mask_key], mask_key))
        shape = manifest.get("inputs") or {}
        self.input_names = list(shape.get("names") or ("input_ids", "attention_mask"))
        unknown = [n for n in self.input_names if n not in INPUT_ORDER]
        if unknown:
            raise BackendError("%s: encoder inputs %s are not token ids/mask/type ids" % (artifact_dir, ", ".join(unknown)))
        self.batch = int(shape.get("batch") or 1)
        self.seq_len = int(shape.get("seq_len") or 0)
        self.np = np
        entry = os.path.join(artifact_dir, manifest.get("entry") or "model.rknn")
        lite = RKNNLite()
        self.lite = lite
        ret = lite.load_rknn(entry)
        if ret != 0:
            raise BackendError("RKNNLite.load_rknn(%s) returned %s" % (os.path.basename(entry), ret))
        ret = lite.init_runtime(core_mask=mask)
        if ret != 0:
            raise BackendError("RKNNLite.init_runtime(core_mask=%s) returned %s (NPU driver/librknnrt missing, "
                               "or the mask names a core this chip lacks; see `python3 -m board doctor`)"
                               % (CORE_MASKS[mask_key], ret))
        from .onnxruntime import _tokenizer_vocab

        self.vocab_size = int(manifest.get("vocab_size") or _tokenizer_vocab(artifact_dir, manifest) or 30522)
        sdk = None
        get_sdk = getattr(lite, "get_sdk_version", None)
        if callable(get_sdk):
            try:
                sdk = get_sdk()
            except Exception:  # noqa: BLE001 - version text is informational only
                sdk = None
        version = _lite_version()
        sdk, driver = sdk_versions(sdk)
        self._info = {"name": self.name, "version": version, "core_mask": mask_key, "core_mask_value": mask,
                      "sdk_version": sdk, "driver_version": driver, "threads": None,
                      "runtime": "rknn-toolkit-lite2 %s" % (version or "?") + (" (%s)" % sdk if sdk else "")}

    def encode(self, batch: List[List[int]]) -> Any:
        np = self.np
        if self.lite is None:
            raise BackendError("rknnlite: encode before load")
        feeds = encoder_feeds(np, batch, ("input_ids", "attention_mask", "token_type_ids"))
        ids = feeds["input_ids"]
        if (self.seq_len and ids.shape[1] != self.seq_len) or ids.shape[0] != self.batch:
            raise BackendError("rknnlite: the .rknn has fixed input shape [%d, %d], got %s"
                               % (self.batch, self.seq_len, list(ids.shape)))
        outs = self.lite.inference(inputs=[feeds[n] for n in self.input_names])
        if outs is None or not len(outs):
            raise BackendError("RKNNLite.inference returned no outputs (see the runtime log)")
        hidden = np.asarray(outs[0], dtype=np.float32).reshape(ids.shape[0], ids.shape[1], -1)
        return mean_pool(np, hidden, feeds["attention_mask"])

    def logprobs(self, ids: Sequence[int]) -> Any:
        raise BackendError("rknnlite runs encoder .rknn artifacts (sentence embeddings): next-token "
                           "log-probabilities do not apply; their quality is cosine/NN agreement")

    def close(self) -> None:
        if self.lite is not None:
            lite, self.lite = self.lite, None
            lite.release()

    def info(self) -> Dict[str, Any]:
        return dict(self._info)


BACKEND = RknnLiteBackend
