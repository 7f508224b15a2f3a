"""The static results page: the page conventions, and a headless-Chromium screenshot that
shows every figure actually rendering."""

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from fwlora.harness import build_config, build_report, plan_compare, run_experiment
from tiny import tiny_settings

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    base = build_config(tiny_settings(root))
    exp = run_experiment(
        plan_compare(base, ["lora", "fw-lora"], [1, 2]), root / "exp", n_resamples=200
    )
    index = build_report([exp.out_dir], root / "site")
    return index.parent


class _Outline(HTMLParser):
    """Top-level structure: sections with their h2, figures, images, links."""

    def __init__(self):
        super().__init__()
        self.stack, self.top = [], []
        self.sections = []  # [name, {"figures": n, "pre": n}]
        self.images, self.links, self.captions = [], [], []
        self._in_h2 = self._in_caption = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if not self.stack:
            self.top.append((tag, attrs))
        self.stack.append(tag)
        if tag == "section":
            self.sections.append(["", {"figure": 0, "pre": 0}])
        elif tag == "h2" and self.sections and self.stack[-2] == "section":
            self._in_h2 = True
        elif tag in ("figure", "pre") and self.sections:
            self.sections[-1][1][tag] += 1
        elif tag == "img":
            self.images.append(attrs)
            self.stack.pop()  # void element
        elif tag == "a":
            self.links.append(attrs)
        elif tag == "figcaption":
            self._in_caption = True
            self.captions.append("")

    def handle_endtag(self, tag):
        while self.stack and self.stack.pop() != tag:
            pass
        self._in_h2 = self._in_caption = False

    def handle_data(self, data):
        if self._in_h2:
            self.sections[-1][0] += data
        if self._in_caption:
            self.captions[-1] += data


def test_page_follows_the_conventions(site):
    html = (site / "index.html").read_text()
    outline = _Outline()
    outline.feed(html)
    for tag in ("<html", "<head", "<body"):
        assert tag not in html
    first_tag, first_attrs = outline.top[0]
    assert (first_tag, first_attrs.get("class")) == ("h2", "paper-title")
    assert all(tag == "section" for tag, _ in outline.top[1:])
    names = [name for name, _ in outline.sections]
    assert names == ["Summary", "Setup", "Method", "Results", "Significance", "Artefacts"]
    for name, counts in outline.sections:
        if name != "Results":
            assert counts["figure"] == 0, f"figures outside Results: {name}"
        if name != "Method":
            assert counts["pre"] == 0, f"code outside Method: {name}"
    # Figures: PNGs under images/, 70 % wide, numbered captions.
    assert len(outline.images) == 2 + 2 * 3 + 1  # bars; 3 per method; 1 heatmap
    for img in outline.images:
        assert re.fullmatch(r"images/[\w.+-]+\.png", img["src"])
        assert img["style"] == "width:70%"
        assert (site / img["src"]).is_file()
    assert [c.split(":")[0] for c in outline.captions] == [
        f"Figure {i}" for i in range(1, len(outline.images) + 1)
    ]
    assert outline.links and all(a.get("target") == "_blank" for a in outline.links)
    for a in outline.links:
        assert json.loads((site / a["href"]).read_text())["schema"].startswith("fwlora.")


def _browser():
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no headless Chromium found; run .ci/system-deps.sh to install it")


PROBE = """<script>
window.addEventListener("load", () => {
  const images = [...document.images].map((img) => {
    const r = img.getBoundingClientRect();
    return {src: img.getAttribute("src"), naturalWidth: img.naturalWidth,
            parentWidth: img.parentElement.getBoundingClientRect().width,
            x: r.left + scrollX, y: r.top + scrollY, width: r.width, height: r.height};
  });
  const out = document.createElement("pre");
  out.id = "probe";
  out.textContent = JSON.stringify({images, height: document.documentElement.scrollHeight});
  document.body.appendChild(out);
});
</script>"""


def _chromium(browser, url, *extra, height=900):
    cmd = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
        f"--window-size=1280,{height}",
        "--virtual-time-budget=5000",
        *extra,
        url,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True)


def test_figures_render_in_headless_chromium(site, tmp_path):
    browser = _browser()
    # The page as GitHub Pages would serve it: the fragment inside a document, plus a
    # probe that reports where each image landed and whether it decoded.
    probe = site / "_probe.html"
    probe.write_text(
        '<!doctype html><html><head><meta charset="utf-8"></head><body>'
        + (site / "index.html").read_text()
        + PROBE
        + "</body></html>"
    )
    url = probe.resolve().as_uri()
    dom = _chromium(browser, url, "--dump-dom").stdout
    match = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    assert match, "the probe script did not run"
    layout = json.loads(match.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    images = layout["images"]
    assert len(images) == 9
    for img in images:
        assert img["naturalWidth"] > 0, f"{img['src']} did not load"
        assert img["width"] == pytest.approx(0.7 * img["parentWidth"], rel=0.01)

    shot = tmp_path / "page.png"
    height = min(int(layout["height"]) + 50, 16000)
    _chromium(browser, url, f"--screenshot={shot}", height=height)
    page = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert page.shape[1] == 1280
    for img in images:
        if img["y"] + img["height"] > page.shape[0]:
            continue
        x0, y0 = int(img["x"]), int(img["y"])
        region = page[y0 : y0 + int(img["height"]), x0 : x0 + int(img["width"])]
        # A rendered plot has dark ink (axes, text) on a light background.
        assert region.std() > 10, f"{img['src']} region is blank"
        assert (region < 100).mean() > 0.002, f"{img['src']} region has no ink"
    # The area right of the 70 %-wide figures is page background, not figure.
    first = images[0]
    margin = page[int(first["y"]) : int(first["y"] + first["height"]), 1200:1270]
    assert margin.std() < 1.0
    probe.unlink()
