"""Fast unit tests of the board's stdlib records: the one result-row definition and strict JSON input."""

from __future__ import annotations

import json

import pytest

from board.rows import (
    ALL_FORMATS,
    ROW_SCHEMA_VERSION,
    STATUSES,
    ResultRow,
    field_names,
    fields,
    format_value,
    header,
    meta,
)
from board.strictjson import MAX_DEPTH, JSONInputError, loads, read, too_deep_line

# --- ResultRow ---------------------------------------------------------------------------------------


def test_row_schema_is_versioned_and_defaults_are_a_bench_ok_row():
    assert isinstance(ROW_SCHEMA_VERSION, int) and ROW_SCHEMA_VERSION >= 1
    r = ResultRow()
    assert (r.kind, r.status) == ("bench", "ok")
    assert all(getattr(r, n) is None for n in field_names() if n not in ("kind", "status"))


def test_llama_bench_names_and_ours_are_fields():
    names = set(field_names())
    assert {"model_type", "model_size", "n_prompt", "n_gen", "avg_ns", "stddev_ns", "avg_ts", "stddev_ts",
            "samples_ns", "samples_ts", "test_time"} <= names
    assert {"board", "target", "backend", "scheme", "artifact_sha256", "ttft_ms", "prefill_tps", "decode_tps",
            "peak_rss_mb", "npu_load_pct", "env", "status", "error"} <= names
    assert {"ppl", "ppl_ratio", "kld_mean", "kld_p99", "top1_agree", "n_tokens", "method"} <= names
    assert len(names) == len(field_names())  # no field twice


@pytest.mark.parametrize("name", field_names())
def test_every_field_carries_its_metadata(name):
    m = meta(name)
    assert set(m) >= {"display", "unit", "formats", "kind", "index", "digits", "pm"}
    assert m["display"] and isinstance(m["display"], str)
    assert set(m["formats"]) <= set(ALL_FORMATS)
    assert m["kind"] in ("any", "bench", "quality")
    assert m["digits"] is None or (isinstance(m["digits"], int) and 0 <= m["digits"] <= 6)
    assert m["pm"] is None or m["pm"] in field_names()
    assert header(name).startswith(m["display"]) and (not m["unit"] or header(name).endswith(m["unit"]))


def test_meta_of_an_unknown_field_is_a_key_error():
    with pytest.raises(KeyError):
        meta("no_such_field")


@pytest.mark.parametrize(("name", "value", "text"), [
    ("decode_tps", 22.2, "22.20"), ("decode_tps", 1 / 3, "0.33"), ("ttft_ms", 12.345, "12.3"),
    ("ppl_ratio", 1.06, "1.0600"), ("kld_mean", 0.01234, "0.0123"), ("top1_agree", 0.9, "0.900"),
    ("peak_rss_mb", 312.6, "313"), ("npu_load_pct", 41.0, "41"), ("cos_mean", 0.99619, "0.9962"),
    ("model", "smollm2", "smollm2"), ("threads", 4, "4"), ("n_prompt", 128, "128"), ("decode_tps", None, ""),
    ("model_size", 134515008, "134515008"),
])
def test_format_value_uses_the_fields_digits(name, value, text):
    assert format_value(name, value) == text


def test_headers_say_the_unit():
    assert header("decode_tps") == "decode tok/s" and header("ttft_ms") == "TTFT ms" and header("model") == "model"


def test_from_dict_round_trips_and_ignores_the_jsonl_type_key():
    data = {"kind": "bench", "model": "m", "decode_tps": 1.5, "samples_ns": [1, 2], "env": {"a": {"b": 1}}}
    r = ResultRow.from_dict({"type": "row", **data})
    assert r.to_dict() == {**ResultRow().to_dict(), **data}
    assert ResultRow.from_dict(json.loads(json.dumps(r.to_dict()))) == r


@pytest.mark.parametrize(("data", "words"), [
    ({"bogus": 1}, "unknown result-row field(s) bogus"),
    ({"a": 1, "b": 2}, "unknown result-row field(s) a, b"),
    ({"kind": "speed"}, "result-row kind 'speed'; allowed: bench, quality"),
    ({"status": "fine"}, "result-row status 'fine'; allowed: " + ", ".join(STATUSES)),
])
def test_from_dict_refuses_with_one_line_naming_the_problem(data, words):
    with pytest.raises(ValueError) as e:
        ResultRow.from_dict(data)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_index_fields_are_plain_identity_fields():
    idx = [f.name for f in fields() if f.metadata["index"]]
    assert {"kind", "model", "target", "scheme", "backend", "board", "status"} <= set(idx)
    assert not {"env", "samples_ns", "decode_tps"} & set(idx)


# --- strict JSON -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "value"), [
    ('{"a": 1}', {"a": 1}), ("[1, 2.5, null, true]", [1, 2.5, None, True]), ('"x"', "x"),
    ('{"a": {"a": 1}}', {"a": {"a": 1}}),  # the same key in two objects is fine
    ('{"s": "{[[[["}', {"s": "{[[[["}),  # brackets inside strings do not count as depth
])
def test_loads_accepts_plain_json(text, value):
    assert loads(text, "f.json") == value


@pytest.mark.parametrize(("text", "words"), [
    ('{"a": 1, "a": 2}', "f.json: duplicate key 'a' in the top-level object"),
    ('{"x": {"y": [0, {"k": 1, "k": 1}]}}', "f.json: duplicate key 'k' in x.y[1]"),
    ('{"a": NaN}', "f.json: NaN is not a JSON number (not allowed in JSON)"),
    ("[Infinity]", "Infinity is not a JSON number"),
    ("[-Infinity]", "-Infinity is not a JSON number"),
    ("{not json", "f.json is not valid JSON: line 1 column 2"),
    ("", "f.json is not valid JSON: line 1 column 1"),
    ("[1,]", "f.json is not valid JSON"),
    ("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1), f"f.json: line 1: nested deeper than {MAX_DEPTH} levels"),
    ("[\n" * 3 + "[" * MAX_DEPTH, f"f.json: line 4: nested deeper than {MAX_DEPTH} levels"),
    ("1" * 5000, "f.json is not valid JSON ("),
])
def test_loads_refuses_with_one_line_naming_the_file(text, words):
    with pytest.raises(JSONInputError) as e:
        loads(text, "f.json")
    assert words in str(e.value) and "\n" not in str(e.value)


def test_depth_counts_lines_and_ignores_strings():
    assert too_deep_line("[[[]]]", limit=3) is None
    assert too_deep_line("[\n[\n[\n[]]]]", limit=3) == 4
    assert too_deep_line('["[[[[[[", "\\"[[["]', limit=1) is None


def test_read_checks_folder_size_and_encoding(tmp_path):
    good = tmp_path / "good.json"
    good.write_text('{"ok": [1]}')
    assert read(str(good)) == {"ok": [1]}
    cases = {
        str(tmp_path): "is a directory, expected a JSON file",
        str(tmp_path / "latin1.json"): "not UTF-8 text (byte 0xe9 at offset 2)",
        str(tmp_path / "big.json"): "larger than 8 bytes; refusing to parse it",
    }
    (tmp_path / "latin1.json").write_bytes(b'["\xe9"]')
    (tmp_path / "big.json").write_text("[" + "1," * 10 + "1]")
    for path, words in cases.items():
        with pytest.raises(JSONInputError) as e:
            read(path, max_bytes=8 if path.endswith("big.json") else 1 << 20)
        assert words in str(e.value) and str(e.value).startswith(path), str(e.value)
    with pytest.raises(JSONInputError, match="^manifest of x: duplicate key 'a'"):
        (tmp_path / "dup.json").write_text('{"a": 1, "a": 1}')
        read(str(tmp_path / "dup.json"), where="manifest of x")
    with pytest.raises(OSError):  # a missing file is the caller's to word
        read(str(tmp_path / "missing.json"))
