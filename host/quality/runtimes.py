"""The runtimes quality runs an artifact (or a simulated scheme) through, all with ``logprobs(ids)``.

- ``OrtCausalLm`` / ``OrtEncoder``: the board's own onnxruntime backend (``board.backends.onnxruntime``:
  ONE implementation of feeding an ONNX LLM with its KV cache), given this host's threads and, for
  an int8 graph with signed weights, the exact in-memory u8u8 rewrite of it.
- ``TorchFakeQuant``: the float PyTorch model under ``host.fakequant`` (``method: simulated``); with
  no scheme it is the float model itself.
- ``.rkllm`` artifacts: ``host.build.rkllm.RkllmToolkitLm`` (rkllm-toolkit's host-side logits).
- ``LlamaCppLm``: a GGUF artifact through the board's llama.cpp backend (``rk-llama-run`` built on
  this host against the cached llama.cpp, ``host.build.llamacpp_tools``).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from host.quality.reference import threads, torch_logprobs


def ort_graph(folder: Path, manifest) -> tuple[bytes | None, int]:
    """``(graph, rewritten)``: for an int8 graph with signed weights (not built by us as ``u8u8``) the
    serialized graph rewritten to unsigned weights (``host.build.int8_format``: exact, same integers)
    and how many weights were rewritten, so this host accumulates in int32 exactly as the board does;
    for a genai graph built with ``prune_lm_head`` the same graph with every position's logits;
    ``(None, 0)`` when the file runs as it is."""
    from host.build.int8_format import FORMAT, signed_weight_count, to_unsigned_weights

    if (manifest.get("builder_options") or {}).get("prune_lm_head"):
        # genai's pruned lm_head gives the last position's logits only: the evaluation runs the same
        # graph with every position's logits (``host.build.genai.full_logits_graph``)
        from host.build.genai import full_logits_graph

        return full_logits_graph(folder / (manifest.get("entry") or "model.onnx")), 0
    if manifest.get("scheme") not in ("int8-dyn", "int8-qdq") or manifest.get("int8_weights") == FORMAT:
        return None, 0
    import onnx
    from onnx.external_data_helper import load_external_data_for_model

    path = folder / (manifest.get("entry") or "model.onnx")
    proto = onnx.load(str(path), load_external_data=False)   # the scan needs only the tensor types
    if not signed_weight_count(proto):
        return None, 0
    load_external_data_for_model(proto, str(path.parent))
    rewritten = to_unsigned_weights(proto)
    return proto.SerializeToString(), rewritten


def _board_ort(folder: Path, manifest):
    """The board's onnxruntime backend loaded on this artifact (engine ``ort``, this host's threads)."""
    from board.backends.onnxruntime import OnnxRuntimeBackend

    graph, rewritten = ort_graph(Path(folder), manifest)
    be = OnnxRuntimeBackend()
    be.load(str(folder), {"manifest": manifest, "threads": threads(), "engine": "ort", "graph": graph})
    be._impl.sess.int8_rewritten = rewritten
    return be


class OrtCausalLm:
    """An ONNX LLM artifact through the board's onnxruntime backend: ``logprobs(window)``, empty KV cache."""

    name = "onnxruntime"

    def __init__(self, folder: Path, manifest):
        self.backend = _board_ort(folder, manifest)
        self.sess = self.backend._impl.sess   # ``sess.int8_rewritten``: weights rewritten to u8u8 here

    def logprobs(self, ids):
        return self.backend.logprobs(ids)

    def close(self) -> None:
        self.backend.close()


class OrtEncoder:
    """An ONNX encoder artifact through the board's onnxruntime backend: mean-pooled embeddings of feeds."""

    name = "onnxruntime"

    def __init__(self, folder: Path, manifest):
        self.backend = _board_ort(folder, manifest)
        self.sess = self.backend._impl.sess

    def embed(self, feeds):
        import numpy as np

        from host.quality.metrics import mean_pool

        return np.stack([mean_pool(self.backend._impl.hidden(f), f["attention_mask"])[0] for f in feeds])


def ort_session(folder: Path, manifest):
    """The artifact's graph in the board backend's CPU session (this host's threads; ``sess.int8_rewritten``)."""
    return _board_ort(folder, manifest)._impl.sess


@contextlib.contextmanager
def _one_line():
    """The board backend's errors (a driver killed, a short answer) as the host's one-line error."""
    from board.backends.base import BackendError
    from host.errors import BuildError

    try:
        yield
    except BackendError as e:
        raise BuildError(str(e)) from None


class LlamaCppLm:
    """A GGUF artifact through the board's llama.cpp backend: ``logprobs(window)``, empty KV cache."""

    name = "llamacpp"

    def __init__(self, folder: Path, manifest, window: int):
        from board.backends.llamacpp import LlamaCppBackend
        from host.build.llamacpp_tools import LlamaCppError, driver

        try:
            exe = driver()
        except LlamaCppError as e:
            from host.errors import BuildError

            raise BuildError(str(e)) from None
        self.backend = LlamaCppBackend()
        with _one_line():
            self.backend.load(str(folder), {"manifest": manifest, "threads": threads(), "n_ctx": window + 8,
                                            "driver": str(exe)})
        self.sess = None

    def logprobs(self, ids):
        with _one_line():
            return self.backend.logprobs(ids)

    def close(self) -> None:
        self.backend.close()


class TorchFakeQuant:
    """The float PyTorch model with every linear layer fake-quantized under ``scheme`` (``host.fakequant``);
    ``select(name)`` limits it to some layers; ``scheme=None`` is the float model. Use as a context
    manager: the model is restored on exit. Raises ValueError for a scheme that does not fit the model."""

    name = "torch-fakequant"

    def __init__(self, model, scheme: str | None, select=None):
        self.model, self.scheme, self.select = model, scheme, select
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> TorchFakeQuant:
        from host.fakequant import fake_quantized

        if self.scheme is not None:
            self._stack.enter_context(fake_quantized(self.model, self.scheme, self.select))
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    def logprobs(self, ids):
        return torch_logprobs(self.model, ids)

    def embed(self, feeds):
        from host.quality.encoder import torch_embeddings

        return torch_embeddings(self.model, feeds)


def arithmetic_env(backend: str, session=None, manifest=None) -> dict:
    """The arithmetic path that made a quality row: this host's CPU and the ISA features that change
    int8/fp16 kernels, the runtime versions, and how int8 MatMuls accumulated (``host.build.int8_format``)."""
    from board.sysinfo import _cpu, int8_u8s8_exact
    from host.build.onnx_int8 import tool_versions

    cpu = _cpu("/")
    env = {"host_cpu": {k: cpu.get(k) for k in ("arch", "vendor", "model", "isa")},
           "runtime_versions": {k: v for k, v in tool_versions().items() if k in ("torch", "onnxruntime")}}
    if backend == "llamacpp":
        from host.build.llamacpp_tools import VERSION, build_key

        env["runtime_versions"]["llama.cpp"] = f"llama-cpp-python {VERSION} sdist"
        env["llamacpp_build"] = build_key()    # version + flags + this host's ISA (-march=native, no AMX)
    if backend == "onnxruntime":
        from host.build.int8_format import FORMAT

        rewritten = getattr(session, "int8_rewritten", 0)
        if rewritten:
            env["int8_matmul"] = f"exact int32 (signed weights rewritten to u8u8 for evaluation: {rewritten})"
        elif (manifest or {}).get("int8_weights") == FORMAT:
            env["int8_matmul"] = "exact int32 (u8u8 weights)"
        env["u8s8_exact_here"] = int8_u8s8_exact(cpu)
    return env
