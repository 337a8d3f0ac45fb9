"""Canonical scheme names and the ONE place they map to each toolkit's own spelling.

Canonical names are lowercase with a dash before the group: ``w8a8``, ``w8a8-g128``,
``w4a16``, ``w4a16-g128``, ``w4a8-g32``, ``w8a16``, ``fp16`` (vendor toolkits) and
``fp32``, ``int8``, ``int4``, ``int8-dyn``, ``int8-qdq`` (ONNX on the CPU).
"""

from __future__ import annotations

import re

from host.errors import ConfigError

#: vendor (wXaY) scheme bases and group sizes; the artifact kinds that use them: host/build/registry.py
VENDOR_BASES = ("w8a8", "w4a16", "w4a8", "w8a16")
VENDOR_GROUPS = (32, 64, 128, 256, 512)
_VENDOR = re.compile(rf"^(?P<base>{'|'.join(VENDOR_BASES)})(?:-g(?P<group>{'|'.join(map(str, VENDOR_GROUPS))}))?$")

#: ONNX (CPU) schemes and what each means.
ONNX_SCHEMES = {
    "fp32": "float32 reference graph",
    "int8": "onnxruntime-genai builder, weight-only int8 (MatMulNBits, 8 bits)",
    "int4": "onnxruntime-genai builder, weight-only int4 (MatMulNBits, block 32)",
    "int4-mixed": "onnxruntime-genai builder, weight-only int4 (MatMulNBits, block 32) with the most sensitive "
                  "MatMuls int8, chosen from the measured per-layer sensitivity within the recipe's budget",
    "int8-dyn": "quantize_dynamic MatMul QInt8 weights + dynamic uint8 activations, sensitive layers kept float",
    "int8-qdq": "quantize_static QDQ, per-channel int8 weights, calibrated uint8 activations, sensitive layers kept float",
}
#: GGUF (llama.cpp on the CPU) schemes: llama-quantize's type and what it means (host/build/gguf.py).
GGUF_SCHEMES = {
    "gguf-f16": ("F16", "GGUF float16 weights (llama.cpp convert_hf_to_gguf), float activations"),
    "gguf-q8_0": ("Q8_0", "GGUF Q8_0: int8 weights in blocks of 32 with one float16 scale each; the CPU dot "
                          "products quantize activations to Q8_0 blocks"),
    "gguf-q4_0": ("Q4_0", "GGUF Q4_0: int4 weights in blocks of 32 with one float16 scale each; activations Q8_0 "
                          "in the CPU dot products"),
    "gguf-q4_k_m": ("Q4_K_M", "GGUF Q4_K_M: 4-bit k-quant super-blocks of 256 (some tensors Q6_K), importance "
                              "matrix from the calibration JSON; rows not a multiple of 256 fall back to a 32-block type"),
}
#: Schemes that need no quantization in the vendor toolkits.
FLOAT_VENDOR_SCHEMES = {"fp16"}


def is_vendor_scheme(name: str) -> bool:
    return name in FLOAT_VENDOR_SCHEMES or _VENDOR.match(name) is not None


def is_known_scheme(name: str) -> bool:
    """A scheme some registered artifact kind builds (``host.build.registry``)."""
    from host.build import registry

    return name in registry.scheme_names()


def validate_scheme(name: str) -> str:
    if not isinstance(name, str) or not is_known_scheme(name):
        raise ConfigError(
            f"unknown scheme {name!r}: use one of {', '.join(sorted(ONNX_SCHEMES))}, fp16, "
            f"{', '.join(sorted(GGUF_SCHEMES))}, or "
            "w8a8 / w4a16 / w4a8 / w8a16 with an optional group suffix -g32|-g64|-g128|-g256|-g512"
        )
    return name


def group_size(name: str) -> int | None:
    m = _VENDOR.match(name)
    return int(m.group("group")) if m and m.group("group") else None


def base_dtype(name: str) -> str:
    """``w4a16-g128`` → ``w4a16``; fp16 and ONNX schemes are returned unchanged."""
    m = _VENDOR.match(name)
    return m.group("base") if m else name


def weight_bits(name: str) -> int:
    m = _VENDOR.match(name)
    if m:
        return int(m.group("base")[1])
    if name in GGUF_SCHEMES:
        return {"F16": 16, "Q8_0": 8}.get(GGUF_SCHEMES[name][0], 4)
    return {"fp32": 32, "fp16": 16, "int8": 8, "int4": 4, "int4-mixed": 4, "int8-dyn": 8, "int8-qdq": 8}[name]


def activation_bits(name: str) -> int:
    m = _VENDOR.match(name)
    if m:
        return int(m.group("base").split("a")[1])
    if name in GGUF_SCHEMES:
        return 32 if name == "gguf-f16" else 8
    return {"fp32": 32, "fp16": 16, "int8": 32, "int4": 32, "int4-mixed": 32, "int8-dyn": 8, "int8-qdq": 8}[name]


# --- toolkit spellings (the only place) -------------------------------------------------------

def rkllm_dtype(name: str) -> str:
    """rkllm-toolkit ``quantized_dtype``: ``w4a16-g128`` → ``w4a16_g128``."""
    if not _VENDOR.match(name):
        raise ConfigError(f"scheme {name!r} has no rkllm-toolkit quantized_dtype (rkllm needs a wXaY scheme)")
    return name.replace("-", "_")


def from_rkllm_dtype(dtype: str) -> str:
    return dtype.lower().replace("_", "-")


def rknn_config(name: str) -> dict:
    """rknn-toolkit2 ``config``/``build`` arguments for a scheme."""
    if name == "fp16":
        return {"quantized_dtype": None, "do_quantization": False}
    m = _VENDOR.match(name)
    if not m:
        raise ConfigError(f"scheme {name!r} has no rknn-toolkit2 quantized_dtype (use w8a8, w4a16, w8a16 or fp16)")
    method = f"group{m.group('group')}" if m.group("group") else "channel"
    return {"quantized_dtype": m.group("base"), "do_quantization": True, "quantized_method": method}


def gguf_type(name: str) -> str:
    """llama-quantize's type name: ``gguf-q4_k_m`` -> ``Q4_K_M``."""
    if name not in GGUF_SCHEMES:
        raise ConfigError(f"scheme {name!r} is not a GGUF scheme (use one of {', '.join(sorted(GGUF_SCHEMES))})")
    return GGUF_SCHEMES[name][0]


def describe(name: str) -> str:
    """Exact human definition of a scheme (goes into simulated quality rows and manifests)."""
    if name in ONNX_SCHEMES:
        return ONNX_SCHEMES[name]
    if name in GGUF_SCHEMES:
        return GGUF_SCHEMES[name][1]
    if name == "fp16":
        return "float16 weights and activations, no quantization"
    m = _VENDOR.match(name)
    w, a = weight_bits(name), activation_bits(name)
    g = m.group("group") if m else None
    wdesc = f"int{w} symmetric weights, " + (f"group-wise (group {g} along the input dim)" if g else "per output channel")
    adesc = "float16 activations" if a == 16 else f"int{a} symmetric activations per token"
    return f"{wdesc}; {adesc}"
