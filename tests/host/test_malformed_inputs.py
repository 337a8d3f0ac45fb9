"""The malformed-input corpus (tests/host/corpus/, written by tests/host/corpus/generate.py): every case ends
with exactly one clear error line naming the file/field, the right exit code, no traceback, no
"internal error", and no file created or changed.

Input types: recipes, targets tables, calibration JSON, model folders (safetensors headers),
inventories (+ known_hosts), artifact folders/manifests (board doctor and bench), board runner
arguments, rkdeploy arguments, results stores. The CLI runs in-process through ``host.cli.main``
(the real error path, fast); a few cases run end to end as subprocesses (rkdeploy, and the board
runner isolated with ``python3 -I -S``, on Python 3.8 too when this machine has it).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

CORPUS = Path(__file__).resolve().parent / "corpus"
from tests.conftest import ROOT  # noqa: E402

ANY = object()  # needle placeholder: "the case's own file name"

# --- expectations: case -> needles (substrings of the one error line; ANY = the case's file name) ---
RECIPES = {
    "latin1.yaml": [ANY, "line 2", "not UTF-8"],
    "is_a_directory.yaml": [ANY, "is a directory"],
    "duplicate_top_key.yaml": [ANY, "line 2", "duplicate key 'name'", "first at line 1"],
    "duplicate_model_key.yaml": [ANY, "line 7", "duplicate key 'max_context'"],
    "deep_flow.yaml": [ANY, "line 2", "nested deeper than 64"],
    "deep_block.yaml": [ANY, "nested deeper than 64"],
    "recursive_alias.yaml": [ANY, "line 2", "recursive alias"],
    "recursive_alias_in_extra.yaml": [ANY, "line 7", "recursive alias"],
    "billion_laughs.yaml": [ANY, "expands to more than"],
    "models_empty.yaml": [ANY, "line 2", "models", "at least one model"],
    "max_context_bool.yaml": [ANY, "line 6", "models.0.max_context", "whole number", "bool"],
    "max_context_float.yaml": [ANY, "models.0.max_context", "whole number", "4096.5"],
    "seq_len_negative.yaml": [ANY, "line 6", "models.0.seq_len", "greater than or equal to 1"],
    "batch_zero.yaml": [ANY, "models.0.batch", "greater than or equal to 1"],
    "batch_string.yaml": [ANY, "models.0.batch", "whole number", "str"],
    "optimization_level_bool.yaml": [ANY, "models.0.rkllm.optimization_level", "whole number"],
    "hybrid_rate_string.yaml": [ANY, "models.0.rkllm.hybrid_rate", "valid number"],
    "unknown_key.yaml": [ANY, "line 6", "unknown key 'colour'"],
    "top_is_list.yaml": [ANY, "expected a mapping at the top level"],
    "empty.yaml": [ANY, "empty file"],
    "syntax_error.yaml": [ANY, "line 4", "not valid YAML"],
    "tab_indent.yaml": [ANY, "line 3", "not valid YAML"],
    "name_not_slug.yaml": [ANY, "models.0.name", "lowercase"],
    "name_is_mapping.yaml": [ANY, "line 1", "name", "valid string"],
    "extra_not_json.yaml": [ANY, "models.0.rkllm.extra", "plain JSON values"],
    "nul_byte.yaml": [ANY, "line 1", "not allowed in YAML"],
    "key_is_list.yaml": [ANY, "line 1", "plain value"],
    "kind_unknown.yaml": [ANY, "models.0.kind", "'llm' or 'encoder'"],
    "scheme_unknown.yaml": [ANY, "line 6", "models.0.targets: rk3588: unknown scheme 'w3a7'"],
    "calibration_is_directory.yaml": [ANY, "line 6", "models.0.calibration", "inventories is a directory"],
    "heldin_is_directory.yaml": [ANY, "line 6", "text.heldin", "stores is a directory", "expected a text file"],
    # model folders behind a valid recipe: the problem is in the model's files
    "model_header_is_list.yaml": ["header_is_list/model.safetensors", "expected an object of tensors"],
    "model_tensor_is_string.yaml": ["tensor_is_string/model.safetensors", "tensor 'lm.weight'", "expected an object"],
    "model_shape_of_strings.yaml": ["shape_of_strings/model.safetensors", "shape must be a list of whole numbers"],
    "model_offsets_string.yaml": ["offsets_string/model.safetensors", "data_offsets must be [start, end]"],
    "model_offsets_past_end.yaml": ["offsets_past_end/model.safetensors", "outside the file"],
    "model_metadata_not_strings.yaml": ["metadata_not_strings/model.safetensors", "__metadata__"],
    "model_header_length_huge.yaml": ["header_length_huge/model.safetensors", "header length"],
    "model_header_not_utf8.yaml": ["header_not_utf8/model.safetensors", "not UTF-8"],
    "model_header_duplicate_key.yaml": ["header_duplicate_key/model.safetensors", "duplicate key 'lm.weight'"],
    "model_header_deep.yaml": ["header_deep/model.safetensors", "nested deeper than 64"],
    # a recipe source that is a .gguf file: judged from its header by load_recipe, before any work
    "gguf_bad_magic.yaml": [ANY, "line 5", "models.0.source", "bad_magic.gguf", "not a GGUF file"],
    "gguf_version_1.yaml": [ANY, "line 5", "models.0.source", "version_1.gguf", "GGUF version 1", "readable: 2, 3"],
    "gguf_truncated.yaml": [ANY, "line 5", "models.0.source", "truncated.gguf", "ends inside its GGUF header"],
    "gguf_huge_string.yaml": [ANY, "line 5", "huge_string.gguf", "a string claims 1099511627776 bytes"],
    "gguf_unknown_arch.yaml": [ANY, "line 5", "unknown_arch.gguf", "architecture 'mamba'", "known: gemma2"],
    "gguf_no_arch.yaml": [ANY, "line 5", "no_arch.gguf", "names no general.architecture"],
    "gguf_is_directory.yaml": [ANY, "line 5", "is_directory.gguf is a directory, expected a .gguf file"],
    "gguf_missing.yaml": [ANY, "line 5", "models.0.source", "not_there.gguf: no such file"],
    "model_config_is_list.yaml": ["config_is_list/config.json", "expected a JSON object"],
    "model_weights_are_directory.yaml": ["weights_are_directory/model.safetensors", "is a directory"],
    "model_tokenizer_is_list.yaml": ["tokenizer_is_list/tokenizer.json", "not a Hugging Face tokenizer"],
    "model_tokenizer_truncated.yaml": ["tokenizer_truncated/tokenizer.json", "not a readable tokenizer"],
    "window_too_small.yaml": [ANY, "line 7", "quality.window", "greater than or equal to 32"],
    "n_prompts_zero.yaml": [ANY, "calib.n_prompts", "greater than or equal to 1"],
    "text_missing.yaml": [ANY, "text: required field is missing"],
    "heldin_int.yaml": [ANY, "text.heldin", "not a valid path"],
    "models_mapping.yaml": [ANY, "line 2", "models", "valid list"],
    "source_int.yaml": [ANY, "models.0.source", "valid string"],
    "sensitive_empty_part.yaml": [ANY, "models.0.sensitive_layers", "'mlp..down_proj'"],
    "algorithm_unknown.yaml": [ANY, "models.0.rkllm.algorithm", "'auto', 'normal', 'grq' or 'gdq'"],
    "num_npu_core_float.yaml": [ANY, "models.0.rkllm.num_npu_core", "whole number", "2.0"],
    "calib_samples_bool.yaml": [ANY, "models.0.rknn.calib_samples", "whole number", "bool"],
    "auto_hybrid_string.yaml": [ANY, "models.0.rknn.auto_hybrid", "valid boolean"],
    "onnx_scheme_unknown.yaml": [ANY, "models.0.onnx", "'int9'"],
    "duplicate_model_names.yaml": [ANY, "model names must be unique", "lm"],
    "targets_not_list.yaml": [ANY, "models.0.targets.rk3588", "valid list"],
    "python_tag.yaml": [ANY, "line 1", "not valid YAML", "python/object"],
    "utf16.yaml": [ANY, "line 1", "not UTF-8"],
    "max_context_exponent.yaml": [ANY, "models.0.max_context", "whole number", "float"],
    "too_big.yaml": [ANY, "larger than 1024 KiB"],
}
TARGETS = {
    "schema_99.yaml": [ANY, "line 1", "targets schema 99", "upgrade rkdeploy"],
    "schema_string.yaml": [ANY, "schema", "whole number", "str"],
    "npu_cores_bool.yaml": [ANY, "targets.rk3588.npu_cores", "whole number", "bool"],
    "npu_cores_float.yaml": [ANY, "targets.rk3588.npu_cores", "2.5"],
    "bus_bits_bool.yaml": [ANY, "targets.rk3588.ddr.bus_bits", "whole number"],
    "duplicate_target.yaml": [ANY, "duplicate key 'rk3576'", "first at line"],
    "latin1.yaml": [ANY, "line 1", "not UTF-8"],
    "is_a_directory.yaml": [ANY, "is a directory"],
    "deep.yaml": [ANY, "nested deeper than 64"],
    "top_is_scalar.yaml": [ANY, "expected a mapping"],
    "targets_list.yaml": [ANY, "line 2", "targets", "valid dictionary"],
    "scheme_unknown.yaml": [ANY, "targets.rk3588.rkllm_schemes", "unknown scheme 'w9a9'"],
    "unknown_key.yaml": [ANY, "targets.rk3588.npu_speed", "unknown key 'npu_speed'"],
    "ddr_missing.yaml": [ANY, "targets.rk3588.ddr", "required field is missing"],
    "npu_cores_zero.yaml": [ANY, "targets.rk3588.npu_cores", "greater than or equal to 1"],
    "unsupported_not_text.yaml": [ANY, "unsupported.rk3399", "valid string"],
    "schema_missing.yaml": [ANY, "schema: required field is missing"],
}
CALIBRATION = {
    "duplicate_key.json": [ANY, "duplicate key 'input' in [0]"],
    "deep.json": [ANY, "line 1", "nested deeper than 64"],
    "latin1.json": [ANY, "not UTF-8"],
    "is_a_directory.json": [ANY, "is a directory"],
    "top_object.json": [ANY, "top level must be a JSON list"],
    "nan.json": [ANY, "NaN"],
    "item_string.json": [ANY, "item 0", "must be an object"],
    "field_int.json": [ANY, "item 0", "field 'input' must be a string"],
    "trailing_garbage.json": [ANY, "not valid JSON", "line 1 column"],
    "empty_list.json": [ANY, "the list is empty"],
    "huge_int.json": [ANY, "not valid JSON"],
    "empty_file.json": [ANY, "not valid JSON", "line 1 column 1"],
    "target_missing.json": [ANY, "item 0", "missing field 'target'"],
    "unknown_field.json": [ANY, "item 0", "unknown field 'weight'", "allowed: input, target"],
    "input_blank.json": [ANY, "item 0", "field 'input' is empty"],
    "duplicate_items.json": [ANY, "item 1", "duplicates item 0"],
    "utf16.json": [ANY, "not UTF-8"],
    "infinity.json": [ANY, "Infinity"],
}
INVENTORIES = {
    "port_float.yaml": [ANY, "line 3", "host 'b1'", "ansible_port", "whole number", "22.5"],
    "port_bool.yaml": [ANY, "ansible_port", "whole number", "True"],
    "port_word.yaml": [ANY, "ansible_port", "'ssh'"],
    "port_range.yaml": [ANY, "ansible_port 70000", "1..65535"],
    "host_empty.yaml": [ANY, "line 3", "ansible_host ''"],
    "host_spaces.yaml": [ANY, "ansible_host 'a b'"],
    "user_mapping.yaml": [ANY, "ansible_user must be a string", "dict"],
    "user_list.yaml": [ANY, "ansible_user must be a string", "list"],
    "workdir_traversal.yaml": [ANY, "workdir '../../etc'", "'..'"],
    "workdir_root.yaml": [ANY, "workdir '/'"],
    "workdir_list.yaml": [ANY, "workdir must be a string"],
    "workdir_newline.yaml": [ANY, "workdir 'a\\nb'", "control characters"],
    "python_mapping.yaml": [ANY, "python must be a string"],
    "key_is_directory.yaml": [ANY, "ansible_ssh_private_key_file", "is a directory"],
    "unknown_var.yaml": [ANY, "unknown variable 'ansible_pasword'", "allowed:"],
    "duplicate_host.yaml": [ANY, "line 5", "duplicate key 'b1'", "first at line 3"],
    "duplicate_var.yaml": [ANY, "line 5", "duplicate key 'ansible_host'"],
    "syntax_error.yaml": [ANY, "line 5", "not valid YAML"],
    "deep.yaml": [ANY, "nested deeper than 64"],
    "recursive_alias.yaml": [ANY, "line 3", "recursive alias"],
    "latin1.yaml": [ANY, "line 5", "not UTF-8"],
    "is_a_directory.yaml": [ANY, "is a directory"],
    "hosts_list.yaml": [ANY, "line 2", "hosts: expected a mapping, got list"],
    "host_name_int.yaml": [ANY, "host name 42"],
    "group_unknown_key.yaml": [ANY, "unknown key 'host'", "allowed: hosts, children, vars"],
    "port_negative.yaml": [ANY, "ansible_port -1", "1..65535"],
    "soc_int.yaml": [ANY, "soc must be a string", "3588"],
    "host_list.yaml": [ANY, "ansible_host must be a string", "list"],
    "vars_list.yaml": [ANY, "line 2", "vars: expected a mapping, got list"],
    "children_list.yaml": [ANY, "children: expected a mapping, got list"],
    "user_empty.yaml": [ANY, "ansible_user ''"],
    "workdir_nul.yaml": [ANY, "workdir 'rk\\x00deploy'", "control characters"],
    "key_empty.yaml": [ANY, "ansible_ssh_private_key_file ''"],
    "top_is_list.yaml": [ANY, "expected a mapping, got list"],
    "group_vars_port_float.yaml": [ANY, "ansible_port", "whole number", "2222.0"],
}
STORES = {
    "is_a_directory.sqlite": [ANY, "is a directory"],
    "text.sqlite": [ANY, "not a readable rkdeploy results store"],
    "other_program.sqlite": [ANY, "another program", "invoices", "left untouched"],
    "newer_schema.sqlite": [ANY, "schema 99 is newer", "upgrade rkdeploy"],
    "schema_not_number.sqlite": [ANY, "store_schema", "'one'"],
    "row_not_json.sqlite": [ANY, "row id 1", "not valid JSON"],
    "row_is_list.sqlite": [ANY, "row id 1", "not a JSON object"],
    "row_deep.sqlite": [ANY, "row id 1", "nested deeper than 64"],
    "rows_lacks_data.sqlite": [ANY, "lacks column", "data"],
    "meta_only.sqlite": [ANY, "another program", "tables: meta"],
    "row_schema_text.sqlite": [ANY, "row id 1", "row_schema 'x' is not a number"],
    "row_unknown_field.sqlite": [ANY, "row id 1", "unknown result-row field(s) bogus"],
}
MANIFEST_PROBLEM = {
    "traversal": ["files entry '../../../../../../etc/passwd' is not allowed", "'..'"],
    "absolute": ["files entry '/etc/passwd' is not allowed"],
    "nul_in_name": ["files entry 'weights.bin\\x00.x' is not allowed"],
    "newline_in_name": ["files entry 'weights\\n.bin' is not allowed"],
    "entry_traversal": ["field 'entry' '../good/weights.bin' is not allowed"],
    "entry_not_listed": ["entry 'other.bin' is not listed"],
    "tokenizer_absolute": ["field 'tokenizer' '/etc/passwd' is not allowed"],
    "file_entry_string": ["files['weights.bin'] must be an object", "got string"],
    "size_string": ["files['weights.bin'].size must be a whole number", "got string"],
    "size_bool": ["files['weights.bin'].size must be a whole number", "got boolean"],
    "size_negative": ["files['weights.bin'].size", "-1"],
    "size_wrong": ["weights.bin is 832 bytes, manifest says 5"],
    "sha_not_hex": ["files['weights.bin'].sha256 must be 64"],
    "files_list": ["field 'files' must be an object", "got array"],
    "files_missing": ["field 'files' must be an object", "got null"],
    "schema_bool": ["manifest schema True"],
    "schema_2": ["manifest schema 2", "update the board runner"],
    "format_unknown": ["format 'pickle'", "rkllm"],
    "model_kind_unknown": ["model_kind 'vision'", "llm, encoder"],
    "inputs_batch_string": ["inputs.batch must be a whole number", "got string"],
    "vocab_size_float": ["field 'vocab_size' must be a whole number"],
    "model_is_list": ["field 'model' must be a string", "got array"],
    "top_is_list": ["expected a JSON object, got array"],
    "duplicate_key": ["duplicate key 'format'"],
    "deep": ["line 1", "nested deeper than 64"],
    "nan_size": ["NaN"],
    "latin1": ["not UTF-8"],
    "manifest_is_directory": ["manifest.json: is a directory"],
    "truncated_json": ["manifest.json is not valid JSON", "line 1 column"],
    "listed_file_is_directory": ["file sub", "not a file"],
    "entry_int": ["field 'entry' must be a string", "got integer"],
    "sha_uppercase": ["sha256 must be 64 lowercase hex digits"],
    "name_empty": ["files entry '' is not allowed"],
    "name_double_slash": ["files entry 'a//weights.bin' is not allowed"],
    "name_dot_segment": ["files entry './weights.bin' is not allowed"],
    "name_backslash": ["files entry '..\\\\..\\\\etc\\\\passwd' is not allowed"],
    "name_too_long": ["files entry 'aaaa", "is not allowed"],
    "inputs_list": ["field 'inputs' must be an object", "got array"],
    "vocab_size_zero": ["field 'vocab_size' must be >= 1"],
    "npu_cores_bool": ["field 'npu_cores' must be a whole number", "got boolean"],
    "toolkit_string": ["field 'toolkit' must be an object", "got string"],
    "fake_list": ["field 'fake' must be an object", "got array"],
    "schema_missing": ["manifest schema None", "this runner reads 1"],
    "size_larger_than_file": ["weights.bin is 832 bytes, manifest says 1099511627776"],
    "empty_file": ["manifest.json is not valid JSON", "line 1 column 1"],
}
BENCH_ONLY = {"format_mismatch": ["format 'rkllm' is run by backend rkllm, not 'fake'"]}

RUNNER_ARGS = {  # python3 -m board bench ... on a good artifact: exit 2, --out untouched
    "n_prompt_zero": (["--n-prompt", "0"], ["--n-prompt", ">= 1"]),
    "n_gen_zero": (["--n-gen", "0"], ["--n-gen", ">= 1"]),
    "reps_zero": (["--reps", "0"], ["--reps", ">= 1"]),
    "warmup_negative": (["--warmup", "-1"], ["--warmup", ">= 0"]),
    "threads_negative": (["--threads", "-1"], ["--threads", ">= 1"]),
    "batch_zero": (["--batch", "0"], ["--batch", ">= 1"]),
    "seq_len_negative": (["--seq-len", "-5"], ["--seq-len", ">= 1"]),
    "opt_without_value": (["--opt", "novalue"], ["--opt takes KEY=VALUE", "'novalue'"]),
    "opt_empty_key": (["--opt", "=x"], ["--opt takes KEY=VALUE"]),
    "reps_float": (["--reps", "2.5"], ["--reps", "invalid int value"]),
    "threads_bool": (["--threads", "true"], ["--threads", "invalid int value"]),
    "unknown_option": (["--bogus"], ["unrecognized arguments: --bogus"]),
}

USAGE = {  # rkdeploy usage errors: exit 2, click's usage text, one "Error:" line
    "check_without_target": (["check"], ["Missing option '--target'"]),
    "unknown_option": (["check", "-t", "rk3588", "--bogus"], ["No such option: --bogus"]),
    "unknown_command": (["frobnicate"], ["No such command 'frobnicate'"]),
    "report_bad_choice": (["report", "--format", "xml"], ["--format", "'xml' is not one of md, csv, jsonl, html"]),
    "report_format_missing_value": (["report", "--format"], ["--format", "requires an argument"]),
    "bench_reps_zero": (["bench", "-t", "rk3588", "--reps", "0"], ["--reps", "greater than or equal to 1"]),
    "bench_reps_word": (["bench", "-t", "rk3588", "--reps", "five"], ["--reps", "valid integer"]),
    "bench_n_prompt_zero": (["bench", "-t", "rk3588", "--n-prompt", "0"], ["--n-prompt"]),
    "bench_n_prompt_negative": (["bench", "-t", "rk3588", "--n-prompt", "-5"], ["--n-prompt"]),
    "bench_n_gen_zero": (["bench", "-t", "rk3588", "--n-gen", "0"], ["--n-gen"]),
    "bench_warmup_negative": (["bench", "-t", "rk3588", "--warmup", "-1"], ["--warmup"]),
    "bench_threads_negative": (["bench", "-t", "rk3588", "--threads", "-1"], ["--threads"]),
    "bench_threads_float": (["bench", "-t", "rk3588", "--threads", "2.5"], ["--threads", "valid integer"]),
    "bench_threads_bool": (["bench", "-t", "rk3588", "--threads", "true"], ["--threads", "valid integer"]),
    "bench_ssh_reps_zero": (["bench", "-B", "all", "-t", "rk3588", "--reps", "0"], ["--reps"]),
    "bench_opt_without_value": (["bench", "-t", "rk3588", "--opt", "engine"], ["--opt", "KEY=VALUE"]),
    "push_jobs_zero": (["push", "-B", "all", "-t", "rk3588", "--jobs", "0"], ["--jobs"]),
    "push_jobs_negative": (["push", "-B", "all", "-t", "rk3588", "-j", "-3"], ["--jobs"]),
    "push_without_boards": (["push", "-t", "rk3588"], ["give --boards NAMES (inventory) or --farm TAG=VALUE"]),
    "calib_build_n_prompts_zero": (["calib", "build", "--n-prompts", "0"], ["--n-prompts"]),
    "calib_validate_without_file": (["calib", "validate"], ["Missing argument"]),
    "doctor_no_host": (["doctor", "--no-host"], ["only --host checks"]),
    "models_fetch_unknown_option": (["models", "fetch", "--bogus"], ["No such option: --bogus"]),
    "export_only_missing_value": (["export", "-t", "rk3588", "--only"], ["--only", "requires an argument"]),
    "quality_unknown_option": (["quality", "-t", "rk3588", "--fast"], ["No such option: --fast"]),
    "bench_target_missing_value": (["bench", "-t"], ["-t", "requires an argument"]),
    "check_recipe_missing_value": (["check", "-t", "rk3588", "-r"], ["-r", "requires an argument"]),
    "boards_trust_without_name": (["boards", "trust"], ["Missing argument 'name'"]),
    "calib_build_max_new_tokens_negative": (["calib", "build", "--max-new-tokens", "-1"], ["--max-new-tokens"]),
    "debug_then_usage_error": (["--debug", "check"], ["Missing option '--target'"]),
    "report_out_is_directory": (["report", "--out", "{C}/stores"], ["--out", "is a directory"]),
    "report_out_under_a_file": (["report", "--out", "{C}/known_hosts/corrupt/r.md"], ["--out", "is a file, not a folder"]),
    "export_jsonl_is_directory": (["export", "-t", "rk3588", "--dry-run", "--jsonl", "{C}/calib"], ["--jsonl"]),
    "calib_build_out_is_directory": (["calib", "build", "--out", "{C}/calib/is_a_directory.json"], ["--out"]),
    "models_cache_is_a_file": (["models", "fetch", "--cache", "{C}/calib/nan.json"], ["--cache", "is a file"]),
    "export_artifacts_under_a_file": (["export", "-t", "rk3588", "--dry-run", "--artifacts", "{C}/calib/nan.json/x"],
                                      ["--artifacts", "is a file"]),
    "export_require_unknown_kind": (["export", "-t", "rk3588", "--dry-run", "--require", "rkllm,bogus"],
                                    ["--require", "'bogus'", "rkllm, rknn"]),
    "compare_without_b": (["compare", "latest"], ["Missing argument 'b'"]),
    "report_llama_bench_sqlite_without_out": (["report", "--format", "llama-bench-sqlite"], ["--out", "writes a database"]),
}
KNOWN = {  # rkdeploy known errors from arguments: exit 1, one "rkdeploy: error:" line
    "push_unknown_target": (["push", "-B", "all", "-t", "rk9999"], ["unknown target 'rk9999'", "rk3588"]),
    "bench_unknown_target": (["bench", "-t", "rk9999"], ["unknown target 'rk9999'"]),
    "bench_ssh_unknown_target": (["bench", "-B", "all", "-t", "rk9999"], ["unknown target 'rk9999'"]),
    "check_unknown_target": (["check", "-t", "rk9999"], ["unknown target 'rk9999'"]),
    "report_store_folder_missing": (["report", "--store", "no/such/dir/s.sqlite"], ["no/such/dir", "does not exist"]),
    "compare_unknown_selector_term": (["compare", "latest", "lastest", "--store", "no/such/dir/s.sqlite"],
                                      ["selector 'lastest'", "is not a known term", "run=N"]),
    "report_select_run_zero": (["report", "--select", "run=0"], ["selector 'run=0'", "takes a run number"]),
    "push_unknown_board": (["push", "-B", "nosuchboard", "-t", "rk3588", "--inventory", "{C}/inventories/base.yaml"],
                           ["--boards 'nosuchboard'", "known: b1"]),
    "known_hosts_corrupt": (["boards", "list", "--inventory", "{C}/inventories/base.yaml"],
                            ["known_hosts", "corrupt", "cannot be read"]),
    "export_unknown_target": (["export", "-t", "rk9999", "--dry-run"], ["unknown target 'rk9999'"]),
    "quality_unknown_target": (["quality", "-t", "rk9999"], ["unknown target 'rk9999'"]),
    "calib_validate_missing_file": (["calib", "validate", "missing.json"], ["missing.json", "file not found"]),
    "check_recipe_missing_file": (["check", "-t", "rk3588", "-r", "missing.yaml"], ["missing.yaml", "not found"]),
    "boards_trust_unknown_board": (["boards", "trust", "nosuch", "--inventory", "{C}/inventories/base.yaml"],
                                   ["no board named 'nosuch'", "b1"]),
    "inventory_missing_file": (["boards", "list", "--inventory", "missing.yaml"], ["missing.yaml", "not found"]),
    "known_hosts_is_directory": (["boards", "list", "--inventory", "{C}/inventories/base.yaml"],
                                 ["known_hosts", "stores", "cannot be read"]),
}
KNOWN_ENV = {"known_hosts_corrupt": {"RKDEPLOY_KNOWN_HOSTS": "{C}/known_hosts/corrupt"},
             "known_hosts_is_directory": {"RKDEPLOY_KNOWN_HOSTS": "{C}/stores"}}


# --- running ------------------------------------------------------------------------------------

@dataclass
class Result:
    rc: int
    out: str
    err: str


def snapshot(root: Path, *, content: bool = False) -> dict[str, object]:
    """Every file and folder under ``root``: size + mtime (per case, fast) or a content hash."""
    out: dict[str, object] = {}
    for folder, dirs, files in os.walk(root):  # os.walk, not Path.rglob: half the time, run once per case
        for name in dirs + files:
            full = os.path.join(folder, name)
            rel = os.path.relpath(full, root)
            if os.path.isdir(full):
                out[rel] = "dir"
            elif content:
                with open(full, "rb") as f:
                    out[rel] = hashlib.sha256(f.read()).hexdigest()
            else:
                st = os.stat(full)
                out[rel] = (st.st_size, st.st_mtime_ns)
    return out


CORPUS_BEFORE = snapshot(CORPUS)
CORPUS_CONTENT = snapshot(CORPUS, content=True)


@pytest.fixture
def clean(tmp_path, monkeypatch):
    """cwd = an empty folder; default results store inside it; after the case: nothing created there,
    nothing in the corpus changed."""
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("RKDEPLOY_RESULTS", str(work / "results" / "rkdeploy.sqlite"))
    monkeypatch.setenv("RKDEPLOY_ARTIFACTS", str(work / "artifacts"))
    monkeypatch.setenv("RKDEPLOY_KNOWN_HOSTS", str(tmp_path / "known_hosts"))
    monkeypatch.setenv("COLUMNS", "200")
    yield work
    assert sorted(os.listdir(work)) == [], "the case created files"
    assert not (tmp_path / "known_hosts").exists()
    assert snapshot(CORPUS) == CORPUS_BEFORE, "the case changed the corpus"


def rk(*args, env: dict | None = None) -> Result:
    """``rkdeploy ARGS`` in-process through the real ``main()`` (its error path, its exit codes)."""
    from host import cli

    saved_env, saved_argv = dict(os.environ), sys.argv
    os.environ.update({k: v.format(C=CORPUS) for k, v in (env or {}).items()})
    sys.argv = ["rkdeploy", *(str(a).format(C=CORPUS) for a in args)]
    cli._state["debug"] = False
    out, err = io.StringIO(), io.StringIO()
    rc = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            cli.main()
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else 1
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        sys.argv = saved_argv
    return Result(rc, out.getvalue(), err.getvalue())


def board(*args) -> Result:
    """``python3 -m board ARGS`` in-process (``board.__main__.main``)."""
    from board.__main__ import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main([str(a) for a in args])
        except SystemExit as e:  # argparse usage errors
            rc = e.code
    return Result(rc, out.getvalue(), err.getvalue())


def clear_error(res: Result, rc: int, needles: list, *, prefix: str = "rkdeploy: error: ", name: str = "") -> str:
    """Exit code ``rc``, exactly one error line on stderr holding every needle; no traceback anywhere."""
    text = res.out + res.err
    assert "Traceback" not in text and "internal error" not in text, text
    assert res.rc == rc, (res.rc, text)
    lines = [ln for ln in res.err.splitlines() if ln.strip()]
    if prefix == "board usage":  # argparse: usage lines, then one "prog: error: ..." line
        errors = [ln for ln in lines if ": error: " in ln]
        assert len(errors) == 1 and lines[0].startswith("usage:"), res.err
    elif rc == 2 and prefix == "rkdeploy: error: ":  # click usage text: Usage / Try ... / one Error: line
        errors = [ln for ln in lines if ln.startswith("Error:")]
        assert len(errors) == 1 and any(ln.startswith("Usage:") for ln in lines), res.err
    else:
        errors = lines
        assert len(errors) == 1 and errors[0].startswith(prefix), res.err
    line = errors[0]
    for n in needles:
        assert (name if n is ANY else n) in line, (n, line)
    return line


def _ids(d: dict) -> list:
    return sorted(d)


# --- host inputs ---------------------------------------------------------------------------------

@pytest.mark.parametrize("case", _ids(RECIPES))
def test_recipe(case, clean):
    clear_error(rk("check", "-r", CORPUS / "recipes" / case, "-t", "rk3588"), 1, RECIPES[case], name=case)


@pytest.mark.parametrize("case", _ids(TARGETS))
def test_targets_table(case, clean):
    res = rk("check", "-t", "rk3588", env={"RKDEPLOY_TARGETS": str(CORPUS / "targets" / case)})
    clear_error(res, 1, TARGETS[case], name=case)


@pytest.mark.parametrize("case", _ids(CALIBRATION))
def test_calibration_json(case, clean):
    clear_error(rk("calib", "validate", CORPUS / "calib" / case), 1, CALIBRATION[case], name=case)


@pytest.mark.parametrize("case", _ids(INVENTORIES))
def test_inventory(case, clean):
    clear_error(rk("boards", "list", "--inventory", CORPUS / "inventories" / case), 1, INVENTORIES[case], name=case)


@pytest.mark.parametrize("case", ["port_float.yaml", "host_empty.yaml", "workdir_traversal.yaml", "user_mapping.yaml",
                                  "duplicate_host.yaml", "syntax_error.yaml"])
def test_inventory_refused_before_any_connection(case, clean):
    """push and remote bench read the same inventory first: same line, nothing contacted."""
    res = rk("push", "-B", "all", "-t", "rk3588", "--inventory", CORPUS / "inventories" / case)
    clear_error(res, 1, INVENTORIES[case], name=case)


@pytest.mark.parametrize("case", _ids(STORES))
def test_results_store(case, clean):
    fmt = "jsonl" if "row" in case else "md"  # every row read (jsonl) or the table of the newest (md)
    clear_error(rk("report", "--format", fmt, "--store", CORPUS / "stores" / case), 1, STORES[case], name=case)


@pytest.mark.parametrize("case", _ids(USAGE))
def test_usage_errors_exit_2_with_usage_text(case, clean):
    argv, needles = USAGE[case]
    clear_error(rk(*argv), 2, needles)


@pytest.mark.parametrize("case", _ids(KNOWN))
def test_known_errors_from_arguments(case, clean):
    argv, needles = KNOWN[case]
    clear_error(rk(*argv, env=KNOWN_ENV.get(case)), 1, needles)


def test_report_creates_nothing_before_validation(clean):
    """A bad format, a missing folder or another program's database: no store, no folder, no table."""
    clear_error(rk("report", "--format", "xml", "--store", "s.sqlite"), 2, ["--format"])
    clear_error(rk("report", "--store", "no/such/dir/s.sqlite"), 1, ["does not exist"])
    other = CORPUS / "stores" / "other_program.sqlite"
    clear_error(rk("report", "--store", other), 1, ["another program"])
    res = rk("report", "--store", "fresh.sqlite")  # a missing store in an existing folder reads as empty
    assert res.rc == 0 and "no results yet" in res.out and not Path("fresh.sqlite").exists()
    res = rk("report")  # the default store ($RKDEPLOY_RESULTS, folder not there yet): empty, no folder made
    assert res.rc == 0 and "no results yet" in res.out and not Path("results").exists()


def test_bench_store_of_another_program_is_left_untouched(clean, tmp_path):
    from host.errors import RkdeployError
    from host.results import ResultStore

    copy = tmp_path / "other.sqlite"
    shutil.copy(CORPUS / "stores" / "other_program.sqlite", copy)
    before = copy.read_bytes()
    with pytest.raises(RkdeployError, match="another program"):
        ResultStore(copy)  # the writer refuses too, before adding a table
    assert copy.read_bytes() == before


# --- board inputs --------------------------------------------------------------------------------

@pytest.mark.parametrize("case", _ids(MANIFEST_PROBLEM))
def test_board_doctor_refuses_bad_manifest(case, clean):
    clear_error(board("doctor", "--artifact", CORPUS / "artifacts" / case), 1, MANIFEST_PROBLEM[case],
                prefix="board: error: ")


@pytest.mark.parametrize("case", _ids({**MANIFEST_PROBLEM, **BENCH_ONLY}))
def test_board_bench_refuses_bad_manifest(case, clean, tmp_path):
    """One line on stderr, and the host still gets a row saying why (status error)."""
    import json

    out = tmp_path / "rows.jsonl"
    res = board("bench", "--artifact", CORPUS / "artifacts" / case, "--backend", "fake", "--reps", 1, "--n-gen", 2,
                "--n-prompt", 4, "--warmup", 0, "--out", out)
    needles = {**MANIFEST_PROBLEM, **BENCH_ONLY}[case]
    clear_error(res, 1, needles, prefix="board: error: ")
    hello, row = [json.loads(x) for x in out.read_text().splitlines()]
    assert hello["type"] == "hello" and row["status"] == "error" and needles[0] in row["error"]


@pytest.mark.parametrize("case", _ids(RUNNER_ARGS))
def test_board_runner_arguments_leave_out_untouched(case, clean, tmp_path):
    extra, needles = RUNNER_ARGS[case]
    out = tmp_path / "rows.jsonl"
    kept = tmp_path / "kept.jsonl"
    kept.write_text('{"type": "row", "earlier": true}\n')
    base = ["bench", "--artifact", CORPUS / "artifacts" / "good", "--backend", "fake"]
    argparse_error = case in ("reps_float", "threads_bool", "unknown_option")
    for target in (out, kept):
        res = board(*base, *extra, "--out", target)
        clear_error(res, 2, needles, prefix="board usage" if argparse_error else "board: error: ")
    assert not out.exists(), "--out created on an argument error"
    assert kept.read_text() == '{"type": "row", "earlier": true}\n', "--out modified on an argument error"


@pytest.mark.parametrize("out", ["{tmp}", "{tmp}/no/such/dir/rows.jsonl"])
def test_board_runner_out_must_be_a_file_in_a_folder(out, clean, tmp_path):
    res = board("bench", "--artifact", CORPUS / "artifacts" / "good", "--backend", "fake", "--out",
                out.format(tmp=tmp_path))
    clear_error(res, 2, ["--out", "must be a file in an existing folder"], prefix="board: error: ")
    assert not (tmp_path / "no").exists()


VALID_RECIPES = ("base.yaml", "anchors_valid.yaml")  # the strict loader must not refuse ordinary YAML


@pytest.mark.parametrize("case", VALID_RECIPES)
def test_valid_recipes_still_pass(case, clean, builtin_models):  # the recipes name the materialised built-in LLM
    res = rk("check", "-r", CORPUS / "recipes" / case, "-t", "rk3588")
    assert res.rc == 0 and "ok:" in res.out, res.out + res.err


def test_valid_inventory_still_loads(clean):
    res = rk("boards", "list", "--inventory", CORPUS / "inventories" / "base.yaml")
    assert res.rc == 0 and "b1" in res.out and "10.0.0.1" in res.out, res.out + res.err


def test_good_artifact_still_runs(clean, tmp_path):
    res = board("bench", "--artifact", CORPUS / "artifacts" / "good", "--backend", "fake", "--reps", 1, "--n-gen", 2,
                "--n-prompt", 4, "--warmup", 0, "--out", tmp_path / "rows.jsonl")
    assert res.rc == 0 and not res.err, res.err
    assert board("doctor", "--artifact", CORPUS / "artifacts" / "good").rc in (0, 1)  # checks of this machine


def test_every_corpus_case_has_an_expectation():
    """The corpus and the tables above list the same cases (a new file without an expectation fails)."""
    listed = {
        "recipes": set(RECIPES) | set(VALID_RECIPES), "targets": set(TARGETS), "calib": set(CALIBRATION),
        "inventories": set(INVENTORIES) | {"base.yaml"}, "stores": set(STORES),
        "artifacts": set(MANIFEST_PROBLEM) | set(BENCH_ONLY) | {"good"},
        "models": {r.removeprefix("model_").removesuffix(".yaml") for r in RECIPES if r.startswith("model_")},
        "gguf": {r.removeprefix("gguf_").removesuffix(".yaml") + ".gguf" for r in RECIPES
                 if r.startswith("gguf_") and r != "gguf_missing.yaml"},
        "known_hosts": {"corrupt"},
    }
    for sub, want in listed.items():
        assert {p.name for p in (CORPUS / sub).iterdir()} == want, sub
    n = sum(len(v) for k, v in listed.items() if k not in ("models", "gguf")) + len(RUNNER_ARGS) + len(USAGE) + len(KNOWN)
    assert n >= 200, n


# --- end to end (subprocesses) -------------------------------------------------------------------

def _rkdeploy(*args, cwd: Path, env: dict | None = None) -> Result:
    exe = Path(sys.executable).parent / "rkdeploy"
    p = subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=120,
                       env={**os.environ, "COLUMNS": "200", **(env or {})})
    return Result(p.returncode, p.stdout, p.stderr)


@pytest.mark.slow  # five rkdeploy processes
def test_end_to_end_rkdeploy(clean):
    clear_error(_rkdeploy("check", cwd=clean), 2, ["Missing option '--target'"])
    clear_error(_rkdeploy("report", "--format", "xml", "--store", "s.sqlite", cwd=clean), 2, ["'xml'"])
    clear_error(_rkdeploy("push", "-B", "all", "-t", "rk9999", cwd=clean), 1, ["unknown target 'rk9999'"])
    clear_error(_rkdeploy("boards", "list", "--inventory", CORPUS / "inventories" / "port_float.yaml", cwd=clean), 1,
                INVENTORIES["port_float.yaml"], name="port_float.yaml")
    clear_error(_rkdeploy("check", "-t", "rk3588", "-r", CORPUS / "recipes" / "recursive_alias_in_extra.yaml",
                          cwd=clean), 1, RECIPES["recursive_alias_in_extra.yaml"], name="recursive_alias_in_extra.yaml")


def _isolated_board(python: str, *args, cwd: Path) -> Result:
    """The runner as on a board: a copy of board/ only, ``python3 -I -S board ...`` (stdlib only)."""
    lone = cwd.parent / "lone"
    if not lone.exists():
        shutil.copytree(ROOT / "board", lone / "board", ignore=shutil.ignore_patterns("__pycache__"))
    p = subprocess.run([python, "-I", "-S", "board", *map(str, args)], capture_output=True, text=True, cwd=lone,
                       timeout=120)
    return Result(p.returncode, p.stdout, p.stderr)


# The oldest Python the board side supports, when this machine has it (pyenv ships 3.8 here).
PYTHONS = [sys.executable] + sorted(str(p) for p in Path("/root/.pyenv/versions").glob("3.8*/bin/python3.8"))[:1]


@pytest.mark.slow  # eleven board runner processes
@pytest.mark.parametrize("python", PYTHONS, ids=lambda p: Path(p).name)
def test_end_to_end_board_runner(python, clean, tmp_path):
    for case in ("traversal", "absolute", "deep", "file_entry_string", "nul_in_name"):
        art = CORPUS / "artifacts" / case
        clear_error(_isolated_board(python, "doctor", "--artifact", art, cwd=clean), 1, MANIFEST_PROBLEM[case],
                    prefix="board: error: ")
        res = _isolated_board(python, "bench", "--artifact", art, "--backend", "fake", "--reps", 1, cwd=clean)
        clear_error(res, 1, MANIFEST_PROBLEM[case], prefix="board: error: ")
    out = tmp_path / "rows.jsonl"
    res = _isolated_board(python, "bench", "--artifact", CORPUS / "artifacts" / "good", "--backend", "fake",
                          "--threads", "0", "--out", out, cwd=clean)
    clear_error(res, 2, ["--threads"], prefix="board: error: ")
    assert not out.exists()


# --- host-side checks of what the board will be given -----------------------------------------------

@pytest.mark.parametrize("kw", [{"n_prompt": 0}, {"n_gen": -5}, {"reps": 0}, {"warmup": -1}, {"threads": 0},
                                {"threads": True}, {"reps": 2.0}, {"options": {"": "x"}}, {"options": {"k": "a\nb"}}])
def test_bench_params_refused_before_any_board(kw):
    from host.bench import BenchParams
    from host.errors import ConfigError

    with pytest.raises(ConfigError, match="--"):
        BenchParams(**kw)


def test_host_bench_skips_an_artifact_with_a_bad_manifest(clean, tmp_path):
    """The host reads manifests with the board's validator: a hostile one is skipped with its reason."""
    from host.bench import BenchParams, bench_local
    from host.config import DEFAULT_RECIPE

    root = tmp_path / "artifacts"
    shutil.copytree(CORPUS / "artifacts" / "traversal", root / "smollm2-135m-instruct" / "rk3588" / "fp32")
    seen: list[str] = []
    summary = bench_local(recipe=DEFAULT_RECIPE, target="rk3588", params=BenchParams(n_prompt=4, n_gen=2, reps=1),
                          store=tmp_path / "r.sqlite", artifacts_root=root, log=seen.append)
    assert not summary.rows
    assert any("unreadable manifest" in m and "is not allowed" in m for m in summary.skipped), summary.skipped


def test_zz_corpus_content_unchanged():
    """Runs last (last in this file): after every case above, every corpus file still has its committed content."""
    assert snapshot(CORPUS, content=True) == CORPUS_CONTENT
