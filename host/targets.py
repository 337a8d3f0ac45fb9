"""The per-chip capability matrix (configs/targets.yaml) and ``check``: fail fast, before weights.

``check`` collects every problem and raises once (``CheckError``), one line per problem, each
naming the value, what is allowed, and where possible the next command. It reads model shapes
from config.json and safetensors headers only, so it runs in well under a second.
"""

from __future__ import annotations

from host.config import ModelSpec, Recipe, Target, TargetTable, load_targets
from host.errors import CheckError, ConfigError, ModelError
from host.schemes import group_size

MAX_CONTEXT_LIMIT = 16384   # rkllm-toolkit: max_context <= 16384 and a multiple of 32
MAX_CONTEXT_STEP = 32


def get_target(name: str, table: TargetTable | None = None) -> Target:
    table = table or load_targets()
    key = name.lower()
    if key in table.targets:
        return table.targets[key]
    msg = f"unknown target {name!r} (known: {', '.join(sorted(table.targets))})"
    if key in table.unsupported:
        msg += f"; {table.unsupported[key]}"
    raise CheckError([msg])


def _vendor_kind(model: ModelSpec, scheme: str):
    """The per-target kind (host.build.registry) that builds ``scheme`` for ``model``."""
    from host.build import registry

    kind = registry.kind_for(model, scheme)
    if kind is None or kind.per_target:
        return kind
    return next((k for k in registry.kinds() if k.per_target and model.kind in k.model_kinds), None)


def _scheme_problems(model: ModelSpec, target: Target, scheme: str) -> list[str]:
    from host.build import registry

    own = registry.kind_for(model, scheme)
    if own is not None and not own.per_target:
        return []
    kind = _vendor_kind(model, scheme)
    if kind is None:
        return [f"{model.name}: no artifact kind builds scheme {scheme!r} for {model.kind} models"]
    allowed = kind.allowed(target)
    if scheme not in allowed:
        return [f"{model.name}: scheme {scheme!r} is not allowed for {kind.name} on {target.name} "
                f"(allowed: {', '.join(allowed)})"]
    return kind.scheme_problems(model, target, scheme)


def _group_problems(model: ModelSpec, folder, target: Target, scheme: str) -> list[str]:
    g = group_size(scheme)
    kind = _vendor_kind(model, scheme)
    if g is None or kind is None or not kind.group_must_divide_layers:
        return []
    from host.models import linear_shapes

    bad = [(name, shape) for name, shape in linear_shapes(folder).items() if shape[0] % g or shape[1] % g]
    if not bad:
        return []
    name, (out_f, in_f) = bad[0]
    # groups run along the input width (the reduction axis): quote it first when it is the one that fails
    which, dim = ("input width", in_f) if in_f % g else ("output width", out_f)
    ok = [s for s in kind.allowed(target) if (gs := group_size(s)) and all(
        o % gs == 0 and i % gs == 0 for o, i in linear_shapes(folder).values())]
    hint = f"; schemes that fit this model on {target.name}: {', '.join(ok)}" if ok else ""
    return [f"{model.name}: scheme {scheme!r}: group size {g} does not divide layer {name} "
            f"({out_f}x{in_f}: {which} {dim} % {g} = {dim % g}; {len(bad)} linear layers affected){hint}"]


def _model_problems(model: ModelSpec, target: Target, schemes: list[str], cache) -> list[str]:
    problems: list[str] = []
    vendor = [s for s in schemes if _is_per_target(model, s)]
    if model.kind == "llm":
        mc = model.max_context
        if mc % MAX_CONTEXT_STEP or mc <= 0 or mc > MAX_CONTEXT_LIMIT:
            problems.append(f"{model.name}: max_context {mc} must be a positive multiple of {MAX_CONTEXT_STEP} "
                            f"and at most {MAX_CONTEXT_LIMIT}")
        cores = model.rkllm.num_npu_core
        if cores is not None and not 1 <= cores <= target.npu_cores:
            problems.append(f"{model.name}: rkllm.num_npu_core {cores} is out of range for {target.name} "
                            f"(1..{target.npu_cores})")
        if vendor:
            calib = model.calibration
            if calib is None:
                problems.append(f"{model.name}: no calibration JSON in the recipe (field 'calibration'); "
                                "run `rkdeploy calib build`")
            elif calib.is_dir():
                problems.append(f"{model.name}: calibration {calib} is a directory, expected a calibration JSON file")
            elif not calib.is_file():
                problems.append(f"{model.name}: calibration file {calib} not found; run `rkdeploy calib build`")
    for s in schemes:
        problems += _scheme_problems(model, target, s)

    from host.models import check_model_folder, gguf_source_ready, is_gguf_source, read_config, resolve_model

    if problems and is_gguf_source(model) and not gguf_source_ready(model, cache):
        return problems     # bad input first: the GGUF is dequantized (minutes) only once the rest is right
    try:
        folder = resolve_model(model, cache)
    except ModelError as e:
        return problems + [str(e)]
    folder_problems = check_model_folder(folder)
    if folder_problems:
        return problems + [f"{model.name}: {p}" for p in folder_problems]
    if model.kind == "llm":
        from host.families import family_problems

        problems += family_problems(model, folder, schemes)
        cfg = read_config(folder)
        limit = cfg.get("max_position_embeddings")
        if isinstance(limit, int) and model.max_context > limit:
            problems.append(f"{model.name}: max_context {model.max_context} exceeds the model's "
                            f"max_position_embeddings {limit}")
    for s in vendor:
        if not any(p.startswith(f"{model.name}: scheme {s!r} is not allowed") for p in problems):
            problems += _group_problems(model, folder, target, s)
    return problems


def _is_per_target(model: ModelSpec, scheme: str) -> bool:
    from host.build import registry

    kind = registry.kind_for(model, scheme)
    return kind is None or kind.per_target


def listed_schemes(model: ModelSpec, target: str) -> list[str]:
    """The schemes the recipe builds of ``model`` for ``target`` (``host.build.registry.wanted``)."""
    from host.build import registry

    return [s for _k, s in registry.wanted(model, target)]


def selected_schemes(recipe: Recipe, model: ModelSpec, target: str, scheme: str | None) -> list[str]:
    listed = listed_schemes(model, target)
    if scheme is None:
        return listed
    if scheme in listed:
        return [scheme]
    # Not listed by any model: check it for the LLMs (or, without LLMs, the encoders).
    if any(scheme in listed_schemes(m, target) for m in recipe.models):
        return []
    primary = "llm" if recipe.llms() else "encoder"
    return [scheme] if model.kind == primary else []


def check(recipe: Recipe, target: str, scheme: str | None = None, *, cache=None,
          table: TargetTable | None = None) -> None:
    """Raise ``CheckError`` listing every problem of building ``recipe`` for ``target``."""
    try:
        t = get_target(target, table)
    except ConfigError as e:
        raise CheckError([str(e)]) from None
    problems: list[str] = []
    unknown = [t_ for m in recipe.models for t_ in m.targets if t_ not in (table or load_targets()).targets]
    problems += [f"recipe {recipe.name}: unknown target {u!r} in a model's targets" for u in sorted(set(unknown))]
    for m in recipe.models:
        schemes = selected_schemes(recipe, m, t.name, scheme)
        if scheme is not None and not schemes:
            continue
        problems += _model_problems(m, t, schemes, cache)
    if recipe.text.heldin and recipe.text.heldout:
        from host.textdata import check_disjoint

        try:
            problems += check_disjoint(recipe.text.heldin, recipe.text.heldout)
        except ConfigError as e:
            problems.append(str(e))
    if problems:
        raise CheckError(problems)
