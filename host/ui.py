"""Console output: one rich console, progress bars for long steps, plain when not a TTY."""

from __future__ import annotations

import os
import re
import sys

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

# Piped into a log (make, CI) rich would fall back to 80 columns and fold tables into towers;
# use a log-friendly width there unless COLUMNS says otherwise.
_PIPE_WIDTH = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 160
console = Console(highlight=False, width=_PIPE_WIDTH)
err_console = Console(stderr=True, highlight=False, width=_PIPE_WIDTH)

#: Whole escape sequences first (CSI ``ESC [ ... final``, OSC ``ESC ] ... BEL|ST``, ``ESC [intermediates] final`` such as ``ESC c`` or ``ESC ( B``), then any
#: other control character: matched the other way round, ESC alone went and ``[31m`` stayed in the text.
_CONTROL = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[ -/]*[0-~]"
                      r"|[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def sanitize(text: str) -> str:
    """Strip control characters/escape sequences (board output never reaches a terminal raw)."""
    return _CONTROL.sub("", text)


def progress(transient: bool = False) -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=transient,
    )
