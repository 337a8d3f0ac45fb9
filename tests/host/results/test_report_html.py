"""The HTML report page: self-contained (no script, nothing fetched), charts as inline SVG, environment
warnings beside their rows; rendered by a real headless Chromium (Debian package chromium, make
setup-system): DOM dumped after layout, a screenshot that is not blank, no console messages."""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import time
import zlib
from pathlib import Path

import pytest

from host.results import ResultStore, render
from tests.conftest import run_cli
from tests.host.results.sample_rows import demo_store_rows

PATH_D = re.compile(r'<path\b[^>]*\bd="([^"]*)"')


def _store(tmp_path: Path) -> Path:
    store = tmp_path / "r.sqlite"
    with ResultStore(store) as s:
        for r in demo_store_rows():
            s.add(r)
    return store


def _charts_in(page: str) -> dict[str, int]:
    return {"svg": page.count("<svg"), "paths": sum(1 for d in PATH_D.findall(page) if d.strip()),
            "dots": page.count('class="rep"'), "points": page.count('class="pt')}


def test_page_is_self_contained_with_charts_and_warnings(tmp_path):
    with ResultStore(_store(tmp_path), create=False) as s:
        page = render(s.rows(), "html")
    assert "<script" not in page.lower()
    assert not re.search(r'(src|href)\s*=\s*["\']?(https?:)?//', page), "nothing may load from the network"
    got = _charts_in(page)
    # decode (real + emulated), TTFT, quality vs size, roofline
    assert got["svg"] == 5 and got["paths"] > 20 and got["points"] == 4, got
    assert got["dots"] == 5 * 5 + 2  # every rep of the 5 real LLM rows and the 2 emulated reps
    assert "KLD 0.0810" in page  # the Pareto hover of int8-dyn
    assert "rk3588 DDR peak 33.8 GB/s" in page and "= 9 % of rk3588 DDR" in page  # 2.91 GB/s of 33.8
    # warnings beside their rows, and in the summary: governor, devfreq, thermal, emulated
    row = next(r for r in page.split("<tr") if "rock5b" in r and "rkllm" in r)
    assert "DDR devfreq governor dmc_ondemand" in row and "hot: soc-thermal 84°C" in row
    assert "emulated (qemu-user)" in page and "CPU governor schedutil" in page
    assert "model.onnx missing" in page  # the error row


def test_empty_store_page(tmp_path):
    page = render([], "html")
    assert "no results yet" in page and "<svg" not in page


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if not exe:
        pytest.skip("chromium is not installed (make setup-system installs the Debian package)")
    return exe


def _headless(exe: str, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    flags = ["--headless", "--disable-gpu", "--no-first-run", "--disable-extensions", f"--user-data-dir={tmp / 'profile'}",
             "--enable-logging=stderr", "--v=0"]
    if os.geteuid() == 0:
        flags.append("--no-sandbox")  # Chromium refuses to run as root with its sandbox
    return subprocess.run([exe, *flags, *args], capture_output=True, text=True, timeout=120)


def png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """(width, height, rows of RGB(A) bytes) of an 8-bit non-interlaced PNG (what Chromium writes)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat = 8, b""
    w = h = ctype = 0
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            w, h, depth, ctype, _c, _f, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and ctype in (2, 6) and interlace == 0, (depth, ctype, interlace)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    bpp = 3 if ctype == 2 else 4
    raw, stride, rows, prev = zlib.decompress(idat), w * bpp, [], bytearray(w * bpp)
    for y in range(h):
        f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 255
            elif f == 2:
                line[i] = (line[i] + b) & 255
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line))
        prev = line
    return w, h, rows


@pytest.mark.real
def test_report_and_compare_pages_render_in_chromium(tmp_path):
    """`rkdeploy report --format html` and `compare --format html` in a real headless Chromium: the DOM
    after layout holds the charts' non-empty SVG paths, the screenshot is not blank, no console message."""
    exe = _chromium()
    store = _store(tmp_path)
    page, cmp = tmp_path / "report.html", tmp_path / "compare.html"
    for args in (("report", "--format", "html", "--out", page),
                 ("compare", "previous", "latest", "--format", "html", "--out", cmp)):
        p = run_cli(*args[:1], "--store", store, *args[1:])
        assert p.returncode == 0, p.stderr
    t0 = time.monotonic()
    dom = _headless(exe, tmp_path, "--dump-dom", page.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    got = _charts_in(dom.stdout)
    assert got["svg"] == 5 and got["paths"] > 20 and got["dots"] == 27 and got["points"] == 4, got
    shot = tmp_path / "shot.png"
    ss = _headless(exe, tmp_path, f"--screenshot={shot}", "--window-size=1280,1800", page.as_uri())
    assert ss.returncode == 0 and shot.exists(), ss.stderr[-2000:]
    w, h, rows = png_pixels(shot.read_bytes())
    lum = [px for row in rows[::4] for px in row[::16]]  # every 4th row, a channel sample every few pixels
    mean = sum(lum) / len(lum)
    var = sum((x - mean) ** 2 for x in lum) / len(lum)
    dark = sum(x < 200 for x in lum) / len(lum)
    assert (w, h) == (1280, 1800) and var > 200 and dark > 0.01, (w, h, var, dark)
    c = _headless(exe, tmp_path, "--dump-dom", cmp.as_uri())
    assert c.returncode == 0 and "within noise" in c.stdout and c.stdout.count("<tr") == 20, c.stderr[-2000:]
    for out in (dom, ss, c):
        bad = [line for line in out.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
        assert not bad, bad
    print(f"chromium: 3 headless runs in {time.monotonic() - t0:.1f} s; screenshot variance {var:.0f}, "
          f"{dark:.1%} dark samples")
