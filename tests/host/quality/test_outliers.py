"""host.quality.outliers (``rkdeploy quality --outliers``): statistics on a tiny random Llama built from a
config (real torch + transformers, no model files), Spearman against a hand case and a brute-force
formula, and the bad-input lines of the CLI (before any model is loaded)."""

from __future__ import annotations

import math
import random

import pytest

from host.errors import ConfigError
from host.quality.outliers import check_against, group_damage, outlier_jsonl, outlier_model, spearman

# ------------------------------------------------------------------ Spearman (no torch: fast tier)


def test_spearman_hand_cases():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # one swap among 5: rho = 1 - 6 * sum d^2 / (n (n^2 - 1)) = 1 - 6 * 2 / 120 = 0.9
    assert spearman([1, 2, 3, 4, 5], [1, 3, 2, 4, 5]) == pytest.approx(0.9)
    # ties get their average rank: ranks a = [1.5, 1.5, 3], b = [1, 2, 3] -> Pearson of the ranks = sqrt(3)/2
    assert spearman([7, 7, 9], [1, 2, 3]) == pytest.approx(math.sqrt(3) / 2)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))
    with pytest.raises(ValueError):
        spearman([1, 2], [1, 2, 3])


def test_spearman_equals_the_rank_difference_formula_without_ties():
    rnd = random.Random(0)
    for n in (3, 8, 29):
        a = rnd.sample(range(1000), n)
        b = rnd.sample(range(1000), n)
        ra = {v: i for i, v in enumerate(sorted(a))}
        rb = {v: i for i, v in enumerate(sorted(b))}
        d2 = sum((ra[x] - rb[y]) ** 2 for x, y in zip(a, b, strict=True))
        assert spearman(a, b) == pytest.approx(1 - 6 * d2 / (n * (n * n - 1)))


def _layers(damage: dict[str, float]) -> list[dict]:
    return [{"layer": n, "damage": d} for n, d in damage.items()]


def test_group_damage_sums_disjoint_groups_and_check_ranks_them():
    names = {f"model.layers.{i}.mlp.{k}": (10.0 if k == "down_proj" else 1.0) * (i + 1)
             for i in range(6) for k in ("down_proj", "up_proj")}
    names["lm_head"] = 0.5
    g = group_damage(_layers(names), 3)
    # 6 layers in 3 buckets of 2: down_proj@0-1 = 10 * (1 + 2); no @all group (it would double count)
    assert g["down_proj@0-1"] == pytest.approx(30.0)
    assert g["lm_head"] == 0.5
    assert not [k for k in g if k.endswith("@all")]
    assert len(g) == 7
    measured = {"groups": [{"group": k, "kld_increase": v / 100} for k, v in g.items()]
                + [{"group": "down_proj@all", "kld_increase": 1.0}, {"group": "up_proj@all", "kld_increase": 0.1}]}
    c = check_against(_layers(names), measured, 3)
    assert (c["n_groups"], c["rho_groups"]) == (7, pytest.approx(1.0))
    assert c["n_types"] == 3 and c["rho_types"] == pytest.approx(1.0)   # down, up, lm_head
    measured["groups"] = [{**r, "kld_increase": -r["kld_increase"]} for r in measured["groups"]]
    assert check_against(_layers(names), measured, 3)["rho_groups"] == pytest.approx(-1.0)


def test_jsonl_has_one_line_per_layer_then_a_summary():
    import json

    res = {"model": "m", "scheme": "w8a8", "layers": [{"layer": "a", "damage": 2.0}, {"layer": "b", "damage": 1.0}],
           "calib_items": 1, "check": {"rho_groups": 0.5, "n_groups": 2}}
    lines = [json.loads(x) for x in outlier_jsonl(res).splitlines()]
    assert [x["record"] for x in lines] == ["layer", "layer", "summary"]
    assert [x.get("rank") for x in lines[:2]] == [1, 2] and lines[2]["check"]["n_groups"] == 2
    assert all(x["outliers_version"] == 1 and x["scheme"] == "w8a8" for x in lines)


def test_jsonl_is_strict_json_when_a_correlation_is_undefined():
    """Spearman of a constant side is nan: the JSONL says null (jq and JavaScript refuse a bare NaN)."""
    import json
    import math

    res = {"model": "m", "scheme": "w8a8", "layers": [{"layer": "a", "damage": 1.0, "kurtosis_x": math.nan}],
           "check": {"rho_groups": spearman([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]), "n_groups": 3, "by_type": [math.inf]}}
    text = outlier_jsonl(res)
    assert "NaN" not in text and "Infinity" not in text
    layer, summary = [json.loads(x, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}")) for x in text.splitlines()]
    assert layer["kurtosis_x"] is None and summary["check"]["rho_groups"] is None
    assert summary["check"]["by_type"] == [None] and summary["check"]["n_groups"] == 3


# ------------------------------------------------------------------ bad input: one line, before any work


def _recipe(make_recipe, edit):
    from host.config import load_recipe

    return load_recipe(make_recipe(edit))


def test_outlier_model_bad_inputs(make_recipe):
    r = _recipe(make_recipe, None)
    assert outlier_model(r, None).name == "smollm2-135m-instruct"
    with pytest.raises(ConfigError, match=r"--model 'nope' is not in models \(models: smollm2-135m-instruct, "):
        outlier_model(r, "nope")
    with pytest.raises(ConfigError, match=r"--model 'all-minilm-l6-v2' is kind encoder; --outliers reports on LLMs"):
        outlier_model(r, "all-minilm-l6-v2")

    def no_calib(d):
        d["models"][0].pop("calibration")
    with pytest.raises(ConfigError, match=r"models\.0\.calibration: missing; --outliers needs the calibration JSON"):
        outlier_model(_recipe(make_recipe, no_calib), None)

    def no_llm(d):
        d["models"] = d["models"][1:]
    with pytest.raises(ConfigError, match="no model of kind llm for --outliers"):
        outlier_model(_recipe(make_recipe, no_llm), None)


@pytest.mark.parametrize("args,line", [
    (["--model", "nope"], "--model 'nope' is not in models"),
    (["--model", "all-minilm-l6-v2"], "is kind encoder; --outliers reports on LLMs"),
])
def test_cli_bad_input_is_one_line_and_creates_nothing(make_recipe, tmp_path, args, line):
    from tests.conftest import run_cli

    store = tmp_path / "res" / "r.sqlite"
    p = run_cli("quality", "--outliers", "-r", make_recipe(), "-t", "rk3576", "--store", store, *args,
                timeout=120)
    assert p.returncode == 1, p.stderr
    errors = [x for x in p.stderr.splitlines() if x.startswith("rkdeploy: error:")]
    assert len(errors) == 1 and line in errors[0], p.stderr
    assert "outliers …" not in p.stderr and not (tmp_path / "res").exists()


def test_cli_missing_calibration_is_one_line(make_recipe, tmp_path):
    from tests.conftest import run_cli

    def no_calib(d):
        d["models"][0].pop("calibration")
    p = run_cli("quality", "--outliers", "-r", make_recipe(no_calib), "-t", "rk3576", "--store", tmp_path / "r.sqlite",
                timeout=120)
    assert p.returncode == 1
    assert [x for x in p.stderr.splitlines() if x.startswith("rkdeploy: error:")] == [
        p.stderr.strip().splitlines()[-1]]
    assert "models.0.calibration: missing" in p.stderr and not list(tmp_path.glob("outliers-*"))


# ------------------------------------------------------------------ statistics on a tiny random Llama (torch)


@pytest.mark.slow   # real torch + transformers, ~3 s on the 2-core Xeon unloaded (torch import ~5 s)
def test_planted_outlier_channel_ranks_first():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from host.quality.outliers import layer_stats

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                   tie_word_embeddings=True)
    model = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():   # one input channel of layer 1's MLP 300x larger, its weights 300x smaller (the
        # product unchanged, as in trained LLMs): an LLM.int8()-style outlier that only quantization sees
        model.model.layers[1].post_attention_layernorm.weight[5] = 300.0
        for lin in (model.model.layers[1].mlp.gate_proj, model.model.layers[1].mlp.up_proj):
            lin.weight[:, 5] /= 300.0
    g = torch.Generator().manual_seed(1)
    rows = [torch.randint(0, 96, (24,), generator=g).tolist() for _ in range(3)]
    stats = layer_stats(model, rows, "w8a8")
    names = [r["layer"] for r in stats]
    assert len(names) == 3 * 7 + 1 and "lm_head" in names
    # per-token int8 activations: the outlier channel sets the scale of every token, the other channels
    # round to ~0 -> gate/up_proj of layer 1 are the two most damaged layers
    assert set(names[:2]) == {"model.layers.1.mlp.gate_proj", "model.layers.1.mlp.up_proj"}
    top = stats[0]
    assert top["act_absmax"] > 6.0 and top["act_over6"] == pytest.approx(1 / 64)
    assert top["act_chmax_kurtosis"] > 20 and top["act_kurtosis"] > 20
    others = [r for r in stats if r["layer"] not in names[:2]]
    assert top["damage"] > 10 * max(r["damage"] for r in others)
    assert max(r["act_over6"] for r in others) == 0.0
    for r in stats:
        assert r["w_row_ratio"] >= 1 and r["w_absmax"] > 0 and r["damage"] >= 0
    # the model is left as it was (fake_quantized restores every weight)
    assert float(model.model.layers[1].post_attention_layernorm.weight[5].detach()) == 300.0
