"""`calib build`'s answer loop (host/calib_gen.py) on a fake causal LM: batching with left padding, resume from the
partial file (a torn last line ignored), progress lines with an ETA without a terminal. Fast tier (torch, no model)."""

from __future__ import annotations

import json

import pytest

from host import calib_gen

torch = pytest.importorskip("torch")
EOS, PAD = 9, 0


class FakeLm:
    """Answers each prompt with its own last token + 1, +2, … then EOS; records the batches it got."""

    def __init__(self):
        self.calls = []

    def generate(self, ids, *, attention_mask, max_new_tokens, pad_token_id, eos_token_id, **kw):
        assert kw["do_sample"] is False and kw["use_cache"] is True and eos_token_id == [EOS]
        self.calls.append((ids.clone(), attention_mask.clone()))
        rows = []
        for row in ids.tolist():
            last = row[-1]
            new = [last + 1 + k for k in range(min(2, max_new_tokens))] + [EOS]
            rows.append(row + (new + [PAD] * max_new_tokens)[:max_new_tokens])
        return torch.tensor(rows)


def encode(text: str) -> list[int]:
    return [int(x) for x in text.split()]


def decode(ids: list[int]) -> str:
    return " ".join(map(str, ids))


def run(tmp_path, lm, inputs, batch, lines=None):
    prog = calib_gen.Progress("t", len(inputs), every=0, write=(lines.append if lines is not None else lambda s: None))
    return calib_gen.generate_answers(lm, encode, decode, inputs, [f"k{i}" for i in range(len(inputs))],
                                      max_new_tokens=4, pad_id=PAD, eos_ids=[EOS], batch=batch,
                                      partial=tmp_path / "p.jsonl", progress=prog)


def test_batches_are_left_padded_and_answers_keep_input_order(tmp_path):
    lm = FakeLm()
    inputs = ["1 2 3", "5", "2 6", "7 1 1 3"]
    assert run(tmp_path, lm, inputs, batch=2) == ["4 5", "6 7", "7 8", "4 5"]
    (ids0, mask0), (ids1, mask1) = lm.calls   # sorted by length: [5], [2 6] then [1 2 3], [7 1 1 3]
    assert ids0.tolist() == [[PAD, 5], [2, 6]] and mask0.tolist() == [[0, 1], [1, 1]]
    assert ids1.tolist() == [[PAD, 1, 2, 3], [7, 1, 1, 3]] and mask1.tolist() == [[0, 1, 1, 1], [1, 1, 1, 1]]


def test_a_rerun_resumes_from_the_partial_file(tmp_path):
    inputs = ["1", "2", "3"]
    part = tmp_path / "p.jsonl"
    part.write_text(json.dumps({"key": "k1", "target": "kept"}) + "\n" + '{"key": "k0", "tar')   # torn last line
    lm, lines = FakeLm(), []
    assert run(tmp_path, lm, inputs, batch=8, lines=lines) == ["2 3", "kept", "4 5"]
    # the batch is the one an uninterrupted run had (all three): the kept answer stays, the two missing are added
    assert [c[0].tolist() for c in lm.calls] == [[[1], [2], [3]]]
    assert "resuming, 1/3 answers kept" in lines[0] and lines[-1].startswith("t: 3/3 answers")
    again = FakeLm()
    assert run(tmp_path, again, inputs, batch=8) == ["2 3", "kept", "4 5"] and again.calls == []


def test_resumed_batches_are_the_uninterrupted_ones(tmp_path):
    """Batched answers depend on their batch's padding: wherever a build was killed, every answer comes from
    the batch it would have had (fixed over all inputs), and finished batches are not run again."""
    inputs = ["1 2 3", "5", "2 6", "7 1 1 3", "4"]
    whole = FakeLm()
    first = run(tmp_path, whole, inputs, batch=2)
    part = tmp_path / "p.jsonl"
    lines = part.read_text().splitlines()
    part.write_text("\n".join(lines[:3]) + "\n")           # killed after 3 of 5 answers (mid-batch)
    resumed = FakeLm()
    assert run(tmp_path, resumed, inputs, batch=2) == first
    batches = [c[0].tolist() for c in whole.calls]
    assert [c[0].tolist() for c in resumed.calls] == batches[1:]   # the cut batch and the last one, as before
    assert calib_gen.item_key("m", "x", 4, "float32", 8) != calib_gen.item_key("m", "x", 4, "float32", 1)


def test_progress_lines_carry_elapsed_and_eta_without_a_terminal():
    now = [0.0]
    lines = []
    p = calib_gen.Progress("calib", 10, every=30, write=lines.append, clock=lambda: now[0])
    for _ in range(4):
        now[0] += 15
        p.advance()
    assert lines == ["calib: 2/10 answers, 0.5 min elapsed, ETA 2.0 min", "calib: 4/10 answers, 1.0 min elapsed, "
                     "ETA 1.5 min"]


def test_progress_lines_come_during_a_batch_from_the_token_steps():
    now, lines = [0.0], []
    p = calib_gen.Progress("calib", 16, every=30, write=lines.append, clock=lambda: now[0])
    p.plan(2 * 128)                  # two batches of 8 answers, 128 new tokens each
    for step in range(1, 65):       # half of the first batch, one step a second
        now[0] += 1
        p.tick(step)
    assert lines == ["calib: 0/16 answers, 0.5 min elapsed, ETA 3.8 min", "calib: 0/16 answers, 1.0 min elapsed, "
                     "ETA 3.3 min"]


def test_a_killed_append_leaves_whole_lines(tmp_path):
    part = tmp_path / "p.jsonl"
    calib_gen.append_line(part, {"key": "a", "target": "x"})
    with open(part, "a") as f:
        f.write('{"key": "b", "target": "half')
    assert calib_gen.read_partial(part) == {"a": "x"}
