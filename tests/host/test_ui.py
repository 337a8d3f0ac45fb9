"""host.ui.sanitize: board output never reaches a terminal raw."""

from __future__ import annotations

import pytest

from host.ui import sanitize


@pytest.mark.parametrize("raw, clean", [
    ("\x1b[31mred\x1b[0m text", "red text"),                       # CSI colour: nothing of it stays
    ("a\x1b[2J\x1b[Hb", "ab"),                                      # clear screen, cursor home
    ("\x1b]0;owned title\x07after", "after"),                       # OSC window title (BEL)
    ("\x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\", "link"),           # OSC 8 hyperlink (ST)
    ("keep\ttab and\nnewline", "keep\ttab and\nnewline"),          # layout stays
    ("bell\x07 nul\x00 del\x7f c1\x9b", "bell nul del c1"),          # lone control characters go
    ("\x1bcreset \x1b(Bascii \x1b7saved", "reset ascii saved"),     # ESC c (reset), ESC ( B, ESC 7
    ("plain ünïcode ✓", "plain ünïcode ✓"),
])
def test_sanitize_strips_whole_escape_sequences(raw, clean):
    assert sanitize(raw) == clean
