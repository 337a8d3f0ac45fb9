"""GPTQ error-compensating rounding for the int4 MatMulNBits nodes of an onnxruntime-genai artifact.

GPTQ (Frantar et al. 2022): per linear layer ``y = W x`` with calibration inputs ``X``, the Hessian of
the output error is ``H = X^T X`` (plus ``damp`` × mean diagonal on the diagonal). Columns of ``W``
are rounded one at a time (optionally in decreasing ``diag(H)`` order, "act-order"); the rounding
error of column ``j`` is pushed onto the not-yet-rounded columns through the upper Cholesky factor
of ``H^-1`` (lazy batch updates of ``LAZY`` columns). Each quantization block of ``block_size``
consecutive input channels gets its scale (and zero point) from the builder's own formula on the
block's weights as they stand when the block starts (with act-order: from the unmodified weights,
"static groups", since the columns of one block are no longer rounded together). With ``scales:
search`` every block's scale (and zero point) is instead SEARCHED on the unmodified weights
(``searched_params``: the importance-weighted squared error ``sum_j H_jj (w_j - q_j)^2`` — llama.cpp's
importance matrix is this diagonal — over shrink factors of the block's range and a least-squares
refit; the builder's own scale is one candidate, so the search never does worse on that objective),
then GPTQ rounds onto those static grids. The grid's *form* stays the builder's (codes, block size,
symmetric or a zero point per block); only the scale values are chosen, so nothing is fitted to any
grid the checkpoint may already be rounded to.

The grid is the builder's, read from the artifact, never fitted to any grid the checkpoint may
already be rounded to (onnxruntime's blockwise quantizer, MLAS ``MlasQuantizeBlockwise``):

- symmetric (no ``zero_points`` input): ``m`` = the block's value of largest magnitude (with its
  sign), ``scale = m / -2^(bits-1)``, ``q = clamp(round(w / scale) + 2^(bits-1), 0, 2^bits - 1)``;
- asymmetric: ``lo = min(min w, 0)``, ``hi = max(max w, 0)``, ``scale = (hi - lo) / (2^bits - 1)``,
  ``zp = clamp(round(-lo / scale))``, ``q = clamp(round(w / scale) + zp)``;

and ``w ≈ (q - zp) × scale``. The MatMulNBits layout (onnxruntime contrib op spec): ``B`` uint8
``[N, ceil(K / block_size), block_size × bits / 8]`` (4 bits: element ``2i`` in the low nibble),
``scales`` ``[N, n_blocks]`` (or flat), ``zero_points`` uint8 ``[N, ceil(n_blocks × bits / 8)]`` for
bits < 8 (same nibble order), absent = ``2^(bits-1)``; ``N`` = output features (the transformers
linear's rows), ``K`` = input features.

``gptq_artifact`` finds every MatMulNBits node of the requested widths, maps it to the transformers
linear(s) of the checkpoint the artifact was built from (q/k/v packed into one qkv node, in that
order), checks that the artifact's own round-to-nearest weights dequantize to that checkpoint's
weights within a step (else one error naming the node), collects each node's Hessian from the
calibration JSON through forward pre-hooks, runs GPTQ and patches the new ``B``/``scales``/
``zero_points`` bytes into the artifact's external data file (same offsets and lengths; temp copy,
fsync, rename). A ``lm_head`` whose ``B`` is also the int4 embedding table (genai's tied
``shared_embeddings``) is left at round-to-nearest: GPTQ rounding targets ``W x``, not a table lookup.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from host.errors import BuildError, ConfigError
from host.transforms import PREQUANT_TEXT_TOKENS, text_tokens_of

#: Bump when the rounding changes (part of the artifact's cache key through the recipe's options).
GPTQ_VERSION = 2     # 2: scales (builder | search) and symmetric in the options; defaults act-order + search
#: The calibration Hessians' own version (their cache key): unchanged by the rounding's options.
HESSIAN_VERSION = 1
DAMP = 0.01
SCALES = ("builder", "search")
#: Shrink factors of a block's range tried by ``searched_params`` (1.0 = the builder's range).
SHRINK = tuple(round(0.6 + 0.02 * i, 2) for i in range(21))
LAZY = 128          # columns per lazy batch update (a multiple of every block size used: 16..128)


@dataclass(frozen=True)
class Rounding:
    """A recipe's ``rounding`` for the ONNX int4 builder: ``gptq`` with its settings (``rtn`` = the builder's own).

    ``act_order``: columns in decreasing ``diag(H)`` order on static block grids; ``scales``: ``builder``
    (onnxruntime's min/max formula) or ``search`` (importance-weighted search per block); ``symmetric``:
    the builder's signed int4 (no zero points) or, ``false``, uint4 with a zero point per block (the
    builder's ``is_symmetric=false``: the graph gets ``zero_points`` inputs, +4 bits per block of 32)."""

    method: str = "gptq"
    damp: float = DAMP
    act_order: bool = True
    scales: str = "search"
    symmetric: bool = True
    text_tokens: int = PREQUANT_TEXT_TOKENS   # of the recipe's held-in text beside the calibration JSON's (Hessians)

    def to_dict(self) -> dict:
        """The manifest's builder option and the artifact's cache-key entry (with the GPTQ version)."""
        if self.method == "rtn":
            return {"method": "rtn"}
        return {"method": "gptq", "damp": self.damp, "act_order": self.act_order, "scales": self.scales,
                "symmetric": self.symmetric, "text_tokens": self.text_tokens, "version": GPTQ_VERSION}

    def recipe_form(self) -> dict:
        return {"gptq": {"damp": self.damp, "act_order": self.act_order, "scales": self.scales,
                         "symmetric": self.symmetric, "text_tokens": self.text_tokens}}


def parse_rounding(value, where: str = "rounding") -> Rounding | None:
    """``rtn`` | ``gptq`` | ``{gptq: {damp: 0.01, act_order: true, scales: search, symmetric: true}}`` | None
    (the builder's round-to-nearest)."""
    if value is None or value == "rtn":
        return None
    if value == "gptq":
        return Rounding()
    if isinstance(value, dict) and len(value) == 1 and "gptq" in value and isinstance(value["gptq"], (dict, type(None))):
        body = value["gptq"] or {}
        extra = set(body) - {"damp", "act_order", "scales", "symmetric", "text_tokens"}
        if extra:
            raise ConfigError(f"{where}.gptq: allowed keys are damp, act_order, scales, symmetric, text_tokens; "
                              f"got {sorted(map(str, extra))[0]!r}")
        damp = body.get("damp", DAMP)
        if isinstance(damp, bool) or not isinstance(damp, (int, float)) or not 0 < damp < 1:
            raise ConfigError(f"{where}.gptq.damp: a fraction of the Hessian's mean diagonal in (0, 1); got {damp!r}")
        act = body.get("act_order", True)
        if not isinstance(act, bool):
            raise ConfigError(f"{where}.gptq.act_order: true or false; got {act!r}")
        scales = body.get("scales", "search")
        if scales not in SCALES:
            raise ConfigError(f"{where}.gptq.scales: {' or '.join(SCALES)}; got {scales!r}")
        sym = body.get("symmetric", True)
        if not isinstance(sym, bool):
            raise ConfigError(f"{where}.gptq.symmetric: true (signed int4) or false (a zero point per block); got {sym!r}")
        return Rounding("gptq", float(damp), act, scales, sym, text_tokens_of(body, f"{where}.gptq.text_tokens"))
    raise ConfigError(f"{where}: expected rtn, gptq or {{gptq: {{damp: 0.01, act_order: true, scales: search, "
                      f"symmetric: true}}}}; got {value!r}")


# ---------------------------------------------------------------- the builder's grid

@dataclass(frozen=True)
class Grid:
    bits: int = 4
    block_size: int = 32
    symmetric: bool = True

    @property
    def qmax(self) -> int:
        return (1 << self.bits) - 1

    @property
    def mid(self) -> int:
        return 1 << (self.bits - 1)


def block_params(w, grid: Grid):
    """Scale and zero point (float tensors ``[N]``) of one block ``w`` ``[N, block]`` (the builder's formula)."""
    import torch

    if grid.symmetric:
        mx, mn = w.amax(1), w.amin(1)
        m = torch.where(mn.abs() > mx.abs(), mn, mx)
        scale = m / -grid.mid
        zp = torch.full_like(scale, float(grid.mid))
    else:
        lo, hi = w.amin(1).clamp(max=0), w.amax(1).clamp(min=0)
        scale = (hi - lo) / grid.qmax
        zp = torch.where(scale != 0, (-lo / torch.where(scale != 0, scale, 1)).round(), 0).clamp(0, grid.qmax)
    return scale, zp


def quantize_col(w, scale, zp, grid: Grid):
    """Integer codes of a column ``w`` ``[N]`` on the block grid (``scale == 0``: the code of zero)."""
    import torch

    safe = torch.where(scale != 0, scale, 1)
    q = torch.where(scale != 0, (w / safe).round() + zp, zp)
    return q.clamp(0, grid.qmax)


def rtn(w, grid: Grid):
    """Round-to-nearest (what the builder does): codes ``[N, K]`` int, scales and zero points ``[N, n_blocks]``."""
    import torch

    n, k = w.shape
    nb = -(-k // grid.block_size)
    q = torch.empty(n, k)
    scales, zps = torch.empty(n, nb), torch.empty(n, nb)
    for b in range(nb):
        sl = slice(b * grid.block_size, min(k, (b + 1) * grid.block_size))
        s, z = block_params(w[:, sl], grid)
        scales[:, b], zps[:, b] = s, z
        for j in range(sl.start, sl.stop):
            q[:, j] = quantize_col(w[:, j], s, z, grid)
    return q.to(torch.int64), scales, zps


def dequantize(q, scales, zps, grid: Grid):
    """``(q - zp) × scale`` per block: float ``[N, K]``."""
    k = q.shape[1]
    rep = lambda t: t.repeat_interleave(grid.block_size, 1)[:, :k]  # noqa: E731
    return (q.float() - rep(zps)) * rep(scales)


def searched_params(w, hd, grid: Grid, shrink=SHRINK):
    """Scales and zero points ``[N, n_blocks]`` on ``grid``'s form minimising, per block, the importance-weighted
    squared error ``sum_j hd_j (w_j - (q_j - zp) s)^2`` (``hd`` ``[K]`` = ``diag(H)``, llama.cpp's importance
    matrix; None = unweighted). Candidates: the builder's own scale and zero point, the block's range shrunk
    by each factor in ``shrink`` (symmetric: the extreme on code 0 or on the top code; asymmetric: both ends
    toward the centre, the zero point rounded and one either side), each also with the least-squares scale
    for its codes. The builder's candidate is kept unless another is strictly better."""
    import torch

    n, k = w.shape
    bs = grid.block_size
    nb = -(-k // bs)
    pad = nb * bs - k
    g = torch.nn.functional.pad(w.detach().float(), (0, pad)).reshape(n, nb, bs)
    hw = torch.ones(k) if hd is None else hd.detach().float().clamp(min=0)
    hw = torch.nn.functional.pad(hw, (0, pad)).reshape(1, nb, bs)
    qmax, mid = float(grid.qmax), float(grid.mid)

    def codes(s, z):
        safe = torch.where(s != 0, s, 1)
        return torch.where(s != 0, (g / safe).round() + z, z).clamp(0, qmax)

    def err(s, z):
        return (hw * (g - (codes(s, z) - z) * s) ** 2).sum(-1, keepdim=True)

    s0, z0 = (t[..., None] for t in _builder_params_blocks(g, grid))
    best_s, best_z, best_e = s0, z0, err(s0, z0)

    def consider(s, z):
        nonlocal best_s, best_z, best_e
        c = codes(s, z) - z
        den = (hw * c * c).sum(-1, keepdim=True)
        refit = torch.where(den > 0, (hw * g * c).sum(-1, keepdim=True) / den.clamp(min=1e-30), s)
        for cand in (s, refit):
            e = err(cand, z)
            better = e < best_e
            best_e = torch.where(better, e, best_e)
            best_s = torch.where(better, cand, best_s)
            best_z = torch.where(better, z, best_z)

    mx, mn = g.amax(-1, keepdim=True), g.amin(-1, keepdim=True)
    for r in shrink:
        if grid.symmetric:
            m = torch.where(mn.abs() > mx.abs(), mn, mx)
            zs = torch.full_like(m, mid)
            consider(m / -mid * r, zs)
            consider(m / (mid - 1) * r, zs)
        else:
            s = (mx - mn) * r / qmax
            safe = torch.where(s != 0, s, 1)
            zc = (-(mn * (0.5 + r / 2) + mx * (0.5 - r / 2)) / safe).round()
            for dz in (-1, 0, 1):
                consider(s, (zc + dz).clamp(0, qmax))
    return best_s[..., 0], best_z[..., 0]


def _builder_params_blocks(g, grid: Grid):
    """``block_params`` of every block of ``g`` ``[N, n_blocks, bs]`` at once (``[N, n_blocks]`` each)."""
    n, nb, bs = g.shape
    s, z = block_params(g.reshape(n * nb, bs), grid)
    return s.reshape(n, nb), z.reshape(n, nb)


def searched_rtn(w, hd, grid: Grid):
    """Round-to-nearest on the searched grid: codes ``[N, K]``, scales and zero points ``[N, n_blocks]``."""
    import torch

    s, z = searched_params(w, hd, grid)
    k = w.shape[1]
    rep = lambda t: t.repeat_interleave(grid.block_size, 1)[:, :k]  # noqa: E731
    safe = torch.where(rep(s) != 0, rep(s), 1)
    q = torch.where(rep(s) != 0, (w.float() / safe).round() + rep(z), rep(z)).clamp(0, grid.qmax)
    return q.to(torch.int64), s, z


# ---------------------------------------------------------------- GPTQ

def gptq(w, h, grid: Grid, *, damp: float = DAMP, act_order: bool = False, grid_scales: str = "builder",
         fixed=None):
    """GPTQ-round ``w`` ``[N, K]`` (a linear's weight) given ``h`` ``[K, K]`` (``X^T X`` of its inputs).
    ``grid_scales``: ``builder`` (each block's formula on its weights as GPTQ reaches them; static from the
    unmodified weights with act-order) or ``search`` (``searched_params`` on the unmodified weights with
    ``diag(h)``, static). ``fixed = (scales, zero points, top code)``: given static grids instead (e.g. a
    vendor's, whose codes need not span a power of two). Returns ``(codes [N, K] int64, scales [N, n_blocks],
    zero points [N, n_blocks])``."""
    import torch

    n, k = w.shape
    bs = grid.block_size
    nb = -(-k // bs)
    w = w.detach().double().clone()
    h = h.detach().double().clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    scales, zps = torch.zeros(n, nb, dtype=torch.float64), torch.zeros(n, nb, dtype=torch.float64)
    if grid_scales not in SCALES:
        raise ValueError(f"grid_scales {grid_scales!r}: one of {SCALES}")
    static = act_order or grid_scales == "search" or fixed is not None
    if not static and LAZY % bs:   # a block's grid is computed when GPTQ reaches its first column
        raise ValueError(f"block_size {bs}: GPTQ on dynamic grids here needs a divisor of {LAZY}")
    qmax = grid.qmax if fixed is None else fixed[2]
    if fixed is not None:
        scales, zps = fixed[0].double().clone(), fixed[1].double().clone()
    elif grid_scales == "search":   # static grids searched on the unmodified weights, importance = diag(H)
        s_, z_ = searched_params(w.float(), torch.diag(h).float(), grid)
        scales, zps = s_.double(), z_.double()
    elif act_order:   # static groups: every block's grid from the unmodified weights
        for b in range(nb):
            scales[:, b], zps[:, b] = block_params(w[:, b * bs:(b + 1) * bs], grid)
    perm = torch.argsort(torch.diag(h), descending=True) if act_order else torch.arange(k)
    w, h = w[:, perm], h[perm][:, perm]
    h += damp * torch.mean(torch.diag(h)) * torch.eye(k, dtype=h.dtype)
    try:
        hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    except RuntimeError as e:   # torch's LinAlgError is a RuntimeError
        raise BuildError(f"GPTQ: the Hessian is not positive definite even with damp {damp} ({e}); raise damp") from None
    hinv = hinv.float()       # the column loop in fp32 (as the reference implementation), the inverse in fp64
    w = w.float()
    scales, zps = scales.float(), zps.float()
    inv = torch.zeros(n)
    if static:   # static grids: every block's reciprocal scale once (scale 0: every code is the zero point)
        inv_all = torch.where(scales != 0, 1 / torch.where(scales != 0, scales, 1), 0)
    q = torch.zeros(n, k)
    for i1 in range(0, k, LAZY):
        i2 = min(i1 + LAZY, k)
        w1 = w[:, i1:i2].clone()
        err1 = torch.zeros_like(w1)
        hinv1 = hinv[i1:i2, i1:i2]
        diag = hinv1.diagonal().tolist()
        cols = perm[i1:i2].tolist()
        for i in range(i2 - i1):
            b = cols[i] // bs
            if not static and (i1 + i) % bs == 0:   # the block starts here: its grid from its current weights
                scales[:, b], zps[:, b] = block_params(w1[:, i:i + bs], grid)
            if static:
                sc, zp, inv = scales[:, b], zps[:, b], inv_all[:, b]
            elif (i1 + i) % bs == 0:
                sc, zp = scales[:, b], zps[:, b]
                inv = torch.where(sc != 0, 1 / torch.where(sc != 0, sc, 1), 0)   # scale 0: every code is the zero point
            wc = w1[:, i]
            qc = (wc * inv).round_().add_(zp).clamp_(0, qmax)
            q[:, i1 + i] = qc
            e = (wc - (qc - zp) * sc) / diag[i]
            w1[:, i:].addr_(e, hinv1[i, i:], alpha=-1)
            err1[:, i] = e
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    out = torch.empty_like(q)
    out[:, perm] = q
    return out.to(torch.int64), scales, zps


def weighted_error(w, wq, h) -> float:
    """``trace((W - Wq) H (W - Wq)^T)``: the summed squared output error over the inputs behind ``h``."""
    d = (w.double() - wq.double())
    return float(((d @ h.double()) * d).sum())


# ---------------------------------------------------------------- MatMulNBits packing

def pack_b(q, grid: Grid):
    """Codes ``[N, K]`` -> MatMulNBits ``B`` uint8 ``[N, n_blocks, block_size × bits / 8]`` (K padded with 0)."""
    import numpy as np

    q = np.asarray(q, dtype=np.uint8)
    n, k = q.shape
    nb = -(-k // grid.block_size)
    full = np.zeros((n, nb * grid.block_size), dtype=np.uint8)
    full[:, :k] = q
    if grid.bits == 8:
        return full.reshape(n, nb, grid.block_size)
    if grid.bits != 4:
        raise ValueError(f"bits {grid.bits}: only 4 and 8")
    return (full[:, 0::2] | (full[:, 1::2] << 4)).reshape(n, nb, grid.block_size // 2)


def unpack_b(b, k: int, grid: Grid):
    """MatMulNBits ``B`` -> codes ``[N, K]`` (uint8 numpy)."""
    import numpy as np

    b = np.asarray(b, dtype=np.uint8)
    n = b.shape[0]
    flat = b.reshape(n, -1)
    if grid.bits == 8:
        return flat[:, :k]
    out = np.empty((n, flat.shape[1] * 2), dtype=np.uint8)
    out[:, 0::2], out[:, 1::2] = flat & 0xF, flat >> 4
    return out[:, :k]


def pack_zero_points(zps, grid: Grid):
    """Zero points ``[N, n_blocks]`` -> uint8 ``[N, ceil(n_blocks × bits / 8)]`` (4 bits: two a byte, low nibble first)."""
    import numpy as np

    z = np.asarray(zps, dtype=np.uint8)
    if grid.bits == 8:
        return z
    n, nb = z.shape
    if nb % 2:    # the unused nibble holds the default zero point (as onnxruntime's quantizer writes it)
        z = np.concatenate([z, np.full((n, 1), grid.mid, dtype=np.uint8)], 1)
    return z[:, 0::2] | (z[:, 1::2] << 4)


def unpack_zero_points(zp, n: int, nb: int, grid: Grid):
    import numpy as np

    z = np.asarray(zp, dtype=np.uint8).reshape(n, -1)
    if grid.bits == 8:
        return z[:, :nb]
    out = np.empty((n, z.shape[1] * 2), dtype=np.uint8)
    out[:, 0::2], out[:, 1::2] = z & 0xF, z >> 4
    return out[:, :nb]


# ---------------------------------------------------------------- the artifact

@dataclass
class NbitsNode:
    name: str
    k: int
    n: int
    grid: Grid
    b: str                 # initializer names
    scales: str
    zero_points: str       # "" when absent (symmetric)
    shared: bool           # B also feeds another node (the tied int4 embedding)


def nbits_nodes(proto) -> list[NbitsNode]:
    inits = {i.name for i in proto.graph.initializer}
    users: dict[str, int] = {}
    for node in proto.graph.node:
        for i in node.input:
            users[i] = users.get(i, 0) + 1
    out = []
    for node in proto.graph.node:
        if node.op_type != "MatMulNBits":
            continue
        at = {a.name: a for a in node.attribute}
        ins = list(node.input) + [""] * 6
        if ins[1] not in inits or ins[2] not in inits or (ins[3] and ins[3] not in inits) or any(ins[4:6]):
            continue       # prepacked / g_idx / bias variants: not ours to rewrite
        grid = Grid(bits=at["bits"].i, block_size=at["block_size"].i, symmetric=not ins[3])
        out.append(NbitsNode(node.name, at["K"].i, at["N"].i, grid, ins[1], ins[2], ins[3],
                             users.get(ins[1], 0) > 1))
    return out


def hf_linears_of(node_name: str) -> list[str]:
    """The transformers linear(s) of a genai MatMul node, in the order they are packed along N."""
    if node_name.startswith("/lm_head/"):
        return ["lm_head"]
    m = re.match(r"/model/layers\.(\d+)/(attn|mlp)/(\w+)/MatMul", node_name)
    if not m:
        raise BuildError(f"GPTQ: MatMulNBits node {node_name!r} is not one of genai's decoder linears")
    i, block, proj = m.groups()
    if block == "attn":
        sub = ["q_proj", "k_proj", "v_proj"] if proj == "qkv_proj" else [proj]
        return [f"model.layers.{i}.self_attn.{p}" for p in sub]
    return [f"model.layers.{i}.mlp.{proj}"]


def _module_names(model) -> dict[str, str]:
    """transformers linear name in genai's spelling (``model.layers.N...``, ``lm_head``) -> module path."""
    out = {}
    for path, _m in model.named_modules():
        short = re.sub(r"^(model\.)?(language_model\.)?(model\.)?", "model.", path) if "layers." in path else path
        out[short] = path
    return out


@contextlib.contextmanager
def input_hessians(mods: dict):
    """While the block runs, ``X^T X`` of each module's inputs (each call's sum in fp32, the running sum in fp64);
    the yielded dict is filled at exit: ``{name: X^T X / rows}`` (float64) for every module that was called."""
    acc: dict = {}
    rows: dict = {}

    def hook(name):
        def f(_m, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
            xx = (x.T @ x).double()
            acc[name] = xx if name not in acc else acc[name] + xx
            rows[name] = rows.get(name, 0) + x.shape[0]
        return f

    out: dict = {}
    hooks = [m.register_forward_pre_hook(hook(n)) for n, m in mods.items()]
    try:
        yield out
    finally:
        for h in hooks:
            h.remove()
    out.update({n: acc[n] / rows[n] for n in acc})


def collect_hessians(model, token_rows, names: list[str], *, log=None) -> dict:
    """``X^T X`` (float64) of each linear module path's inputs over the calibration token rows."""
    import torch

    mods = dict(model.named_modules())
    # the decoder alone unless lm_head's input is wanted (its logits are a large matmul)
    body = model if any(n.endswith("lm_head") for n in names) else getattr(model, "model", model)
    with input_hessians({n: mods[n] for n in names}) as hess, torch.no_grad():
        for i, ids in enumerate(token_rows):
            if log:
                log(i + 1, len(token_rows))
            body(input_ids=torch.tensor([ids]))
    return {n: hess[n] for n in names}


def hessian_cache() -> Path:
    from host.models import cache_root

    return cache_root().parent / "gptq-hessians"


def cached_hessians(model, src: Path, calib: Path, rows, names: list[str], *, log, progress,
                    text: dict | None = None) -> dict:
    """``collect_hessians``, cached (fp32, torch.save) under ~/.cache/rkdeploy/gptq-hessians/<key>.pt; key = the
    checkpoint (its transform key, else its sha256) + the calibration JSON's sha256 + HESSIAN_VERSION (+ ``text``:
    the held-in text's sha256 and token count when ``rows`` hold some); a file without every wanted input is
    collected again (replaced)."""
    import json

    import torch

    from host.fsutil import sha256_file
    from host.manifest import inputs_hash
    from host.models import model_sha256

    rec = Path(src) / "rkdeploy-transform.json"
    ckpt = json.loads(rec.read_text())["key"] if rec.is_file() else model_sha256(Path(src))
    key = inputs_hash({"checkpoint": ckpt, "calib": sha256_file(calib), "v": HESSIAN_VERSION, **({"text": text} if text else {})})
    path = hessian_cache() / f"{Path(src).name}-{key[:24]}.pt"
    if path.is_file():
        cached = torch.load(path, weights_only=True)
        if set(names) <= set(cached):      # a file holds the inputs some earlier artifact wanted: use it if it has ours
            log(f"GPTQ: Hessians from {path}")
            return {k: cached[k].double() for k in names}
    t0 = time.monotonic()
    hess = collect_hessians(model, rows, names, log=progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save({k: v.float() for k, v in hess.items()}, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    # what a later run reads back from the cache (fp32): the same rounding either way
    hess = {k: v.float().double() for k, v in hess.items()}
    log(f"GPTQ: Hessians of {len(names)} inputs over {sum(len(r) for r in rows)} calibration tokens in "
        f"{time.monotonic() - t0:.0f} s (cached: {path})")
    return hess


def _tensor_bytes(proto, folder: Path, name: str):
    """(raw bytes, external (offset, length) or None) of initializer ``name``."""
    from onnx.external_data_helper import uses_external_data

    t = next(i for i in proto.graph.initializer if i.name == name)
    if uses_external_data(t):
        info = {e.key: e.value for e in t.external_data}
        off, ln = int(info.get("offset", 0)), int(info["length"])
        with open(folder / info["location"], "rb") as f:
            f.seek(off)
            return f.read(ln), (info["location"], off, ln)
    if not t.raw_data:
        raise BuildError(f"GPTQ: initializer {name} is not stored as raw bytes")
    return t.raw_data, None


def gptq_artifact(art: Path, src: Path, calib: Path, *, bits=(4,), damp: float = DAMP, act_order: bool = False,
                  grid_scales: str = "builder", text: Path | None = None, text_tokens: int = 0, log=print,
                  progress=None) -> dict:
    """Rewrite every MatMulNBits node of ``bits`` in ``art`` (built by genai from checkpoint ``src``) with GPTQ
    rounding on Hessians from ``calib`` (plus ``text_tokens`` tokens of the held-in ``text``). ``progress(description,
    done, total)`` reports the long steps.
    Returns a record for the manifest (nodes rewritten, skipped, weighted-error ratio GPTQ/RTN, seconds)."""
    import onnx
    import torch

    from host.fsutil import atomic_write_bytes
    from host.quality.reference import load_torch_llm
    from host.transforms import calib_token_rows

    art, src, calib = Path(art), Path(src), Path(calib)
    if not 0 < damp < 1:
        raise ConfigError(f"GPTQ damp {damp}: a fraction of the Hessian's mean diagonal in (0, 1)")
    if not calib.is_file():
        raise ConfigError(f"GPTQ: calibration file {calib} does not exist")
    if text_tokens and (text is None or not Path(text).is_file()):
        raise ConfigError(f"GPTQ: the recipe's held-in text {text} does not exist (text.heldin; or rounding.gptq."
                          "text_tokens: 0)")
    model_path = art / "model.onnx"
    if not model_path.is_file():
        raise BuildError(f"GPTQ: {model_path} does not exist")
    t0 = time.monotonic()
    proto = onnx.load(str(model_path), load_external_data=False)
    nodes = [n for n in nbits_nodes(proto) if n.grid.bits in bits]
    skipped = [n.name for n in nodes if n.shared]
    nodes = [n for n in nodes if not n.shared]
    # Hessians for every decoder node of any width (one cached set serves every int4/int8 mix); lm_head's only
    # when it is rounded here (its input costs the full logits in the calibration forward)
    every = [n for n in nbits_nodes(proto) if not n.shared and (n in nodes or not n.name.startswith("/lm_head/"))]
    for name in skipped:
        log(f"GPTQ: {name} shares its weights with the int4 embedding table: left at round-to-nearest")
    if not nodes:
        return {"rounding": "gptq", "nodes": 0, "skipped": skipped, "seconds": 0.0}
    rows = calib_token_rows(src, calib)
    text_key = None
    if text_tokens:
        from host.fsutil import sha256_file
        from host.transforms import text_token_rows

        rows += text_token_rows(src, Path(text), text_tokens)
        text_key = {"sha256": sha256_file(Path(text)), "tokens": text_tokens}
    model = load_torch_llm(src).float().eval()
    paths = _module_names(model)
    mods = dict(model.named_modules())
    plan, inputs = [], []
    for n in every:
        lins = hf_linears_of(n.name)
        missing = [x for x in lins if x not in paths]
        if missing:
            raise BuildError(f"GPTQ: {n.name}: no linear {missing[0]} in {src}")
        inputs.append([paths[x] for x in lins])
        if n in nodes:
            plan.append((n, inputs[-1]))
    # gate_proj and up_proj read the same input: one Hessian for both
    same_input = {p: p[:-len("up_proj")] + "gate_proj" for ps in inputs for p in ps
                  if p.endswith("mlp.up_proj") and p[:-len("up_proj")] + "gate_proj" in mods}
    want = sorted({same_input.get(ps[0], ps[0]) for ps in inputs})
    say = progress or (lambda *_a: None)
    hess = cached_hessians(model, src, calib, rows, want, log=log, text=text_key,
                           progress=lambda i, tot: say("GPTQ calibration forward", i, tot))
    hess.update({p: hess[g] for p, g in same_input.items()})
    patches: list[tuple[str, int, bytes]] = []
    inline: dict[str, bytes] = {}
    ratios = []
    # one intra-op thread: the column loop is thousands of small ops, and on a busy 2-core host two OpenMP threads
    # made one qkv node 6x slower (28.7 s vs 4.6 s at load ~20)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _round_nodes(plan, mods, hess, proto, art, src, damp, act_order, grid_scales, say, ratios, patches, inline)
    finally:
        torch.set_num_threads(threads)
    if patches:
        _patch_file(art / patches[0][0], [(off, blob) for _f, off, blob in patches])
    if inline:
        for t in proto.graph.initializer:
            if t.name in inline:
                t.raw_data = inline[t.name]
        atomic_write_bytes(model_path, proto.SerializeToString())
    ratios.sort()
    return {"rounding": "gptq", "version": GPTQ_VERSION, "damp": damp, "act_order": act_order, "scales": grid_scales,
            "symmetric": all(n.grid.symmetric for n, _p in plan),
            "bits": list(bits), "nodes": len(plan), "skipped": skipped, "calibration": str(calib),
            "calibration_items": len(rows), "calibration_tokens": sum(len(r) for r in rows),
            "weighted_error_ratio_median": round(ratios[len(ratios) // 2], 4),
            "weighted_error_ratio_max": round(ratios[-1], 4),
            "seconds": round(time.monotonic() - t0, 1)}


def node_weights(n: NbitsNode, raw_b: bytes, raw_s: bytes, raw_z: bytes | None):
    """``(dequantized weights [N, K] float tensor, the scales' numpy dtype)`` of MatMulNBits node ``n`` from the raw
    bytes of its ``B``, ``scales`` and ``zero_points`` (None: symmetric)."""
    import numpy as np
    import torch

    nb = -(-n.k // n.grid.block_size)
    sdtype = np.float16 if len(raw_s) == 2 * n.n * nb else np.float32
    q = unpack_b(np.frombuffer(raw_b, np.uint8).reshape(n.n, nb, -1), n.k, n.grid)
    s = torch.from_numpy(np.frombuffer(raw_s, sdtype).reshape(n.n, nb).astype(np.float32))
    z = (torch.from_numpy(unpack_zero_points(np.frombuffer(raw_z, np.uint8), n.n, nb, n.grid).astype(np.float32))
         if raw_z is not None else torch.full((n.n, nb), float(n.grid.mid)))
    return dequantize(torch.from_numpy(q.astype(np.int64)), s, z, n.grid), sdtype


def require_rounding_of(who: str, n: NbitsNode, old, scales, w, src: Path) -> None:
    """One ``BuildError`` unless node ``n``'s dequantized weights ``old`` are the checkpoint weights ``w`` rounded
    on its grid (``scales``: its per-block scales, any shape): within half a step, or one where the symmetric
    grid clamps (+2^(bits-1) is not a code)."""
    import numpy as np
    import torch

    if tuple(w.shape) != (n.n, n.k):
        raise BuildError(f"{who}: {n.name} is {n.n}x{n.k} (N x K) in the artifact but {tuple(w.shape)} in {src}")
    nb = -(-n.k // n.grid.block_size)
    step = torch.from_numpy(np.array(scales, np.float32).reshape(n.n, nb)).abs()
    step = step.repeat_interleave(n.grid.block_size, 1)[:, :n.k]
    if not bool(((old - w).abs() <= step * 1.01 + 1e-6).all()):
        worst = float(((old - w).abs() / step.clamp(min=1e-12)).max())
        raise BuildError(f"{who}: {n.name}: the artifact's weights are not {src}'s rounded to its grid "
                         f"(worst {worst:.2f} steps off): build the artifact from the same checkpoint")


def _round_nodes(plan, mods, hess, proto, art: Path, src: Path, damp: float, act_order: bool, grid_scales: str,
                 say, ratios: list,
                 patches: list, inline: dict) -> None:
    """GPTQ per node; fills ``ratios`` (weighted error GPTQ/RTN), ``patches`` ((data file, offset, bytes)) and
    ``inline`` (initializer name -> bytes) for the caller to write."""
    import numpy as np
    import torch

    for idx, (n, ps) in enumerate(plan):
        say("GPTQ nodes", idx + 1, len(plan))
        w = torch.cat([mods[p].weight.detach().float() for p in ps])
        raw_b, ext_b = _tensor_bytes(proto, art, n.b)
        raw_s, ext_s = _tensor_bytes(proto, art, n.scales)
        raw_z, ext_z = _tensor_bytes(proto, art, n.zero_points) if n.zero_points else (None, None)
        old, sdtype = node_weights(n, raw_b, raw_s, raw_z)
        require_rounding_of("GPTQ", n, old, np.frombuffer(raw_s, sdtype), w, src)
        nb = -(-n.k // n.grid.block_size)
        h = hess[ps[0]]
        q, s, z = gptq(w, h, n.grid, damp=damp, act_order=act_order, grid_scales=grid_scales)
        if not n.grid.symmetric and ((z - z.round()).abs() > 0).any():
            raise BuildError(f"GPTQ: {n.name}: non-integer zero point")
        if n.grid.symmetric:
            z = torch.full_like(s, float(n.grid.mid))
        new = dequantize(q, s, z, n.grid)
        e_new, e_old = weighted_error(w, new, h), weighted_error(w, old, h)
        ratios.append(e_new / max(e_old, 1e-30))
        new_b = pack_b(q.numpy(), n.grid).tobytes()
        new_s = s.numpy().astype(sdtype).tobytes()
        # what we meant: unpacking what we write gives back the codes and the dequantized weights
        back = unpack_b(np.frombuffer(new_b, np.uint8).reshape(n.n, nb, -1), n.k, n.grid)
        if not np.array_equal(back.astype(np.int64), q.numpy()) or len(new_b) != len(raw_b) or len(new_s) != len(raw_s):
            raise BuildError(f"GPTQ: {n.name}: packed B/scales do not round-trip (a layout bug)")
        items = [(n.b, ext_b, new_b), (n.scales, ext_s, new_s)]
        if n.zero_points:
            new_z = pack_zero_points(z.numpy(), n.grid).reshape(-1).tobytes()
            if len(new_z) != len(raw_z):
                raise BuildError(f"GPTQ: {n.name}: zero points are {len(raw_z)} bytes in the artifact, {len(new_z)} here")
            items.append((n.zero_points, ext_z, new_z))
        for name, ext, blob in items:
            if ext is None:
                inline[name] = blob
            else:
                if patches and patches[0][0] != ext[0]:
                    raise BuildError(f"GPTQ: {art} keeps its weights in more than one external file")
                patches.append((ext[0], ext[1], blob))


def _patch_file(path: Path, patches: list[tuple[int, bytes]]) -> None:
    """Copy ``path`` to a temp name beside it, write each ``(offset, bytes)``, fsync, rename over ``path``."""
    tmp = path.with_name(f".{path.name}.gptq.tmp")
    try:
        shutil.copyfile(path, tmp)
        with open(tmp, "r+b") as f:
            for off, blob in patches:
                f.seek(off)
                f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------- the recipe's ``rounding``

#: The ONNX schemes whose int4 MatMulNBits nodes a recipe's ``rounding: gptq`` rewrites.
ROUNDED_SCHEMES = ("int4", "int4-mixed")


def rounding_inputs(model, scheme: str, heldin: Path | None = None) -> dict | None:
    """What ``rounding`` adds to an ONNX artifact's inputs (its cache key): None when the builder's RTN stands;
    ``heldin``: the recipe's held-in text (read with ``text_tokens``)."""
    r = parse_rounding(getattr(model, "rounding", None), "rounding")
    if r is None or scheme not in ROUNDED_SCHEMES:
        return None
    from host.errors import ConfigError
    from host.fsutil import sha256_file

    calib = model.calibration
    if calib is None or not Path(calib).is_file():
        raise ConfigError(f"{model.name}: rounding: gptq measures its Hessians on the calibration JSON, and "
                          f"{calib or 'none'} is not a file (recipe field 'calibration'; `rkdeploy calib build`)")
    out = {**r.to_dict(), "calibration_sha256": sha256_file(calib)}
    if r.text_tokens:
        from host.transforms import heldin_sha256

        out["text_sha256"] = heldin_sha256(heldin, f"{model.name}: rounding: gptq text_tokens reads")
    return out


def rounding_symmetric(model) -> bool:
    """Does the recipe's ``rounding`` keep the builder's signed int4 (True) or ask for a zero point per block?"""
    r = parse_rounding(getattr(model, "rounding", None), "rounding")
    return True if r is None else r.symmetric


def round_built_artifact(job, src: Path, out_dir: Path, log) -> dict | None:
    """After genai built ``job``'s int4 / int4-mixed artifact into ``out_dir`` from ``src``: GPTQ-round its int4
    nodes when the recipe asks; returns the manifest's ``builder_options.rounding`` record (None: RTN)."""
    r = parse_rounding(getattr(job.model, "rounding", None), "rounding")
    if r is None or job.scheme not in ROUNDED_SCHEMES:
        return None
    from host.ui import progress

    with progress(transient=True) as bar:
        tasks: dict = {}

        def step(what, done, total):
            if what not in tasks:
                tasks[what] = bar.add_task(what, total=total)
            bar.update(tasks[what], completed=done)

        rec = gptq_artifact(out_dir, src, job.model.calibration, damp=r.damp, act_order=r.act_order,
                            grid_scales=r.scales, text=job.recipe.text.heldin, text_tokens=r.text_tokens, log=log,
                            progress=step)
    log(f"GPTQ rounding: {rec['nodes']} int4 MatMuls in {rec['seconds']} s (output error vs the builder's "
        f"rounding, median {rec.get('weighted_error_ratio_median')})")
    return rec
