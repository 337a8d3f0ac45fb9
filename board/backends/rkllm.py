"""rkllm backend: ctypes binding to librkllmrt.so (vendor NPU runtime for ``.rkllm`` models).

ONE table of layouts (``LAYOUTS``) covers every runtime ABI this runner speaks; each entry says
which toolkit/runtime versions it serves and why it differs (one comment per version gate):

- ``1.2.1`` — runtime/toolkit v1.2.1 … v1.2.3. Before v1.2.1 the callback returned void and
  there was no perf struct: not supported.
- ``1.3.0`` — runtime/toolkit v1.3.0.

The ABI comes from the artifact manifest's ``toolkit.version`` (model and runtime versions must
match), overridable with the backend param ``rkllm_abi`` (``--rkllm-abi``). Library path:
param ``rkllm_lib``, then ``$RKLLM_LIB`` (``--rkllm-lib`` sets it), then the usual places.

Method: prompt given as exactly ``n_prompt`` token ids (``RKLLM_INPUT_TOKEN``), greedy
(``top_k = 1``), ``max_new_tokens = n_gen``, EOS ignored where the ABI can (``ignore_eos_token``,
v1.3.0; on v1.2.x a model that emits EOS early makes the row an error that says so),
``n_batch = 1``. ``logprobs(ids)``: one ``RKLLM_INFER_GET_LOGITS`` run over the window (rkllm.h's
``RKLLMResult.logits``: ``num_tokens`` rows of ``vocab_size`` floats); a runtime that returns only the
last position's row is run once per prefix. Against rkdeploy's shim (its version string says
``rkdeploy shim``) the logits are made up by the shim and ``info()["logits"]`` says so. The runner's timers stay the truth; the runtime's ``RKLLMPerfStat`` from the
FINISH callback is recorded beside them (``last_perf``). The runtime's own log
(``RKLLM_LOG_LEVEL=1``) is captured from fds 1/2 into a run log file (never into the JSONL).
Stdlib only, Python >= 3.8.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import re
import sys
import tempfile
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .base import Backend, BackendError, BackendUnavailable

LIB_NAME = "librkllmrt.so"
LIB_DIRS = ("/usr/lib", "/usr/lib64", "/usr/local/lib", "/usr/lib/aarch64-linux-gnu", "/lib", "/opt/lib")
_VERSION_IN_LOG = re.compile(r"rkllm-runtime version:? *v?(\d+\.\d+\.\d+)")

# enums of rkllm.h
RKLLM_RUN_NORMAL, RKLLM_RUN_WAITING, RKLLM_RUN_FINISH, RKLLM_RUN_ERROR = 0, 1, 2, 3
RKLLM_INPUT_PROMPT, RKLLM_INPUT_TOKEN, RKLLM_INPUT_EMBED, RKLLM_INPUT_MULTIMODAL = 0, 1, 2, 3
RKLLM_INFER_GENERATE, RKLLM_INFER_GET_LOGITS = 0, 2
PERF_FIELDS = ("prefill_time_ms", "prefill_tokens", "generate_time_ms", "generate_tokens", "memory_usage_mb")

c_size_t = ctypes.c_size_t


# --- structs shared by every supported ABI --------------------------------------------------

class RKLLMExtendParam(ctypes.Structure):
    _fields_ = [("base_domain_id", ctypes.c_int32), ("embed_flash", ctypes.c_int8), ("enabled_cpus_num", ctypes.c_int8),
                ("enabled_cpus_mask", ctypes.c_uint32), ("n_batch", ctypes.c_uint8), ("use_cross_attn", ctypes.c_int8),
                ("reserved", ctypes.c_uint8 * 104)]


class RKLLMPerfStat(ctypes.Structure):
    _fields_ = [("prefill_time_ms", ctypes.c_float), ("prefill_tokens", ctypes.c_int),
                ("generate_time_ms", ctypes.c_float), ("generate_tokens", ctypes.c_int),
                ("memory_usage_mb", ctypes.c_float)]


class _Tensor(ctypes.Structure):
    _fields_ = [("data", ctypes.POINTER(ctypes.c_float)), ("size", ctypes.c_int), ("num_tokens", ctypes.c_int)]


class RKLLMResult(ctypes.Structure):
    _fields_ = [("text", ctypes.c_char_p), ("token_id", ctypes.c_int32), ("last_hidden_layer", _Tensor),
                ("logits", _Tensor), ("perf", RKLLMPerfStat)]


class RKLLMTokenInput(ctypes.Structure):
    _fields_ = [("input_ids", ctypes.POINTER(ctypes.c_int32)), ("n_tokens", c_size_t)]


class RKLLMEmbedInput(ctypes.Structure):
    _fields_ = [("embed", ctypes.POINTER(ctypes.c_float)), ("n_tokens", c_size_t)]


RESULT_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(RKLLMResult), ctypes.c_void_p, ctypes.c_int)

_PARAM_HEAD = [("model_path", ctypes.c_char_p), ("max_context_len", ctypes.c_int32), ("max_new_tokens", ctypes.c_int32),
               ("top_k", ctypes.c_int32), ("n_keep", ctypes.c_int32), ("top_p", ctypes.c_float),
               ("temperature", ctypes.c_float), ("repeat_penalty", ctypes.c_float),
               ("frequency_penalty", ctypes.c_float), ("presence_penalty", ctypes.c_float),
               ("mirostat", ctypes.c_int32), ("mirostat_tau", ctypes.c_float), ("mirostat_eta", ctypes.c_float),
               ("skip_special_token", ctypes.c_bool)]
_INFER_HEAD = [("mode", ctypes.c_int), ("lora_params", ctypes.c_void_p), ("prompt_cache_params", ctypes.c_void_p)]
_IMAGE_1_3 = [("image_embed", ctypes.POINTER(ctypes.c_float)), ("n_image_tokens", c_size_t), ("n_image", c_size_t),
              ("image_start", ctypes.c_char_p), ("image_end", ctypes.c_char_p), ("image_content", ctypes.c_char_p),
              ("image_width", c_size_t), ("image_height", c_size_t)]
_VIDEO_1_3 = [("video_embed", ctypes.POINTER(ctypes.c_float)), ("n_frame_tokens", c_size_t),
              ("n_frame_per_video", c_size_t), ("n_video", c_size_t), ("video_start", ctypes.c_char_p),
              ("video_end", ctypes.c_char_p), ("video_content", ctypes.c_char_p), ("frame_width", c_size_t),
              ("frame_height", c_size_t)]


def _struct(name: str, fields: List[Tuple[str, Any]]) -> Any:
    return type(name, (ctypes.Structure,), {"_fields_": fields})


# --- THE table of layouts: one entry per runtime ABI, one comment per version gate -------------
LAYOUTS: Dict[str, Dict[str, Any]] = {
    # v1.2.1 .. v1.2.3: rkllm_init(handle, param, LLMResultCallback) takes the function pointer
    # directly; RKLLMParam has no ignore_eos_token and carries img_start/img_end/img_content
    # between is_async and extend_param; RKLLMInferParam ends at keep_history (no
    # sampling_params, no max_new_tokens); multimodal input = {prompt, image_embed,
    # n_image_tokens, n_image, image_width, image_height}. (< v1.2.1: void callback, no perf.)
    "1.2.1": {
        "versions": ((1, 2, 1), (1, 2, 3)),
        "param_tail": [("is_async", ctypes.c_bool), ("img_start", ctypes.c_char_p), ("img_end", ctypes.c_char_p),
                       ("img_content", ctypes.c_char_p), ("extend_param", RKLLMExtendParam)],
        "infer_tail": [("keep_history", ctypes.c_int)],
        "multimodal": [("prompt", ctypes.c_char_p), ("image_embed", ctypes.POINTER(ctypes.c_float)),
                       ("n_image_tokens", c_size_t), ("n_image", c_size_t), ("image_width", c_size_t),
                       ("image_height", c_size_t)],
        "callback_struct": False,
        "ignore_eos": False,
        "lp64_sizes": {"RKLLMParam": 208, "RKLLMParam.extend_param": 88, "RKLLMInput": 64, "RKLLMInferParam": 32},
    },
    # v1.3.0: rkllm_init takes RKLLMCallback* {result_callback, result_userdata,
    # tokenizer_callback, tokenizer_userdata, embed_callback, embed_userdata};
    # ignore_eos_token follows skip_special_token; RKLLMInferParam gains sampling_params and
    # max_new_tokens; the multimodal member gains image_start/end/content and a video struct.
    "1.3.0": {
        "versions": ((1, 3, 0), (1, 3, 0)),
        "param_tail": [("ignore_eos_token", ctypes.c_bool), ("is_async", ctypes.c_bool),
                       ("extend_param", RKLLMExtendParam)],
        "infer_tail": [("sampling_params", ctypes.c_void_p), ("keep_history", ctypes.c_int),
                       ("max_new_tokens", ctypes.c_int32)],
        "multimodal": [("prompt", ctypes.c_char_p), ("image", _struct("RKLLMImageInput", _IMAGE_1_3)),
                       ("video", _struct("RKLLMVideoInput", _VIDEO_1_3))],
        "callback_struct": True,
        "ignore_eos": True,
        "lp64_sizes": {"RKLLMParam": 184, "RKLLMParam.extend_param": 60, "RKLLMInput": 160, "RKLLMInferParam": 40},
    },
}


class Abi:
    """ctypes types for one entry of ``LAYOUTS``."""

    def __init__(self, name: str) -> None:
        spec = LAYOUTS[name]
        self.name = name
        self.spec = spec
        self.Param = _struct("RKLLMParam", _PARAM_HEAD + spec["param_tail"])
        # Returned BY VALUE: the restype carries slack so a larger struct from a mismatched
        # library cannot write past our buffer (the wrong ABI is then caught by rkllm_init).
        self.ParamRet = _struct("RKLLMParamRet", [("param", self.Param), ("_slack", ctypes.c_uint8 * 512)])
        multimodal = _struct("RKLLMMultiModalInput", spec["multimodal"])
        union = type("RKLLMInputUnion", (ctypes.Union,), {"_fields_": [
            ("prompt_input", ctypes.c_char_p), ("embed_input", RKLLMEmbedInput), ("token_input", RKLLMTokenInput),
            ("multimodal_input", multimodal)]})
        self.Input = _struct("RKLLMInput", [("role", ctypes.c_char_p), ("enable_thinking", ctypes.c_bool),
                                            ("input_type", ctypes.c_int), ("u", union)])
        self.InferParam = _struct("RKLLMInferParam", _INFER_HEAD + spec["infer_tail"])
        self.Callback = _struct("RKLLMCallback", [
            ("result_callback", RESULT_CALLBACK), ("result_userdata", ctypes.c_void_p),
            ("tokenizer_callback", ctypes.c_void_p), ("tokenizer_userdata", ctypes.c_void_p),
            ("embed_callback", ctypes.c_void_p), ("embed_userdata", ctypes.c_void_p)])

    def layout(self) -> Dict[str, int]:
        out = {"RKLLMParam": ctypes.sizeof(self.Param), "RKLLMParam.extend_param": self.Param.extend_param.offset,
               "RKLLMInput": ctypes.sizeof(self.Input), "RKLLMInferParam": ctypes.sizeof(self.InferParam),
               "RKLLMInput.token_input": self.Input.u.offset, "RKLLMResult": ctypes.sizeof(RKLLMResult),
               "RKLLMResult.perf": RKLLMResult.perf.offset, "RKLLMExtendParam": ctypes.sizeof(RKLLMExtendParam),
               "RKLLMExtendParam.n_batch": RKLLMExtendParam.n_batch.offset,
               "RKLLMInferParam.keep_history": self.InferParam.keep_history.offset,
               "RKLLMParam.is_async": self.Param.is_async.offset}
        if self.spec["callback_struct"]:
            out["RKLLMCallback"] = ctypes.sizeof(self.Callback)
            out["RKLLMParam.ignore_eos_token"] = self.Param.ignore_eos_token.offset
            out["RKLLMInferParam.max_new_tokens"] = self.InferParam.max_new_tokens.offset
        else:
            out["RKLLMParam.img_start"] = self.Param.img_start.offset
        return out

    def check_layout(self) -> None:
        """Sizes implied by the documented field order (LP64 only)."""
        if ctypes.sizeof(ctypes.c_void_p) != 8:
            return
        got = self.layout()
        bad = ["%s %d != %d" % (k, got[k], v) for k, v in self.spec["lp64_sizes"].items() if got[k] != v]
        if bad:
            raise BackendError("rkllm ABI %s: struct layout mismatch (%s)" % (self.name, ", ".join(bad)))


def _vtuple(v: str) -> Tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", v)[:3])


def abi_for_version(version: str) -> str:
    """The ``LAYOUTS`` key serving toolkit/runtime ``version``; BackendError if none does."""
    vt = _vtuple(version or "")
    if len(vt) < 3:
        raise BackendError("cannot read an rkllm version from %r; pass --rkllm-abi (%s)" % (version, ", ".join(LAYOUTS)))
    for name, spec in LAYOUTS.items():
        lo, hi = spec["versions"]
        if lo <= vt <= hi:
            return name
    if vt < (1, 2, 1):
        raise BackendError("rkllm %s is older than 1.2.1 (void callback, no perf stats): not supported; rebuild the "
                           "artifact with rkllm-toolkit >= 1.2.1 and install the matching librkllmrt" % version)
    raise BackendError("rkllm %s: no known ABI (this runner knows %s); update the runner, or pass --rkllm-abi "
                       "to force one" % (version, ", ".join("%s (%s)" % (k, _range(v)) for k, v in LAYOUTS.items())))


def _range(spec: Dict[str, Any]) -> str:
    lo, hi = spec["versions"]
    return ".".join(map(str, lo)) if lo == hi else "%s-%s" % (".".join(map(str, lo)), ".".join(map(str, hi)))


# --- library discovery ------------------------------------------------------------------------

def find_library(explicit: Optional[str] = None) -> Optional[str]:
    for cand in (explicit, os.environ.get("RKLLM_LIB")):
        if cand:
            return cand
    for d in LIB_DIRS:
        path = os.path.join(d, LIB_NAME)
        if os.path.isfile(path):
            return path
    return ctypes.util.find_library("rkllmrt")


def library_version(path: str) -> Optional[str]:
    """The runtime version embedded in the library file (None when it cannot be found): the doctor's
    pattern, ``board.sysinfo.LIB_VERSION``, so doctor and backend never disagree."""
    from ..sysinfo import lib_semver

    return lib_semver(path)


def available() -> Tuple[bool, str]:
    if not sys.platform.startswith("linux"):
        return False, "librkllmrt is Linux-only"
    path = find_library()
    if not path or (os.path.sep in path and not os.path.isfile(path)):
        return False, "%s not found (install it from the vendor's rknn-llm release, or pass --rkllm-lib PATH / " \
                      "set RKLLM_LIB)" % LIB_NAME
    return True, "%s %s" % (path, library_version(path) or "(version unknown)")


# --- capturing the runtime's own log ----------------------------------------------------------

class _CaptureFds:
    """Redirect fds 1 and 2 into ``path`` while the C runtime runs (keeps the JSONL stream clean)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.saved: List[int] = []

    def __enter__(self) -> _CaptureFds:
        sys.stdout.flush()
        sys.stderr.flush()
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            self.saved = [os.dup(1), os.dup(2)]
            os.dup2(fd, 1)
            os.dup2(fd, 2)
        finally:
            os.close(fd)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
            _libc_fflush()  # C stdio buffers (fully buffered on a file) must land in the log, not in the JSONL
        finally:
            for i, saved in enumerate(self.saved):
                os.dup2(saved, i + 1)  # fds 1, 2
                os.close(saved)
            self.saved = []


def _libc_fflush() -> None:
    try:
        libc = ctypes.CDLL(None)
        libc.fflush.argtypes = [ctypes.c_void_p]
        libc.fflush(None)
    except (OSError, AttributeError):
        pass


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]|\x1b\[[0-9;?]*[ -/]*[@-~]")


def _tail(path: str, n: int = 20) -> List[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    return [_CONTROL.sub("", x) for x in lines[-n:] if x.strip()]


# --- the backend ------------------------------------------------------------------------------

class RkllmBackend(Backend):
    name = "rkllm"

    def __init__(self) -> None:
        self.lib: Any = None
        self.abi: Optional[Abi] = None
        self.handle = ctypes.c_void_p()
        self.vocab_size: Optional[int] = None
        self._keep: List[Any] = []
        self._cb: Any = None
        self._on_token: Optional[Callable[[int], None]] = None
        self._n_gen = 0
        self._count = 0
        self._error: Optional[str] = None
        self._exc: Optional[BaseException] = None
        self._perf: List[Dict[str, Any]] = []
        self._on_logits: Optional[Callable[[Any], None]] = None
        self._init_n_gen: Optional[int] = None
        self._info: Dict[str, Any] = {"name": self.name}
        self.log_path = ""
        self.model_path = ""
        self.max_context = 0

    # protocol ---------------------------------------------------------------------------------
    def load(self, artifact_dir: str, params: Dict[str, Any]) -> None:
        manifest = params.get("manifest") or {}
        entry = manifest.get("entry")
        if not entry or not str(entry).endswith(".rkllm"):
            raise BackendError("artifact %s is not an .rkllm artifact (entry %r)" % (artifact_dir, entry))
        self.model_path = os.path.abspath(os.path.join(artifact_dir, entry))
        toolkit = str((manifest.get("toolkit") or {}).get("version") or "")
        forced = params.get("rkllm_abi")
        if forced:
            if forced not in LAYOUTS:
                raise BackendError("--rkllm-abi %r is not one of %s" % (forced, ", ".join(LAYOUTS)))
            abi_name, source = forced, "--rkllm-abi"
        else:
            abi_name, source = abi_for_version(toolkit), "artifact toolkit %s" % toolkit
        self.abi = Abi(abi_name)
        self.abi.check_layout()
        path = find_library(params.get("rkllm_lib"))
        if not path:
            raise BackendUnavailable("%s not found; pass --rkllm-lib PATH or set RKLLM_LIB" % LIB_NAME)
        runtime = library_version(path)
        if runtime and not forced and abi_for_version_safe(runtime) != abi_name:
            raise BackendError("librkllmrt %s at %s does not match the artifact (built with rkllm-toolkit %s, ABI %s): "
                               "install librkllmrt %s on the board or rebuild the artifact with rkllm-toolkit %s "
                               "(or force --rkllm-abi)" % (runtime, path, toolkit, abi_name, toolkit, runtime))
        self.log_path = params.get("rkllm_log") or os.environ.get("RKDEPLOY_RKLLM_LOG") or os.path.join(
            tempfile.gettempdir(), "rkdeploy-rkllm-%d.log" % os.getpid())
        os.environ.setdefault("RKLLM_LOG_LEVEL", "1")  # runtime prints its version and perf table
        try:
            self.lib = ctypes.CDLL(path)
        except OSError as e:
            raise BackendUnavailable("cannot load %s: %s" % (path, e)) from None
        self._declare()
        rk = manifest.get("rkllm") or {}
        self.max_context = int(rk.get("max_context") or 0)
        self.vocab_size = manifest.get("vocab_size")
        self._info = {"name": self.name, "version": runtime, "abi": abi_name, "abi_source": source, "library": path,
                      "toolkit_version": toolkit or None, "log": self.log_path,
                      "eos": "ignored (ignore_eos_token)" if self.abi.spec["ignore_eos"] else
                      "cannot be ignored on ABI %s (no ignore_eos_token): an early EOS makes the row an error" % abi_name}
        labels = []  # what the row's runtime column must admit
        if _is_shim(path):
            self._info["logits"] = "made up by rkdeploy's librkllmrt shim (no model runs): shim output, not quality"
            labels.append("rkdeploy librkllmrt shim")
        if (manifest.get("toolkit") or {}).get("test_double"):  # the artifact came from rkdeploy's test double
            self._info["toolkit_test_double"] = True
            labels.append("artifact from the rkllm-toolkit test double")
        if labels:
            self._info["runtime"] = "rkllm %s (%s)" % (runtime or "?", "; ".join(labels))
        n_prompt, n_gen = params.get("n_prompt"), params.get("n_gen")
        if n_prompt and n_gen and self.max_context and n_prompt + n_gen > self.max_context:
            raise BackendError("n_prompt %d + n_gen %d exceed the artifact's max_context %d (rebuild with a larger "
                               "max_context)" % (n_prompt, n_gen, self.max_context))
        self._init(int(n_gen or 0))

    def generate(self, prompt_ids: Sequence[int], n_gen: int, on_token: Callable[[int], None]) -> None:
        assert self.abi is not None
        if not self.abi.spec["callback_struct"] and self._init_n_gen != n_gen:
            self._destroy()  # v1.2.x: max_new_tokens lives in RKLLMParam only, so init again
            self._init(n_gen)
        inp, infer, _ids = self._request(prompt_ids, RKLLM_INFER_GENERATE)
        if "max_new_tokens" in dict(self.abi.spec["infer_tail"]):
            infer.max_new_tokens = n_gen
        self._on_token, self._n_gen, self._count, self._error, self._exc = on_token, n_gen, 0, None, None
        with _CaptureFds(self.log_path):
            ret = self.lib.rkllm_run(self.handle, ctypes.byref(inp), ctypes.byref(infer), None)
        self._on_token = None
        if self._exc is not None:
            raise self._exc
        if self._error:
            raise BackendError("%s%s" % (self._error, self._log_hint()))
        if ret != 0:
            raise BackendError("rkllm_run returned %d%s" % (ret, self._log_hint()))
        if self._count < n_gen:
            why = ("the model emitted EOS and ABI %s cannot ignore it (use a v1.3.0 runtime/artifact for fixed-length "
                   "runs)" % self.abi.name) if not self.abi.spec["ignore_eos"] else "the runtime stopped early"
            raise BackendError("rkllm produced %d of %d tokens: %s" % (self._count, n_gen, why))

    def logprobs(self, ids: Sequence[int]) -> Any:
        """``[len(ids), vocab]`` log-softmax of the runtime's logits (float64 lists through numpy when it imports)."""
        rows = self._logits(ids)
        if len(rows) == 1 and len(ids) > 1:   # last position only: one run per prefix
            rows = [self._logits(ids[:k])[-1] for k in range(1, len(ids))] + rows
        if len(rows) != len(ids):
            raise BackendError("rkllm returned logits for %d of %d positions" % (len(rows), len(ids)))
        try:
            import numpy as np
        except ImportError:
            raise BackendError("rkllm logprobs need numpy on the board (pip install numpy)") from None
        x = np.asarray(rows, dtype=np.float32)
        m = x.max(-1, keepdims=True)
        return x - (m + np.log(np.exp(x - m).sum(-1, keepdims=True)))

    def _request(self, ids: Sequence[int], mode: int) -> Tuple[Any, Any, Any]:
        """``(RKLLMInput, RKLLMInferParam, id array)`` of one run: token input, no history; keep the array alive."""
        assert self.abi is not None
        arr = (ctypes.c_int32 * len(ids))(*[int(t) for t in ids])
        inp = self.abi.Input()
        inp.role = b"user"
        inp.enable_thinking = False
        inp.input_type = RKLLM_INPUT_TOKEN
        inp.u.token_input.input_ids = arr
        inp.u.token_input.n_tokens = len(ids)
        infer = self.abi.InferParam()
        infer.mode = mode
        infer.keep_history = 0
        return inp, infer, arr

    def _logits(self, ids: Sequence[int]) -> List[List[float]]:
        assert self.abi is not None
        inp, infer, _ids = self._request(ids, RKLLM_INFER_GET_LOGITS)
        got: List[List[float]] = []

        def take(result: Any) -> None:
            t = result.contents.logits
            if t.data and t.size > 0 and t.num_tokens > 0:
                flat = t.data[:t.size * t.num_tokens]
                got.extend(flat[i * t.size:(i + 1) * t.size] for i in range(t.num_tokens))

        self._on_logits, self._error, self._exc = take, None, None
        with _CaptureFds(self.log_path):
            ret = self.lib.rkllm_run(self.handle, ctypes.byref(inp), ctypes.byref(infer), None)
        self._on_logits = None
        if self._exc is not None:
            raise self._exc
        if self._error or ret != 0:
            raise BackendError("rkllm GET_LOGITS run failed (%s)%s" % (self._error or "returned %d" % ret, self._log_hint()))
        if not got:
            raise BackendError("rkllm returned no logits for a %d-token window%s" % (len(ids), self._log_hint()))
        return got

    def close(self) -> None:
        self._destroy()

    def info(self) -> Dict[str, Any]:
        return dict(self._info)

    def last_perf(self) -> Optional[Dict[str, Any]]:
        """RKLLMPerfStat of the last run (FINISH callback), every run's stats, and the runtime log tail."""
        if not self._perf:
            return None
        out = dict(self._perf[-1])
        out["runs"] = list(self._perf)
        out["log_tail"] = _tail(self.log_path)
        return out

    # internals --------------------------------------------------------------------------------
    def _declare(self) -> None:
        assert self.abi is not None
        lib = self.lib
        lib.rkllm_createDefaultParam.restype = self.abi.ParamRet
        lib.rkllm_createDefaultParam.argtypes = []
        cb_type = ctypes.POINTER(self.abi.Callback) if self.abi.spec["callback_struct"] else RESULT_CALLBACK
        lib.rkllm_init.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(self.abi.Param), cb_type]
        lib.rkllm_init.restype = ctypes.c_int
        lib.rkllm_run.argtypes = [ctypes.c_void_p, ctypes.POINTER(self.abi.Input), ctypes.POINTER(self.abi.InferParam),
                                  ctypes.c_void_p]
        lib.rkllm_run.restype = ctypes.c_int
        lib.rkllm_destroy.argtypes = [ctypes.c_void_p]
        lib.rkllm_destroy.restype = ctypes.c_int

    def _init(self, n_gen: int) -> None:
        assert self.abi is not None
        box = self.lib.rkllm_createDefaultParam()  # RKLLMParam by value (+ slack)
        p = box.param
        p.model_path = self.model_path.encode()
        if self.max_context:
            p.max_context_len = self.max_context
        p.max_new_tokens = n_gen if n_gen > 0 else -1
        p.top_k = 1  # greedy
        p.skip_special_token = True
        p.is_async = False
        if self.abi.spec["ignore_eos"]:
            p.ignore_eos_token = True
        else:
            p.img_start = p.img_end = p.img_content = None  # text-only model
        p.extend_param.n_batch = 1
        # reserved bytes must be zero; this also makes a mismatched runtime read n_batch 0 and refuse
        ctypes.memset(ctypes.addressof(p.extend_param.reserved), 0, ctypes.sizeof(p.extend_param.reserved))
        self._cb = RESULT_CALLBACK(self._on_result)
        if self.abi.spec["callback_struct"]:
            cbs = self.abi.Callback()
            cbs.result_callback = self._cb
            self._keep = [box, cbs]
            arg: Any = ctypes.byref(cbs)
        else:
            self._keep = [box]
            arg = self._cb
        with _CaptureFds(self.log_path):
            ret = self.lib.rkllm_init(ctypes.byref(self.handle), ctypes.byref(box.param), arg)
        if ret != 0:
            self.handle = ctypes.c_void_p()
            raise BackendError("rkllm_init failed (%d) for %s with ABI %s (%s)%s; if the runtime is a different "
                               "version than the artifact's toolkit, the struct layouts differ (e.g. n_batch reads as 0) "
                               "— install the matching librkllmrt or set --rkllm-abi"
                               % (ret, self.model_path, self.abi.name, self._info.get("abi_source"), self._log_hint()))
        self._init_n_gen = n_gen
        seen = _VERSION_IN_LOG.findall("\n".join(_tail(self.log_path, 200)))
        if seen and not self._info.get("version"):
            self._info["version"] = seen[-1]

    def _destroy(self) -> None:
        if self.lib is not None and self.handle.value:
            with _CaptureFds(self.log_path):
                self.lib.rkllm_destroy(self.handle)
        self.handle = ctypes.c_void_p()
        self._init_n_gen = None

    def _on_result(self, result: Any, userdata: Any, state: int) -> int:
        try:
            if state in (RKLLM_RUN_NORMAL, RKLLM_RUN_WAITING) and self._on_logits is not None:
                self._on_logits(result)
            elif state in (RKLLM_RUN_NORMAL, RKLLM_RUN_WAITING):
                if self._count < self._n_gen and self._on_token is not None:
                    self._count += 1
                    self._on_token(int(result.contents.token_id))
            elif state == RKLLM_RUN_FINISH:
                perf = result.contents.perf
                self._perf.append({k: round(float(getattr(perf, k)), 3) if isinstance(getattr(perf, k), float)
                                   else int(getattr(perf, k)) for k in PERF_FIELDS})
            elif state == RKLLM_RUN_ERROR:
                self._error = "rkllm runtime reported RKLLM_RUN_ERROR after %d of %d tokens" % (self._count, self._n_gen)
        except BaseException as e:  # noqa: BLE001 - never let an exception cross the C boundary
            self._exc = e
            return 1  # pause: stop generating
        return 0

    def _log_hint(self) -> str:
        errs = [x for x in _tail(self.log_path, 50) if x.startswith("E ")]
        return " (runtime: %s; log %s)" % (errs[-1], self.log_path) if errs else " (log %s)" % self.log_path


def _is_shim(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return b"(rkdeploy shim)" in f.read()
    except OSError:
        return False


def abi_for_version_safe(version: str) -> Optional[str]:
    try:
        return abi_for_version(version)
    except BackendError:
        return None


BACKEND = RkllmBackend
