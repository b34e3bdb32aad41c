"""report.html of a real audit in a real headless browser (Debian's chromium, driven through the
DevTools protocol over a pipe: `cdp.py`).

A small audit of the tiny world (a leaky erased model: its text case fails, its baseline
passes) writes its report; chromium opens it at 1280x900 and the test checks what a reviewer
sees: a screenshot of the first screen that is not blank and shows the red verdict banner; the
verdict, the models and the cases that need attention inside that first screen; every evidence
image decoded; the plot drawn; no console error or page exception; the failing cases above the
passing ones. Then printed: each case is one block (`break-inside: avoid`, and no case taller
than the printed page, so the browser can keep it whole) and the PDF is a PDF with pages.
Skipped only where chromium is not installed (.ci/run installs it).
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from cdp import Browser, chromium  # tests/e2e is on sys.path (no packages)
from PIL import Image

AUDIT = "def test_erasure(erasure_case, erasure_check):\n    erasure_check(erasure_case)\n"
WIDTH, HEIGHT = 1280, 900
PRINT_WIDTH, PRINT_HEIGHT = 739, 979
"""Letter paper less Chromium's default print margins (0.4 in each side), in CSS pixels."""

PAGE_FACTS = """(() => {
  const images = [...document.images];
  const box = (selector) => {
    const element = document.querySelector(selector);
    return element ? element.getBoundingClientRect().bottom : null;
  };
  const plot = document.querySelector('.plot svg');
  return {
    images: images.length,
    decoded: images.filter((i) => i.complete && i.naturalWidth > 0).length,
    cases: [...document.querySelectorAll('section.case')].map((s) => ({
      status: s.classList[1], id: s.querySelector('h3 code').textContent,
      top: s.getBoundingClientRect().top + window.scrollY})),
    verdict: box('.verdict'), models: box('.glance table'),
    attention: box('ul.attention'), plot: plot ? plot.getBBox().width : 0,
    height: document.documentElement.scrollHeight,
  };
})()"""

PRINT_FACTS = """[...document.querySelectorAll('section.case')].map((s) => ({
  id: s.querySelector('h3 code').textContent, breakInside: getComputedStyle(s).breakInside,
  height: s.getBoundingClientRect().height}))"""


@pytest.fixture
def audit_html(pytester: pytest.Pytester, tiny_world: dict[str, Path]) -> Path:
    out = pytester.path / "report"
    pytester.makepyfile(test_audit=AUDIT)
    result = pytester.runpytest_inprocess(
        f"--standard-model={tiny_world['standard']}", f"--erased-model={tiny_world['leaky']}",
        f"--concepts={tiny_world['concepts']}", "--samples", "8", "--steps", "2",
        "--batch-size", "4", "-p", "no:randomly", "--erasure-gate=point",
        "--scenarios", "text,baseline", f"--erasure-report={out}")
    result.assert_outcomes(passed=1, failed=1)
    return out / "report.html"


def test_report_html_in_headless_chromium(audit_html: Path, tmp_path: Path) -> None:
    executable = chromium()
    if executable is None:
        pytest.skip("chromium is not installed (.ci/run installs it)")
    browser = Browser(executable, tmp_path / "profile", tmp_path / "chromium.log")
    try:
        for domain in ("Page", "Runtime", "Log"):
            browser.page(f"{domain}.enable")
        browser.page("Emulation.setDeviceMetricsOverride", width=WIDTH, height=HEIGHT,
                     deviceScaleFactor=1, mobile=False)
        browser.page("Page.navigate", url=audit_html.as_uri())
        browser.wait_for("Page.loadEventFired")
        facts = browser.evaluate(PAGE_FACTS)
        screenshot = browser.screenshot()
        browser.page("Emulation.setEmulatedMedia", media="print")
        browser.page("Emulation.setDeviceMetricsOverride", width=PRINT_WIDTH,
                     height=PRINT_HEIGHT, deviceScaleFactor=1, mobile=False)
        printed = browser.evaluate(PRINT_FACTS)
        pdf = browser.pdf()
        events = list(browser.events)
    finally:
        browser.close()
    (tmp_path / "first-screen.png").write_bytes(screenshot)
    (tmp_path / "report.pdf").write_bytes(pdf)

    shot = Image.open(io.BytesIO(screenshot)).convert("RGB")
    assert shot.size == (WIDTH, HEIGHT)
    assert len(shot.getcolors(WIDTH * HEIGHT)) > 50, "the first screen is not blank"
    banner = shot.crop((0, 0, WIDTH, 150)).getcolors(WIDTH * 150)
    assert any(colour == (214, 39, 40) and count > 5000 for count, colour in banner), \
        "the red FAILED banner is at the top of the first screen"

    assert facts["verdict"] < HEIGHT and facts["models"] < HEIGHT
    assert facts["attention"] is not None and facts["attention"] < HEIGHT, \
        "the failing cases are listed on the first screen"
    assert facts["images"] >= 16 and facts["decoded"] == facts["images"], facts
    assert facts["plot"] > 100, "the CRR plot is drawn"
    statuses = [c["status"] for c in facts["cases"]]
    assert statuses == ["failed", "passed"], facts["cases"]
    tops = {c["id"]: c["top"] for c in facts["cases"]}
    assert tops["circle-text"] < tops["circle-baseline"]

    errors = [e for e in events if e.get("method") == "Runtime.exceptionThrown"
              or (e.get("method") == "Runtime.consoleAPICalled"
                  and e["params"]["type"] in ("error", "assert"))
              or (e.get("method") == "Log.entryAdded"
                  and e["params"]["entry"]["level"] == "error")]
    assert errors == []

    assert [p["breakInside"] for p in printed] == ["avoid"] * len(printed)
    assert all(p["height"] <= PRINT_HEIGHT for p in printed), printed
    assert pdf.startswith(b"%PDF-")
    assert len(re.findall(rb"/Type\s*/Page\b(?!s)", pdf)) >= 2
