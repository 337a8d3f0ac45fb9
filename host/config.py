"""Typed configuration records: recipes, targets. Data only; behaviour lives elsewhere.

Unknown keys are an error naming the key and the record (``extra="forbid"``). Relative paths in
a recipe resolve against the recipe file's folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic import Strict as StrictMode

from host.errors import ConfigError
from host.safeload import line_of, read_yaml
from host.schemes import GGUF_SCHEMES, ONNX_SCHEMES, validate_scheme

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONFIGS = PROJECT_ROOT / "configs"
DEFAULT_RECIPE = CONFIGS / "models" / "smollm2-135m.yaml"
SLUG = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


class Strict(BaseModel):
    # strict: no bool/float/str -> int coercion (a port of 22.5 or `true` is an error, not 22 or 1)
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


#: A path written as a YAML string (strict mode alone would want a Path instance).
FilePath = Annotated[Path, StrictMode(False)]
#: Versions of configs/targets.yaml this rkdeploy reads.
TARGETS_SCHEMAS = (1,)


def _scheme(name: str) -> str:
    """``validate_scheme`` inside a pydantic validator: a ValueError, so the message names file, line and field."""
    try:
        return validate_scheme(name)
    except ConfigError as e:
        raise ValueError(str(e)) from None


# --- targets -------------------------------------------------------------------------------------

class Ddr(Strict):
    kind: str
    bus_bits: int
    bandwidth_gbs: float = Field(description="theoretical peak DDR bandwidth, GB/s")


class TargetCpu(Strict):
    cores: str = Field(description="the CPU clusters, e.g. 4x Cortex-A76 + 4x Cortex-A55")
    isa: list[str] = Field(description="/proc/cpuinfo Features that change int8/fp16 kernels (asimddp, asimdhp, i8mm, sve)")


class Target(Strict):
    """One chip's capabilities (configs/targets.yaml)."""

    name: str = ""
    description: str = ""
    npu_cores: int = Field(ge=1, le=8)
    rkllm_schemes: list[str]
    rknn_schemes: list[str]
    ddr: Ddr
    devfreq: dict[str, str] = {}
    max_freq_mhz: dict[str, int] = {}
    cpu: TargetCpu | None = None
    npu_tops_int8: float | None = Field(None, gt=0, description="peak int8 NPU ops, TOPS (vendor datasheet); the "
                                        "report's prefill roofline uses it")

    @field_validator("rkllm_schemes", "rknn_schemes")
    @classmethod
    def _schemes(cls, v: list[str]) -> list[str]:
        return [_scheme(s) for s in v]

    def schemes_for(self, kind: str) -> list[str]:
        """Schemes of artifact ``kind`` allowed on this chip (``host.build.registry.Kind.allowed``)."""
        from host.build import registry

        return registry.get(kind).allowed(self)


class TargetTable(Strict):
    schema_: int = Field(alias="schema")
    targets: dict[str, Target]
    unsupported: dict[str, str] = {}

    @field_validator("schema_")
    @classmethod
    def _schema(cls, v: int) -> int:
        if v not in TARGETS_SCHEMAS:
            raise ValueError(f"targets schema {v} is not one this rkdeploy reads "
                             f"({', '.join(map(str, TARGETS_SCHEMAS))}); upgrade rkdeploy or fix the file")
        return v


# --- recipes -------------------------------------------------------------------------------------

class RkllmOptions(Strict):
    """rkllm-toolkit ``build`` knobs (vendor defaults: normal for w8a8, grq for w4a16 on a GPU)."""

    algorithm: Literal["auto", "normal", "grq", "gdq"] = "auto"
    optimization_level: int = Field(0, ge=0, le=1)
    hybrid_rate: float = Field(0.0, ge=0.0, lt=1.0)
    num_npu_core: int | None = Field(None, description="default: all NPU cores of the target")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    extra: dict[str, object] = Field({}, description="pass-through kwargs for RKLLM.build (recorded in the manifest)")

    @field_validator("extra")
    @classmethod
    def _extra(cls, v: dict) -> dict:
        try:  # must survive the trip into the manifest and the toolkit worker's JSON job
            json.dumps(v, allow_nan=False)
        except (TypeError, ValueError, RecursionError) as e:
            raise ValueError(f"must hold plain JSON values (strings, numbers, lists, mappings): {e}") from None
        return v


class RknnOptions(Strict):
    algorithm: Literal["normal", "mmse", "kl_divergence"] = "normal"
    method: Literal["channel", "layer"] = "channel"
    calib_samples: int = Field(32, ge=1, le=1024)
    auto_hybrid: bool = Field(False, description="rknn build(auto_hybrid=True): layers whose quantized output "
                              "cosine is below auto_hybrid_cos stay float16 (bigger .rknn, higher accuracy; in the manifest)")
    auto_hybrid_cos: float = Field(0.98, gt=0.0, le=1.0, description="rknn config auto_hybrid_cos_thresh")


#: ONNX schemes whose weights are quantized in blocks (onnxruntime-genai MatMulNBits, block 32).
BLOCK_WEIGHT_SCHEMES = ("int4", "int4-mixed", "int8")


def transform_family(scheme: str) -> str:
    """The kind of scheme a transform searched under ``scheme`` serves: weight bits, grouped or per-channel
    weights, and activation kind (``w4a16-g64`` → ``4-bit grouped weights only``, which ONNX int4's block 32
    is too; ``w8a8`` → ``8-bit per-channel weights + activations``). Grouping counts: AWQ searched for g64
    made per-channel w4a16 worse on SmolLM2 (simulated PPL ratio 3.09 -> 3.57, README issue 16)."""
    from host.schemes import activation_bits, group_size, weight_bits

    grouped = group_size(scheme) is not None or scheme in BLOCK_WEIGHT_SCHEMES
    quant_act = activation_bits(scheme) <= 8
    return (f"{weight_bits(scheme)}-bit {'grouped' if grouped else 'per-channel'} weights"
            + (" + activations" if quant_act else " only"))


#: ``sensitive_layers`` when a recipe's model omits it: LLM down_proj, BERT-like encoder FFN output dense.
DEFAULT_SENSITIVE = {"llm": ("down_proj",), "encoder": ("layer.*.output.dense",)}


class ModelSpec(Strict):
    """One model of a recipe and what to build from it per target."""

    name: str
    kind: Literal["llm", "encoder"]
    source: str = Field(description="'builtin:NAME', a local Hugging Face folder, or a local .gguf file "
                        "(dequantized once into ~/.cache/rkdeploy/models/gguf/<sha256>; relative to the recipe)")
    max_context: int = Field(4096, description="rkllm max_context: multiple of 32, <= 16384")
    calibration: FilePath | None = Field(None, description="rkllm calibration JSON (llm)")
    onnx: list[str] = Field([], description="ONNX CPU schemes built for every target")
    gguf: list[str] = Field([], description="GGUF (llama.cpp CPU) schemes built for every target (llm): "
                            "gguf-f16, gguf-q8_0, gguf-q4_0, gguf-q4_k_m (needs 'calibration')")
    sensitive_layers: list[str] | Literal["auto"] | None = Field(
        None, validate_default=True,
        description="linear layers the ONNX int8 schemes keep in float (LLM: int8-dyn; encoder: int8-dyn and "
        "int8-qdq). A pattern matches the END of a layer name, component by component; '*' matches within one "
        "component, never across a dot: 'down_proj' = every model.layers.N.mlp.down_proj; 'layer.*.output.dense' "
        "= BERT's FFN output encoder.layer.N.output.dense but not encoder.layer.N.attention.output.dense. "
        "Default when omitted: llm [down_proj]; encoder [layer.*.output.dense], applied only where it matches "
        "(a pattern the recipe names must match a layer). [] = nothing kept float. "
        "'auto' (LLM, needs 'budget'): the ONNX int4-mixed artifact takes its int8 MatMuls from the measured "
        "per-layer sensitivity (the most damaging first, within the budget; the rkllm w4a16/w4a8 builds get the "
        "same share as hybrid_rate); int8-dyn then keeps the kind's default [down_proj] in float. With the "
        "ONNX scheme int4-mixed a layer LIST names the layers whose MatMuls it keeps at int8 (e.g. [lm_head, "
        "down_proj]; a 'budget' is then a limit the mix must fit, checked before the build); int8-dyn keeps "
        "the same list in float",
    )
    seq_len: int = Field(128, ge=1, le=8192, description="fixed input length (encoders, rknn)")
    batch: int = Field(1, ge=1, le=256)
    targets: dict[str, list[str]] = Field(
        {}, description="per target: vendor schemes (rkllm for llm, rknn for encoder)"
    )
    rkllm: RkllmOptions = RkllmOptions()
    rknn: RknnOptions = RknnOptions()
    transform: list[dict[str, object]] | dict[str, object] | str | None = Field(
        None, description="equivalent pre-quantization transform(s) folded into the float checkpoint (LLM; "
        "host.transforms; cached under ~/.cache/rkdeploy/transformed), fed to every builder of a scheme it "
        "serves: one mapping or a list of them, e.g. {awq: {scheme: w4a16-g64}} or "
        "[{awq: {scheme: w4a16-g64}}, {smoothquant: {scheme: w8a8}}]. The transform's search runs under its "
        "fake-quant 'scheme' and serves the schemes of the same weight bits, the same weight grouping (grouped "
        "or per-channel) and the same activation kind: awq(w4a16-gN) the grouped 4-bit weight-only ones "
        "(w4a16-gN, ONNX int4 and int4-mixed: block 32), awq(w4a16) per-channel w4a16, smoothquant(w8a8) "
        "w8a8 and ONNX int8-dyn (per-channel 8-bit weights + activations). Two transforms serving one scheme "
        "is an error. Optional keys besides 'scheme': 'grid' (exponents in [0, 1] searched, "
        "default 0.0..1.0 by 0.1) and 'samples' (activation rows per layer input, default 1024): smaller = faster, "
        "coarser. {rotate: {kind: hadamard|random, seed: N}} folds orthogonal rotations in (serves every scheme "
        "alone). {gptq: {scheme: w4a16-g64}} is NOT equivalent: every linear GPTQ-rounded onto that scheme's "
        "toolkit grid (host.prequant), so it serves exactly that scheme (rkllm and its simulated row), ahead of a "
        "transform of its kind; one mapping may chain rotate, a search and gptq (applied in that order). "
        "fp32, GGUF and rknn artifacts never get a transform")
    budget: float | None = Field(
        None, validate_default=True, description="ONNX int4-mixed (LLM): its weights stay within this fraction of the "
        "fp32 model's bytes, in (0, 1] (e.g. 0.25): with sensitive_layers: auto the plan's limit (required), with a "
        "layer list a limit the mix must fit, checked by `rkdeploy check` and after the build")
    rounding: str | dict[str, object] | None = Field(
        None, description="how the ONNX int4 / int4-mixed builds round their int4 MatMulNBits weights (LLM): "
        "'rtn' (default: onnxruntime-genai's round-to-nearest) or 'gptq' / {gptq: {damp: 0.01, act_order: true, "
        "scales: search, symmetric: true}} (host.gptq: GPTQ error-compensating rounding on the builder's grid form, "
        "Hessians from the 'calibration' JSON through the checkpoint the artifact is built from, cached under "
        "~/.cache/rkdeploy/gptq-hessians; act_order: columns by decreasing input energy; scales: 'search' = each "
        "block's scale searched for the least importance-weighted error, 'builder' = onnxruntime's min/max; "
        "symmetric: false builds uint4 with a zero point per block)")

    @model_validator(mode="after")
    def _default_sensitive(self):
        if self.sensitive_layers is None:     # the kind's default; frozen model, so set it the one allowed way
            object.__setattr__(self, "sensitive_layers", list(DEFAULT_SENSITIVE[self.kind]))
        return self

    @property
    def sensitive_layers_required(self) -> bool:
        """Must every pattern match a layer? Yes unless it is the encoder default (BERT-like models only)."""
        return self.kind == "llm" or "sensitive_layers" in self.model_fields_set

    @field_validator("sensitive_layers")
    @classmethod
    def _sensitive(cls, v, info: ValidationInfo):
        onnx = info.data.get("onnx") or []
        if v == "auto" and info.data.get("kind") == "encoder":
            raise ValueError("'auto' is for LLMs (the ONNX int4-mixed plan); an encoder lists layer patterns")
        if "int4-mixed" in onnx and (v is None or v == []):
            raise ValueError("onnx scheme int4-mixed needs sensitive_layers: auto (with budget: a fraction of "
                             "the fp32 size in (0, 1]) or the layers it keeps at int8 (e.g. [lm_head, down_proj])")
        if v == "auto":
            return v
        for p in v or []:
            if not p or any(not part.strip() for part in p.split(".")):
                raise ValueError(f"sensitive_layers entry {p!r}: dot-separated non-empty name components "
                                 "(e.g. 'down_proj', 'layer.*.output.dense')")
        return v

    @field_validator("budget", mode="before")
    @classmethod
    def _budget(cls, v, info: ValidationInfo):
        auto = info.data.get("sensitive_layers") == "auto"
        if v is None:
            if auto:
                raise ValueError("required with sensitive_layers: auto: the int4-mixed artifact's size as a "
                                 "fraction of the fp32 model, in (0, 1] (e.g. 0.25)")
            return v
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 1:
            raise ValueError(f"must be a fraction of the fp32 size in (0, 1] (e.g. 0.25), got {v!r}")
        if not auto and "sensitive_layers" in info.data and "int4-mixed" not in (info.data.get("onnx") or []):
            raise ValueError("is read only by the onnx scheme int4-mixed (sensitive_layers: auto plans within it; "
                             "a layer list is checked against it); add int4-mixed or drop budget")
        return float(v)

    @field_validator("transform", mode="before")
    @classmethod
    def _transform(cls, v, info: ValidationInfo):
        from host.transforms import parse_transform

        if v is None:
            return v
        if info.data.get("kind") == "encoder":
            raise ValueError("transforms are for LLMs (Llama/Qwen/Gemma-style decoders)")
        items = v if isinstance(v, list) else [v]
        if not items:
            raise ValueError("an empty list; drop the field or name a transform, e.g. {awq: {scheme: w4a16-g64}}")
        parsed = []
        for i, item in enumerate(items):
            where = f"transform.{i}" if isinstance(v, list) else "transform"
            try:
                parsed.append(parse_transform(item, where))
            except ConfigError as e:
                msg = str(e).removeprefix(f"{where}: ").removeprefix(f"{where}.")
                raise ValueError(f"{i}: {msg}" if isinstance(v, list) else msg) from None
        searched = [t.label() for t in parsed if getattr(t, "scheme", None)]   # a lone rotate searches nothing
        if searched and "calibration" in info.data and info.data["calibration"] is None:
            raise ValueError(f"{', '.join(searched)} needs the model's 'calibration' JSON (the search runs on its "
                             "activations)")
        if len(parsed) > 1 and any(getattr(t, "scheme", None) is None for t in parsed):
            raise ValueError("a transform with no scheme serves every quantized scheme: it cannot share the list "
                             "(combine it with one search in one mapping, e.g. {rotate: {}, awq: {scheme: w4a16-g64}})")
        fams = [transform_family(t.scheme) for t in parsed if getattr(t, "scheme", None) and not t.exact]
        exact = [t.scheme for t in parsed if t.exact]   # gptq pre-rounding: one scheme each
        dup = sorted({f for f in fams if fams.count(f) > 1} | {f for f in exact if exact.count(f) > 1})
        if dup:
            raise ValueError(f"two transforms serve the same schemes ({', '.join(dup)}); keep one per kind of scheme "
                             "(and one gptq pre-rounding per scheme)")
        return [t.to_dict() for t in parsed] if isinstance(v, list) else parsed[0].to_dict()

    @field_validator("rounding", mode="before")
    @classmethod
    def _rounding(cls, v, info: ValidationInfo):
        from host.gptq import ROUNDED_SCHEMES, parse_rounding

        try:
            r = parse_rounding(v, "rounding")
        except ConfigError as e:
            raise ValueError(str(e).removeprefix("rounding: ").removeprefix("rounding.")) from None
        if r is None:
            return None
        if info.data.get("kind") == "encoder":
            raise ValueError("GPTQ rounding is for LLMs (the ONNX int4 / int4-mixed builds)")
        if "calibration" in info.data and info.data["calibration"] is None:
            raise ValueError("gptq needs the model's 'calibration' JSON (its Hessians come from those activations)")
        if "onnx" in info.data and not set(info.data["onnx"] or []) & set(ROUNDED_SCHEMES):
            raise ValueError(f"is read only by the onnx schemes {', '.join(ROUNDED_SCHEMES)}; add one or drop rounding")
        return r.recipe_form()

    def transforms(self) -> list:
        """The parsed ``transform`` entries (``host.transforms.Transform``)."""
        from host.transforms import parse_transform

        v = self.transform
        return [parse_transform(x) for x in (v if isinstance(v, list) else [v] if v else [])]

    @property
    def float_layers(self) -> list[str]:
        """The patterns the ONNX int8 schemes keep in float (the kind's default under ``sensitive_layers: auto``)."""
        sl = self.sensitive_layers
        return list(DEFAULT_SENSITIVE[self.kind]) if sl == "auto" else list(sl or [])

    @field_validator("name")
    @classmethod
    def _slug(cls, v: str) -> str:
        if not SLUG.match(v):
            raise ValueError(f"model name {v!r} must be lowercase letters, digits, '.', '_' or '-'")
        return v

    @field_validator("onnx", "gguf")
    @classmethod
    def _kind_schemes(cls, v: list[str], info: ValidationInfo) -> list[str]:
        allowed = {"onnx": ONNX_SCHEMES, "gguf": GGUF_SCHEMES}[info.field_name]
        for s in v:
            if s not in allowed:
                raise ValueError(f"{info.field_name} scheme {s!r} is not one of {', '.join(sorted(allowed))}")
        return v

    @field_validator("targets")
    @classmethod
    def _targets(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        out = {}
        for t, schemes in v.items():
            try:
                out[t] = [validate_scheme(s) for s in schemes]
            except ConfigError as e:
                raise ValueError(f"{t}: {e}") from None
        return out

    @property
    def builtin(self) -> str | None:
        return self.source.split(":", 1)[1] if self.source.startswith("builtin:") else None


class TextSources(Strict):
    """Held-in text (calibration) and held-out text (evaluation); must not overlap."""

    heldin: FilePath
    heldout: FilePath
    heldin_sentences: FilePath | None = None
    heldout_sentences: FilePath | None = None


class QualityOptions(Strict):
    eval_tokens: int = Field(4096, ge=128)
    window: int = Field(512, ge=32, description="tokens per evaluation window")
    sentences: int = Field(64, ge=4, description="held-out sentences for encoder quality")


class CalibOptions(Strict):
    n_prompts: int = Field(20, ge=1)
    max_new_tokens: int = Field(128, ge=1)
    system_prompt: str | None = None


class Recipe(Strict):
    name: str
    description: str = ""
    models: list[ModelSpec] = Field(min_length=1)
    text: TextSources
    quality: QualityOptions = QualityOptions()
    calib: CalibOptions = CalibOptions()
    path: FilePath | None = Field(None, exclude=True)

    @model_validator(mode="after")
    def _unique(self) -> Recipe:
        names = [m.name for m in self.models]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"model names must be unique, repeated: {', '.join(dup)}")
        return self

    def model(self, name: str) -> ModelSpec:
        for m in self.models:
            if m.name == name:
                return m
        raise ConfigError(f"recipe {self.name!r} has no model {name!r} (models: {', '.join(m.name for m in self.models)})")

    def llms(self) -> list[ModelSpec]:
        return [m for m in self.models if m.kind == "llm"]

    def encoders(self) -> list[ModelSpec]:
        return [m for m in self.models if m.kind == "encoder"]

    def sha256(self) -> str:
        """Stable hash of the recipe's content (paths as written), for manifests and caching."""
        data = self.model_dump(mode="json", exclude={"path"})
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()

    def model_sha256(self, model: ModelSpec) -> str:
        data = model.model_dump(mode="json")
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


# --- loading ------------------------------------------------------------------------------------

def _format_validation(err: ValidationError, what: str, path: Path, lines: dict | None = None) -> str:
    out = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = f"unknown key {e['loc'][-1]!r} in {what}"
        elif e["type"] == "missing":
            msg = "required field is missing"
        elif e["type"] == "too_short" and e["loc"] and e["loc"][-1] == "models":
            msg = "the list is empty; a recipe needs at least one model"
        elif e["type"] in ("int_type", "int_parsing", "int_from_float") and e.get("input") is not None:
            msg = f"must be a whole number (got {type(e['input']).__name__} {e['input']!r})"
        line = line_of(lines or {}, e["loc"])
        out.append(f"{path}: {f'line {line}: ' if line else ''}{loc}: {msg.removeprefix('Value error, ')}")
    return "\n".join(out)


def _read_yaml(path: Path, what: str) -> tuple[dict, dict]:
    data, lines = read_yaml(path, what=what)
    if not isinstance(data, dict):
        got = "an empty file" if data is None else type(data).__name__
        raise ConfigError(f"{path}: expected a mapping at the top level, got {got}")
    return data, lines


def _resolve(base: Path, p: Path | None) -> Path | None:
    if p is None:
        return None
    p = Path(os.path.expanduser(str(p)))
    return p if p.is_absolute() else (base / p).resolve()


def load_recipe(path: Path | str) -> Recipe:
    path = Path(path)
    data, lines = _read_yaml(path, "recipe YAML")
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_validation(e, "recipe", path, lines)) from None
    base = path.resolve().parent
    models = []
    for m in recipe.models:
        upd: dict = {"calibration": _resolve(base, m.calibration)}
        if not m.source.startswith("builtin:"):
            upd["source"] = str(_resolve(base, Path(m.source)))
        models.append(m.model_copy(update=upd))
    text = recipe.text.model_copy(update={k: _resolve(base, getattr(recipe.text, k)) for k in TextSources.model_fields})
    # A folder where a file belongs is refused here, with the field's line (a missing file is `check`'s to report).
    files = [(("text", k), getattr(text, k), "text file") for k in TextSources.model_fields]
    files += [(("models", i, "calibration"), m.calibration, "calibration JSON file") for i, m in enumerate(models)]
    for loc, p, what in files:
        if p is not None and p.is_dir():
            line = line_of(lines, loc)
            raise ConfigError(f"{path}: {f'line {line}: ' if line else ''}{'.'.join(map(str, loc))}: {p} is a "
                              f"directory, expected a {what}")
    # A GGUF source is judged from its header now (exists, magic, architecture), before any work.
    from host.models import gguf_source_problem, is_gguf_source

    for i, m in enumerate(models):
        problem = gguf_source_problem(Path(m.source)) if is_gguf_source(m) else None
        if problem:
            line = line_of(lines, ("models", i, "source"))
            raise ConfigError(f"{path}: {f'line {line}: ' if line else ''}models.{i}.source: {problem}")
    return recipe.model_copy(update={"models": models, "text": text, "path": path.resolve()})


def load_targets(path: Path | None = None) -> TargetTable:
    path = path or Path(os.environ.get("RKDEPLOY_TARGETS", CONFIGS / "targets.yaml"))
    data, lines = _read_yaml(Path(path), "targets YAML")
    try:
        table = TargetTable.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_validation(e, "target", Path(path), lines)) from None
    return table.model_copy(update={"targets": {k: v.model_copy(update={"name": k}) for k, v in table.targets.items()}})


def json_schemas() -> dict:
    """JSON Schema of every config file a user edits (``rkdeploy schema``)."""
    return {"recipe": Recipe.model_json_schema(), "targets": TargetTable.model_json_schema(by_alias=True)}
