"""Fake ``rkllm.api.RKLLM``: enforces the documented constraints (../shared/ROCKCHIP.md §2), records calls.

Environment:
- ``FAKE_RKLLM_RECORD``: JSONL file; one line per call ``{"call", "kwargs", "ret"|"raised"}``.
- ``FAKE_RKLLM_FAIL``: ``STEP:MODE`` with STEP one of load_huggingface, build, export_rkllm,
  get_logits and MODE ``-1`` (return -1) or ``raise`` (raise RuntimeError). ``export_rkllm:raise``
  first writes half a file, as a crash mid-export would.
- ``get_logits`` takes exactly the documented input (see its docstring) and returns None on failure.
- ``FAKE_RKLLM_VERSION``: the toolkit version it claims (gdq only <= 1.2.x; _rN algorithms >= 1.2.3).

Constraint violations print an ``E rkllm:`` line and return -1, like the vendor tool's checks.
The exported file is small: ``RKLLM-FAKE\\n`` + one JSON header line (toolkit version, dtype,
target platform, cores, max_context) + padding.
"""

import json
import os
import re
import struct

from rkllm import __version__

# Per-chip quantized_dtype (vendor table; independent of configs/targets.yaml on purpose).
DTYPES = {
    "rk3588": ("w8a8", "w8a8_g128", "w8a8_g256", "w8a8_g512"),
    "rk3576": ("w4a16", "w4a16_g32", "w4a16_g64", "w4a16_g128", "w8a8"),
    "rv1126b": ("w4a16", "w4a16_g32", "w4a16_g64", "w4a16_g128", "w8a8"),
    "rk3562": ("w8a8", "w4a16_g32", "w4a16_g64", "w4a16_g128", "w4a8_g32"),
}
NPU_CORES = {"rk3588": 3, "rk3576": 2, "rk3562": 1, "rv1126b": 1}
MAGIC = b"RKLLM-FAKE\n"


def _vt(v):
    return tuple(int(x) for x in re.findall(r"\d+", v)[:3])


def _record(call, kwargs, **out):
    path = os.environ.get("FAKE_RKLLM_RECORD")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"call": call, "kwargs": kwargs, **out}, default=str) + "\n")


def _injected(step):
    spec = os.environ.get("FAKE_RKLLM_FAIL", "")
    name, _, mode = spec.partition(":")
    return mode if name == step else None


def _err(msg):
    print("E rkllm: " + msg, flush=True)
    return -1


def _safetensors_shapes(folder):
    shapes = {}
    for fn in sorted(os.listdir(folder)):
        if not fn.endswith(".safetensors"):
            continue
        with open(os.path.join(folder, fn), "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        for name, meta in header.items():
            if name != "__metadata__" and name.endswith(".weight") and len(meta.get("shape", [])) == 2 \
                    and "embed" not in name and "norm" not in name:
                shapes[name[:-7]] = tuple(meta["shape"])
    return shapes


class RKLLM:
    def __init__(self):
        self._model = None
        self._built = None
        self._device = None
        _record("__init__", {})

    def _call(self, step, kwargs, fn):
        mode = _injected(step)
        if mode == "raise":
            if step == "export_rkllm":
                with open(kwargs["export_path"], "wb") as f:
                    f.write(MAGIC + b"partial")
            _record(step, kwargs, raised="RuntimeError")
            raise RuntimeError(f"fake rkllm: injected failure in {step}")
        if mode == "-1":
            print(f"E rkllm: injected failure in {step}", flush=True)
            _record(step, kwargs, ret=-1)
            return -1
        ret = fn()
        _record(step, kwargs, ret=_describe(ret) if hasattr(ret, "shape") else ret)
        return ret

    # --- load ---------------------------------------------------------------------------------
    def load_huggingface(self, model, model_lora=None, device="cpu", dtype="float32", custom_config=None,
                         load_weight=True, **unknown):
        kwargs = dict(model=model, model_lora=model_lora, device=device, dtype=dtype, custom_config=custom_config,
                      load_weight=load_weight, **unknown)

        def do():
            if unknown:
                raise TypeError("load_huggingface() got unexpected keyword argument(s) {}".format(", ".join(unknown)))
            if device not in ("cpu", "cuda"):
                return _err(f"device must be 'cpu' or 'cuda', got {device!r}")
            if dtype not in ("float32", "float16", "bfloat16"):
                return _err(f"dtype must be float32, float16 or bfloat16, got {dtype!r}")
            if not os.path.isfile(os.path.join(model, "config.json")):
                return _err(f"{model}: no config.json (not a Hugging Face model folder)")
            with open(os.path.join(model, "config.json"), encoding="utf-8") as f:
                config = json.load(f)
            shapes = _safetensors_shapes(model)
            if not shapes:
                return _err(f"{model}: no safetensors weights")
            print(f"I rkllm: loading {model} ({config.get('model_type')}, {len(shapes)} linear layers) on {device}",
                  flush=True)
            self._model = {"path": model, "config": config, "shapes": shapes}
            self._device = device
            return 0

        return self._call("load_huggingface", kwargs, do)

    def load_gguf(self, model):
        return self._call("load_gguf", {"model": model}, lambda: _err("load_gguf is not supported by the fake"))

    # --- build --------------------------------------------------------------------------------
    def build(self, do_quantization=True, optimization_level=1, quantized_dtype="w8a8", quantized_algorithm="normal",
              target_platform="rk3588", num_npu_core=3, extra_qparams=None, dataset=None, hybrid_rate=0.0,
              max_context=4096, **unknown):
        kwargs = dict(do_quantization=do_quantization, optimization_level=optimization_level,
                      quantized_dtype=quantized_dtype, quantized_algorithm=quantized_algorithm,
                      target_platform=target_platform, num_npu_core=num_npu_core, extra_qparams=extra_qparams,
                      dataset=dataset, hybrid_rate=hybrid_rate, max_context=max_context, **unknown)
        return self._call("build", kwargs, lambda: self._build(kwargs, unknown))

    def _build(self, kw, unknown):
        if unknown:
            raise TypeError("build() got unexpected keyword argument(s) {}".format(", ".join(unknown)))
        if self._model is None:
            return _err("build() before a successful load_huggingface()")
        plat = str(kw["target_platform"]).lower()
        if plat not in DTYPES:
            return _err("target_platform {!r} not supported (supported: {})".format(kw["target_platform"], ", ".join(sorted(DTYPES))))
        dtype = str(kw["quantized_dtype"]).lower()
        if kw["do_quantization"] and dtype not in DTYPES[plat]:
            return _err("quantized_dtype {!r} is not supported on {} (supported: {})".format(dtype, plat, ", ".join(DTYPES[plat])))
        algo = kw["quantized_algorithm"]
        v = _vt(__version__)
        m = re.match(r"^(normal|grq)_r(\d+)$", algo)
        if m:
            if v < (1, 2, 3):
                return _err(f"quantized_algorithm {algo!r} needs rkllm-toolkit >= 1.2.3")
            if not 1 <= int(m.group(2)) <= 64:
                return _err(f"quantized_algorithm {algo!r}: N must be 1..64")
            base_algo = m.group(1)
        elif algo in ("normal", "grq", "gdq"):
            base_algo = algo
            if algo == "gdq" and v >= (1, 3, 0):
                return _err("quantized_algorithm 'gdq' was removed in 1.3.0 (use grq)")
        else:
            return _err(f"quantized_algorithm {algo!r} not supported")
        if base_algo in ("grq", "gdq"):
            if not dtype.startswith("w4a16"):
                return _err(f"quantized_algorithm {base_algo!r} only works with w4a16 dtypes, not {dtype!r}")
            if self._device != "cuda":
                return _err(f"quantized_algorithm {base_algo!r} needs a GPU: load_huggingface(device='cuda')")
        if kw["optimization_level"] not in (0, 1):
            return _err("optimization_level must be 0 or 1, got {!r}".format(kw["optimization_level"]))
        cores = kw["num_npu_core"]
        if not isinstance(cores, int) or not 1 <= cores <= NPU_CORES[plat]:
            return _err(f"num_npu_core {cores!r} out of range for {plat} (1..{NPU_CORES[plat]})")
        mc = kw["max_context"]
        if not isinstance(mc, int) or mc <= 0 or mc % 32 or mc > 16384:
            return _err(f"max_context {mc!r} must be a multiple of 32 and <= 16384")
        hr = kw["hybrid_rate"]
        if not isinstance(hr, (int, float)) or not 0.0 <= hr < 1.0:
            return _err(f"hybrid_rate {hr!r} must be in [0, 1)")
        g = re.search(r"_g(\d+)$", dtype)
        if g:
            gs = int(g.group(1))
            bad = sorted(n for n, (out_f, _in_f) in self._model["shapes"].items() if out_f % gs)
            if bad:
                return _err(f"group size {gs} does not divide the output dimension of {bad[0]} ({len(bad)} layers)")
        if kw["do_quantization"]:
            problem = _check_dataset(kw["dataset"])
            if problem:
                return _err(problem)
        print("I rkllm: quantizing {} to {} with {} for {}".format(self._model["path"], dtype, algo, plat), flush=True)
        self._built = {"dtype": dtype, "algorithm": algo, "target_platform": plat, "num_npu_core": cores,
                       "max_context": mc, "optimization_level": kw["optimization_level"], "hybrid_rate": hr}
        return 0

    # --- export / logits ------------------------------------------------------------------------
    def export_rkllm(self, export_path="./model.rkllm"):
        def do():
            if self._built is None:
                return _err("export_rkllm() before a successful build()")
            header = dict(self._built, toolkit_version=__version__, model_type=self._model["config"].get("model_type"),
                          vocab_size=self._model["config"].get("vocab_size"))
            with open(export_path, "wb") as f:
                f.write(MAGIC + json.dumps(header, sort_keys=True).encode() + b"\n" + b"\0" * 4096)
            print(f"I rkllm: exported {export_path}", flush=True)
            return 0

        return self._call("export_rkllm", {"export_path": export_path}, do)

    def get_logits(self, inputs):
        """Host-side logits of the built model, with the vendor's documented contract.

        rkllm-toolkit documents ``inputs`` as "the same format as Hugging Face model inference",
        e.g. ``{"input_ids": ..., "top_k": 1, ...}``, and the logits as the return value, None on
        failure (Rockchip_RKLLM_SDK 1.2.x/1.3.0 section 3.1.8, table 3-6; its wikitext example and
        rkllm-toolkit/examples/test.py pass ``{"input_ids": LongTensor[1, n]}`` and slice the result
        as a torch tensor [1, n, vocab]). So the double accepts exactly a mapping whose
        ``input_ids`` is a 2-D torch integer tensor (int64, or int32 as Hugging Face embeddings also
        take) of ids inside the vocabulary; other keys (``attention_mask``, ``top_k``, ...) are
        ignored. Anything else — a list of ids, a 1-D tensor, floats, numpy — prints an ``E rkllm:``
        line and returns None, the documented failure value (the closed-source toolkit's own message
        text is not public; ours names what was given and what is allowed).

        Returns a float32 torch tensor [batch, n, vocab]: with transformers importable (the test venv),
        the float model's logits plus a deterministic perturbation standing in for quantization error
        (``FAKE_RKLLM_LOGIT_NOISE``, default 0.05 of the logits' std); else, or with
        ``FAKE_RKLLM_FLOAT_LOGITS=0``, synthetic logits.
        """

        def do():
            if self._built is None:
                return _none("get_logits() before a successful build()")
            ids, problem = _logits_input_ids(inputs, int(self._model["config"].get("vocab_size") or 32))
            if problem:
                return _none(problem)
            return self._logits(ids)

        return self._call("get_logits", _describe_inputs(inputs), do)

    def _logits(self, ids):
        import numpy as np
        import torch

        vocab = int(self._model["config"].get("vocab_size") or 32)
        real = self._float_logits(ids)
        if real is None:
            base = torch.arange(vocab, dtype=torch.float32)
            return torch.stack([torch.stack([torch.sin(base * 0.01 * (1 + int(t) % 7)) * 4.0 for t in row])
                                for row in ids]).to(torch.float32)
        rng = np.random.default_rng(len(self._built["dtype"]) * 1000 + int(ids.shape[1]))
        scale = float(os.environ.get("FAKE_RKLLM_LOGIT_NOISE", "0.05")) * float(real.std())
        noise = torch.from_numpy(rng.standard_normal(tuple(real.shape)).astype(np.float32))
        return (real + noise * scale).to(torch.float32)

    def _float_logits(self, ids):
        if os.environ.get("FAKE_RKLLM_FLOAT_LOGITS", "1") == "0":
            return None
        try:
            import torch
            from transformers import AutoModelForCausalLM
        except ImportError:
            return None
        if getattr(self, "_torch_model", None) is None:
            self._torch_model = AutoModelForCausalLM.from_pretrained(self._model["path"], dtype=torch.float32).eval()
        with torch.no_grad():
            return self._torch_model(ids.to(torch.long)).logits.float()


def _none(msg):
    print("E rkllm: " + msg, flush=True)
    return None


def _describe(x):
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        return "{}{}".format(type(x).__name__ if not hasattr(x, "detach") else str(x.dtype), list(x.shape))
    if isinstance(x, (list, tuple)):
        return f"{type(x).__name__}[{len(x)}]"
    return type(x).__name__


def _describe_inputs(inputs):
    """What the call received, for the record: ``{"input_ids": "torch.int64[1, 5]", ...}``."""
    if isinstance(inputs, dict):
        return {str(k): _describe(v) for k, v in inputs.items()}
    return {"inputs": _describe(inputs)}


def _logits_input_ids(inputs, vocab):
    """(input_ids tensor, None) when ``inputs`` is what the toolkit documents, else (None, problem)."""
    want = "a dict of Hugging Face model inputs like {'input_ids': LongTensor[1, n]}"
    try:
        import torch
    except ImportError:
        return None, "get_logits needs torch: its inputs are torch tensors"
    if not isinstance(inputs, dict):
        return None, f"get_logits: inputs must be {want}, got {_describe(inputs)}"
    if "input_ids" not in inputs:
        return None, "get_logits: inputs has no 'input_ids' (keys: {}); expected {}".format(
            ", ".join(map(str, inputs)) or "none", want)
    ids = inputs["input_ids"]
    if not torch.is_tensor(ids):
        return None, "get_logits: input_ids must be a torch tensor (tokenizer(..., return_tensors='pt')" \
                     f".input_ids), got {_describe(ids)}"
    if ids.dtype not in (torch.int64, torch.int32):
        return None, f"get_logits: input_ids must be an integer tensor (torch.int64), got {ids.dtype}"
    if ids.dim() != 2 or ids.shape[0] < 1 or ids.shape[1] < 1:
        return None, f"get_logits: input_ids must be 2-D [batch, n] with n >= 1, got shape {list(ids.shape)}"
    if int(ids.min()) < 0 or int(ids.max()) >= vocab:
        return None, f"get_logits: input_ids out of range for vocab_size {vocab} (min {int(ids.min())}, max {int(ids.max())})"
    return ids, None


def _check_dataset(path):
    if not path:
        return "dataset is required when do_quantization=True"
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        return f"dataset {path}: cannot read JSON ({e})"
    if not isinstance(data, list) or not data:
        return f"dataset {path}: expected a non-empty JSON list of {{input, target}} objects"
    for i, item in enumerate(data):
        if not isinstance(item, dict) or set(item) != {"input", "target"}:
            return f"dataset {path}: item {i} must have exactly the keys input, target"
        if not all(isinstance(item[k], str) for k in ("input", "target")) or not item["input"]:
            return f"dataset {path}: item {i}: input and target must be strings (input non-empty)"
    return None
