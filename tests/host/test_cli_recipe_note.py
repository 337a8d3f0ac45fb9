"""A command run without --recipe says which recipe it uses (host/cli_common.py ``_recipe_note``), on a terminal only:
piped output and error lines stay one line per problem (tests/host/test_malformed_inputs.py). Fast tier."""

from __future__ import annotations

import sys
from types import SimpleNamespace

from host import cli_common


def _ctx(source: str):
    return SimpleNamespace(resilient_parsing=False, get_parameter_source=lambda name: SimpleNamespace(name=source))


def test_note_on_a_terminal_when_the_default_recipe_is_used(monkeypatch):
    said = []
    monkeypatch.setattr(cli_common.err_console, "print", lambda text, **kw: said.append(text))
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    param = SimpleNamespace(name="recipe")
    assert cli_common._recipe_note(_ctx("DEFAULT"), param, "configs/models/smollm2-135m.yaml").endswith("yaml")
    assert said == ["rkdeploy: note: no --recipe given; using the default recipe configs/models/smollm2-135m.yaml"]
    cli_common._recipe_note(_ctx("COMMANDLINE"), param, "mine.yaml")
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    cli_common._recipe_note(_ctx("DEFAULT"), param, "x.yaml")
    assert len(said) == 1
