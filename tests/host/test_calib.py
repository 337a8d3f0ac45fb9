"""`rkdeploy calib validate`: each malformed kind → non-zero exit, one line naming item and field."""

from __future__ import annotations

import json

import pytest

from host.calib import ModelText, heldin_prompts
from host.config import load_recipe
from tests.conftest import DEFAULT_RECIPE


@pytest.fixture(scope="module")
def good_items(llm_dir) -> list[dict]:
    text = ModelText(llm_dir)
    prompts = heldin_prompts(load_recipe(DEFAULT_RECIPE), 20)
    return [{"input": text.apply_chat_template([{"role": "user", "content": p}]), "target": f"Answer number {i}."}
            for i, p in enumerate(prompts)]


def _validate(rk, tmp_path, payload, raw: bool = False):
    f = tmp_path / "calib.json"
    f.write_text(payload if raw else json.dumps(payload))
    proc = rk("calib", "validate", f)
    assert "Traceback" not in proc.stderr
    errs = [ln.removeprefix("rkdeploy: error: ") for ln in proc.stderr.splitlines() if ln.startswith("rkdeploy: error: ")]
    return proc, errs, str(f)


def test_valid_file_passes(rk, tmp_path, good_items):
    proc, errs, _ = _validate(rk, tmp_path, good_items)
    assert proc.returncode == 0, proc.stderr
    assert errs == [] and "20 items" in proc.stdout


def test_shipped_calibration_is_valid(rk, builtin_models):  # its tokenizer and chat template
    proc = rk("calib", "validate", "calib_data/smollm2-135m-instruct.calib.json")
    assert proc.returncode == 0, proc.stderr
    assert "warning" not in proc.stderr


def test_fewer_than_20_items_warns(rk, tmp_path, good_items):
    proc, errs, _ = _validate(rk, tmp_path, good_items[:3])
    assert proc.returncode == 0
    assert "only 3 items" in proc.stderr


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ("{not json", "not valid JSON: line 1 column 2"),
        ('{"input": "x", "target": "y"}', "top level must be a JSON list"),
        ("[]", "the list is empty"),
    ],
)
def test_file_level_problems(rk, tmp_path, payload, expected):
    proc, errs, f = _validate(rk, tmp_path, payload, raw=True)
    assert proc.returncode == 1
    assert len(errs) == 1 and errs[0].startswith(f) and expected in errs[0]


def _mutate(items, index, value):
    items = [dict(x) for x in items]
    items[index] = value(items[index]) if callable(value) else value
    return items


@pytest.mark.parametrize(
    ("mutation", "expected"),
    [
        (lambda it: "just a string", "item 2: must be an object with keys input, target; got str"),
        (lambda it: {"input": it["input"]}, "item 2: missing field 'target'"),
        (lambda it: {**it, "answer": "x"}, "item 2: unknown field 'answer' (allowed: input, target)"),
        (lambda it: {**it, "target": 42}, "item 2: field 'target' must be a string, got int"),
        (lambda it: {**it, "target": "   "}, "item 2: field 'target' is empty"),
        (lambda it: {**it, "input": "Summarize this report: no template here."}, "item 2: field 'input' lacks the model's chat template"),
        (lambda it: {**it, "input": "<|im_start|>" + it["input"]}, "item 2: field 'input' starts with BOS '<|im_start|>' twice"),
        (lambda it: {**it, "target": "word " * 5000}, "item 2: fields 'input'+'target' are"),
    ],
    ids=["not-object", "missing-key", "extra-key", "non-string", "empty", "no-template", "double-bos", "too-long"],
)
def test_item_problems_name_item_and_field(rk, tmp_path, good_items, mutation, expected):
    items = [dict(x) for x in good_items]
    items[2] = mutation(items[2])
    proc, errs, f = _validate(rk, tmp_path, items)
    assert proc.returncode == 1
    assert len(errs) == 1, errs
    assert errs[0].startswith(f"{f}: ") and expected in errs[0]


def test_duplicates(rk, tmp_path, good_items):
    items = good_items + [dict(good_items[4])]
    proc, errs, _ = _validate(rk, tmp_path, items)
    assert proc.returncode == 1
    assert errs == [f"{tmp_path / 'calib.json'}: item 20: field 'input' duplicates item 4"]


def test_heldout_text_in_calibration_is_rejected(rk, tmp_path, good_items, default_recipe_data):
    heldout_doc = open(default_recipe_data["text"]["heldout"]).readline().strip()
    items = [dict(x) for x in good_items]
    items[5]["target"] = heldout_doc[:400]
    proc, errs, _ = _validate(rk, tmp_path, items)
    assert proc.returncode == 1
    assert len(errs) == 1 and "item 5: field 'target' contains held-out evaluation text" in errs[0]


def test_calib_build_vendor_method(tmp_path, llm_dir):
    """Small build: template applied, greedy answers from the float model, written atomically, valid."""
    from host.calib import build_calibration, validate_file

    recipe = load_recipe(DEFAULT_RECIPE)
    out = build_calibration(recipe, out=tmp_path / "c.json", n_prompts=2, max_new_tokens=8)
    items = json.loads(out.read_text())
    assert len(items) == 2
    assert all(it["input"].endswith("<|im_start|>assistant\n") for it in items)
    assert all(it["target"] and it["target"] != "(no answer)" for it in items)
    assert validate_file(out, recipe).n_items == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.json", "c.provenance.json"]   # no temp files left
    prov = json.loads((tmp_path / "c.provenance.json").read_text())
    assert prov["generator"] == "torch" and prov["dtype"] == "float32" and prov["max_new_tokens"] == 8
    import hashlib

    assert prov["calibration_sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()


@pytest.mark.parametrize(("kw", "msg"), [
    ({"generator": "tensorrt"}, "generator 'tensorrt' is not supported (allowed: torch, onnx)"),
    ({"generator": "onnx", "dtype": "bfloat16"}, "--dtype bfloat16 is for the torch generator"),
    ({"generator_model": "."}, "--generator-model names an ONNX artifact folder: use it with --generator onnx"),
    ({"generator": "onnx", "generator_model": "/nonexistent"}, "--generator-model /nonexistent: no genai_config.json"),
])
def test_calib_build_bad_generator_is_one_line_before_any_work(tmp_path, kw, msg, monkeypatch):
    from host import calib
    from host.errors import ConfigError

    def no_model(*a, **k):
        raise AssertionError("the model was resolved before the options were checked")

    monkeypatch.setattr("host.models.resolve_model", no_model)
    with pytest.raises(ConfigError, match=msg.replace("(", r"\(").replace(")", r"\)")):
        calib.build_calibration(load_recipe(DEFAULT_RECIPE), out=tmp_path / "c.json", **kw)
    assert list(tmp_path.iterdir()) == []


def test_provenance_sits_beside_the_calibration_json():
    from pathlib import Path

    from host.calib import provenance_path

    assert provenance_path(Path("d/m.calib.json")) == Path("d/m.calib.provenance.json")
    assert provenance_path(Path("d/answers")) == Path("d/answers.provenance.json")
