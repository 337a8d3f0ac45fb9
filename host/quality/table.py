"""The quality table: one compact table per model (LLM: PPL/KLD/top-1; encoder: cosine/NN), notes in
the caption. Column digits are the table's own (PPL with 2 digits, as the README prints it)."""

from __future__ import annotations

from host import gate


def _fmt(v, digits: int) -> str:
    return "" if v is None else f"{v:.{digits}f}"


#: (header, row field, digits) of the LLM and the encoder tables.
LLM_TABLE = (("PPL", "ppl", 2), ("PPL ratio", "ppl_ratio", 4), ("KLD", "kld_mean", 4), ("KLD p99", "kld_p99", 4),
             ("top-1", "top1_agree", 3))
ENCODER_TABLE = (("cos", "cos_mean", 4), ("cos min", "cos_min", 4), ("NN agree", "nn_agree", 3))


def quality_table(rows: list[dict], *, title: str = "quality"):
    """One compact table per model (LLM: PPL/KLD/top-1; encoder: cosine/NN), notes in the caption."""
    from rich import box
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    tables = []
    models = list(dict.fromkeys(r["model"] for r in rows))
    for model in models:
        mine = [r for r in rows if r["model"] == model]
        cols = LLM_TABLE if any(r.get("test") == "ppl" or r.get("ppl") is not None for r in mine) else ENCODER_TABLE
        t = Table(title=f"{title}: {model}", title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 1))
        t.add_column("scheme", no_wrap=True)
        prep = any(r.get("transform") or r.get("budget") is not None or r.get("int8_nodes") is not None
                   for r in mine)
        if prep:
            t.add_column("transform / mix", overflow="fold")
        t.add_column("method", overflow="fold")
        for head, _f, _d in cols:
            t.add_column(head, justify="right", no_wrap=True)
        t.add_column("note", overflow="fold")
        for r in mine:
            env = r.get("env") or {}
            note = f"error: {r.get('error')}" if r.get("status") == "error" else (_short_note(env.get("note")) if env.get("note") else "")
            if r.get("status") == gate.DEGRADED:
                note = f"DEGRADED: {r.get('gate')}" + (f"; {note}" if note else "")
            method = r["method"]
            if method == "measured" and r.get("backend") not in (None, "onnxruntime"):
                method = f"measured ({r['backend']})"
            t.add_row(r["scheme"], *([prep_cell(r)] if prep else []), method, *(_fmt(r.get(f), d) for _h, f, d in cols),
                      note)
        tables.append(t)
    return Group(*tables, Text(_caption(rows)))


def prep_cell(r: dict) -> str:
    """``awq(w4a16-g64); budget 0.25x fp32, 14 MatMuls int8``: how the row's weights were prepared."""
    parts = [r["transform"]] if r.get("transform") else []
    if r.get("budget") is not None:
        parts.append(f"budget {r['budget']:g}x fp32" + (f", {r['int8_nodes']} MatMuls int8"
                                                        if r.get("int8_nodes") is not None else ""))
    elif r.get("int8_nodes") is not None:
        parts.append(f"{r['int8_nodes']} MatMuls int8")
    return "; ".join(parts)


def _short_note(note: str) -> str:
    """``Q4_K_M weights`` from "float weights dequantized from Q4_K_M (…)…" (the caption has the whole note)."""
    import re

    m = re.search(r"(?:dequantized|converted) from (\S+)", note)
    return f"{m.group(1).rstrip(':,')} weights" if m else "see note"


def _caption(rows: list[dict]) -> str:
    lines = []
    llm = [r for r in rows if r.get("ppl") is not None and (r.get("env") or {}).get("n_windows")]
    if llm:
        e = llm[0]["env"]
        lines.append(f"LLM: {llm[0]['n_tokens']} held-out tokens ({e['n_windows']} windows of {e['window']}), "
                     f"float PPL {e['ppl_float']:.3f}; KLD = KL(float ‖ artifact) per token")
    sims = {r["scheme"]: (r.get("env") or {}).get("definition") for r in rows if r["method"] == "simulated"}
    if sims:
        from host.fakequant import SIMULATION

        lines.append(f"simulated = torch fake-quant of the scheme, not the vendor toolkit ({SIMULATION}):")
        lines += [f"  {s}: {(d or '').replace('; ' + SIMULATION, '')}" for s, d in sims.items()]
    if any(r["method"] == "simulator" for r in rows):
        lines.append("simulator = the vendor toolkit's x86 simulator of the built artifact vs float")
    notes = {(r.get("env") or {}).get("note") for r in rows} - {None}
    lines += sorted(f"note: {n}" for n in notes)
    return "\n".join(lines)


