"""The toy kind's board backend (test-only; see toykind.py): the fake backend under another name."""

from __future__ import annotations

from board.backends.fake import FakeBackend


def available():
    return True, "test-only"


class ToyBackend(FakeBackend):
    name = "toy"


BACKEND = ToyBackend
