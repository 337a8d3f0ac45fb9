"""GPTQ pre-rounding of a float checkpoint onto a vendor toolkit's weight grid (``gptq`` transform).

rkllm-toolkit and rknn-toolkit2 quantize the float checkpoint themselves; nothing reaches their rounding.
A checkpoint can still carry weights that already lie on the grid the toolkit will compute: then the
toolkit's round-to-nearest reproduces them exactly, and the rounding that produced them can be
error-compensating (GPTQ, Frantar et al. 2022) instead of nearest. This module does that for the
weight-only schemes as ``host.fakequant`` simulates them (symmetric, ``scale = absmax / qmax`` per group
of ``N`` input channels or per output channel, codes ``-qmax..qmax``):

- every group's scale ``s`` is chosen first, on the unmodified weights: ``absmax / qmax`` shrunk by the
  factor in ``SHRINK`` with the least ``diag(H)``-weighted squared error (llama.cpp's importance matrix;
  1.0, the toolkit's own scale, is a candidate, so never worse on that objective);
- GPTQ (act-order, lazy batches; ``host.gptq.gptq`` with fixed grids) rounds the weights onto
  ``s × {-qmax..qmax}``;
- where GPTQ left no code on ``±qmax`` in a group, its code of largest magnitude moves out to it (the
  fewest steps), so the toolkit recomputes ``absmax / qmax`` = ``s`` from the written group and rounds every
  weight back onto the same code (checked exactly for every linear); an all-zero group stays zero;
- Hessians ``X^T X`` from the calibration tokens on the FLOAT model's inputs (one-shot, as GPTQ's
  non-sequential mode), gathered one decoder layer at a time: the layers are replayed with the arguments
  the model gave them (masks, rotary tables: Gemma's sliding layers get their own), so memory holds one
  layer's Hessians, not the model's. Measured on SmolLM2 (rotated, simulated w4a16-g64 PPL ratio, 4,599
  held-out tokens): float inputs 1.1552; inputs behind the rounded linears (sequential) 1.1729; GPTAQ's
  asymmetric target (the float layer's output from rounded inputs) 1.1915 — so float inputs it is;
  more calibration tokens mattered far more (README, issue 16). ``lm_head`` last, on the final norm's
  output. A tied ``lm_head`` is untied (it reads ``W x``; the embedding stays float, as the toolkit keeps it).

Not an equivalent transform: the checkpoint's float function changes (it becomes the quantized model's).
It serves exactly one scheme (its grid): any other grid would round the rounded weights again. Valid for a
real toolkit only if that toolkit's ``normal`` algorithm rounds as the simulation (its ``grq``/``gdq``
search their own ranges and would move the codes); unconfirmed without rkllm-toolkit.
"""

from __future__ import annotations

import time

from host.errors import ConfigError

#: Bump when the pre-rounding changes (part of the transformed checkpoint's key: host.transforms.prequant_version).
PREQUANT_VERSION = 1
#: Shrink factors of a group's ``absmax / qmax`` tried per group (1.0: the toolkit's own scale).
SHRINK = tuple(round(0.6 + 0.02 * i, 2) for i in range(21))


class _Stop(Exception):
    """Raised from the lm_head hook: the calibration forward needs its input, not the logits."""


def weight_grid(scheme: str) -> tuple[int, int | None]:
    """``(bits, group)`` of the rkllm weight-only 4-bit schemes ``host.fakequant`` simulates (w4a16, w4a16-gN; group
    None: per output channel). The only schemes a transform can reach that round weights alone: w8a8 also rounds
    the activations the Hessians come from, and w8a16 is an rknn dtype (rknn never reads a transform)."""
    from host.fakequant import spec

    try:
        sp = spec(scheme)
    except ValueError:
        raise ConfigError(f"gptq: scheme {scheme!r} has no simulated grid (use w4a16 or w4a16-gN)") from None
    if sp.w_bits != 4 or sp.a_bits is not None or sp.half or sp.per_tensor or sp.act_per_tensor:
        raise ConfigError(f"gptq: scheme {scheme!r} is not a 4-bit weight-only rkllm scheme; pre-rounding serves "
                          "w4a16 or w4a16-gN (w8a8 also rounds the activations the Hessians come from)")
    return sp.w_bits, sp.group


def group_scales(w, hd, bits: int, group: int):
    """Per group of ``group`` input channels: ``absmax / qmax`` shrunk by the factor of ``SHRINK`` with the least
    ``sum hd_j (w_j - s round(w_j / s))^2`` (codes clamped to ``±qmax``). ``[N, K / group]``."""
    import torch

    n, k = w.shape
    top = (1 << (bits - 1)) - 1
    blk = w.float().reshape(n, k // group, group)
    hw = hd.float().clamp(min=0).reshape(1, k // group, group)
    base = blk.abs().amax(-1).clamp(min=1e-12) / top
    best, best_e = base.clone(), torch.full_like(base, float("inf"))
    for r in (1.0, *SHRINK):
        s = base * r
        e = (hw * (blk - (blk / s[..., None]).round().clamp(-top, top) * s[..., None]) ** 2).sum(-1)
        better = e < best_e
        best, best_e = torch.where(better, s, best), torch.where(better, e, best_e)
    return best


def round_onto_grid(w, h, bits: int, group: int | None, *, damp: float, who: str):
    """``w`` GPTQ-rounded onto the toolkit grid of ``(bits, group)`` (float, what the toolkit will hold) and how many
    groups needed their extreme moved onto ``±qmax``."""
    import torch

    from host.fakequant import quant_weight
    from host.gptq import Grid, gptq

    n, k = w.shape
    g = group or k
    if k % g:
        raise ConfigError(f"gptq: group {g} does not divide the input width {k} of {who}")
    top = (1 << (bits - 1)) - 1
    s = group_scales(w, torch.diag(h), bits, g)
    q, _s, _z = gptq(w, h, Grid(bits, g, True), damp=damp, act_order=True,
                     fixed=(s, torch.full_like(s, float(top)), 2 * top))
    blk = w.float().reshape(n, k // g, g)
    codes = (q - top).float().reshape(n, k // g, g)
    # the group's extreme on ±top, so the toolkit recomputes this scale: where GPTQ left none there, the code of
    # largest magnitude moves out (the fewest steps; its sign, or its weight's when the code is 0)
    zero = blk.abs().amax(-1) == 0              # an all-zero group stays zero (the toolkit's absmax 0 keeps it so)
    codes[zero] = 0
    need = (codes.abs().amax(-1) < top) & ~zero
    idx = codes.abs().argmax(-1, keepdim=True)
    c = codes.gather(-1, idx)
    sign = torch.where(c != 0, torch.sign(c), torch.where(blk.gather(-1, idx) < 0, -1.0, 1.0))
    codes.scatter_(-1, idx, torch.where(need[..., None], sign * top, c))
    wq = (codes * s[..., None]).reshape(n, k)
    # the toolkit's round-to-nearest (host.fakequant) must give back every code exactly, whatever the group's scale
    back = quant_weight(wq, bits, group).reshape(n, k // g, g) / s[..., None]
    if not torch.equal(back.round(), codes) or float((back - codes).abs().max()) > 1e-3:
        raise RuntimeError(f"gptq: the simulated toolkit does not reproduce the pre-rounded weights of {who}")
    return wq, int(need.sum())


def _layer_inputs(model, layers, token_rows, head=None):
    """From one float forward per calibration row: the first layer's hidden states, every layer's other call
    arguments (masks, position embeddings: per layer, Gemma's sliding layers get their own) and, with ``head``
    (the lm_head module), ``X^T X / rows`` (float64) of what it reads — the model's own final norm, whatever
    its name."""
    import contextlib

    import torch

    from host.gptq import input_hessians

    calls: list[list] = [[] for _ in layers]
    first: list = []

    def pre(i):
        def f(_m, args, kwargs):
            if i == 0:
                first.append(args[0] if args else kwargs["hidden_states"])
            calls[i].append((args[1:], {k: v for k, v in kwargs.items() if k != "hidden_states"}))
        return f

    def stop(_m, _args):
        raise _Stop             # lm_head's input is taken (input_hessians' hook ran first); the logits are not needed

    hooks = [lay.register_forward_pre_hook(pre(i), with_kwargs=True) for i, lay in enumerate(layers)]
    try:
        with input_hessians({"lm_head": head} if head is not None else {}) as hess, torch.no_grad():
            if head is not None:
                hooks.append(head.register_forward_pre_hook(stop))
            for ids in token_rows:
                # no KV cache: the layers are replayed; the whole model, so lm_head's input is its own
                with contextlib.suppress(_Stop):
                    (model if head is not None else model.model)(input_ids=torch.tensor([ids]), use_cache=False)
    finally:
        for hk in hooks:
            hk.remove()
    if head is not None and "lm_head" not in hess:
        raise ConfigError(f"gptq: {type(model).__name__}'s forward never called its output layer")
    return first, calls, hess.get("lm_head")


def _call(layer, h, call):
    args, kwargs = call
    out = layer(h, *args, **kwargs)
    return out[0] if isinstance(out, tuple) else out


def _input_groups(layer, run) -> list[list[tuple[str, object]]]:
    """The layer's linears grouped by shared input (the same tensor object), in the order ``run()`` (one call of
    the layer) reaches them."""
    import torch

    order: list = []

    def hook(name, mod):
        def f(_m, args):
            # the tensor itself, held: a freed input's address can come back for the next linear's input
            if order and order[-1][0] is args[0]:
                order[-1][1].append((name, mod))
            else:
                order.append((args[0], [(name, mod)]))
        return f

    lins = [(n, m) for n, m in layer.named_modules() if isinstance(m, torch.nn.Linear)]
    hooks = [m.register_forward_pre_hook(hook(n, m)) for n, m in lins]
    try:
        with torch.no_grad():
            run()
    finally:
        for hk in hooks:
            hk.remove()
    seen, out = set(), []
    for _p, grp in order:
        grp = [(n, m) for n, m in grp if n not in seen]
        seen.update(n for n, _m in grp)
        if grp:
            out.append(grp)
    return out


def prequantize(model, token_rows, scheme: str, *, damp: float = 0.01, log=None) -> dict:
    """Round every linear of ``model`` (in place) onto ``scheme``'s simulated toolkit grid by GPTQ on the calibration
    ``token_rows`` (each decoder layer's Hessians from its float inputs, replayed one layer at a time; lm_head's
    from the float model's own input to it). Returns a summary for the transform record."""
    import torch

    from host.gptq import input_hessians
    from host.rotation import _decoder, untie_head

    bits, group = weight_grid(scheme)
    t0 = time.monotonic()
    layers = list(_decoder(model, who="gptq").layers)
    every = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    untied = untie_head(model)
    head = model.get_output_embeddings()
    head = head if isinstance(head, torch.nn.Linear) else None
    with torch.no_grad():
        hs, calls, head_h = _layer_inputs(model, layers, token_rows, head)
    forced = groups = 0
    done: set = set()
    names = {id(m): n for n, m in model.named_modules()}

    def round_group(grp, hess):
        nonlocal forced, groups
        for _n, mod in grp:
            w = mod.weight.detach().float()
            wq, f = round_onto_grid(w, hess, bits, group, damp=damp, who=names[id(mod)])
            mod.weight.data = wq.to(mod.weight.dtype)
            forced, groups = forced + f, groups + w.numel() // (group or w.shape[1])
            done.add(names[id(mod)])

    for i, layer in enumerate(layers):
        grps = _input_groups(layer, lambda layer=layer, h=hs[0], c=calls[i][0]: _call(layer, h, c))
        # one replay: every group's Hessian from the layer's float inputs, and the next layer's float inputs
        with input_hessians({g[0][0]: g[0][1] for g in grps}) as hess, torch.no_grad():
            hs = [_call(layer, h, c) for h, c in zip(hs, calls[i], strict=True)]
        for grp in grps:
            round_group(grp, hess[grp[0][0]])
        if log:
            log(f"gptq({scheme}) layer {i + 1}/{len(layers)} rounded")
    if head is not None:
        round_group([("lm_head", head)], head_h)
        if log:
            log(f"gptq({scheme}) lm_head rounded")
    missed = sorted(every - done)
    if missed:      # the toolkit would round these itself: the checkpoint would be half pre-rounded
        raise ConfigError(f"gptq: {len(missed)} linear layers of {type(model).__name__} are outside its decoder layers "
                          f"and lm_head (first: {missed[0]}); pre-rounding covers Llama/Qwen/Gemma-style decoders")
    return {"prequant": {"scheme": scheme, "bits": bits, "group": group, "linears": len(done), "groups": groups,
                         "extremes_moved": forced, "untied_lm_head": untied, "damp": damp,
                         "calibration_tokens": sum(len(r) for r in token_rows), "version": PREQUANT_VERSION,
                         "seconds": round(time.monotonic() - t0, 1)}}
