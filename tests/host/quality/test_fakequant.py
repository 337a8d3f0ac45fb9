"""host.fakequant: the torch fake-quant behind the simulated vendor rows (unit level, real torch)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from host.fakequant import (  # noqa: E402
    QuantSpec,
    definition,
    fake_quantized,
    layer_groups,
    quant_act_per_tensor_asym,
    quant_act_per_token,
    quant_weight,
    spec,
)
from host.schemes import describe  # noqa: E402


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)


def _levels(row) -> int:
    return len(torch.unique(row))


@pytest.mark.parametrize("bits", [8, 4])
def test_per_channel_weights_error_at_most_half_a_step(gen, bits):
    w = torch.randn(16, 96, generator=gen) * torch.logspace(-2, 1, 16)[:, None]   # rows of very different scale
    q = quant_weight(w, bits, None)
    qmax = 2 ** (bits - 1) - 1
    step = w.abs().amax(-1, keepdim=True) / qmax
    assert ((w - q).abs() <= step / 2 + 1e-6 * step).all()
    # each row uses its own grid: integer multiples of its step, at most 2*qmax+1 levels, absmax exact
    k = q / step
    assert torch.allclose(k, k.round(), atol=1e-4)
    assert all(_levels(q[i]) <= 2 * qmax + 1 for i in range(16))
    assert torch.allclose(q.abs().amax(-1), w.abs().amax(-1))
    # a small row is not crushed by a big one (per channel, not per tensor)
    rel = (w - q).abs().amax(-1) / w.abs().amax(-1)
    assert (rel <= 0.5 / qmax + 1e-6).all()


def test_per_tensor_weights_share_one_step(gen):
    w = torch.randn(8, 32, generator=gen)
    w[0] *= 100
    q = quant_weight(w, 8, None, per_tensor=True)
    step = w.abs().max() / 127
    assert ((w - q).abs() <= step / 2 + 1e-6).all()
    assert (q[1:] / step).round().abs().max() <= 3   # small rows fall on a few levels of the big row's grid


def test_group_size_bounds_error_per_group(gen):
    w = torch.randn(4, 128, generator=gen) * 0.01
    w[:, :32] *= 1000                     # one loud group per row
    per_channel = quant_weight(w, 4, None)
    grouped = quant_weight(w, 4, 32)
    quiet = slice(32, 128)
    # per-channel: the loud group sets the step, the quiet groups round to zero
    assert (per_channel[:, quiet] == 0).all()
    # group-wise: every group has its own step, error <= half of it
    g = w.reshape(4, 4, 32)
    step = (g.abs().amax(-1, keepdim=True) / 7).expand_as(g).reshape(4, 128)
    assert ((w - grouped).abs() <= step / 2 + 1e-7).all()
    assert (w[:, quiet] - grouped[:, quiet]).abs().max() < 0.1 * (w[:, quiet] - per_channel[:, quiet]).abs().max()
    # smaller groups never increase the error
    err = {gs: (w - quant_weight(w, 4, gs)).pow(2).mean().item() for gs in (128, 64, 32)}
    assert err[32] <= err[64] <= err[128]
    assert quant_weight(w, 4, 128).equal(quant_weight(w, 4, None))   # one group = per channel


def test_group_must_divide_in_features():
    with pytest.raises(ValueError, match="group 128 does not divide in_features 576"):
        quant_weight(torch.ones(4, 576), 4, 128)


def test_per_token_activations_each_row_own_scale(gen):
    x = torch.randn(3, 5, 64, generator=gen)
    x[0, 0] *= 1000                          # an outlier token
    q = quant_act_per_token(x, 8)
    step = x.abs().amax(-1, keepdim=True) / 127
    assert ((x - q).abs() <= step / 2 + 1e-6 * step).all()
    # the outlier token does not change any other token's quantization
    x2 = x.clone()
    x2[0, 0] = torch.randn(64, generator=gen)
    assert quant_act_per_token(x2, 8)[0, 1:].equal(q[0, 1:]) and quant_act_per_token(x2, 8)[1:].equal(q[1:])
    assert quant_act_per_token(q, 8).allclose(q, atol=1e-6)  # idempotent on its own grid


def test_per_tensor_asymmetric_activations():
    x = torch.linspace(-1.0, 3.0, 1001)
    q = quant_act_per_tensor_asym(x)
    step = 4.0 / 255
    assert ((x - q).abs() <= step / 2 + 1e-6).all()
    assert _levels(q) <= 256
    assert quant_act_per_tensor_asym(torch.zeros(4)).equal(torch.zeros(4))
    # zero is exact (the zero point), so ReLU-like zeros stay zero
    y = torch.tensor([0.0, 0.5, 2.0])
    assert quant_act_per_tensor_asym(y)[0] == 0


def test_spec_of_each_scheme():
    assert spec("w8a8") == QuantSpec(8, None, 8)
    assert spec("w8a8-g128") == QuantSpec(8, 128, 8)
    assert spec("w4a16") == QuantSpec(4, None, None)
    assert spec("w4a16-g64") == QuantSpec(4, 64, None)
    assert spec("fp16").half and spec("int8-dyn") == QuantSpec(8, None, 8, act_per_tensor=True)
    for onnx_only in ("int8", "int4", "fp32", "int8-qdq"):
        with pytest.raises(ValueError, match="no fake-quant"):
            spec(onnx_only)
    d = definition("w4a16-g64")
    assert describe("w4a16-g64") in d and "group 64" in d and "round-to-nearest" in d


class Tied(torch.nn.Module):
    """Embedding tied to the output projection, like SmolLM2's lm_head."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)                 # the Linear bias init
        g = torch.Generator().manual_seed(1)
        self.embed = torch.nn.Embedding(50, 64)
        self.proj = torch.nn.Linear(64, 64)
        self.lm_head = torch.nn.Linear(64, 50, bias=False)
        with torch.no_grad():
            self.embed.weight.copy_(torch.randn(50, 64, generator=g))
            self.proj.weight.copy_(torch.randn(64, 64, generator=g) * 0.1)
        self.lm_head.weight = self.embed.weight

    def forward(self, ids):
        return self.lm_head(self.proj(self.embed(ids)))


def test_fake_quantized_is_exact_simulation_and_restores():
    m = Tied().eval()
    ids = torch.arange(20)[None]
    ref = m(ids).detach()
    emb0, proj_w0 = m.embed.weight, m.proj.weight
    with torch.no_grad(), fake_quantized(m, "w8a8") as names:
        assert names == ["proj", "lm_head"]
        # the embedding lookup stays float even though lm_head's weight is tied to it
        assert m.embed.weight is emb0 and m.lm_head.weight is not emb0
        h = m.embed(ids)
        hq = torch.nn.functional.linear(quant_act_per_token(h), quant_weight(proj_w0.detach(), 8, None), m.proj.bias)
        expect = torch.nn.functional.linear(quant_act_per_token(hq), quant_weight(emb0.detach(), 8, None))
        got = m(ids)
        assert torch.allclose(got, expect, atol=1e-5)
        assert not torch.allclose(got, ref, atol=1e-4)
    assert m.embed.weight is emb0 and m.lm_head.weight is emb0 and m.proj.weight is proj_w0
    assert m(ids).equal(ref)
    assert not m.proj._forward_pre_hooks


def test_fake_quantized_select_and_weight_only():
    m = Tied().eval()
    ids = torch.arange(20)[None]
    with torch.no_grad(), fake_quantized(m, "w4a16", lambda n: n == "proj") as names:
        assert names == ["proj"]
        assert m.lm_head.weight is m.embed.weight
        assert not m.proj._forward_pre_hooks          # a16: activations stay float
        assert torch.equal(m.proj.weight, quant_weight(Tied().proj.weight.detach(), 4, None))
    with torch.no_grad(), fake_quantized(m, "fp16"):
        assert m.proj.weight.equal(m.proj.weight.half().float())
    assert m(ids).equal(Tied()(ids))


def test_fake_quantized_group_error_names_layer_and_changes_nothing():
    m = Tied().eval()
    w0 = m.proj.weight
    with pytest.raises(ValueError, match=r"w4a16-g128: group 128 does not divide the input width of layer proj \(64"):
        with fake_quantized(m, "w4a16-g128"):
            pass
    assert m.proj.weight is w0


def test_layer_groups_by_type_and_depth():
    names = [f"model.layers.{i}.mlp.{k}" for i in range(30) for k in ("down_proj", "up_proj")] + ["lm_head"]
    g = layer_groups(names, 3)
    assert g["down_proj@0-9"] == [f"model.layers.{i}.mlp.down_proj" for i in range(10)]
    assert len(g["down_proj@all"]) == 30 and len(g["up_proj@20-29"]) == 10 and g["lm_head"] == ["lm_head"]
    assert len(g) == 2 * 4 + 1
    one = layer_groups(names, 1)
    assert sorted(one) == ["down_proj@all", "lm_head", "up_proj@all"]   # no duplicate "@0-29" group
