"""Artifact kinds as registered records: the ONE place that knows which kinds exist.

Plan, export, the targets check, schemes, config, quality and bench iterate ``kinds()`` instead of
spelling ``onnx``/``rkllm``/``rknn`` again. Adding a kind = one builder module (the ``Builder``
protocol below), one board backend (``board/backends``), and one ``register(Kind(...))`` line here
(a test registers a toy kind with ``registered(kind)``; see tests/host/build/toykind.py).

A ``Kind`` record holds what every step needs without importing the builder (heavy deps stay out
of start-up): its name, the recipe model field it reads, the model kinds it builds, where its
schemes are listed in a recipe, the board backend and formats of its artifacts, and its scheme
records with the toolkit's own spelling. The builder module (imported lazily) does the work.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

#: Recipe model fields that only list what to build (never change an artifact).
LIST_FIELDS = frozenset({"targets"})
#: Recipe model fields that change only the schemes they serve: each builder's ``inputs(job)`` records what
#: applies to its scheme (``host.build.source``, ``host.gptq``), so a new transform, budget or rounding rebuilds only those artifacts.
PER_SCHEME_FIELDS = frozenset({"transform", "budget", "rounding"})   # rounding: host.gptq.rounding_inputs


@dataclass(frozen=True)
class SchemeRecord:
    """A canonical scheme name (``host.schemes``) and the toolkit's own spelling of it."""

    name: str
    spelling: Any


class Builder(Protocol):
    """What a builder module (``Kind.module``) defines. ``check``/``depends_on``/``rows`` are optional."""

    def inputs(self, job) -> dict: ...            # everything besides the model fields that changes the artifact
    def build(self, job, out_dir, *, log) -> dict: ...   # manifest fields (board.manifest.Manifest keys)
    # def check(job) -> list[str]                 # pre-build problems, one line each (no work done)
    # def recipe_problems(recipe, schemes) -> list[str]    # recipe-level pre-checks (export)
    # def depends_on(job) -> list[BuildJob]       # artifacts that must be built first (planned by host.plan)
    # def rows(job, manifest: Manifest) -> list[ResultRow]   # rows from metrics the build put in the manifest


@dataclass(frozen=True)
class Kind:
    name: str                                   # the artifact kind (manifest ``artifact_kind``)
    module: str                                 # the builder module (``Builder``)
    recipe_field: str                           # the recipe model field this kind reads (options or scheme list)
    model_kinds: tuple[str, ...]                # recipe model kinds it builds (llm, encoder)
    backend: str                                # the board backend that runs its artifacts
    formats: tuple[str, ...]                    # manifest ``format`` values it writes
    scheme_names: Callable[[], tuple[str, ...]]  # every scheme it can build (canonical names)
    spell: Callable[[str], Any] = str           # canonical scheme -> the toolkit's own spelling
    #: True: schemes are listed per target (recipe ``targets``), the artifact depends on the chip.
    #: False: schemes are listed in ``recipe_field`` and built for every target (copied across targets).
    per_target: bool = True
    toolkit: str | None = None                  # host.toolkits name of its vendor toolkit
    reads_calibration: bool = False             # the recipe's calibration file goes into inputs_hash
    group_must_divide_layers: bool = False      # targets check: a -gN scheme's group divides every linear layer
    #: model fields that do not change this kind's artifact (besides LIST_FIELDS and other kinds' fields)
    irrelevant: frozenset[str] = field(default_factory=frozenset)

    # --- records ---------------------------------------------------------------------------------
    def schemes(self) -> tuple[SchemeRecord, ...]:
        out = []
        for s in self.scheme_names():
            try:
                out.append(SchemeRecord(s, self.spell(s)))
            except Exception:  # noqa: BLE001, S112 - a name the toolkit cannot spell is not one of its schemes
                continue
        return tuple(out)

    def allowed(self, target) -> list[str]:
        """Schemes allowed on ``target`` (``configs/targets.yaml`` ``<kind>_schemes`` when it lists them)."""
        listed = getattr(target, f"{self.name}_schemes", None)
        return list(listed) if listed is not None else sorted(self.scheme_names())

    def listed(self, model, target: str) -> list[str]:
        """The schemes of ``model`` the recipe asks this kind to build for ``target``."""
        if model.kind not in self.model_kinds:
            return []
        if not self.per_target:
            return list(getattr(model, self.recipe_field, None) or [])
        names = set(self.scheme_names())
        return [s for s in model.targets.get(target, []) if s in names and kind_for(model, s) is self]

    def irrelevant_fields(self) -> set[str]:
        """Recipe model fields left out of this kind's ``inputs_hash``."""
        others = {k.recipe_field for k in kinds() if k is not self}
        own = set() if self.per_target else {self.recipe_field}   # a scheme list is what to build, not how
        return set(LIST_FIELDS) | set(PER_SCHEME_FIELDS) | others | own | set(self.irrelevant)

    # --- the builder -------------------------------------------------------------------------------
    def builder(self) -> Builder:
        return importlib.import_module(self.module)

    def check(self, job) -> list[str]:
        fn = getattr(self.builder(), "check", None)
        return list(fn(job)) if fn else []

    def recipe_problems(self, recipe, schemes: list[str] | None = None) -> list[str]:
        """Problems of the whole recipe for this kind (export pre-check), before any build."""
        fn = getattr(self.builder(), "recipe_problems", None)
        return list(fn(recipe, schemes)) if fn else []

    def scheme_problems(self, model, target, scheme: str) -> list[str]:
        """Problems of ``scheme`` for ``model`` on ``target`` the recipe alone shows (targets check)."""
        fn = getattr(self.builder(), "scheme_problems", None)
        return list(fn(model, target, scheme)) if fn else []

    def depends_on(self, job) -> list:
        fn = getattr(self.builder(), "depends_on", None)
        return list(fn(job)) if fn else []

    def inputs(self, job) -> dict:
        return self.builder().inputs(job)

    def build(self, job, out_dir, *, log) -> dict:
        """The manifest fields of the artifact built into ``out_dir`` (host.manifest writes the Manifest)."""
        return self.builder().build(job, out_dir, log=log) or {}

    def rows(self, job, manifest) -> list:
        fn = getattr(self.builder(), "rows", None)
        return list(fn(job, manifest)) if fn else []


# --- the built-in kinds ----------------------------------------------------------------------------

def _onnx_names() -> tuple[str, ...]:
    from host.schemes import ONNX_SCHEMES

    return tuple(sorted(ONNX_SCHEMES))


def _vendor_names() -> tuple[str, ...]:
    from host.schemes import FLOAT_VENDOR_SCHEMES, VENDOR_BASES, VENDOR_GROUPS

    return tuple(sorted(FLOAT_VENDOR_SCHEMES)) + tuple(
        b + (f"-g{g}" if g else "") for b in VENDOR_BASES for g in (None, *VENDOR_GROUPS))


def _gguf_names() -> tuple[str, ...]:
    from host.schemes import GGUF_SCHEMES

    return tuple(sorted(GGUF_SCHEMES))


def _gguf_spelling(s: str) -> str:
    from host.schemes import gguf_type

    return gguf_type(s)


def _onnx_spelling(s: str) -> str:
    from host.schemes import ONNX_SCHEMES

    return ONNX_SCHEMES[s]


def _rkllm_spelling(s: str) -> str:
    from host.schemes import rkllm_dtype

    return rkllm_dtype(s)


def _rknn_spelling(s: str) -> dict:
    from host.schemes import rknn_config

    return rknn_config(s)


_KINDS: dict[str, Kind] = {}


def register(kind: Kind) -> Kind:
    if kind.name in _KINDS:
        raise ValueError(f"artifact kind {kind.name!r} is registered twice")
    _KINDS[kind.name] = kind
    return kind


def unregister(name: str) -> None:
    _KINDS.pop(name, None)


@contextlib.contextmanager
def registered(kind: Kind) -> Iterator[Kind]:
    """Register ``kind`` for the block (tests)."""
    register(kind)
    try:
        yield kind
    finally:
        unregister(kind.name)


register(Kind("onnx", "host.build.onnx_int8", recipe_field="onnx", model_kinds=("llm", "encoder"),
              backend="onnxruntime", formats=("onnx-genai", "onnx-encoder"), scheme_names=_onnx_names,
              spell=_onnx_spelling, per_target=False,
              irrelevant=frozenset({"calibration", "max_context", "sensitive_layers"})))
register(Kind("rkllm", "host.build.rkllm", recipe_field="rkllm", model_kinds=("llm",), backend="rkllm",
              formats=("rkllm",), scheme_names=_vendor_names, spell=_rkllm_spelling, toolkit="rkllm",
              reads_calibration=True, group_must_divide_layers=True,
              irrelevant=frozenset({"sensitive_layers", "seq_len", "batch"})))
register(Kind("rknn", "host.build.rknn", recipe_field="rknn", model_kinds=("encoder",), backend="rknnlite",
              formats=("rknn",), scheme_names=_vendor_names, spell=_rknn_spelling, toolkit="rknn",
              irrelevant=frozenset({"calibration", "max_context", "sensitive_layers"})))
register(Kind("gguf", "host.build.gguf", recipe_field="gguf", model_kinds=("llm",), backend="llamacpp",
              formats=("gguf",), scheme_names=_gguf_names, spell=_gguf_spelling, per_target=False,
              # the calibration JSON changes only the k-quants (imatrix): host.build.gguf.inputs hashes it there
              irrelevant=frozenset({"calibration", "max_context", "sensitive_layers", "seq_len", "batch"})))


# --- lookups ---------------------------------------------------------------------------------------

def kinds() -> tuple[Kind, ...]:
    """Every registered kind, in plan order (target-free kinds first)."""
    return tuple(sorted(_KINDS.values(), key=lambda k: k.per_target))


def names() -> tuple[str, ...]:
    return tuple(k.name for k in kinds())


def get(name: str) -> Kind:
    try:
        return _KINDS[name]
    except KeyError:
        raise KeyError(f"no builder for artifact kind {name!r} (known: {', '.join(names())})") from None


def kind_for(model, scheme: str) -> Kind | None:
    """The kind that builds ``scheme`` for ``model`` (by model kind and scheme name), or None."""
    for k in kinds():
        if model.kind in k.model_kinds and scheme in k.scheme_names():
            return k
    return None


def wanted(model, target: str) -> list[tuple[Kind, str]]:
    """THE model × target → (kind, scheme) list, in plan order (target-free kinds, then per-target ones)."""
    return [(k, s) for k in kinds() for s in k.listed(model, target)]


def scheme_names() -> set[str]:
    """Every scheme name some registered kind builds."""
    return {s for k in kinds() for s in k.scheme_names()}
