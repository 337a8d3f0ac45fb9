"""Equivalent pre-quantization transforms folded into a float checkpoint (a normal HF folder).

Per-channel scaling migrates quantization difficulty between a linear layer's input and its
weight without changing the float function: ``y = W x = (W diag(s)) (x / s)``. The ``1/s`` is
folded into whatever produces ``x``:

- ``q/k/v_proj``: the preceding RMSNorm weight (``input_layernorm``);
- ``gate/up_proj``: ``post_attention_layernorm`` (Llama, Qwen) or ``pre_feedforward_layernorm`` (Gemma 2/3);
- ``down_proj``: the output rows of ``up_proj`` (``act(gate) * up`` is linear in ``up``);
- ``o_proj``: the output rows of ``v_proj`` (with grouped-query attention, one scale per KV channel,
  repeated over the query heads that share it).

Gemma's RMSNorm multiplies by ``1 + weight``, so its weight becomes ``(1 + w) / s - 1``.
``lm_head`` is left alone (its weight is usually tied to the embedding).

Two methods, one search (each named by the scheme whose fake-quant decides the search loss):

- ``awq`` (AWQ, Lin et al. 2023; weight-only schemes such as ``w4a16-g64``): ``s = mean|x|^a / mean|w|^(1-a)``;
- ``smoothquant`` (Xiao et al. 2022; ``w8a8``): ``s = max|x|^a / max|w|^(1-a)``;

where ``a`` is searched per layer group (the linears sharing one input) on ``[0, 1]`` (and ``s = 1``)
by the output error ``|Q(W diag(s)) Q_a(x/s) - W x|^2`` on calibration activations (the
calibration JSON's prompt + answer tokens run through the float model). Nothing looks at any
weight grid the checkpoint may already be rounded to: the same code runs on any Llama/Qwen/Gemma-style model.

A third method searches nothing: ``rotate`` (QuaRot / SpinQuant weight-only part, ``host.rotation``)
folds the RMSNorms into their readers and rotates the residual stream and each attention head's
value space by orthogonal matrices (randomized Hadamard, or seeded random orthogonal). It
composes with one search, always applied first: ``{rotate: {}, awq: {scheme: w4a16-g64}}``
(label ``rotate+awq(w4a16-g64)``) rotates, then searches AWQ scales on the rotated model.

A fourth step is NOT equivalent: ``gptq`` (``host.prequant``) rounds every linear onto one scheme's
simulated toolkit grid by GPTQ (calibration JSON + held-in text), so the toolkit's round-to-nearest reproduces an
error-compensated rounding. It comes last in a mapping (``{rotate: {}, gptq: {scheme: w4a16-g64}}``,
label ``rotate+gptq(w4a16-g64)``) and serves exactly its scheme (``host.build.source``).
"""

from __future__ import annotations

import json
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from host.errors import ConfigError

#: Bump when the transform changes (invalidates cached transformed checkpoints).
TRANSFORM_VERSION = 1
METHODS = ("awq", "smoothquant")
ROTATE = "rotate"             # the method that searches nothing (host.rotation); composes with one of METHODS
PREQUANT = "gptq"             # rounding onto one scheme's grid (host.prequant); last step of a chain, not equivalent
PREQUANT_DAMP = 0.01
#: Tokens of the recipe's held-in text a ``gptq`` step adds to the calibration JSON's (windows of TEXT_WINDOW).
PREQUANT_TEXT_TOKENS = 16384
TEXT_WINDOW = 512
GRID = tuple(i / 10 for i in range(11))
SAMPLE_ROWS = 1024           # activation rows kept per layer input for the search
CALIB_MAX_TOKENS = 512       # per calibration item (prompt + answer)


@dataclass(frozen=True)
class Transform:
    """One transform: ``method`` (``awq`` | ``smoothquant``) searched under fake-quant ``scheme``."""

    method: str
    scheme: str
    grid: tuple[float, ...] = GRID
    samples: int = SAMPLE_ROWS     # activation rows per layer input in the search (recipe key ``samples``)
    exact = False                  # serves its kind of scheme (not one grid: ``Prequant``)

    def to_dict(self) -> dict:
        body = {"scheme": self.scheme, "grid": list(self.grid)}
        if self.samples != SAMPLE_ROWS:    # the default stays out: keys of checkpoints cached before the knob hold
            body["samples"] = self.samples
        return {self.method: body}

    def label(self) -> str:
        return f"{self.method}({self.scheme})"


@dataclass(frozen=True)
class Rotation:
    """``rotate``: orthogonal rotations folded in (``host.rotation``); searches nothing, so no scheme."""

    kind: str = "hadamard"
    seed: int = 0
    method = ROTATE
    scheme = None               # serves every quantized scheme (host.build.source)
    exact = False

    def to_dict(self) -> dict:
        return {ROTATE: {"kind": self.kind, "seed": self.seed}}

    def label(self) -> str:
        return ROTATE if (self.kind, self.seed) == ("hadamard", 0) else f"{ROTATE}({self.kind}, seed {self.seed})"

    def steps(self) -> tuple:
        return (self,)


@dataclass(frozen=True)
class Prequant:
    """``gptq``: every linear GPTQ-rounded onto ``scheme``'s simulated toolkit grid (``host.prequant``). Not
    equivalent; serves exactly ``scheme`` (any other grid would round the rounded weights again)."""

    scheme: str
    damp: float = PREQUANT_DAMP
    text_tokens: int = PREQUANT_TEXT_TOKENS     # of the recipe's held-in text, beside the calibration JSON
    method = PREQUANT
    exact = True

    def to_dict(self) -> dict:      # every setting written: a changed default is a new key
        return {PREQUANT: {"scheme": self.scheme, "damp": self.damp, "text_tokens": self.text_tokens}}

    def label(self) -> str:
        return f"{PREQUANT}({self.scheme})"

    def steps(self) -> tuple:
        return (self,)


@dataclass(frozen=True)
class Chain:
    """Steps applied in order: ``rotate``, then one search, then ``gptq`` (``rotate+awq(w4a16-g64)``,
    ``rotate+gptq(w4a16-g64)``). Serves what its last scheme-bearing step serves."""

    parts: tuple

    @property
    def method(self) -> str:
        return "-".join(p.method for p in self.parts)

    @property
    def scheme(self) -> str | None:
        schemes = [p.scheme for p in self.parts if p.scheme]
        return schemes[-1] if schemes else None

    @property
    def exact(self) -> bool:
        return any(p.exact for p in self.parts)

    def to_dict(self) -> dict:
        out: dict = {}
        for p in self.parts:
            out.update(p.to_dict())
        return out

    def label(self) -> str:
        return "+".join(p.label() for p in self.parts)

    def steps(self) -> tuple:
        return self.parts


EXPECTED = ("{awq: {scheme: SCHEME}}, {smoothquant: {scheme: SCHEME}}, {rotate: {kind: hadamard|random, seed: N}}, "
            "{gptq: {scheme: w4a16-g64}} or several in one mapping, applied rotate, search, gptq "
            "({rotate: {}, awq: {scheme: w4a16-g64}})")


def parse_transform(value, where: str = "transform"):
    """``{awq: {scheme: w4a16-g64}}`` / ``{smoothquant: {scheme: w8a8}}`` / ``{awq: w4a16-g64}`` /
    ``rotate`` / ``{rotate: {kind: random, seed: 1}}`` / ``{gptq: {scheme: w4a16-g64, damp: 0.01}}`` /
    several in one mapping (applied rotate, then the search, then gptq, whatever the written order) / None.
    Returns ``Transform``, ``Rotation``, ``Prequant``, ``Chain`` or None."""
    if value is None:
        return None
    if value == ROTATE:
        value = {ROTATE: {}}
    if not isinstance(value, dict) or not value:
        raise ConfigError(f"{where}: expected one of {EXPECTED}; got {value!r}")
    unknown = [m for m in value if m not in (*METHODS, ROTATE, PREQUANT)]
    if unknown:
        raise ConfigError(f"{where}: unknown method {unknown[0]!r} (allowed: {', '.join((*METHODS, ROTATE, PREQUANT))})")
    search = [m for m in value if m in METHODS]
    if len(search) > 1:
        raise ConfigError(f"{where}: one searched method per transform, got {' and '.join(search)} "
                          "(list them as separate transforms, one per kind of scheme)")
    parts: list = []
    if ROTATE in value:
        parts.append(_parse_rotation(value[ROTATE], f"{where}.{ROTATE}"))
    if search:
        parts.append(_parse_search(search[0], value[search[0]], where))
    if PREQUANT in value:
        pq = _parse_prequant(value[PREQUANT], f"{where}.{PREQUANT}")
        if search:
            from host.config import transform_family

            if transform_family(parts[-1].scheme) != transform_family(pq.scheme):
                raise ConfigError(f"{where}: {parts[-1].label()} is searched for other schemes than {pq.label()} "
                                  f"rounds onto ({transform_family(pq.scheme)}); search under that kind or drop one")
        parts.append(pq)
    return parts[0] if len(parts) == 1 else Chain(tuple(parts))


def _parse_prequant(body, where: str) -> Prequant:
    from host.prequant import weight_grid

    if isinstance(body, str):
        body = {"scheme": body}
    if not isinstance(body, dict) or set(body) - {"scheme", "damp", "text_tokens"} or "scheme" not in body:
        raise ConfigError(f"{where}: expected {{scheme: SCHEME, damp: D, text_tokens: N}} with a weight-only scheme "
                          f"(e.g. w4a16-g64); got {body!r}")
    scheme = body["scheme"]
    if not isinstance(scheme, str):
        raise ConfigError(f"{where}.scheme: a scheme name such as w4a16-g64; got {scheme!r}")
    try:
        weight_grid(scheme)
    except ConfigError as e:
        raise ConfigError(f"{where}.scheme: {str(e).removeprefix('gptq: ')}") from None
    damp = body.get("damp", PREQUANT_DAMP)
    if isinstance(damp, bool) or not isinstance(damp, (int, float)) or not 0 < damp <= 1:
        raise ConfigError(f"{where}.damp: GPTQ's damping, a share of the mean Hessian diagonal in (0, 1] "
                          f"(default {PREQUANT_DAMP}); got {damp!r}")
    return Prequant(scheme, float(damp), text_tokens_of(body, f"{where}.text_tokens"))


def text_tokens_of(body: dict, where: str) -> int:
    """``body``'s ``text_tokens`` (a ``gptq`` transform's or ``rounding.gptq``'s; default ``PREQUANT_TEXT_TOKENS``),
    checked: one line naming ``where`` otherwise."""
    tokens = body.get("text_tokens", PREQUANT_TEXT_TOKENS)
    if isinstance(tokens, bool) or not isinstance(tokens, int) or not 0 <= tokens <= 1 << 20:
        raise ConfigError(f"{where}: tokens of the recipe's held-in text (text.heldin) added to the calibration "
                          f"JSON's for the Hessians, a whole number in 0..{1 << 20} (default {PREQUANT_TEXT_TOKENS}); "
                          f"got {tokens!r}")
    return tokens


def heldin_sha256(heldin: Path | None, what: str, hint: str = "") -> str:
    """The held-in text's sha256 for a cache key; one line (``what`` the recipe's held-in text ...) when it is not
    a file."""
    from host.fsutil import sha256_file

    if heldin is None or not Path(heldin).is_file():
        raise ConfigError(f"{what} the recipe's held-in text, and {heldin or 'none'} is not a file (recipe field "
                          f"text.heldin{hint})")
    return sha256_file(heldin)


def _parse_rotation(body, where: str) -> Rotation:
    from host.rotation import KINDS

    if body is None:
        body = {}
    if isinstance(body, str):
        body = {"kind": body}
    if not isinstance(body, dict) or set(body) - {"kind", "seed"}:
        raise ConfigError(f"{where}: allowed keys are kind, seed; got {body!r}")
    kind, seed = body.get("kind", "hadamard"), body.get("seed", 0)
    if kind not in KINDS:
        raise ConfigError(f"{where}.kind: {kind!r} (allowed: {', '.join(KINDS)})")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2 ** 32:
        raise ConfigError(f"{where}.seed: a whole number in 0..2^32-1; got {seed!r}")
    return Rotation(kind, seed)


def _parse_search(method: str, body, where: str) -> Transform:
    from host.fakequant import spec

    if isinstance(body, str):
        body = {"scheme": body}
    if not isinstance(body, dict) or set(body) - {"scheme", "grid", "samples"}:
        raise ConfigError(f"{where}.{method}: allowed keys are scheme, grid, samples; got {body!r}")
    scheme = body.get("scheme") or ("w8a8" if method == "smoothquant" else "w4a16-g64")
    try:
        if not isinstance(scheme, str):
            raise ValueError(scheme)
        s = spec(scheme)
    except ValueError:
        raise ConfigError(f"{where}.{method}.scheme: {scheme!r} has no fake-quant (use w4a16, w4a16-gN, w8a8, "
                          "w8a8-gN, w8a16)") from None
    if s.w_bits is None:
        raise ConfigError(f"{where}.{method}.scheme: {scheme!r} quantizes no weights")
    grid = body.get("grid", list(GRID))
    if (not isinstance(grid, list) or not grid
            or not all(isinstance(a, (int, float)) and not isinstance(a, bool) and 0 <= a <= 1 for a in grid)):
        raise ConfigError(f"{where}.{method}.grid: a non-empty list of exponents in [0, 1]; got {grid!r}")
    samples = body.get("samples", SAMPLE_ROWS)
    if isinstance(samples, bool) or not isinstance(samples, int) or not 16 <= samples <= 65536:
        raise ConfigError(f"{where}.{method}.samples: activation rows per layer input, a whole number in "
                          f"16..65536 (default {SAMPLE_ROWS}); got {samples!r}")
    return Transform(method, scheme, tuple(float(a) for a in grid), samples)


# ---------------------------------------------------------------- model structure

@dataclass
class Group:
    """Linears that share one input, and what produces that input (a norm or a linear's output rows)."""

    name: str
    linears: list          # [(name, nn.Linear)]
    prev: object           # nn.Module: RMSNorm or nn.Linear
    prev_kind: str         # "norm" | "gemma-norm" | "rows"
    repeat: int = 1        # rows: each prev row feeds ``repeat`` consecutive blocks of the input (GQA)
    head_dim: int = 0


def _norm_kind(norm) -> str:
    return "gemma-norm" if "gemma" in type(norm).__name__.lower() else "norm"


def groups(model) -> list[Group]:
    """The scalable layer groups of a Llama/Qwen/Gemma-style decoder (``model.model.layers``)."""
    cfg = getattr(model.config, "text_config", None) or model.config
    layers = _decoder_layers(model)
    out = []
    for i, layer in enumerate(layers):
        at, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
        ln_in = getattr(layer, "input_layernorm", None)
        ln_mlp = getattr(layer, "pre_feedforward_layernorm", None) or getattr(layer, "post_attention_layernorm", None)
        if at is None or mlp is None or ln_in is None or ln_mlp is None:
            raise ConfigError(f"{type(model).__name__}: decoder layer {i} is not Llama/Qwen/Gemma-shaped "
                              "(self_attn, mlp, input_layernorm, post_attention/pre_feedforward_layernorm)")
        pre = f"model.layers.{i}"
        qkv = [(f"{pre}.self_attn.{n}", getattr(at, n)) for n in ("q_proj", "k_proj", "v_proj")]
        out.append(Group(f"{pre}.qkv", qkv, ln_in, _norm_kind(ln_in)))
        out.append(Group(f"{pre}.gate_up", [(f"{pre}.mlp.{n}", getattr(mlp, n)) for n in ("gate_proj", "up_proj")],
                         ln_mlp, _norm_kind(ln_mlp)))
        out.append(Group(f"{pre}.down", [(f"{pre}.mlp.down_proj", mlp.down_proj)], mlp.up_proj, "rows"))
        heads = cfg.num_attention_heads
        kv = getattr(cfg, "num_key_value_heads", None) or heads
        hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
        if at.o_proj.in_features == heads * hd and at.v_proj.out_features == kv * hd:
            out.append(Group(f"{pre}.o", [(f"{pre}.self_attn.o_proj", at.o_proj)], at.v_proj, "rows",
                             repeat=heads // kv, head_dim=hd))
    return out


def _decoder_layers(model):
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None:
        inner = getattr(inner, "language_model", None)
        layers = getattr(inner, "layers", None)
    if layers is None:
        raise ConfigError(f"{type(model).__name__}: no model.layers (only Llama/Qwen/Gemma-style decoders)")
    return layers


# ---------------------------------------------------------------- calibration activations

def calib_token_rows(model_dir: Path, calib: Path, *, max_tokens: int = CALIB_MAX_TOKENS) -> list[list[int]]:
    """Token ids of each calibration item (``input`` + ``target``), at most ``max_tokens`` each."""
    from tokenizers import Tokenizer

    data = json.loads(Path(calib).read_text())
    tok = Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json"))
    rows = []
    for i, item in enumerate(data):
        if not isinstance(item, dict) or not isinstance(item.get("input"), str):
            raise ConfigError(f"{calib}: item {i} has no 'input' string")
        ids = tok.encode(item["input"] + str(item.get("target") or "")).ids[:max_tokens]
        if ids:
            rows.append(ids)
    if not rows:
        raise ConfigError(f"{calib}: no calibration items")
    return rows


def collect_inputs(model, token_rows, names, *, sample: int = SAMPLE_ROWS, log=None) -> dict:
    """Per linear ``name``: ``{"mean": mean|x| per channel, "max": max|x| per channel, "x": sample rows}``."""
    import torch

    mods = dict(model.named_modules())
    acc = {n: {"sum": 0, "max": 0, "n": 0, "rows": []} for n in names}
    hooks = []

    def hook(name):
        def f(_m, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
            a = acc[name]
            a["sum"] = a["sum"] + x.abs().sum(0)
            a["max"] = torch.maximum(torch.as_tensor(a["max"]), x.abs().amax(0))
            a["n"] += x.shape[0]
            a["rows"].append(x)
        return f

    for n in names:
        hooks.append(mods[n].register_forward_pre_hook(hook(n)))
    body = getattr(model, "model", model)     # the decoder alone: lm_head's logits are not needed
    try:
        with torch.no_grad():
            for i, ids in enumerate(token_rows):
                if log:
                    log(f"calibration activations {i + 1}/{len(token_rows)}")
                body(input_ids=torch.tensor([ids]))
    finally:
        for h in hooks:
            h.remove()
    gen = torch.Generator().manual_seed(0)
    out = {}
    for n, a in acc.items():
        x = torch.cat(a["rows"])
        if x.shape[0] > sample:
            x = x[torch.randperm(x.shape[0], generator=gen)[:sample]]
        out[n] = {"mean": a["sum"] / a["n"], "max": a["max"], "x": x}
    return out


# ---------------------------------------------------------------- search and fold

def _loss(ws, x, s, scheme_spec, ref) -> float:
    """Sum over linears of |Q(W diag(s)) Q_a(x / s) - W x|^2 (normalized per linear)."""
    from host.fakequant import quant_act_per_token, quant_weight

    xs = x / s
    if scheme_spec.a_bits:
        xs = quant_act_per_token(xs, scheme_spec.a_bits)
    total = 0.0
    for w, r in zip(ws, ref, strict=True):
        q = quant_weight(w * s, scheme_spec.w_bits, scheme_spec.group)
        total += float(((xs @ q.T - r) ** 2).sum() / (r ** 2).sum().clamp(min=1e-12))
    return total


def search_group(g: Group, stats: dict, t: Transform):
    """``(scale, exponent)`` minimizing the group's quantized output error; ``(None, None)`` keeps ``s = 1``."""
    import torch

    from host.fakequant import spec

    sp = spec(t.scheme)
    first = g.linears[0][0]
    st = stats[first]
    x = st["x"]
    ws = [lin.weight.detach().float() for _n, lin in g.linears]
    if sp.group and any(w.shape[1] % sp.group for w in ws):
        return None, None
    act = (st["max"] if t.method == "smoothquant" else st["mean"]).clamp(min=1e-5)
    wcat = torch.cat(ws)
    wstat = wcat.abs().amax(0) if t.method == "smoothquant" else (wcat.abs() / wcat.abs().amax(1, keepdim=True)
                                                                   .clamp(min=1e-12)).mean(0)
    wstat = wstat.clamp(min=1e-5)
    if g.repeat > 1:   # one scale per KV channel, shared by the query heads that read it
        kv = x.shape[1] // (g.repeat * g.head_dim)
        act = act.reshape(kv, g.repeat, g.head_dim).mean(1)
        wstat = wstat.reshape(kv, g.repeat, g.head_dim).mean(1)
    ref = [x @ w.T for w in ws]
    best = (_loss(ws, x, torch.ones(x.shape[1]), sp, ref), None, None)
    for a in t.grid:
        s = act.pow(a) / wstat.pow(1 - a)
        s = (s / (s.max() * s.min()).sqrt()).reshape(-1)
        full = s.reshape(-1, 1, g.head_dim).expand(-1, g.repeat, -1).reshape(-1) if g.repeat > 1 else s
        loss = _loss(ws, x, full, sp, ref)
        if loss < best[0]:
            best = (loss, s, a)
    return best[1], best[2]


def fold(g: Group, s) -> None:
    """Apply scale ``s`` to group ``g`` in place: linears' input columns × s, the producer ÷ s."""
    import torch

    with torch.no_grad():
        full = s.reshape(-1, 1, g.head_dim).expand(-1, g.repeat, -1).reshape(-1) if g.repeat > 1 else s
        for _n, lin in g.linears:
            lin.weight.mul_(full.to(lin.weight.dtype)[None, :])
        p = g.prev
        if g.prev_kind == "norm":
            p.weight.div_(s.to(p.weight.dtype))
        elif g.prev_kind == "gemma-norm":
            p.weight.copy_(((1 + p.weight.float()) / s - 1).to(p.weight.dtype))
        else:
            p.weight.div_(s.to(p.weight.dtype)[:, None])
            if p.bias is not None:
                p.bias.div_(s.to(p.bias.dtype))


def apply_transform(model, token_rows, t: Transform, *, log=None) -> dict:
    """Search and fold ``t`` into ``model`` (in place). Returns a summary: exponent chosen per group."""
    gs = groups(model)
    names = sorted({n for g in gs for n, _l in g.linears[:1]})
    stats = collect_inputs(model, token_rows, names, sample=t.samples, log=log)
    chosen = {}
    for i, g in enumerate(gs):
        if log:
            log(f"{t.label()} search {i + 1}/{len(gs)} {g.name}")
        s, a = search_group(g, stats, t)
        if s is not None:
            fold(g, s)
        chosen[g.name] = a
    scaled = [a for a in chosen.values() if a is not None]
    return {"groups": len(chosen), "scaled": len(scaled), "exponents": chosen,
            "mean_exponent": round(sum(scaled) / len(scaled), 3) if scaled else None}


# ---------------------------------------------------------------- cached checkpoint

def transform_key(model_sha: str, calib_sha: str | None, t, text_sha: str | None = None) -> str:
    from host.manifest import inputs_hash

    return inputs_hash({"v": TRANSFORM_VERSION, "model": model_sha, "calib": calib_sha, "t": t.to_dict(),
                        **prequant_version(t), **({"text": text_sha} if text_sha else {})})


def text_tokens_wanted(t) -> int:
    """Tokens of held-in text the transform's ``gptq`` step calibrates on (0: none, or no ``gptq`` step)."""
    steps = t.steps() if hasattr(t, "steps") else (t,)
    return max((s.text_tokens for s in steps if isinstance(s, Prequant)), default=0)


def text_token_rows(model_dir: Path, text: Path, tokens: int, *, window: int = TEXT_WINDOW) -> list[list[int]]:
    """``tokens`` tokens of ``text`` (the recipe's held-in text) in rows of ``window``, tokenized as the quality
    windows are (``host.quality.reference.eval_windows``: documents joined by blank lines, no special tokens, the
    tokenizer's BOS ids in front of every row), so each row looks like the start of a text to the model."""
    from tokenizers import Tokenizer

    from host.families import tokenizer_bos
    from host.textdata import read_docs

    bos = list(tokenizer_bos(Path(model_dir)))
    body = window - len(bos)
    ids = Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json")).encode(
        "\n\n".join(read_docs(Path(text))), add_special_tokens=False).ids[:tokens]
    return [bos + ids[i:i + body] for i in range(0, len(ids), body) if len(ids[i:i + body]) > 1]


def prequant_version(t) -> dict:
    """The versions a pre-rounding's output depends on (its own, GPTQ's, the held-in windows and calibration item
    lengths) when ``t`` has a ``gptq`` step: a key part (the keys of the equivalent transforms are unchanged)."""
    if PREQUANT not in t.to_dict():
        return {}
    from host.gptq import GPTQ_VERSION
    from host.prequant import PREQUANT_VERSION, SHRINK

    return {"pq": PREQUANT_VERSION, "gptq": GPTQ_VERSION, "shrink": list(SHRINK), "window": TEXT_WINDOW,
            "item_tokens": CALIB_MAX_TOKENS}


def cache_dir() -> Path:
    from host.models import cache_root

    return cache_root().parent / "transformed"


def transformed_checkpoint(model_dir: Path, calib: Path | None, t, *, text: Path | None = None,
                           cache: Path | None = None, log=None) -> tuple[Path, dict]:
    """The float checkpoint of ``model_dir`` with ``t`` (a ``parse_transform`` result) folded in, as a
    normal HF folder (cached by model sha256 + calibration sha256 + transform (+ the held-in ``text``'s sha256
    when a ``gptq`` step reads it); a lone ``rotate`` reads no calibration and its key has none);
    ``(folder, record)``."""
    from host.fsutil import sha256_file
    from host.models import model_sha256

    steps = t.steps() if hasattr(t, "steps") else (t,)
    searches = any(isinstance(s, (Transform, Prequant)) for s in steps)
    model_dir = Path(model_dir)
    if searches and (calib is None or not Path(calib).is_file()):
        raise ConfigError(f"transform {t.label()}: calibration file {calib} does not exist")
    calib = Path(calib) if searches else None
    wants_text = text_tokens_wanted(t) > 0
    text = Path(text) if text is not None and wants_text else None
    if wants_text and (text is None or not text.is_file()):
        raise ConfigError(f"transform {t.label()}: the recipe's held-in text {text} does not exist (text.heldin; or "
                          "set gptq's text_tokens: 0 to calibrate on the calibration JSON alone)")
    key = transform_key(model_sha256(model_dir), sha256_file(calib) if calib else None, t,
                        sha256_file(text) if text else None)
    root = Path(cache) if cache else cache_dir()
    final = root / f"{model_dir.name}-{t.method}-{key[:16]}"
    record_path = final / "rkdeploy-transform.json"
    if record_path.is_file():
        return final, json.loads(record_path.read_text())
    import fcntl

    root.mkdir(parents=True, exist_ok=True)
    # one builder per key: a second export waits, then finds the record (never replaces a folder another
    # process's builder is reading); the lock goes with the process, so a killed builder frees it
    with open(root / f".{final.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if record_path.is_file():
            return final, json.loads(record_path.read_text())
        if log:
            log(f"transform {t.label()}: building {final.name} (one process per key; others wait for it)")
        return final, _build_transformed(model_dir, calib, t, steps, key, final, text=text, log=log)


def _build_transformed(model_dir: Path, calib: Path | None, t, steps, key: str, final: Path, *,
                       text: Path | None = None, log=None) -> dict:
    from host.fsutil import atomic_dir, atomic_write_text
    from host.prequant import prequantize
    from host.quality.reference import load_torch_llm
    from host.rotation import rotate_model

    t0 = time.monotonic()
    rows = calib_token_rows(model_dir, calib) if calib else []
    model = load_torch_llm(model_dir)
    summary: dict = {}
    for step in steps:
        if isinstance(step, Rotation):
            summary["rotation"] = rotate_model(model, kind=step.kind, seed=step.seed, log=log)
        elif isinstance(step, Prequant):
            extra = text_token_rows(model_dir, text, step.text_tokens) if text is not None and step.text_tokens else []
            summary.update(prequantize(model, rows + extra, step.scheme, damp=step.damp, log=log))
            summary["prequant"]["text"] = str(text) if extra else None
        else:
            summary.update(apply_transform(model, rows, step, log=log))
    with atomic_dir(final) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        for f in model_dir.iterdir():
            if f.is_file() and not re.match(r"(model.*\.safetensors(\.index\.json)?|config\.json|rkdeploy-model\.json)$",
                                            f.name):
                shutil.copy2(f, tmp / f.name)
        record = {"transform": t.to_dict(), "version": TRANSFORM_VERSION, "key": key, "source": str(model_dir),
                  "calibration": str(calib) if calib else None, "calibration_items": len(rows),
                  "seconds": round(time.monotonic() - t0, 1), **summary}
        atomic_write_text(tmp / "rkdeploy-transform.json", json.dumps(record, indent=1))
    return record
