"""Model families: what rkdeploy knows per decoder family, in ONE table (data), and the lookups on it.

A family is detected from ``config.json`` (``model_type``, else ``architectures[0]``). Each record says:

- ``bos``: ``"required"`` — the model degrades badly without its BOS token (Gemma: held-out PPL 46.7 without
  ``<bos>`` vs 19.4 with it, issue 14), so its tokenizer adds one and every evaluation window must start with it;
  ``"tokenizer"`` — follow what the model's own tokenizer does (Llama 2/3 add ``<s>``/``<|begin_of_text|>``,
  SmolLM2 and Qwen add none). The evaluation always follows the tokenizer (``tokenizer_adds_bos``); ``check``
  refuses a ``required`` family whose tokenizer adds none.
- ``eos`` / ``chat_template``: the end-of-turn token the chat template closes a turn with, and whether an
  instruct checkpoint of the family normally ships a template (``calib build`` warns when a model has none).
- ``head``: ``tied`` / ``untied`` / ``either`` (by size; the fp32 export stores a tied head once).
- ``linear``: the decoder's linear layer names (``sensitive_layers`` patterns match their ends).
  ``sensitive``: the layers the int8-dyn default keeps float when they are known to help this family;
  ``None`` = not measured: run ``rkdeploy quality --sensitivity``. Gemma 3's is its own run (issue 14: 270M,
  int8-dyn simulated, 1,022 held-out tokens with ``<bos>``): ``down_proj`` carries 71 % of the whole-model KLD,
  no other type more than 7 %; the int8-dyn artifact with it float scores PPL ×1.082 (simulated: ×1.28 with
  nothing float).
- ``genai``: the onnxruntime-genai model builder's architecture names (int8/int4 ONNX) and known builder
  failures with their workaround (``host/workers/genai_builder.py`` fixes).
- ``rkllm_since``: the first rkllm-toolkit version that converts the family (airockchip/rknn-llm
  CHANGELOG.md; ROCKCHIP.md §2 lists v1.3.0's support). Where the changelog does not name the
  version the gate is the first one known to support it (conservative).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class BuilderIssue:
    """A known third-party builder failure for a family: when it happens, its symptom, its workaround."""

    tool: str                     # distribution name (onnxruntime-genai, rkllm-toolkit, rknn-toolkit2)
    symptom: str                  # what the tool prints (matched in its log)
    when: str                     # human condition, e.g. "transformers >= 5 config (nested rope_parameters)"
    fix: str | None = None        # host/workers/genai_builder.py fix name applied automatically, or None
    workaround: str = ""          # what a user can do when there is no automatic fix


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]
    architectures: tuple[str, ...]
    bos: str                                  # "required" | "tokenizer"
    eos: str                                  # end-of-turn token of the chat template
    chat_template: bool
    head: str                                 # "tied" | "untied" | "either"
    linear: tuple[str, ...]
    sensitive: tuple[str, ...] | None
    rkllm_since: str | None
    issues: tuple[BuilderIssue, ...] = ()
    note: str = ""


LLAMA_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

GEMMA3_ROPE = BuilderIssue(
    "onnxruntime-genai", "KeyError: 'rope_type'",
    "transformers >= 5 writes Gemma 3's rope_parameters nested per layer type; the builder reads the flat "
    "transformers 4 fields", fix="gemma3-rope")

FAMILIES: tuple[Family, ...] = (
    Family("llama", ("llama",), ("LlamaForCausalLM",), bos="tokenizer", eos="<|eot_id|> / </s> / <|im_end|>",
           chat_template=True, head="either", linear=LLAMA_LINEAR, sensitive=("down_proj",), rkllm_since="1.0.0",
           note="SmolLM2 and TinyLlama are Llama; Llama 3 needs rkllm-toolkit >= 1.1.0"),
    Family("qwen2", ("qwen2",), ("Qwen2ForCausalLM",), bos="tokenizer", eos="<|im_end|>", chat_template=True,
           head="either", linear=LLAMA_LINEAR, sensitive=None, rkllm_since="1.0.0",
           note="Qwen2/2.5 (0.5B/1.5B tie the head, larger ones do not); no BOS"),
    Family("qwen3", ("qwen3",), ("Qwen3ForCausalLM",), bos="tokenizer", eos="<|im_end|>", chat_template=True,
           head="either", linear=LLAMA_LINEAR, sensitive=None, rkllm_since="1.3.0",
           note="q_norm/k_norm per head; thinking template (enable_thinking)"),
    Family("gemma2", ("gemma2",), ("Gemma2ForCausalLM",), bos="required", eos="<end_of_turn>", chat_template=True,
           head="tied", linear=LLAMA_LINEAR, sensitive=None, rkllm_since="1.1.0",
           note="logit soft-capping; embeddings scaled by sqrt(hidden)"),
    Family("gemma3", ("gemma3_text", "gemma3"), ("Gemma3ForCausalLM", "Gemma3ForConditionalGeneration"),
           bos="required", eos="<end_of_turn>", chat_template=True, head="tied", linear=LLAMA_LINEAR,
           sensitive=("down_proj",), rkllm_since="1.2.0", issues=(GEMMA3_ROPE,),
           note="sliding/full attention layers with two RoPE bases; int8-dyn with down_proj float: PPL x1.082 "
                "(measured, 1,022 tokens with <bos>)"),
    Family("phi3", ("phi3",), ("Phi3ForCausalLM",), bos="tokenizer", eos="<|end|>", chat_template=True,
           head="untied", linear=("qkv_proj", "o_proj", "gate_up_proj", "down_proj"), sensitive=None,
           rkllm_since="1.0.1", note="fused qkv_proj and gate_up_proj"),
    Family("minicpm", ("minicpm",), ("MiniCPMForCausalLM",), bos="tokenizer", eos="</s>", chat_template=True,
           head="either", linear=LLAMA_LINEAR, sensitive=None, rkllm_since="1.0.1",
           note="needs trust_remote_code in transformers: the ONNX exports refuse it; MiniCPM3 (MLA) from rkllm 1.1.0"),
    Family("minicpm3", ("minicpm3",), ("MiniCPM3ForCausalLM",), bos="tokenizer", eos="<|im_end|>",
           chat_template=True, head="either",
           linear=("q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj", "gate_proj", "up_proj",
                   "down_proj"),
           sensitive=None, rkllm_since="1.1.0", note="multi-head latent attention; trust_remote_code"),
)

BY_NAME = {f.name: f for f in FAMILIES}


def detect(config: dict) -> Family | None:
    """The family of a model from its parsed ``config.json`` (``model_type``, then ``architectures``)."""
    mt = config.get("model_type")
    for f in FAMILIES:
        if mt in f.model_types:
            return f
    archs = config.get("architectures") or []
    arch = archs[0] if isinstance(archs, list) and archs else None
    return next((f for f in FAMILIES if arch in f.architectures), None)


def architecture(config: dict) -> str | None:
    archs = config.get("architectures")
    return archs[0] if isinstance(archs, list) and archs and isinstance(archs[0], str) else None


def family_label(config: dict) -> str:
    """``gemma3 (Gemma3ForCausalLM)`` for messages; the raw model_type when the family is not in the table."""
    f = detect(config)
    arch = architecture(config) or "?"
    return f"{f.name} ({arch})" if f else f"unknown family model_type={config.get('model_type')!r} ({arch})"


# --- the tokenizer's own BOS rule -----------------------------------------------------------------

def tokenizer_bos(folder: Path) -> list[int]:
    """The ids the model's tokenizer puts BEFORE a text when it adds special tokens (``[]`` = no BOS).

    Read from ``tokenizer.json``'s post-processor by encoding a probe with and without special tokens,
    so the rule is the tokenizer's own (what transformers' ``tokenizer(text)`` does)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(folder) / "tokenizer.json"))
    probe = "Hello world"
    plain = tok.encode(probe, add_special_tokens=False).ids
    full = tok.encode(probe, add_special_tokens=True).ids
    if not plain or len(full) <= len(plain):
        return []
    for k in range(len(full) - len(plain) + 1):
        if full[k:k + len(plain)] == plain:
            return full[:k]
    return []


# --- version gates ---------------------------------------------------------------------------------

def _vtuple(v: str | None) -> tuple[int, ...]:
    """``"1.2"`` -> ``(1, 2, 0)``: padded to three parts so "1.2" meets a "1.2.0" gate."""
    parts = [int(x) for x in re.findall(r"\d+", v or "")[:3]]
    return tuple(parts + [0] * (3 - len(parts)))


def version_at_least(have: str | None, need: str) -> bool:
    return bool(have) and _vtuple(have) >= _vtuple(need)


def genai_architectures() -> set[str] | None:
    """Architectures the installed onnxruntime-genai model builder dispatches on (``None``: not installed).

    Read from the builder's source (``config.architectures[0] == "…"``): the gate is the installed
    version's own list, not a version number we would have to keep in step."""
    import importlib.util

    spec = importlib.util.find_spec("onnxruntime_genai")
    if spec is None or not spec.submodule_search_locations:
        return None
    src = Path(list(spec.submodule_search_locations)[0]) / "models" / "builder.py"
    try:
        text = src.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    return set(re.findall(r'architectures\[0\]\s*==\s*"([A-Za-z0-9_]+)"', text))


def genai_fixes(config: dict) -> list[str]:
    """Workarounds (``host/workers/genai_builder.py`` fix names) the genai builder needs for this config."""
    f = detect(config)
    if f is None:
        return []
    fixes = []
    for issue in f.issues:
        if issue.tool == "onnxruntime-genai" and issue.fix == "gemma3-rope":
            rp = config.get("rope_parameters")
            if isinstance(rp, dict) and "rope_type" not in rp and "full_attention" in rp:
                fixes.append(issue.fix)
    return fixes


def known_issue(config: dict, tool: str, log_text: str) -> BuilderIssue | None:
    f = detect(config)
    return next((i for i in (f.issues if f else ()) if i.tool == tool and i.symptom in log_text), None)


# --- check: unsupported combinations, before any build ---------------------------------------------

GENAI_SCHEMES = ("int8", "int4", "int4-mixed")   # the ONNX schemes onnxruntime-genai's model builder makes


def family_problems(model, folder: Path, schemes: list[str]) -> list[str]:
    """One line per family × tool × scheme combination that cannot build (``rkdeploy check``)."""
    if model.kind != "llm":
        return []
    from host.build import registry
    from host.models import read_config
    from host.toolkits import toolkit_info

    cfg = read_config(folder)
    fam, label = detect(cfg), family_label(cfg)
    by_kind: dict[str, list[str]] = {}
    for s in schemes:
        k = registry.kind_for(model, s)
        by_kind.setdefault(k.name if k else "?", []).append(s)
    problems = []
    genai = [s for s in by_kind.get("onnx", []) if s in GENAI_SCHEMES]
    archs = genai_architectures() if genai else None
    arch = architecture(cfg)
    if genai and archs is not None and arch not in archs:
        problems.append(f"{model.name}: onnxruntime-genai {_version('onnxruntime-genai')} has no model builder for "
                        f"{label}: ONNX {', '.join(genai)} cannot be built (fp32 and int8-dyn can: torch.onnx.export)")
    if cfg.get("auto_map") and by_kind.get("onnx"):
        problems.append(f"{model.name}: {folder / 'config.json'}: field 'auto_map' — {label} needs trust_remote_code, "
                        "which rkdeploy never enables; convert the checkpoint to a transformers-native architecture")
    rkllm = by_kind.get("rkllm", [])
    info = toolkit_info("rkllm") if rkllm else None
    if rkllm and fam is None:
        problems.append(f"{model.name}: {label} is not a family rkllm-toolkit converts (host/families.py); "
                        f".rkllm {', '.join(rkllm)} would fail in the toolkit: drop them from targets")
    elif rkllm and fam and fam.rkllm_since and info and not version_at_least(info.get("version"), fam.rkllm_since):
        problems.append(f"{model.name}: rkllm-toolkit {info.get('version')} does not convert {label} (from "
                        f"{fam.rkllm_since} on): install a newer wheel with `make setup-rkllm WHEEL=…`")
    if fam and fam.bos == "required" and (folder / "tokenizer.json").is_file() and not tokenizer_bos(folder):
        problems.append(f"{model.name}: {folder / 'tokenizer.json'}: the tokenizer adds no BOS, but {label} needs it "
                        "(PPL several times worse without); fix its post_processor (add_bos_token)")
    return problems


def _version(dist: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "(not installed)"
