"""Issue 16 part A (fast tier): the recipe's ``transform`` / ``sensitive_layers: auto`` / ``budget`` fields,
validated at load (one line naming ``models.N.<field>``), the manifest's ``transform`` / ``mix`` fields,
the inputs hash each builder records (a transform rebuilds only the schemes it serves), and the
int4/int8 plan + rkllm hybrid_rate from a small saved sensitivity JSON. No model files, no export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from host.config import load_recipe
from host.errors import ConfigError

AWQ = {"awq": {"scheme": "w4a16-g64", "grid": [0.5], "samples": 64}}
SQ = {"smoothquant": {"scheme": "w8a8"}}


def _llm(**fields):
    def edit(d):
        d["models"][0].update(fields)
    return edit


def _drop_calibration(d):
    d["models"][0].pop("calibration")
    d["models"][0]["transform"] = AWQ


def _encoder(**fields):
    def edit(d):
        d["models"][1].update(fields)
    return edit


BAD = [
    ("auto without budget", _llm(sensitive_layers="auto"), "models.0.budget", "required with sensitive_layers: auto"),
    ("budget 0", _llm(sensitive_layers="auto", budget=0), "models.0.budget", "(0, 1]"),
    ("budget 1.5", _llm(sensitive_layers="auto", budget=1.5), "models.0.budget", "(0, 1]"),
    ("budget text", _llm(sensitive_layers="auto", budget="quarter"), "models.0.budget", "(0, 1]"),
    ("budget bool", _llm(sensitive_layers="auto", budget=True), "models.0.budget", "(0, 1]"),
    ("budget without int4-mixed", _llm(budget=0.25), "models.0.budget", "is read only by the onnx scheme int4-mixed"),
    ("int4-mixed with no layers", _llm(onnx=["int4-mixed"], sensitive_layers=[]), "models.0.sensitive_layers",
     "int4-mixed needs"),
    ("auto on an encoder", _encoder(sensitive_layers="auto", budget=0.5), "models.1.sensitive_layers", "for LLMs"),
    ("transform on an encoder", _encoder(transform=AWQ), "models.1.transform", "for LLMs"),
    ("unknown method", _llm(transform={"gptx": {"scheme": "w4a16"}}), "models.0.transform", "unknown method 'gptx'"),
    ("two methods in one mapping", _llm(transform={**AWQ, **SQ}), "models.0.transform", "smoothquant"),
    ("scheme without fake-quant", _llm(transform={"awq": {"scheme": "int4"}}), "models.0.transform",
     "awq.scheme: 'int4' has no fake-quant"),
    ("grid outside [0, 1]", _llm(transform={"awq": {"scheme": "w4a16", "grid": [0.5, 2]}}), "models.0.transform",
     "awq.grid"),
    ("samples too small", _llm(transform={"awq": {"scheme": "w4a16", "samples": 3}}), "models.0.transform",
     "awq.samples"),
    ("unknown key", _llm(transform={"awq": {"scheme": "w4a16", "alpha": 0.5}}), "models.0.transform",
     "allowed keys are scheme, grid, samples"),
    ("two transforms for one kind of scheme", _llm(transform=[AWQ, {"awq": "w4a16-g32"}]), "models.0.transform",
     "two transforms serve the same schemes (4-bit grouped weights only)"),
    ("empty list", _llm(transform=[]), "models.0.transform", "empty list"),
    ("no calibration", _drop_calibration, "models.0.transform", "awq(w4a16-g64) needs the model's 'calibration'"),
]


@pytest.mark.parametrize("case,edit,field,text", BAD, ids=[b[0] for b in BAD])
def test_bad_new_field_is_one_line_naming_the_field(make_recipe, case, edit, field, text):
    with pytest.raises(ConfigError) as e:
        load_recipe(make_recipe(edit))
    msg = str(e.value)
    assert len(msg.splitlines()) == 1, msg
    assert f"{field}: " in msg and text in msg, msg
    assert "line " in msg                     # the YAML line of the field


def test_a_lone_rotate_needs_no_calibration_and_serves_every_quantized_scheme(make_recipe):
    from host.build.source import transform_for, transform_inputs

    def edit(d):
        d["models"][0].pop("calibration")
        d["models"][0]["transform"] = "rotate"
    m = load_recipe(make_recipe(edit)).models[0]
    assert {s: transform_for(m, s) is not None for s in ("int4", "w8a8", "w4a16", "fp32", "gguf-q4_0")} == \
        {"int4": True, "w8a8": True, "w4a16": True, "fp32": False, "gguf-q4_0": False}
    assert "calibration_sha256" not in transform_inputs(m, "int4")
    with pytest.raises(ConfigError, match="models.0.transform: a transform with no scheme serves every"):
        load_recipe(make_recipe(_llm(transform=["rotate", AWQ])))


def test_good_fields_load_and_normalize(make_recipe):
    r = load_recipe(make_recipe(_llm(sensitive_layers="auto", budget=1, onnx=["int4", "int4-mixed", "int8-dyn"],
                                     transform=[AWQ, SQ])))
    m = r.models[0]
    assert m.budget == 1.0 and m.sensitive_layers == "auto"
    assert m.float_layers == ["down_proj"]       # int8-dyn under auto keeps the kind's default in float
    assert [t.label() for t in m.transforms()] == ["awq(w4a16-g64)", "smoothquant(w8a8)"]
    assert m.transforms()[0].samples == 64 and m.transforms()[0].grid == (0.5,)


def _job(recipe, scheme, kind="onnx", target="rk3576"):
    from host.plan import BuildJob

    m = recipe.models[0]
    return BuildJob(m, target, kind, scheme, Path("/nonexistent") / scheme, recipe)


def test_transform_serves_only_its_kind_of_scheme(make_recipe):
    from host.build.source import transform_for

    r = load_recipe(make_recipe(_llm(transform=[AWQ, SQ], onnx=["fp32", "int8", "int4", "int8-dyn"])))
    m = r.models[0]
    got = {s: (t.label() if (t := transform_for(m, s)) else None)
           for s in ("fp32", "int8", "int4", "int8-dyn", "w4a16", "w4a16-g64", "w8a8", "gguf-q4_0", "gguf-q8_0")}
    assert got == {"fp32": None, "int8": None, "int4": "awq(w4a16-g64)", "int8-dyn": "smoothquant(w8a8)",
                   "w4a16": None, "w4a16-g64": "awq(w4a16-g64)", "w8a8": "smoothquant(w8a8)",
                   "gguf-q4_0": None, "gguf-q8_0": None}
    # per-channel w4a16 gets its own search (AWQ for g64 made it worse: README issue 16)
    r = load_recipe(make_recipe(_llm(transform=[AWQ, {"awq": "w4a16"}])))
    assert transform_for(r.models[0], "w4a16").label() == "awq(w4a16)"
    assert transform_for(r.models[0], "w4a16-g128").label() == "awq(w4a16-g64)"


def test_inputs_hash_changes_only_for_the_schemes_a_transform_serves(make_recipe):
    """The artifact's cache key: a transform (or a change of it) moves int4's hash and leaves fp32, int8,
    int8-dyn (served by SmoothQuant only) and the GGUF/rkllm model fields alone."""
    from host.build import registry
    from host.export import job_inputs
    from host.manifest import inputs_hash

    def hashes(**fields):
        r = load_recipe(make_recipe(_llm(onnx=["fp32", "int8", "int4", "int8-dyn"], **fields)))
        b = registry.get("onnx").builder()
        return {s: inputs_hash(job_inputs(_job(r, s), b, "sha")) for s in ("fp32", "int8", "int4", "int8-dyn")}

    plain, awq = hashes(), hashes(transform=AWQ)
    finer = hashes(transform={"awq": {**AWQ["awq"], "samples": 128}})
    sq = hashes(transform=SQ)
    assert awq["int4"] != plain["int4"] != finer["int4"] != awq["int4"]
    assert {s: awq[s] for s in ("fp32", "int8", "int8-dyn")} == {s: plain[s] for s in ("fp32", "int8", "int8-dyn")}
    assert sq["int8-dyn"] != plain["int8-dyn"] and sq["int4"] == plain["int4"]
    for kind in registry.kinds():       # the model fields hashed by every kind leave transform and budget out
        assert {"transform", "budget"} <= kind.irrelevant_fields()


def test_mix_inputs_are_in_int4_mixed_only(make_recipe, llm_dir):   # the key names the evaluation: model sha
    from host.build import onnx_int8

    r = load_recipe(make_recipe(_llm(onnx=["int4", "int4-mixed"], sensitive_layers="auto", budget=0.25)))
    assert onnx_int8.inputs(_job(r, "int4-mixed"))["mix"]["budget"] == 0.25
    assert "mix" not in onnx_int8.inputs(_job(r, "int4"))
    r2 = load_recipe(make_recipe(_llm(onnx=["int4", "int4-mixed"], sensitive_layers="auto", budget=0.3)))
    assert onnx_int8.inputs(_job(r2, "int4-mixed")) != onnx_int8.inputs(_job(r, "int4-mixed"))
    assert onnx_int8.inputs(_job(r2, "int4")) == onnx_int8.inputs(_job(r, "int4"))


def test_int4_mixed_key_moves_with_what_the_sensitivity_measures(make_recipe, llm_dir):
    """The plan comes from a sensitivity run on the recipe's held-out text and windows: changing them must rebuild
    int4-mixed (review finding: the key held only the budget, so a changed window reused a stale plan)."""
    from host.build import onnx_int8

    def mixed(**quality):
        def edit(d):
            _llm(onnx=["int4", "int4-mixed"], sensitive_layers="auto", budget=0.25)(d)
            d["quality"] = {**d["quality"], **quality}
        r = load_recipe(make_recipe(edit))
        return onnx_int8.inputs(_job(r, "int4-mixed")), onnx_int8.inputs(_job(r, "int4"))

    (base, base4), (win, win4) = mixed(), mixed(window=128)
    assert base != win and base["mix"]["sensitivity"]["eval"] != win["mix"]["sensitivity"]["eval"]
    assert base4 == win4                                   # plain int4 does not depend on the evaluation
    assert mixed(eval_tokens=512)[0] != base               # fewer tokens than the sensitivity's 1,024 changes it


def test_transformed_checkpoint_key_names_the_transform():
    from host.transforms import parse_transform, transform_key

    keys = {transform_key("m", "c", parse_transform(t)) for t in
            (AWQ, {"awq": {**AWQ["awq"], "samples": 128}}, {"awq": {**AWQ["awq"], "grid": [0.4]}}, SQ)}
    assert len(keys) == 4
    # the default sample size stays out of the key: checkpoints cached before the knob are still found
    assert parse_transform({"awq": "w4a16-g64"}).to_dict() == {"awq": {"scheme": "w4a16-g64",
                                                                       "grid": [i / 10 for i in range(11)]}}


def test_check_lines_say_what_will_be_transformed(make_recipe):
    from host.build.source import check_lines

    r = load_recipe(make_recipe(_llm(transform=[AWQ, SQ], onnx=["fp32", "int4"])))
    lines = check_lines(r, "rk3588")
    assert lines == ["smollm2-135m-instruct/rk3588/int4 (onnx): transform awq(w4a16-g64) folded into the float checkpoint",
                     "smollm2-135m-instruct/rk3588/w8a8 (rkllm): transform smoothquant(w8a8) folded into the float "
                     "checkpoint"]
    r = load_recipe(make_recipe(_llm(transform=SQ, onnx=["int4"], targets={"rk3576": ["w4a16"]})))
    assert check_lines(r, "rk3576") == ["smollm2-135m-instruct: transform smoothquant(w8a8) serves no scheme built "
                                        "for rk3576"]


def test_check_prints_what_will_be_transformed(rk, make_recipe, builtin_models):
    """The CLI (real: `check` looks at the materialised model; ~3 s)."""
    proc = rk("check", "--recipe", make_recipe(_llm(transform=AWQ, sensitive_layers="auto", budget=0.25,
                                                    onnx=["int4", "int4-mixed"])), "--target", "rk3576")
    out = " ".join(proc.stdout.split())
    assert proc.returncode == 0, proc.stderr
    assert "smollm2-135m-instruct/rk3576/int4 (onnx): transform awq(w4a16-g64) folded into the float checkpoint" in out
    assert "int4-mixed (onnx): transform awq(w4a16-g64) folded into the float checkpoint; int4/int8 mix within " \
           "0.25x fp32 by sensitivity" in out
    assert "w4a16 (rkllm): hybrid_rate from the int4/int8 plan within 0.25x fp32" in out
    assert "w8a8 (rkllm)" not in out       # awq serves no 8-bit scheme


# --- manifest ---------------------------------------------------------------------------------------

def _manifest(**extra):
    return {"schema": 1, "files": {"model.onnx": {"sha256": "0" * 64, "size": 3}}, "entry": "model.onnx",
            "format": "onnx-genai", "scheme": "int4-mixed", **extra}


def test_manifest_round_trips_transform_and_mix_and_old_ones_still_load():
    from board.manifest import Manifest

    tr = {"label": "awq(w4a16-g64)", "awq": {"scheme": "w4a16-g64", "grid": [0.5]}, "version": 1, "key": "ab"}
    mix = {"budget": 0.25, "int8_node_count": 14, "int8_nodes": ["/lm_head/MatMul"], "frontier": []}
    d = _manifest(transform=tr, mix=mix)
    m = Manifest.from_dict(json.loads(json.dumps(d)))
    assert m.to_dict() == d and m.transform_label == "awq(w4a16-g64)" and m.mix["int8_node_count"] == 14
    old = Manifest.from_dict(_manifest())            # written before the fields existed
    assert old.transform is None and old.mix is None and old.transform_label is None and "transform" not in old.to_dict()


@pytest.mark.parametrize("extra,text", [
    ({"transform": {"awq": {}}}, "transform.label must be a printable string"),
    ({"transform": {"label": "awq\x1b[31m"}}, "transform.label must be a printable string"),
    ({"transform": {"label": "awq\x9b31m"}}, "transform.label must be a printable string"),      # C1 CSI
    ({"transform": {"label": "awq\u202e)61g-61a4w("}}, "transform.label must be a printable string"),  # bidi
    ({"transform": "awq"}, "field 'transform' must be an object"),
    ({"mix": {"budget": 2}}, "mix.budget must be a number in (0, 1]"),
    ({"mix": {"int8_node_count": -1}}, "mix.int8_node_count must be a whole number >= 0"),
])
def test_manifest_refuses_a_bad_transform_or_mix(extra, text):
    from board.manifest import Manifest, ManifestError

    with pytest.raises(ManifestError) as e:
        Manifest.from_dict(_manifest(**extra), "art/manifest.json")
    assert str(e.value).startswith("art/manifest.json: ") and text in str(e.value)


def test_quality_row_and_table_show_transform_and_mix(tmp_path):
    from board.manifest import Manifest
    from host.config import ModelSpec
    from host.manifest import Artifact
    from host.quality.rows import quality_row
    from host.quality.table import prep_cell

    man = Manifest.from_dict(_manifest(transform={"label": "awq(w4a16-g64)"}, mix={"budget": 0.25, "int8_node_count": 14}))
    m = ModelSpec(name="x", kind="llm", source="builtin:x")
    row = quality_row(m, "rk3576", "int4-mixed", "measured", "onnxruntime", {"ppl_ratio": 1.1},
                      artifact=Artifact(tmp_path, man), env={})
    assert (row["transform"], row["budget"], row["int8_nodes"]) == ("awq(w4a16-g64)", 0.25, 14)
    assert prep_cell(row) == "awq(w4a16-g64); budget 0.25x fp32, 14 MatMuls int8"
    sim = quality_row(m, "rk3576", "w4a16-g64", "simulated", "torch-fakequant", {}, env={}, transform="awq(w4a16-g64)")
    assert sim["transform"] == "awq(w4a16-g64)" and "budget" not in sim


# --- plan from a small saved sensitivity JSON ----------------------------------------------------------

SENSITIVITY = {"model": "tiny", "scheme": "w4a16-g32", "n_tokens": 1024, "groups": [
    {"group": "down_proj@0-0", "layers": 1, "kld_increase": 0.30},
    {"group": "down_proj@1-1", "layers": 1, "kld_increase": 0.02},
    {"group": "lm_head", "layers": 1, "kld_increase": 0.20},
    {"group": "v_proj@0-0", "layers": 1, "kld_increase": 0.05},
    {"group": "q_proj@all", "layers": 2, "kld_increase": 0.01},
    {"group": "down_proj@all", "layers": 2, "kld_increase": 0.33}]}


def _tiny_model():
    torch = pytest.importorskip("torch")

    def layer():
        attn, mlp, blk = torch.nn.Module(), torch.nn.Module(), torch.nn.Module()
        for n, o in (("q_proj", 32), ("k_proj", 16), ("v_proj", 16), ("o_proj", 32)):
            setattr(attn, n, torch.nn.Linear(32, o, bias=False))
        mlp.down_proj = torch.nn.Linear(64, 32, bias=False)
        blk.self_attn, blk.mlp = attn, mlp
        return blk

    class Tiny(torch.nn.Module):
        def get_input_embeddings(self):
            return self.embed

    model = Tiny()
    model.embed = torch.nn.Embedding(128, 32)
    model.model = torch.nn.Module()
    model.model.layers = torch.nn.ModuleList([layer(), layer()])
    model.lm_head = torch.nn.Linear(32, 128, bias=False)
    return model


def test_plan_from_a_saved_sensitivity_json_and_the_rkllm_hybrid_rate(tmp_path):
    from host.build.mixed import INT4_BYTES, INT8_BYTES, LM_HEAD, frontier_lines, int8_share, plan_for_model
    from host.build.rkllm import hybrid_rate_from_plan

    saved = tmp_path / "sensitivity.json"
    saved.write_text(json.dumps(SENSITIVITY))
    groups = json.loads(saved.read_text())["groups"]
    model = _tiny_model()
    loose = plan_for_model(model, groups, 1.0)
    tight = plan_for_model(model, groups, loose.frontier[1]["ratio"] + 5e-5)   # room for the first step only (ratios: 4 digits)
    down0 = "/model/layers.0/mlp/down_proj/MatMul"
    assert tight.int8_nodes == (down0,)          # the most damaging per byte first (bucketed groups, @all ignored)
    assert set(loose.int8_nodes) >= {down0, LM_HEAD, "/model/layers.0/attn/qkv_proj/MatMul"}
    ratios = [p["ratio"] for p in loose.frontier]
    klds = [p["predicted_kld"] for p in loose.frontier]
    assert ratios == sorted(ratios) and klds == sorted(klds, reverse=True) and loose.bytes <= loose.fp32_bytes
    lines = frontier_lines(loose)
    assert len(lines) == len(loose.frontier) + 1 and "(all int4)" in lines[1]
    share = int8_share(tight, model)
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, type(model.lm_head)))
    assert share == pytest.approx(64 * 32 / linear)
    assert hybrid_rate_from_plan(share) == round(share, 3) and hybrid_rate_from_plan(1.0) == 0.99
    with pytest.raises(Exception, match="raise the budget"):
        plan_for_model(model, groups, 0.01)
    # a sensitivity naming fewer groups predicts the same all-int4 size: every linear is counted, a packed
    # qkv node weighs q, k and v (an export with a partial saved JSON predicted 0.189x fp32 for a 0.269x artifact)
    partial = plan_for_model(model, [{"group": "q_proj@all", "layers": 2, "kld_increase": 0.01}], 1.0)
    assert partial.frontier[0]["ratio"] == loose.frontier[0]["ratio"]
    step = (partial.frontier[1]["ratio"] - partial.frontier[0]["ratio"]) * partial.fp32_bytes   # ratios: 4 digits
    assert step == pytest.approx(2 * 32 * 64 * (INT8_BYTES - INT4_BYTES), abs=1e-4 * partial.fp32_bytes)
    # ... the whole qkv node (q 32 + k 16 + v 16 rows) of both layers


PRE = {"rotate": {}, "gptq": {"scheme": "w4a16-g64"}}


def test_a_gptq_prerounding_serves_exactly_its_scheme_ahead_of_its_kind(make_recipe):
    """``rotate+gptq(w4a16-g64)`` takes w4a16-g64 (rkllm and its simulated row) from the AWQ transform of its kind;
    the other grouped 4-bit schemes (ONNX int4's block 32, w4a16-g32) keep AWQ: another grid would round the
    rounded weights again."""
    from host.build.source import check_lines, transform_for, transform_inputs

    r = load_recipe(make_recipe(_llm(transform=[AWQ, PRE], onnx=["int4"])))
    m = r.models[0]
    got = {s: (t.label() if (t := transform_for(m, s)) else None) for s in ("int4", "w4a16-g64", "w4a16-g32",
                                                                          "w4a16", "w8a8")}
    assert got == {"int4": "awq(w4a16-g64)", "w4a16-g64": "rotate+gptq(w4a16-g64)", "w4a16-g32": "awq(w4a16-g64)",
                   "w4a16": None, "w8a8": None}
    pre = transform_inputs(m, "w4a16-g64", r.text.heldin)   # the held-in text it calibrates on is in the key
    assert pre["pq"] == 1 and len(pre["text_sha256"]) == 64
    assert not {"pq", "text_sha256"} & set(transform_inputs(m, "int4", r.text.heldin))
    with pytest.raises(ConfigError, match="calibrates on the recipe's held-in text, and none is not a file"):
        transform_inputs(m, "w4a16-g64")
    alone = load_recipe(make_recipe(_llm(transform={"gptq": "w4a16-g64"}, onnx=["int4"]))).models[0]
    assert transform_for(alone, "int4") is None and transform_for(alone, "w4a16-g64").label() == "gptq(w4a16-g64)"
    assert ("smollm2-135m-instruct/rk3576/w4a16-g64 (rkllm): transform rotate+gptq(w4a16-g64) rounds the checkpoint "
            "onto this scheme's grid (not equivalent)") in check_lines(r, "rk3576")
    # rk3588 builds no w4a16-g64: the pre-rounding is named idle (AWQ still serves its int4)
    assert check_lines(r, "rk3588")[-1] == ("smollm2-135m-instruct: transform rotate+gptq(w4a16-g64) serves no scheme "
                                            "built for rk3588")
    with pytest.raises(ConfigError, match=r"models.0.transform: two transforms serve the same schemes \(w4a16-g64\)"):
        load_recipe(make_recipe(_llm(transform=[PRE, {"gptq": "w4a16-g64"}])))


def test_rkllm_keeps_a_prerounded_checkpoint_on_its_grid(make_recipe):
    """auto resolves to round-to-nearest (grq would search its own ranges) with a note; grq/gdq and hybrid_rate are
    recipe problems before any build."""
    from host.build.rkllm import mix_hybrid, resolve_algorithm, scheme_problems, toolkit_args

    r = load_recipe(make_recipe(_llm(transform=[AWQ, PRE])))
    args = toolkit_args(_job(r, "w4a16-g64", kind="rkllm"), model_dir=Path("/m"), gpu=True)
    assert args["build"]["quantized_algorithm"] == "normal" and "pre-rounded onto w4a16-g64's grid" in args["notes"][0]
    assert toolkit_args(_job(r, "w4a16", kind="rkllm"), model_dir=Path("/m"), gpu=True)["build"][
        "quantized_algorithm"] == "grq"
    assert resolve_algorithm("auto", "w4a16-g64", True) == ("grq", None)
    m = r.models[0]
    assert scheme_problems(m, "rk3576", "w4a16-g64") == [] and scheme_problems(m, "rk3576", "w4a16") == []

    def problems(**rkllm):
        r = load_recipe(make_recipe(_llm(transform=[AWQ, PRE], rkllm={"algorithm": "auto", **rkllm})))
        return scheme_problems(r.models[0], "rk3576", "w4a16-g64")
    assert "rkllm.algorithm 'grq' would re-round the checkpoint" in problems(algorithm="grq")[0]
    assert "rkllm.hybrid_rate 0.2 mixes other grids into w4a16-g64" in problems(hybrid_rate=0.2)[0]
    r = load_recipe(make_recipe(_llm(transform={"gptq": "w4a16"}, sensitive_layers="auto", budget=0.25,
                                     onnx=["int4-mixed"])))
    assert not mix_hybrid(_job(r, "w4a16", kind="rkllm"))       # the plan's hybrid_rate would mix grids in
