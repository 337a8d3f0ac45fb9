"""Torch fake-quant of a float model: what a vendor scheme should cost, before any toolkit exists.

Round-to-nearest, symmetric, no calibration and no GPTQ-style correction: an honest simulation
of the *scheme*, not of rkllm-toolkit's algorithms (``normal``/``grq``). Rows made with it are
labelled ``method: simulated`` and carry ``definition()`` verbatim.

- weights: per output channel (``w8a8``, ``w4a16``) or group-wise along the input dim
  (``-gN``), symmetric int8/int4, scale = absmax / qmax;
- activations (``a8``): symmetric int8 per token (per row of the linear input), dynamic;
- ``a16``: activations stay float (float16 on the NPU; float32 here, the difference is noise);
- ``fp16``: weights and linear inputs rounded to float16;
- ``int8-dyn``: what our ``int8-dyn`` ONNX artifact does — per-channel symmetric int8 weights,
  dynamic per-tensor asymmetric uint8 activations (quantize_dynamic; for the sensitivity report).

Every ``nn.Linear`` is quantized (``lm_head`` included; when its weight is tied to the embedding,
only the linear use is quantized); embeddings and norms stay float.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from host.schemes import activation_bits, base_dtype, describe, group_size, weight_bits

#: Bump when the simulation changes (invalidates cached simulated rows).
FAKEQUANT_VERSION = 2


@dataclass(frozen=True)
class QuantSpec:
    w_bits: int | None            # None: weights not quantized
    group: int | None             # None: per output channel (or per tensor when per_tensor)
    a_bits: int | None            # None: activations float
    per_tensor: bool = False      # weights: one scale per tensor
    act_per_tensor: bool = False  # activations: asymmetric uint8, one scale per tensor (quantize_dynamic)
    half: bool = False            # fp16 rounding of weights and activations


def spec(scheme: str) -> QuantSpec:
    if scheme == "fp16":
        return QuantSpec(None, None, None, half=True)
    if scheme == "int8-dyn":
        return QuantSpec(8, None, 8, act_per_tensor=True)
    base = base_dtype(scheme)
    if base not in ("w8a8", "w4a16", "w4a8", "w8a16"):
        raise ValueError(f"no fake-quant for scheme {scheme!r}")
    w, a = weight_bits(scheme), activation_bits(scheme)
    return QuantSpec(w, group_size(scheme), a if a < 16 else None)


SIMULATION = "simulated in torch: round-to-nearest, every nn.Linear incl. lm_head, embeddings/norms float"


def definition(scheme: str) -> str:
    """The exact scheme definition written into simulated rows."""
    text = describe(scheme) if scheme != "int8-dyn" else (
        "int8 symmetric weights per output channel; uint8 asymmetric activations per tensor (quantize_dynamic)")
    return f"{text}; {SIMULATION}"


def quant_weight(w, bits: int, group: int | None, per_tensor: bool = False):
    import torch

    qmax = 2 ** (bits - 1) - 1
    if per_tensor:
        scale = w.abs().amax().clamp(min=1e-12) / qmax
        return torch.round(w / scale).clamp(-qmax, qmax) * scale
    out_f, in_f = w.shape
    if group:
        if in_f % group:
            raise ValueError(f"group {group} does not divide in_features {in_f}")
        g = w.reshape(out_f, in_f // group, group)
        scale = g.abs().amax(-1, keepdim=True).clamp(min=1e-12) / qmax
        return (torch.round(g / scale).clamp(-qmax, qmax) * scale).reshape(out_f, in_f)
    scale = w.abs().amax(-1, keepdim=True).clamp(min=1e-12) / qmax
    return torch.round(w / scale).clamp(-qmax, qmax) * scale


def quant_act_per_token(x, bits: int = 8):
    import torch

    qmax = 2 ** (bits - 1) - 1
    scale = x.abs().amax(-1, keepdim=True).clamp(min=1e-12) / qmax
    return torch.round(x / scale).clamp(-qmax, qmax) * scale


def quant_act_per_tensor_asym(x):
    import torch

    lo, hi = torch.clamp(x.min(), max=0.0), torch.clamp(x.max(), min=0.0)
    scale = ((hi - lo) / 255.0).clamp(min=1e-12)
    zp = torch.round(-lo / scale)
    return (torch.clamp(torch.round(x / scale) + zp, 0, 255) - zp) * scale


def linear_layers(model) -> dict[str, object]:
    import torch

    return {name: mod for name, mod in model.named_modules() if isinstance(mod, torch.nn.Linear)}


@contextlib.contextmanager
def fake_quantized(model, scheme: str, select: Callable[[str], bool] | None = None) -> Iterator[list[str]]:
    """Quantize the selected ``nn.Linear`` layers of ``model``; restored on exit. Yields their names.

    Each selected layer gets a new quantized ``weight`` Parameter for the duration (the original
    Parameter object is put back on exit), so a weight tied to the embedding (``lm_head`` of
    SmolLM2) is quantized for the linear layer only and the embedding stays float.
    """
    import torch

    s = spec(scheme)
    layers = linear_layers(model)
    chosen = [n for n in layers if select is None or select(n)]
    if s.group:
        bad = [(n, layers[n].in_features) for n in chosen if layers[n].in_features % s.group]
        if bad:
            raise ValueError(f"{scheme}: group {s.group} does not divide the input width of layer {bad[0][0]} "
                             f"({bad[0][1]}; {len(bad)} linear layers affected)")
    saved, hooks = {}, []
    act = _act_fn(s)
    try:
        with torch.no_grad():
            for name in chosen:
                lin = layers[name]
                w = lin.weight
                saved[name] = w
                if s.half:
                    q = w.detach().half().float()
                elif s.w_bits:
                    q = quant_weight(w.detach(), s.w_bits, s.group, s.per_tensor)
                else:
                    q = w.detach().clone()
                lin.weight = torch.nn.Parameter(q, requires_grad=False)
                if act is not None:
                    hooks.append(lin.register_forward_pre_hook(lambda _m, args, _f=act: (_f(args[0]), *args[1:])))
        yield chosen
    finally:
        for h in hooks:
            h.remove()
        for name, param in saved.items():
            layers[name].weight = param


def _act_fn(s: QuantSpec):
    if s.half:
        return lambda x: x.half().float()
    if s.a_bits is None:
        return None
    if s.act_per_tensor:
        return quant_act_per_tensor_asym
    return lambda x, _b=s.a_bits: quant_act_per_token(x, _b)


def layer_groups(names: list[str], n_buckets: int = 3) -> dict[str, list[str]]:
    """Linear layers grouped by type × depth bucket (``down_proj@0-9``) and by type alone (``down_proj@all``)."""
    import re

    depth = {n: int(m.group(1)) for n in names if (m := re.search(r"\.layers\.(\d+)\.", n))}
    n_layers = max(depth.values()) + 1 if depth else 0
    size = max(1, -(-n_layers // n_buckets)) if n_layers else 1
    groups: dict[str, list[str]] = {}
    for n in names:
        kind = n.rsplit(".", 1)[-1]
        if n in depth:
            if size >= n_layers:      # one bucket = every depth: only the "@all" group
                groups.setdefault(f"{kind}@all", []).append(n)
                continue
            lo = depth[n] // size * size
            hi = min(lo + size, n_layers) - 1
            groups.setdefault(f"{kind}@{lo}-{hi}", []).append(n)
            groups.setdefault(f"{kind}@all", []).append(n)
        else:
            groups.setdefault(kind, []).append(n)
    return groups
