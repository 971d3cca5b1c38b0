"""The HTML report, checked in a real browser: headless Chromium renders it and draws its plots (issue 14 §4).

Chromium loads the report written by ``fieldlab analyze --html`` and dumps the DOM it built; each plot is
then screenshot on its own and the PNG decoded (pure Python, zlib) to check that the plot is drawn: not one
colour, and the series' own colour present. Skipped when no Chromium binary is installed
(Debian: ``apt-get install -y chromium``).
"""

from __future__ import annotations

import html as html_lib
import os
import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest
from analysis_helpers import make_requests, write_otlp

from fieldlab.analysis import analyze, render_text
from fieldlab.cli import main

CHROMIUM = next(
    (
        p
        for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"))
        if p
    ),
    None,
)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no Chromium binary (chromium, chromium-browser or "
    "google-chrome) on PATH; install it with: apt-get install -y chromium",
)


def _chromium(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp / f"profile-{len(list(tmp.glob('profile-*')))}"
    return subprocess.run(
        [
            str(CHROMIUM),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--no-first-run",
            "--disable-extensions",
            f"--user-data-dir={profile}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _png_pixels(path: Path) -> tuple[int, int, list[tuple[int, ...]]]:
    """Width, height and RGB pixels of an 8-bit RGB or RGBA PNG (what Chromium writes), decoded by hand."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, width = 8, b"", 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, color = struct.unpack(">IIBB", body[:10])
            assert depth == 8 and color in (2, 6), (depth, color)
            bpp = 3 if color == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = width * bpp
    prev = bytearray(stride)
    pixels = []
    for y in range(height):
        f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
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
        pixels += [tuple(line[x : x + 3]) for x in range(0, stride, bpp)]
        prev = line
    return width, height, pixels


def _hex(color: str) -> tuple[int, int, int]:
    return int(color[1:3], 16), int(color[3:5], 16), int(color[5:7], 16)


def _near(px: tuple[int, ...], rgb: tuple[int, int, int], tol: int = 40) -> bool:
    return all(abs(p - q) <= tol for p, q in zip(px, rgb, strict=False))


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """A report of a treatment slower than control and no errors at all (the error rate is zero throughout)."""
    tmp = tmp_path_factory.mktemp("report")
    path = write_otlp(
        str(tmp / "spans.jsonl"),
        make_requests(
            1200,
            experiment="checkout",
            reqs_per_unit=(1, 3),
            error_rate={"control": 0.0, "treatment": 0.0},
            latency_ms={"control": 20.0, "treatment": 26.0},
            seed=8,
        ),
        child_spans=False,
    )
    html = tmp / "report.html"
    assert main(["analyze", path, "--html", str(html)]) == 0
    return tmp, html, analyze(path)


@pytest.fixture(scope="module")
def dom(report) -> str:
    """The DOM Chromium built from the report."""
    tmp, html, _ = report
    proc = _chromium(tmp, "--dump-dom", html.as_uri())
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def _svgs(dom: str) -> dict[str, str]:
    """Each plot of the rendered DOM by its title (the ``aria-label`` Chromium kept)."""
    return {m.group(1): m.group(0) for m in re.finditer(r'<svg[^>]*aria-label="([^"]+)".*?</svg>', dom, re.S)}


def test_chromium_renders_the_report_with_its_plots_and_latency_tests(report, dom):
    _, _, result = report
    e = result["experiments"]["checkout"]
    assert all(v["errors"] == 0 for v in e["variants"].values())  # nothing to plot for the error rate
    assert "<h2>checkout</h2>" in dom and "Verdict:" in dom
    plots = _svgs(dom)
    assert set(plots) == {
        "Assigned units against the expected split",
        "Latency distribution per variant",
        "latency_ms: treatment - control, interval at each look",
    }
    timeline = plots["latency_ms: treatment - control, interval at each look"]
    band = re.search(r'<polygon[^>]*points="([^"]+)"', timeline)
    assert band and len(band.group(1).split()) >= 2 * 15  # an interval at (nearly) every one of the 20 looks
    ys = {float(p.split(",")[1]) for p in band.group(1).split()}
    assert max(ys) - min(ys) > 20  # the band has a height: the metric has data (not an all-zero error rate)
    assert len(re.findall(r"<polyline", plots["Latency distribution per variant"])) == 2  # one curve per variant
    # the latency rank test and percentile differences, as the terminal shows them
    text = render_text(result)
    shown = re.search(r"Mann-Whitney \(one look\) p[<=][0-9.]+; p50/p90/p99 diff [0-9.\-/]+ ms", text)
    assert shown and shown.group(0) in html_lib.unescape(dom)


@pytest.mark.parametrize(
    "title, color",
    [
        ("latency_ms: treatment - control, interval at each look", "#dd8452"),
        ("Latency distribution per variant", "#4c72b0"),
        ("Assigned units against the expected split", "#4c72b0"),
    ],
)
def test_each_plot_is_drawn_in_chromium(report, dom, title, color):
    """Screenshot each plot alone: it is not one colour and its series' colour covers real pixels."""
    tmp, _, _ = report
    svg = _svgs(dom)[title]
    width, height = (int(x) for x in re.search(r'width="(\d+)" height="(\d+)"', svg).groups())
    page = tmp / f"plot-{abs(hash(title))}.html"
    page.write_text(f"<!DOCTYPE html><html><body style='margin:0;background:#fff'>{svg}</body></html>")
    png = tmp / f"{page.stem}.png"
    proc = _chromium(tmp, f"--screenshot={png}", f"--window-size={width},{height}", page.as_uri())
    assert proc.returncode == 0 and png.exists(), proc.stderr[-2000:]
    w, h, pixels = _png_pixels(png)
    assert (w, h) == (width, height)
    assert len(set(pixels)) > 20  # axes, text, grid and series: far from one colour
    drawn = sum(_near(px, _hex(color)) for px in pixels)
    assert drawn > 0.002 * w * h, f"{title}: only {drawn} pixels in the series colour {color}"


def test_the_report_html_is_self_contained(report):
    """No scripts and nothing fetched: Chromium renders it offline, as a file attached to a ticket."""
    _, html, _ = report
    text = html.read_text()
    assert "<script" not in text and not re.search(r"""(src|href)=["']?https?:""", text)
    assert os.path.getsize(html) < 200_000
