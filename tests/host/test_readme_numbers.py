"""make readme-numbers: the README's measured tables come from the results store, stamped."""

from __future__ import annotations

import subprocess
import sys

import pytest

from host.readme_numbers import BEGIN, END, ReadmeError, rewrite
from host.results import ResultStore
from tests.host.test_results_store import bench_row, encoder_row, quality_row


def _store(tmp_path, int8_dyn_ratio=1.0567):
    path = tmp_path / "r.sqlite"
    with ResultStore(path) as s:
        s.add(bench_row("int8", decode=71.3, env={"cpu": {"model": "AMD EPYC 7B13", "isa": ["avx2", "f16c"]}}))
        s.add(quality_row("int8", ppl_ratio=1.0012))
        s.add(bench_row("int8-dyn", decode=44.4))
        s.add(quality_row("int8-dyn", ppl_ratio=int8_dyn_ratio, kld_mean=0.08, top1_agree=0.82))
        s.add(encoder_row(artifact_sha256="sha-enc"))
        s.add(quality_row("int8-dyn", test="embedding", model="all-minilm-l6-v2", ppl=None, ppl_ratio=None,
                          kld_mean=None, kld_p99=None, top1_agree=None, cos_mean=0.9961, nn_agree=0.94,
                          artifact_sha256="sha-enc"))
        s.add(quality_row("w8a8", method="simulated", backend="torch-fakequant", ppl_ratio=1.0351))
        s.add(bench_row("fp32", board="rock5b", decode=9.99))   # another board: not this README's table
    return path


def test_rewrites_only_the_marked_section_from_the_store(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\nbefore\n{BEGIN}\n| stale | 140.6 |\n{END}\nafter\n")
    store = _store(tmp_path)
    assert rewrite(readme, store) is True
    text = readme.read_text()
    assert text.startswith("# x\n\nbefore\n") and text.endswith(f"{END}\nafter\n") and "140.6" not in text
    section = text.split(BEGIN)[1].split(END)[0]
    assert "AMD EPYC 7B13" in section and "avx2" in section and "commit" in section
    int8 = next(ln for ln in section.splitlines() if ln.startswith("| smollm2-135m-instruct int8 (onnxruntime)"))
    assert "71.30" in int8 and "1.0012" in int8
    assert "0.9961" in section and "1.0351" in section and "9.99" not in section
    assert rewrite(readme, store, check=True) is False           # fresh: --check passes
    assert rewrite(readme, _store(tmp_path / "b", int8_dyn_ratio=1.07), check=True) is True


def test_degraded_rows_say_so_and_errors_are_one_line(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"{BEGIN}\n{END}\n")
    rewrite(readme, _store(tmp_path, int8_dyn_ratio=56.7))
    text = readme.read_text()
    assert "int8-dyn (onnxruntime) **DEGRADED**" in text and "DEGRADED smollm2-135m-instruct int8-dyn: PPL ratio 56.7" in text
    readme.write_text("no markers\n")
    with pytest.raises(ReadmeError, match="numbers:begin"):
        rewrite(readme, _store(tmp_path / "c"))
    p = subprocess.run([sys.executable, "-m", "host.readme_numbers", str(readme), "--store", str(tmp_path / "none.sqlite")],
                       capture_output=True, text=True)
    assert p.returncode == 1 and p.stderr.count("\n") == 1 and "readme-numbers: error:" in p.stderr
    assert readme.read_text() == "no markers\n"
