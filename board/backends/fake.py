"""Test backend with injected, known latencies (the runner-fidelity reference).

Settings come from the artifact manifest's ``fake`` object (``board.testing.write_fake_artifact``
writes one), overridable by ``params["fake"]``: ``prefill_ms``, ``token_ms``, ``encode_ms``,
``load_ms``, ``vocab_size``, ``fail`` ("load"|"generate"|"crash" to exercise error paths). Tokens are
produced by a worker thread that sleeps until absolute deadlines counted from the request:
nominally TTFT = prefill_ms, decode tok/s = 1000 / token_ms. The backend also records when it
really emitted each token (``last_perf()["calls"]``), the truth on a loaded machine.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Dict, List, Sequence, Tuple

from .base import Backend, BackendError


def available() -> Tuple[bool, str]:
    return True, "built-in"


def _sleep_until(deadline: float) -> None:
    while True:
        left = deadline - time.perf_counter()
        if left <= 0:
            return
        time.sleep(left if left > 0.002 else 0)


class FakeBackend(Backend):
    name = "fake"

    def __init__(self) -> None:
        self.cfg: Dict[str, Any] = {}
        self.calls: List[Dict[str, Any]] = []

    def load(self, artifact_dir: str, params: Dict[str, Any]) -> None:
        cfg = {"prefill_ms": 200.0, "token_ms": 25.0, "encode_ms": 5.0, "load_ms": 0.0, "vocab_size": 1000}
        cfg.update((params.get("manifest") or {}).get("fake") or {})
        cfg.update(params.get("fake") or {})
        self.cfg = cfg
        if cfg.get("fail") == "load":
            raise BackendError("fake backend: injected load failure")
        time.sleep(float(cfg["load_ms"]) / 1000.0)

    def generate(self, prompt_ids: Sequence[int], n_gen: int, on_token: Callable[[int], None]) -> None:
        if self.cfg.get("fail") == "generate":
            raise BackendError("fake backend: injected generate failure")
        if self.cfg.get("fail") == "crash":
            raise RuntimeError("simulated runtime crash\nsecond line")
        prefill = float(self.cfg["prefill_ms"]) / 1000.0
        per_tok = float(self.cfg["token_ms"]) / 1000.0
        vocab = int(self.cfg["vocab_size"])
        errors: List[BaseException] = []
        stamps: List[int] = []
        t0 = time.perf_counter()  # deadlines count from the request, not from the worker's start
        t0_ns = time.perf_counter_ns()

        def work() -> None:
            try:
                last = prompt_ids[-1] if prompt_ids else 0
                for i in range(n_gen):
                    _sleep_until(t0 + prefill + i * per_tok)
                    last = (last * 31 + 7) % vocab
                    stamps.append(time.perf_counter_ns())
                    on_token(last)
            except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
                errors.append(e)

        t = threading.Thread(target=work, name="fake-generate")
        t.start()
        t.join()
        if errors:
            raise errors[0]
        # The backend's own record of when each token was emitted: the truth the runner is checked against.
        self.calls.append({"ttft_ms": (stamps[0] - t0_ns) / 1e6,
                           "decode_tps": (len(stamps) - 1) * 1e9 / (stamps[-1] - stamps[0]) if len(stamps) > 1 else None})

    def last_perf(self) -> Dict[str, Any]:
        """Per-call truth (warmup calls first), like a runtime's own perf counters."""
        return {"calls": list(self.calls)}

    def encode(self, batch: List[List[int]]) -> Any:
        time.sleep(float(self.cfg["encode_ms"]) / 1000.0)
        return [[0.0] for _ in batch]

    def info(self) -> Dict[str, Any]:
        return {"name": self.name, "version": "1", "settings": dict(self.cfg)}


BACKEND = FakeBackend
