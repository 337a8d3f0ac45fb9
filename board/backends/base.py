"""The board backend protocol. The runner owns all timing; backends only report tokens."""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Sequence


class BackendError(Exception):
    """A backend failed in a known way (bad artifact, runtime too old); message is one line."""


class BackendUnavailable(BackendError):
    """The backend cannot run on this machine (module, runtime library or wheel missing)."""


class Backend:
    """Protocol (duck-typed; subclassing is optional).

    ``load(artifact_dir, params)``: params has ``manifest`` (dict) and ``threads`` (int).
    ``generate(prompt_ids, n_gen, on_token)``: greedy, exactly ``n_gen`` tokens, EOS ignored;
        calls ``on_token(token_id)`` as each token becomes available (LLM artifacts).
    ``encode(batch)``: one forward pass over ``batch`` = list of token-id lists (encoders).
    ``logprobs(ids) -> [len(ids), vocab]``: next-token log-probabilities at every position of one
        window (LLM artifacts; quality evaluation on the host and on the board uses it).
    ``info() -> dict``: runtime name/version and effective settings, recorded in the row.
    """

    name = "base"

    def load(self, artifact_dir: str, params: Dict[str, Any]) -> None:
        raise NotImplementedError

    def generate(self, prompt_ids: Sequence[int], n_gen: int, on_token: Callable[[int], None]) -> None:
        raise BackendError("backend %r cannot generate (not an LLM backend)" % self.name)

    def encode(self, batch: List[List[int]]) -> Any:
        raise BackendError("backend %r cannot encode (not an encoder backend)" % self.name)

    def logprobs(self, ids: Sequence[int]) -> Any:
        raise BackendError("backend %r gives no log-probabilities (not an LLM backend)" % self.name)

    def close(self) -> None:
        pass

    def info(self) -> Dict[str, Any]:
        return {"name": self.name}


def encoder_feeds(np: Any, batch: List[List[int]], names: Sequence[str]) -> Dict[str, Any]:
    """The encode test's inputs: token ids, an all-ones mask, zero type ids (only the ``names`` the
    graph takes). ``np`` is numpy, passed in so this module stays stdlib-only."""
    ids = np.asarray(batch, dtype=np.int64)
    full = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    return {n: full[n] for n in names}


def mean_pool(np: Any, hidden: Any, mask: Any) -> Any:
    """Sentence embeddings: ``hidden`` [batch, seq, dim] averaged over the tokens ``mask`` keeps."""
    m = mask[..., None].astype(hidden.dtype)
    return (hidden * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1)
