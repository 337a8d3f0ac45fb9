"""A faithful double of rknn-toolkit-lite2's ``rknnlite.api`` (the real wheel is aarch64-only).

``install_fake_rknnlite(folder)`` writes a ``rknnlite`` package (+ dist-info, so
``importlib.metadata`` reports a version) into ``folder``; put ``folder`` on ``sys.path`` or
``PYTHONPATH``. ``write_rknn_artifact(dir, ...)`` writes an artifact folder the rknnlite backend
loads: a fake ``model.rknn``, ``model.rknn.json`` (the double's view of the model) and a manifest.

What the double enforces, as the wheel documents it (RKNNLite 2.x):
- ``load_rknn(path)``: 0, or -1 when the file does not exist;
- ``init_runtime(target=None, device_id=None, async_mode=False, core_mask=NPU_CORE_AUTO)``: -1 when no
  model is loaded, when ``core_mask`` is not one of the NPU_CORE_* values, or names a core the chip
  lacks (``npu_cores`` in the JSON); ``init_ret`` in the JSON forces a return code;
- ``inference(inputs=[...])``: ``None`` before ``init_runtime``, or when the inputs' count/shapes do
  not match the model's (``inputs`` in the JSON); else, after ``delay_s`` seconds, one float32
  ``[batch, seq_len, hidden]`` output that depends on the token ids;
- ``release()``. Every call is appended to ``calls.jsonl`` beside the ``.rknn`` (for assertions).
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Dict, List, Optional

FAKE_VERSION = "2.3.2+fake"

API_SOURCE = '''"""rknnlite.api double (board/testing/rknnlite.py); NOT the vendor runtime."""
import json
import os
import time

import numpy as np

_MASKS = (0, 1, 2, 4, 3, 7, 0xffff)


def _spec(path):
    try:
        with open(path + ".json", encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


class RKNNLite:
    NPU_CORE_AUTO = 0
    NPU_CORE_0 = 1
    NPU_CORE_1 = 2
    NPU_CORE_2 = 4
    NPU_CORE_0_1 = 3
    NPU_CORE_0_1_2 = 7
    NPU_CORE_ALL = 0xffff

    def __init__(self, verbose=False, verbose_file=None):
        self.rknn_data = None
        self.path = None
        self.spec = {}
        self.runtime = None

    def _log(self, call, **kw):
        if self.path:
            with open(os.path.join(os.path.dirname(self.path), "calls.jsonl"), "a", encoding="utf-8") as f:
                f.write(json.dumps(dict(call=call, pid=os.getpid(), **kw)) + "\\n")

    def load_rknn(self, path):
        if not path or not os.path.exists(path):
            return -1
        with open(path, "rb") as f:
            self.rknn_data = f.read()
        self.path = path
        self.spec = _spec(path)
        self._log("load_rknn")
        return 0

    def init_runtime(self, target=None, device_id=None, async_mode=False, core_mask=NPU_CORE_AUTO):
        if self.rknn_data is None:
            return -1
        self._log("init_runtime", core_mask=core_mask, target=target)
        if "init_ret" in self.spec:
            return int(self.spec["init_ret"])
        if core_mask not in _MASKS:
            return -1
        cores = int(self.spec.get("npu_cores", 3))
        if core_mask not in (0, 0xffff) and core_mask >> cores:
            return -1
        self.runtime = {"core_mask": core_mask}
        return 0

    def inference(self, inputs, data_type=None, data_format=None, inputs_pass_through=None, get_frame_id=False):
        if self.runtime is None:
            return None
        want = self.spec.get("inputs") or []
        if len(inputs) != len(want):
            return None
        for arr, w in zip(inputs, want):
            if list(np.shape(arr)) != list(w["shape"]):
                return None
        time.sleep(float(self.spec.get("delay_s", 0.0)))
        ids = np.asarray(inputs[0], dtype=np.float32)
        hidden = int(self.spec.get("hidden", 8))
        out = np.sin(ids[..., None] * (1.0 + np.arange(hidden, dtype=np.float32)))
        self._log("inference")
        return [out.astype(np.float32)]

    def get_sdk_version(self):
        if self.runtime is None:
            return None
        return "librknnrt 2.3.2 (fake)"

    def release(self):
        self._log("release")
        self.runtime = None
'''


def install_fake_rknnlite(folder: str) -> str:
    """Write the ``rknnlite`` double into ``folder`` (returns ``folder``, for sys.path / PYTHONPATH)."""
    pkg = os.path.join(folder, "rknnlite")
    os.makedirs(pkg, exist_ok=True)
    with open(os.path.join(pkg, "__init__.py"), "w", encoding="utf-8") as f:
        f.write('"""rknn-toolkit-lite2 double (board/testing/rknnlite.py)."""\n')
    with open(os.path.join(pkg, "api.py"), "w", encoding="utf-8") as f:
        f.write(API_SOURCE)
    info = os.path.join(folder, "rknn_toolkit_lite2-%s.dist-info" % FAKE_VERSION)
    os.makedirs(info, exist_ok=True)
    with open(os.path.join(info, "METADATA"), "w", encoding="utf-8") as f:
        f.write("Metadata-Version: 2.1\nName: rknn-toolkit-lite2\nVersion: %s\n" % FAKE_VERSION)
    return folder


def write_rknn_artifact(path: str, *, target: str = "rk3588", npu_cores: Optional[int] = 3, scheme: str = "w8a8",
                        batch: int = 1, seq_len: int = 16, hidden: int = 8, delay_s: float = 0.0,
                        names: Optional[List[str]] = None, init_ret: Optional[int] = None,
                        extra: Optional[Dict[str, Any]] = None) -> str:
    """An encoder ``.rknn`` artifact folder for the double (``npu_cores`` None: left out of the manifest)."""
    os.makedirs(path, exist_ok=True)
    names = list(names or ["input_ids", "attention_mask", "token_type_ids"])
    data = b"RKNN-FAKE\n" + json.dumps({"target": target, "scheme": scheme}).encode() + b"\0" * 128
    with open(os.path.join(path, "model.rknn"), "wb") as f:
        f.write(data)
    spec: Dict[str, Any] = {"inputs": [{"name": n, "shape": [batch, seq_len], "dtype": "int64"} for n in names],
                            "hidden": hidden, "delay_s": delay_s, "npu_cores": npu_cores or 1}
    if init_ret is not None:
        spec["init_ret"] = init_ret
    with open(os.path.join(path, "model.rknn.json"), "w", encoding="utf-8") as f:
        json.dump(spec, f)
    manifest: Dict[str, Any] = {
        "schema": 1, "model": "fake-encoder", "model_kind": "encoder", "target": target, "scheme": scheme,
        "artifact_kind": "rknn", "format": "rknn", "entry": "model.rknn", "vocab_size": 1000,
        "files": {"model.rknn": {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}},
        "toolkit": {"name": "rknn-toolkit2", "version": "2.5.0"},
        "inputs": {"batch": batch, "seq_len": seq_len, "names": names, "dtype": "int64"},
    }
    if npu_cores is not None:
        manifest["npu_cores"] = npu_cores
    manifest.update(extra or {})
    with open(os.path.join(path, "manifest.json"), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1)
    return path


def read_calls(path: str) -> List[Dict[str, Any]]:
    """The double's call log of an artifact folder."""
    try:
        with open(os.path.join(path, "calls.jsonl"), encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    except OSError:
        return []
