"""Writes the malformed-input corpus under tests/host/corpus/ (run once; the files are committed).

    .venv/bin/python tests/host/corpus/generate.py

Each folder holds one input type; every file or folder is one malformed case (plus a few valid
bases the cases are derived from). tests/host/test_malformed_inputs.py lists the expected outcome of
each case; a case without an expectation there fails the completeness test.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import struct
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]


def put(rel: str, data: str | bytes) -> None:
    p = HERE / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)


def folder(rel: str) -> None:
    put(f"{rel}/.keep", "a directory where a file is expected\n")


# --- recipes ----------------------------------------------------------------------------------
TEXT = "text: {heldin: ../../../../calib_data/text/heldin.txt, heldout: ../../../../calib_data/text/heldout.txt}\n"
LLM = "  - name: lm\n    kind: llm\n    source: builtin:smollm2-135m-instruct\n"


def recipe(model_extra: str = "", top: str = "name: bad\n", text: str = TEXT, models: str | None = None) -> str:
    return top + "models:\n" + (LLM + model_extra if models is None else models) + text


def recipes() -> None:
    put("recipes/base.yaml", recipe())
    put("recipes/latin1.yaml", ("name: bad\ndescription: caf\xe9 cr\xe8me\n" + "models:\n" + LLM + TEXT).encode("latin-1"))
    folder("recipes/is_a_directory.yaml")
    put("recipes/duplicate_top_key.yaml", recipe(top="name: bad\nname: worse\n"))
    put("recipes/duplicate_model_key.yaml", recipe("    max_context: 4096\n    max_context: 2048\n"))
    put("recipes/deep_flow.yaml", recipe(top="name: bad\ndescription: " + "[" * 5000 + "]" * 5000 + "\n"))
    deep = "".join("  " * i + f"k{i}:\n" for i in range(200)) + "  " * 200 + "leaf: 1\n"
    put("recipes/deep_block.yaml", "name: bad\ndescription:\n" + "\n".join("  " + ln for ln in deep.splitlines()) + "\n")
    put("recipes/recursive_alias.yaml", recipe(top="name: bad\nloop: &a [1, *a]\n"))
    put("recipes/recursive_alias_in_extra.yaml", recipe("    rkllm:\n      extra: &e {self: *e}\n"))
    laughs = "".join(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]\n" for i in range(1, 10))
    put("recipes/billion_laughs.yaml", "name: bad\nl0: &l0 lol\n" + laughs + "models: []\n")
    put("recipes/models_empty.yaml", recipe(models=" []\n").replace("models:\n []", "models: []"))
    put("recipes/max_context_bool.yaml", recipe("    max_context: true\n"))
    put("recipes/max_context_float.yaml", recipe("    max_context: 4096.5\n"))
    put("recipes/seq_len_negative.yaml", recipe("    seq_len: -5\n"))
    put("recipes/batch_zero.yaml", recipe("    batch: 0\n"))
    put("recipes/batch_string.yaml", recipe("    batch: '4'\n"))
    put("recipes/optimization_level_bool.yaml", recipe("    rkllm: {optimization_level: true}\n"))
    put("recipes/hybrid_rate_string.yaml", recipe("    rkllm: {hybrid_rate: high}\n"))
    put("recipes/unknown_key.yaml", recipe("    colour: blue\n"))
    put("recipes/top_is_list.yaml", "- name: bad\n- models: []\n")
    put("recipes/empty.yaml", "# nothing but a comment\n")
    put("recipes/syntax_error.yaml", "name: bad\nmodels:\n  - name: lm\n   kind: llm\n")
    put("recipes/tab_indent.yaml", "name: bad\nmodels:\n\t- name: lm\n")
    put("recipes/name_not_slug.yaml", recipe(models="  - name: Bad Name\n    kind: llm\n    source: builtin:x\n"))
    put("recipes/name_is_mapping.yaml", recipe(top="name: {first: a}\n"))
    put("recipes/extra_not_json.yaml", recipe("    rkllm:\n      extra: {when: 2024-01-01}\n"))
    put("recipes/nul_byte.yaml", "name: bad\x00\n" + "models:\n" + LLM + TEXT)
    put("recipes/key_is_list.yaml", "? [a, b]\n: 1\nname: bad\n")
    put("recipes/kind_unknown.yaml", recipe(models="  - name: lm\n    kind: vision\n    source: builtin:x\n"))
    put("recipes/calibration_is_directory.yaml",
        recipe("    calibration: ../inventories\n    targets: {rk3588: [w8a8]}\n"))
    put("recipes/heldin_is_directory.yaml", recipe(text=TEXT.replace("../../../../calib_data/text/heldin.txt", "../stores")))
    put("recipes/scheme_unknown.yaml", recipe("    targets: {rk3588: [w3a7]}\n"))
    put("recipes/too_big.yaml", "name: bad\n" + "# padding\n" * 120_000)
    put("recipes/anchors_valid.yaml", "name: ok\nmodels:\n" + LLM + "    rkllm: &opts {algorithm: normal}\n"
        + LLM.replace("name: lm", "name: lm2") + "    rkllm: *opts\n" + TEXT)
    put("recipes/window_too_small.yaml", recipe(text=TEXT + "quality: {window: 8}\n"))
    put("recipes/n_prompts_zero.yaml", recipe(text=TEXT + "calib: {n_prompts: 0}\n"))
    put("recipes/text_missing.yaml", recipe(text=""))
    put("recipes/heldin_int.yaml", recipe(text="text: {heldin: 5, heldout: x.txt}\n"))
    put("recipes/models_mapping.yaml", "name: bad\nmodels: {lm: {kind: llm}}\n" + TEXT)
    put("recipes/source_int.yaml", recipe(models="  - name: lm\n    kind: llm\n    source: 42\n"))
    put("recipes/sensitive_empty_part.yaml", recipe("    sensitive_layers: ['mlp..down_proj']\n"))
    put("recipes/algorithm_unknown.yaml", recipe("    rkllm: {algorithm: fast}\n"))
    put("recipes/num_npu_core_float.yaml", recipe("    rkllm: {num_npu_core: 2.0}\n"))
    put("recipes/calib_samples_bool.yaml", recipe("    rknn: {calib_samples: true}\n"))
    put("recipes/auto_hybrid_string.yaml", recipe("    rknn: {auto_hybrid: 'yes'}\n"))
    put("recipes/onnx_scheme_unknown.yaml", recipe("    onnx: [int9]\n"))
    put("recipes/duplicate_model_names.yaml", recipe(models=LLM + LLM))
    put("recipes/targets_not_list.yaml", recipe("    targets: {rk3588: w8a8}\n"))
    put("recipes/python_tag.yaml", recipe(top="name: !!python/object:os.system bad\n"))
    put("recipes/utf16.yaml", recipe().encode("utf-16"))
    put("recipes/max_context_exponent.yaml", recipe("    max_context: 4.096e+3\n"))


# --- model folders (safetensors headers that are valid JSON of the wrong shape, and friends) -----
def safetensors(header: bytes | object, data: bytes = b"\0" * 16, length: int | None = None) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


TOKENIZER = json.dumps({"version": "1.0", "model": {"type": "WordLevel", "vocab": {"a": 0}, "unk_token": "a"}})
GOOD_T = {"lm.weight": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}
MODEL_CASES = {
    "header_is_list": safetensors([1, 2, 3]),
    "tensor_is_string": safetensors({"lm.weight": "F32"}),
    "shape_of_strings": safetensors({"lm.weight": {"dtype": "F32", "shape": ["2", "2"], "data_offsets": [0, 16]}}),
    "offsets_string": safetensors({"lm.weight": {"dtype": "F32", "shape": [2, 2], "data_offsets": "0-16"}}),
    "offsets_past_end": safetensors({"lm.weight": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 1 << 40]}}),
    "metadata_not_strings": safetensors({"__metadata__": {"format": 1}, **GOOD_T}),
    "header_length_huge": safetensors(GOOD_T, length=1 << 62),
    "header_not_utf8": safetensors(b'{"lm.weight\xff": {}}'),
    "header_duplicate_key": safetensors(b'{"lm.weight": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},'
                                        b' "lm.weight": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}'),
    "header_deep": safetensors(b"[" * 3000 + b"]" * 3000),
}


def models() -> None:
    cfg = json.dumps({"model_type": "llama", "max_position_embeddings": 2048})
    for name, blob in MODEL_CASES.items():
        put(f"models/{name}/config.json", cfg)
        put(f"models/{name}/tokenizer.json", TOKENIZER)
        put(f"models/{name}/model.safetensors", blob)
    put("models/config_is_list/config.json", "[1, 2]")
    put("models/config_is_list/tokenizer.json", TOKENIZER)
    put("models/config_is_list/model.safetensors", safetensors(GOOD_T))
    put("models/weights_are_directory/config.json", cfg)
    put("models/weights_are_directory/tokenizer.json", TOKENIZER)
    put("models/tokenizer_is_list/config.json", cfg)
    put("models/tokenizer_is_list/tokenizer.json", "[1, 2]")
    put("models/tokenizer_is_list/model.safetensors", safetensors(GOOD_T))
    put("models/tokenizer_truncated/config.json", cfg)
    put("models/tokenizer_truncated/tokenizer.json", TOKENIZER[:20])
    put("models/tokenizer_truncated/model.safetensors", safetensors(GOOD_T))
    folder("models/weights_are_directory/model.safetensors")
    for name in [*MODEL_CASES, "config_is_list", "weights_are_directory", "tokenizer_is_list", "tokenizer_truncated"]:
        put(f"recipes/model_{name}.yaml", recipe(models=f"  - name: lm\n    kind: llm\n    source: ../models/{name}\n"))


# --- GGUF files named by a recipe's source (judged from the header by load_recipe, host/gguf_file.py) ----
def gguf_bytes(kv: list[tuple[str, int, bytes]], *, version: int = 3, n_kv: int | None = None) -> bytes:
    """A GGUF header: magic, version, 0 tensors, the key/values (type 8 = string, 4 = uint32) as given."""
    body = b"".join(struct.pack("<Q", len(k)) + k.encode() + struct.pack("<I", t) + v for k, t, v in kv)
    return b"GGUF" + struct.pack("<IQQ", version, 0, len(kv) if n_kv is None else n_kv) + body


def gguf_str(s: str) -> bytes:
    return struct.pack("<Q", len(s)) + s.encode()


GGUF_CASES = {
    "bad_magic": b"GGML" + b"\0" * 60,
    "version_1": gguf_bytes([], version=1),
    "truncated": gguf_bytes([("general.architecture", 8, gguf_str("llama"))], n_kv=5)[:40],
    "unknown_arch": gguf_bytes([("general.architecture", 8, gguf_str("mamba")), ("general.file_type", 4,
                                                                                struct.pack("<I", 15))]),
    "no_arch": gguf_bytes([("general.name", 8, gguf_str("x")), ("general.file_type", 4, struct.pack("<I", 2))]),
    "huge_string": b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 1 << 40) + b"general",
}


def gguf() -> None:
    for name, blob in GGUF_CASES.items():
        put(f"gguf/{name}.gguf", blob)
        put(f"recipes/gguf_{name}.yaml", recipe(models=f"  - name: lm\n    kind: llm\n    source: ../gguf/{name}.gguf\n"))
    folder("gguf/is_directory.gguf")
    put("recipes/gguf_is_directory.yaml", recipe(models="  - name: lm\n    kind: llm\n    source: ../gguf/is_directory.gguf\n"))
    put("recipes/gguf_missing.yaml", recipe(models="  - name: lm\n    kind: llm\n    source: ../gguf/not_there.gguf\n"))


# --- targets -----------------------------------------------------------------------------------
def targets() -> None:
    base = yaml.safe_load((ROOT / "configs" / "targets.yaml").read_text())

    def dump(rel: str, edit) -> None:
        data = json.loads(json.dumps(base))
        edit(data)
        put(rel, yaml.safe_dump(data, sort_keys=False))

    dump("targets/schema_99.yaml", lambda d: d.update(schema=99))
    dump("targets/schema_string.yaml", lambda d: d.update(schema="1"))
    dump("targets/npu_cores_bool.yaml", lambda d: d["targets"]["rk3588"].update(npu_cores=True))
    dump("targets/npu_cores_float.yaml", lambda d: d["targets"]["rk3588"].update(npu_cores=2.5))
    dump("targets/bus_bits_bool.yaml", lambda d: d["targets"]["rk3588"]["ddr"].update(bus_bits=False))
    text = (ROOT / "configs" / "targets.yaml").read_text()
    put("targets/duplicate_target.yaml", text.replace("targets:\n", "targets:\n  rk3576: {}\n", 1))
    put("targets/latin1.yaml", ("# r\xe9sum\xe9\n" + text).encode("latin-1"))
    folder("targets/is_a_directory.yaml")
    put("targets/deep.yaml", "schema: 1\ntargets: " + "{a: " * 3000 + "1" + "}" * 3000 + "\n")
    put("targets/top_is_scalar.yaml", "42\n")
    dump("targets/targets_list.yaml", lambda d: d.update(targets=list(d["targets"])))
    dump("targets/scheme_unknown.yaml", lambda d: d["targets"]["rk3588"].update(rkllm_schemes=["w9a9"]))
    dump("targets/unknown_key.yaml", lambda d: d["targets"]["rk3588"].update(npu_speed=3))
    dump("targets/ddr_missing.yaml", lambda d: d["targets"]["rk3588"].pop("ddr"))
    dump("targets/npu_cores_zero.yaml", lambda d: d["targets"]["rk3588"].update(npu_cores=0))
    dump("targets/unsupported_not_text.yaml", lambda d: d.update(unsupported={"rk3399": 1}))
    dump("targets/schema_missing.yaml", lambda d: d.pop("schema"))


# --- calibration JSON --------------------------------------------------------------------------
def calib() -> None:
    ok = {"input": "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", "target": "hello"}
    put("calib/duplicate_key.json", '[{"input": "a", "target": "b", "input": "c"}]')
    put("calib/deep.json", "[" * 20000 + "]" * 20000)
    put("calib/latin1.json", '[{"input": "caf\xe9", "target": "b"}]'.encode("latin-1"))
    folder("calib/is_a_directory.json")
    put("calib/top_object.json", json.dumps(ok))
    put("calib/nan.json", '[{"input": "a", "target": NaN}]')
    put("calib/item_string.json", json.dumps(["just text"]))
    put("calib/field_int.json", json.dumps([{"input": 5, "target": "b"}]))
    put("calib/trailing_garbage.json", json.dumps([ok]) + " ]")
    put("calib/empty_list.json", "[]")
    put("calib/huge_int.json", '[{"input": "a", "target": ' + "9" * 5000 + "}]")
    put("calib/empty_file.json", "")
    put("calib/target_missing.json", json.dumps([{"input": "a"}]))
    put("calib/unknown_field.json", json.dumps([{**ok, "weight": 1}]))
    put("calib/input_blank.json", json.dumps([{"input": "  ", "target": "b"}]))
    put("calib/duplicate_items.json", json.dumps([ok, ok]))
    put("calib/utf16.json", json.dumps([ok]).encode("utf-16"))
    put("calib/infinity.json", '[{"input": "a", "target": Infinity}]')


# --- inventories -------------------------------------------------------------------------------
def host(extra: str) -> str:
    return "all:\n  hosts:\n    b1:\n      ansible_host: 10.0.0.1\n" + extra


def inventories() -> None:
    put("inventories/base.yaml", host(""))
    put("inventories/port_float.yaml", host("      ansible_port: 22.5\n"))
    put("inventories/port_bool.yaml", host("      ansible_port: true\n"))
    put("inventories/port_word.yaml", host("      ansible_port: ssh\n"))
    put("inventories/port_range.yaml", host("      ansible_port: 70000\n"))
    put("inventories/host_empty.yaml", "all:\n  hosts:\n    b1:\n      ansible_host: ''\n")
    put("inventories/host_spaces.yaml", "all:\n  hosts:\n    b1:\n      ansible_host: 'a b'\n")
    put("inventories/user_mapping.yaml", host("      ansible_user: {name: rock}\n"))
    put("inventories/user_list.yaml", host("      ansible_user: [rock]\n"))
    put("inventories/workdir_traversal.yaml", host("      workdir: ../../etc\n"))
    put("inventories/workdir_root.yaml", host("      workdir: /\n"))
    put("inventories/workdir_list.yaml", host("      workdir: [a]\n"))
    put("inventories/workdir_newline.yaml", host('      workdir: "a\\nb"\n'))
    put("inventories/python_mapping.yaml", host("      python: {v: 3}\n"))
    put("inventories/key_is_directory.yaml", host("      ansible_ssh_private_key_file: /\n"))
    put("inventories/unknown_var.yaml", host("      ansible_pasword: x\n"))
    put("inventories/duplicate_host.yaml", host("    b1:\n      ansible_host: 10.0.0.2\n"))
    put("inventories/duplicate_var.yaml", host("      ansible_host: 10.0.0.9\n"))
    put("inventories/syntax_error.yaml", "all:\n  hosts:\n    b1:\n      ansible_host: 10.0.0.1\n     ansible_user: x\n")
    put("inventories/deep.yaml", "all: " + "[" * 5000 + "]" * 5000 + "\n")
    put("inventories/recursive_alias.yaml", "all: &a\n  children:\n    g: *a\n")
    put("inventories/latin1.yaml", host("      ansible_user: jos\xe9\n").encode("latin-1"))
    folder("inventories/is_a_directory.yaml")
    put("inventories/hosts_list.yaml", "all:\n  hosts: [b1, b2]\n")
    put("inventories/host_name_int.yaml", "all:\n  hosts:\n    42:\n      ansible_host: 10.0.0.1\n")
    put("inventories/group_unknown_key.yaml", "all:\n  host:\n    b1: {}\n")
    put("inventories/port_negative.yaml", host("      ansible_port: -1\n"))
    put("inventories/soc_int.yaml", host("      soc: 3588\n"))
    put("inventories/host_list.yaml", "all:\n  hosts:\n    b1:\n      ansible_host: [10.0.0.1]\n")
    put("inventories/vars_list.yaml", "all:\n  vars: [a]\n  hosts:\n    b1: {}\n")
    put("inventories/children_list.yaml", "all:\n  children: [g1]\n")
    put("inventories/user_empty.yaml", host("      ansible_user: ''\n"))
    put("inventories/workdir_nul.yaml", host('      workdir: "rk\\0deploy"\n'))
    put("inventories/key_empty.yaml", host("      ansible_ssh_private_key_file: ''\n"))
    put("inventories/top_is_list.yaml", "- b1\n- b2\n")
    put("inventories/group_vars_port_float.yaml", "all:\n  vars: {ansible_port: 2222.0}\n  hosts:\n    b1: {}\n")
    put("known_hosts/corrupt", b"\x00\x01garbage \xff\xfe not a key line\n[::1 ssh-ed25519 ###\n")


# --- artifact folders (board runner) -----------------------------------------------------------
WEIGHTS = b"fake weights\n" * 64


def manifest(**edit) -> dict:
    m = {"schema": 1, "model": "fake-model", "model_kind": "llm", "target": "rk3588", "scheme": "fp16",
         "artifact_kind": "fake", "format": "fake", "entry": "weights.bin",
         "files": {"weights.bin": {"sha256": "0" * 64, "size": len(WEIGHTS)}}, "inputs": {},
         "fake": {"prefill_ms": 1, "token_ms": 1, "encode_ms": 1, "vocab_size": 1000}}
    m.update(edit)
    return m


def artifact(name: str, m: dict | str | bytes | None) -> None:
    put(f"artifacts/{name}/weights.bin", WEIGHTS)
    if m is None:
        folder(f"artifacts/{name}/manifest.json")
    else:
        put(f"artifacts/{name}/manifest.json", m if isinstance(m, (str, bytes)) else json.dumps(m, indent=1))


def artifacts() -> None:
    f = {"sha256": "0" * 64, "size": len(WEIGHTS)}
    artifact("good", manifest())
    artifact("traversal", manifest(files={"../../../../../../etc/passwd": f}, entry=None))
    artifact("absolute", manifest(files={"/etc/passwd": f}, entry=None))
    artifact("nul_in_name", manifest(files={"weights.bin\u0000.x": f}, entry=None))
    artifact("newline_in_name", manifest(files={"weights\n.bin": f}, entry=None))
    artifact("entry_traversal", manifest(entry="../good/weights.bin"))
    artifact("entry_not_listed", manifest(entry="other.bin"))
    artifact("tokenizer_absolute", manifest(tokenizer="/etc/passwd"))
    artifact("file_entry_string", manifest(files={"weights.bin": "0" * 64}))
    artifact("size_string", manifest(files={"weights.bin": {"sha256": "0" * 64, "size": str(len(WEIGHTS))}}))
    artifact("size_bool", manifest(files={"weights.bin": {"sha256": "0" * 64, "size": True}}))
    artifact("size_negative", manifest(files={"weights.bin": {"sha256": "0" * 64, "size": -1}}))
    artifact("size_wrong", manifest(files={"weights.bin": {"sha256": "0" * 64, "size": 5}}))
    artifact("sha_not_hex", manifest(files={"weights.bin": {"sha256": "xyz", "size": len(WEIGHTS)}}))
    artifact("files_list", manifest(files=[["weights.bin", len(WEIGHTS)]]))
    artifact("files_missing", {k: v for k, v in manifest().items() if k != "files"})
    artifact("schema_bool", manifest(schema=True))
    artifact("schema_2", manifest(schema=2))
    artifact("format_unknown", manifest(format="pickle"))
    artifact("format_mismatch", manifest(format="rkllm"))
    artifact("model_kind_unknown", manifest(model_kind="vision"))
    artifact("inputs_batch_string", manifest(model_kind="encoder", inputs={"batch": "1", "seq_len": 16}))
    artifact("vocab_size_float", manifest(vocab_size=1000.5))
    artifact("model_is_list", manifest(model=["a"]))
    artifact("top_is_list", "[]")
    artifact("duplicate_key", json.dumps(manifest())[:-1] + ', "format": "rkllm"}')
    artifact("deep", '{"schema": 1, "files": ' + "[" * 100000 + "]" * 100000 + "}")
    artifact("nan_size", json.dumps(manifest()).replace(f'"size": {len(WEIGHTS)}', '"size": NaN'))
    artifact("latin1", ('{"schema": 1, "model": "caf\xe9"}').encode("latin-1"))
    artifact("manifest_is_directory", None)
    artifact("truncated_json", json.dumps(manifest())[:40])
    artifact("listed_file_is_directory", manifest(files={"sub": {"size": 0}}, entry=None))
    folder("artifacts/listed_file_is_directory/sub")
    artifact("entry_int", manifest(entry=3))
    artifact("sha_uppercase", manifest(files={"weights.bin": {"sha256": "A" * 64, "size": len(WEIGHTS)}}))
    artifact("name_empty", manifest(files={"": f}, entry=None))
    artifact("name_double_slash", manifest(files={"a//weights.bin": f}, entry=None))
    artifact("name_dot_segment", manifest(files={"./weights.bin": f}, entry=None))
    artifact("name_backslash", manifest(files={"..\\..\\etc\\passwd": f}, entry=None))
    artifact("name_too_long", manifest(files={"a" * 5000: f}, entry=None))
    artifact("inputs_list", manifest(inputs=[1, 16]))
    artifact("vocab_size_zero", manifest(vocab_size=0))
    artifact("npu_cores_bool", manifest(npu_cores=True))
    artifact("toolkit_string", manifest(toolkit="1.2.1"))
    artifact("fake_list", manifest(fake=[1]))
    artifact("schema_missing", {k: v for k, v in manifest().items() if k != "schema"})
    artifact("size_larger_than_file", manifest(files={"weights.bin": {"sha256": "0" * 64, "size": 1 << 40}}))
    artifact("empty_file", "")


# --- results stores ----------------------------------------------------------------------------
def stores() -> None:
    import sys

    sys.path.insert(0, str(ROOT))
    from host.results import ResultStore

    d = HERE / "stores"
    if d.exists():
        shutil.rmtree(d)
    d.mkdir()
    folder("stores/is_a_directory.sqlite")
    put("stores/text.sqlite", "this is not a database\n")
    db = sqlite3.connect(d / "other_program.sqlite")
    db.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, amount REAL)")
    db.execute("INSERT INTO invoices (amount) VALUES (12.5)")
    db.commit()
    db.close()

    def ours(name: str, sql: str) -> None:
        ResultStore(d / name).close()
        db = sqlite3.connect(d / name)
        db.execute(sql)
        db.commit()
        db.execute("VACUUM")
        db.close()

    ours("newer_schema.sqlite", "UPDATE meta SET value = '99' WHERE key = 'store_schema'")
    ours("schema_not_number.sqlite", "UPDATE meta SET value = 'one' WHERE key = 'store_schema'")
    ours("row_not_json.sqlite", "INSERT INTO rows (row_schema, data) VALUES (1, '{not json')")
    ours("row_is_list.sqlite", "INSERT INTO rows (row_schema, data) VALUES (1, '[1, 2]')")
    ours("row_deep.sqlite", "INSERT INTO rows (row_schema, data) VALUES (1, '" + "[" * 5000 + "]" * 5000 + "')")
    ours("row_schema_text.sqlite", "INSERT INTO rows (row_schema, data) VALUES ('x', '{}')")
    ours("row_unknown_field.sqlite", "INSERT INTO rows (row_schema, data) VALUES (1, '{\"bogus\": 1}')")
    ResultStore(d / "meta_only.sqlite").close()
    db = sqlite3.connect(d / "meta_only.sqlite")
    db.execute("DROP TABLE rows")
    db.commit()
    db.execute("VACUUM")
    db.close()
    ResultStore(d / "rows_lacks_data.sqlite").close()
    db = sqlite3.connect(d / "rows_lacks_data.sqlite")
    db.execute("DROP TABLE rows")
    db.execute("CREATE TABLE rows (id INTEGER PRIMARY KEY, row_schema INTEGER)")
    db.commit()
    db.execute("VACUUM")
    db.close()


if __name__ == "__main__":
    for sub in ("recipes", "models", "gguf", "targets", "calib", "inventories", "known_hosts", "artifacts"):
        if (HERE / sub).exists():
            shutil.rmtree(HERE / sub)
    recipes()
    models()
    gguf()
    targets()
    calib()
    inventories()
    artifacts()
    stores()
    print(sum(1 for p in HERE.rglob("*") if p.is_file()), "files")
