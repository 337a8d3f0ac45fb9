"""Calibration JSON in the rkllm format: a list of ``{"input": <templated prompt>, "target": <answer>}``.

``build_calibration`` follows the vendor method (ROCKCHIP.md §2): held-in prompts, the model's own
chat template applied, answers generated greedily by the float model. ``validate_file`` rejects
every malformed kind with one line naming the item and the field, before any expensive work.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from host.config import ModelSpec, Recipe
from host.errors import CalibrationError, ConfigError, ModelError
from host.fsutil import atomic_write_text
from host.safeload import read_json
from host.textdata import NGRAM, _ngrams, read_docs

KEYS = ("input", "target")
RECOMMENDED_ITEMS = 20
SENTINEL = "\u2063RKDEPLOY_SENTINEL\u2063"

#: Instruction shapes for held-in prompts (rotated); {text} is a held-in document.
PROMPTS_NEWS = (
    "Summarize this news report in two sentences.\n\n{text}",
    "What are the key facts in this report? Answer in a short list.\n\n{text}",
    "Write a headline for this news story and explain your choice.\n\n{text}",
)
PROMPTS_VERSE = ("Explain in plain modern English what this speech from a play means.\n\n{text}",)


@dataclass
class Report:
    n_items: int
    max_tokens: int
    warnings: list[str] = field(default_factory=list)


class ModelText:
    """A model's tokenizer and chat template, loaded without torch (tokenizers + jinja2)."""

    def __init__(self, folder: Path):
        self.folder = folder
        tok_file = folder / "tokenizer.json"
        if not tok_file.is_file():
            raise ModelError(f"{folder}: tokenizer.json is missing (needed to check calibration inputs)")
        from tokenizers import Tokenizer

        try:
            self.tokenizer = Tokenizer.from_file(str(tok_file))
        except Exception as e:  # noqa: BLE001 - tokenizers raises a bare Exception for a malformed file
            raise ModelError(f"{tok_file}: not a readable tokenizer ({str(e).splitlines()[0][:200]})") from None
        try:
            config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            config = {}
        self.config = config if isinstance(config, dict) else {}

    def _special(self, key: str) -> str | None:
        v = self.config.get(key)
        if isinstance(v, dict):
            v = v.get("content")
        return v if isinstance(v, str) else None

    @property
    def bos_token(self) -> str | None:
        return self._special("bos_token")

    @property
    def bos_id(self) -> int | None:
        return self.tokenizer.token_to_id(self.bos_token) if self.bos_token else None

    @cached_property
    def chat_template(self) -> str | None:
        jinja = self.folder / "chat_template.jinja"
        if jinja.is_file():
            return jinja.read_text()
        t = self.config.get("chat_template")
        return t if isinstance(t, str) else None

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(msg):
            raise ConfigError(f"{self.folder}: chat template error: {msg}")

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = raise_exception
        return env.from_string(self.chat_template or "").render(
            messages=messages, add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token or "", eos_token=self._special("eos_token") or "",
        )

    @cached_property
    def generation_suffix(self) -> str | None:
        """What the template puts after the user's text (e.g. ``<|im_end|>\\n<|im_start|>assistant\\n``)."""
        if not self.chat_template:
            return None
        rendered = self.apply_chat_template([{"role": "user", "content": SENTINEL}])
        return rendered.split(SENTINEL, 1)[1] if SENTINEL in rendered else None

    def encode(self, text: str) -> list[int]:
        """Token ids as the toolkit sees them (special tokens added by the tokenizer's post-processor)."""
        return self.tokenizer.encode(text, add_special_tokens=True).ids


def _pick_model(recipe: Recipe, model: str | None) -> ModelSpec:
    if model:
        return recipe.model(model)
    llms = recipe.llms()
    if not llms:
        raise ConfigError(f"recipe {recipe.name!r} has no LLM (calibration JSON is for rkllm models)")
    return llms[0]


def _structure_problems(where: str, data) -> tuple[list[str], list[tuple[int, str, str]]]:
    """Format problems (one line each) and the well-formed items as (index, input, target)."""
    if not isinstance(data, list):
        return [f"{where}: top level must be a JSON list of {{\"input\", \"target\"}} objects, got {type(data).__name__}"], []
    if not data:
        return [f"{where}: the list is empty (at least 1 item; {RECOMMENDED_ITEMS} recommended)"], []
    problems, items, first_seen = [], [], {}
    for i, item in enumerate(data):
        if not isinstance(item, dict):
            problems.append(f"{where}: item {i}: must be an object with keys input, target; got {type(item).__name__}")
            continue
        bad = False
        for k in KEYS:
            if k not in item:
                problems.append(f"{where}: item {i}: missing field {k!r}")
                bad = True
            elif not isinstance(item[k], str):
                problems.append(f"{where}: item {i}: field {k!r} must be a string, got {type(item[k]).__name__}")
                bad = True
            elif not item[k].strip():
                problems.append(f"{where}: item {i}: field {k!r} is empty")
                bad = True
        for k in sorted(set(item) - set(KEYS)):
            problems.append(f"{where}: item {i}: unknown field {k!r} (allowed: input, target)")
            bad = True
        if bad:
            continue
        if item["input"] in first_seen:
            problems.append(f"{where}: item {i}: field 'input' duplicates item {first_seen[item['input']]}")
            continue
        first_seen[item["input"]] = i
        items.append((i, item["input"], item["target"]))
    return problems, items


def validate_data(data, where: str, recipe: Recipe, model: str | None = None, *, cache=None) -> Report:
    """Validate parsed calibration data; raise ``CalibrationError`` with one line per problem."""
    spec = _pick_model(recipe, model)
    problems, items = _structure_problems(where, data)
    if problems:
        raise CalibrationError(problems)
    from host.models import resolve_model

    text = ModelText(resolve_model(spec, cache))
    suffix = text.generation_suffix
    heldout = _ngrams(read_docs(recipe.text.heldout), NGRAM) if recipe.text.heldout else set()
    max_tokens = 0
    for i, inp, tgt in items:
        if suffix is not None and not inp.rstrip().endswith(suffix.strip()):
            problems.append(f"{where}: item {i}: field 'input' lacks the model's chat template (it must end with "
                            f"{suffix.strip()!r}; build inputs with `rkdeploy calib build` or apply_chat_template)")
        ids = text.encode(inp)
        if text.bos_id is not None and len(ids) >= 2 and ids[0] == ids[1] == text.bos_id:
            problems.append(f"{where}: item {i}: field 'input' starts with BOS {text.bos_token!r} twice after tokenization "
                            "(the template/tokenizer already adds it; drop the leading one)")
        n = len(ids) + len(text.encode(tgt))
        max_tokens = max(max_tokens, len(ids))
        if n > spec.max_context:
            problems.append(f"{where}: item {i}: fields 'input'+'target' are {n} tokens, above max_context {spec.max_context}")
        for k, v in (("input", inp), ("target", tgt)):
            shared = _ngrams([v], NGRAM) & heldout
            if shared:
                problems.append(f"{where}: item {i}: field {k!r} contains held-out evaluation text "
                                f"({' '.join(next(iter(shared)))!r}…); calibration must use held-in text only")
    if problems:
        raise CalibrationError(problems)
    warnings = []
    if len(items) < RECOMMENDED_ITEMS:
        warnings.append(f"{where}: only {len(items)} items; the vendor method uses about {RECOMMENDED_ITEMS}")
    return Report(len(items), max_tokens, warnings)


def validate_file(path: Path, recipe: Recipe, model: str | None = None, *, cache=None) -> Report:
    path = Path(path)
    try:
        data = read_json(path, what="calibration JSON file")
    except ConfigError as e:
        raise CalibrationError([str(e)]) from None
    return validate_data(data, str(path), recipe, model, cache=cache)


# --- building -----------------------------------------------------------------------------------

def heldin_prompts(recipe: Recipe, n: int, *, max_words: int = 160) -> list[str]:
    """``n`` deterministic prompts from held-in text: news documents and verse, spread evenly."""
    docs = read_docs(recipe.text.heldin)
    verse = [d for d in docs if ": " in d[:40] and " / " in d]
    news = [d for d in docs if d not in verse]
    n_verse = min(len(verse), n // 4)
    picks = []
    for k, d in enumerate(news[:: max(1, len(news) // max(1, n - n_verse))][: n - n_verse]):
        picks.append(PROMPTS_NEWS[k % len(PROMPTS_NEWS)].format(text=" ".join(d.split()[:max_words])))
    for d in verse[:: max(1, len(verse) // max(1, n_verse))][:n_verse]:
        picks.append(PROMPTS_VERSE[0].format(text=" ".join(d.split()[:max_words])))
    return picks[:n]


GENERATORS = ("torch", "onnx")


def provenance_path(out: Path) -> Path:
    """``<name>.provenance.json`` beside calibration JSON ``<name>.json``: how its answers were generated (the
    calibration JSON itself stays the rkllm format, a bare list of ``{input, target}``)."""
    out = Path(out)
    stem = out.name[:-len(".json")] if out.name.endswith(".json") else out.name
    return out.with_name(f"{stem}.provenance.json")


def build_calibration(recipe: Recipe, *, model: str | None = None, out: Path | None = None,
                      n_prompts: int | None = None, max_new_tokens: int | None = None, cache=None,
                      batch: int | None = None, dtype: str = "float32", generator: str = "torch",
                      generator_model: Path | None = None, warn=None) -> Path:
    """Generate the calibration JSON with the model (greedy) and write it atomically, with its provenance
    (``provenance_path``) beside it.

    Answers come from ``host.calib_gen.generate_answers``: batched (``batch`` prompts at a time, KV cache),
    resumable from ``<out>.partial.jsonl`` (removed once the JSON is written) and reporting progress with an
    ETA on stderr. ``generator`` ``torch`` (the reference: the float HF model, left padding) in ``dtype``
    ``float32`` (the vendor method) or ``bfloat16`` (faster on AMX / AVX512-BF16 CPUs, different answers);
    ``onnx``: onnxruntime-genai on the model's int8 artifact (``generator_model``, else built once into the
    cache: ``host.calib_gen.onnx_generator``), right padding: int8 answers, which may differ from float ones."""
    import sys

    from host.calib_gen import DEFAULT_BATCH, Progress, generate_answers, item_key, partial_path

    warn = warn or (lambda s: print(f"rkdeploy: warning: {s}", file=sys.stderr, flush=True))
    spec = _pick_model(recipe, model)
    out = Path(out or spec.calibration or Path("calib_data") / f"{spec.name}.calib.json")
    n = n_prompts or recipe.calib.n_prompts
    new = max_new_tokens or recipe.calib.max_new_tokens
    bsz = batch or DEFAULT_BATCH
    if generator not in GENERATORS:
        raise ConfigError(f"calib build: generator {generator!r} is not supported (allowed: {', '.join(GENERATORS)})")
    if dtype not in ("float32", "bfloat16"):
        raise ConfigError(f"calib build: dtype {dtype!r} is not supported (allowed: float32, bfloat16)")
    if generator == "onnx" and dtype != "float32":
        raise ConfigError(f"calib build: --dtype {dtype} is for the torch generator (the onnx generator runs the int8 artifact)")
    if generator_model is not None:
        generator_model = Path(generator_model)
        if generator != "onnx":
            raise ConfigError("calib build: --generator-model names an ONNX artifact folder: use it with --generator onnx")
        if not (generator_model / "genai_config.json").is_file():
            raise ConfigError(f"calib build: --generator-model {generator_model}: no genai_config.json there "
                              "(an onnxruntime-genai artifact folder, e.g. artifacts/<model>/<target>/int8)")
    from host.models import model_sha256, resolve_model

    folder = resolve_model(spec, cache, fetch=True)
    text = ModelText(folder)
    prompts = heldin_prompts(recipe, n)
    messages = ([{"role": "system", "content": recipe.calib.system_prompt}] if recipe.calib.system_prompt else [])
    if not text.chat_template:
        warn(f"{folder}: the model has no chat template (tokenizer_config.json 'chat_template' or chat_template.jinja): "
             "calibration inputs are the raw prompts; the board will see whatever template its runtime applies")
    inputs = [text.apply_chat_template(messages + [{"role": "user", "content": p}]) if text.chat_template else p
              for p in prompts]
    sha = model_sha256(folder)
    from host.models import read_config

    gen_cfg = {}
    try:
        gen_cfg = json.loads((folder / "generation_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        pass
    eos_cfg = gen_cfg.get("eos_token_id", read_config(folder).get("eos_token_id"))
    eos_ids = [e for e in (eos_cfg if isinstance(eos_cfg, list) else [eos_cfg]) if isinstance(e, int)]
    pad = text.tokenizer.token_to_id(text._special("eos_token") or "") or 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if "torch" not in sys.modules:
        # libgomp's threads spin-wait at every parallel region's barrier: on a CPU shared with other jobs one
        # descheduled thread stalls the other (measured at load ~25 on 2 cores: an 8x576x1536 matmul 27-37 ms
        # spinning vs 1.6-1.9 ms passive; 2 threads passive as fast as 1). Set before torch loads libgomp.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    t0 = time.monotonic()
    if generator == "onnx":
        from host.build.genai import _genai_version
        from host.calib_gen import GenaiLM, artifact_digest, onnx_generator

        path = generator_model or onnx_generator(folder, sha, lambda s: print(s, file=sys.stderr, flush=True))
        digest = artifact_digest(path)
        # right padding: the pad id must never occur in a prompt (genai derives the attention mask from it)
        used = {t for inp in inputs for t in text.encode(inp)} | set(eos_ids)
        gpad = next(i for i in range(len(used) + 1) if i not in used)
        lm = GenaiLM(path, pad_id=gpad, eos_ids=eos_ids or [pad])
        kind = f"onnx-int8:{digest}"
        label = f"onnx int8, batch {bsz}"
        prov = {"generator": "onnx", "runtime": f"onnxruntime-genai {_genai_version()}", "artifact": str(path),
                "artifact_sha256": digest, "scheme": "int8 (MatMulNBits, onnxruntime-genai model builder)"}
    else:
        import torch
        from transformers import AutoModelForCausalLM

        torch.manual_seed(0)
        lm = AutoModelForCausalLM.from_pretrained(str(folder), dtype=getattr(torch, dtype)).eval()
        kind = dtype
        label = f"torch {dtype}, batch {bsz}"
        import transformers

        prov = {"generator": "torch", "runtime": f"torch {torch.__version__}, transformers {transformers.__version__}",
                "dtype": dtype}
    keys = [item_key(sha, inp, new, kind, bsz) for inp in inputs]
    partial = partial_path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    answers = generate_answers(
        lm, text.encode, lambda ids: text.tokenizer.decode(ids, skip_special_tokens=True), inputs, keys,
        max_new_tokens=new, pad_id=pad, eos_ids=eos_ids, batch=bsz, partial=partial,
        progress=Progress(f"calib build ({spec.name}, {label})", len(inputs)))
    items = [{"input": inp, "target": ans} for inp, ans in zip(inputs, answers, strict=True)]
    validate_data(items, str(out), recipe, spec.name, cache=cache)
    body = json.dumps(items, ensure_ascii=False, indent=1) + "\n"
    atomic_write_text(out, body)
    import hashlib

    atomic_write_text(provenance_path(out), json.dumps({
        "calibration": out.name, "calibration_sha256": hashlib.sha256(body.encode("utf-8")).hexdigest(),
        "model": spec.name, "model_sha256": sha, **prov, "batch": bsz, "n_prompts": n, "max_new_tokens": new,
        "greedy": True, "minutes_this_run": round((time.monotonic() - t0) / 60, 2)}, indent=1) + "\n")
    partial.unlink(missing_ok=True)
    return out
