"""The CRR plot: every erasure case's CRR with its 95% interval, erased beside standard.

People would rather look than read: a reviewer sees at once which cases sit above their
threshold, how wide each interval is, and whether the attack reached the concept at all on the
standard model (a hollow point far left of the threshold makes a low erased CRR mean nothing).
Drawn with matplotlib, imported here only, when a report is written (never when the plugin
loads), through its object-oriented `Figure` API: no pyplot, so no GUI backend is touched and a
user's own backend choice is left alone. The SVG is made reproducible (fixed hash salt, no date,
text as paths, so no text from a record reaches the SVG as markup): the same record gives the
same bytes, which the golden reports rely on. The HTML inlines it; the `plot` writer writes it
beside the page as crr.svg.
"""

from __future__ import annotations

import io
import re
from typing import Any

from pytest_erasure.records import AuditRecord, CaseResult
from pytest_erasure.report.text import status

ERASED = "#d62728"
STANDARD = "#1f77b4"
PASSED = "#2ca02c"
INCONCLUSIVE = "#b7791f"


def plotted(record: AuditRecord) -> list[CaseResult]:
    """The cases the plot shows: erasure cases that judged images."""
    return [c for c in record.cases if c.kind == "erasure" and c.rate.n > 0 and not c.error]


def crr_svg(record: AuditRecord) -> str:
    """The plot as an SVG element to inline in HTML ('' when there is no case to plot)."""
    cases = plotted(record)
    if not cases:
        return ""
    document = _render(cases)
    svg = document[document.index("<svg"):]
    # Inline in HTML the namespaces are implied and the RDF metadata (creator, format) says
    # nothing a reader needs: without them the page names no URL at all.
    svg = re.sub(r"\s*<metadata>.*?</metadata>", "", svg, count=1, flags=re.S)
    return re.sub(r'\s+xmlns(:xlink)?="[^"]*"', "", svg)


def crr_svg_file(record: AuditRecord) -> str | None:
    """crr.svg for the report folder (the `plot` writer); None when there is nothing to plot."""
    cases = plotted(record)
    return _render(cases) if cases else None


def _render(cases: list[CaseResult]) -> str:
    import matplotlib
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    rc: dict[str, Any] = {"svg.hashsalt": "pytest-erasure", "svg.fonttype": "path",
                          "font.size": 9, "axes.spines.top": False, "axes.spines.right": False}
    with matplotlib.rc_context(rc):
        height = 1.6 + 0.42 * len(cases)
        figure = Figure(figsize=(7.5, height), layout="constrained")
        axes = figure.add_subplot()
        labels = []
        for row, case in enumerate(cases):
            y = len(cases) - 1 - row
            labels.append(f"{case.concept} · {case.scenario}")
            colour = {"passed": PASSED, "inconclusive": INCONCLUSIVE}.get(status(case), ERASED)
            low, high = case.rate.interval
            axes.errorbar([case.rate.crr], [y + 0.12],
                          xerr=[[case.rate.crr - low], [high - case.rate.crr]], fmt="o",
                          color=colour, ecolor=colour, capsize=3, markersize=6)
            if case.standard is not None and case.standard.n:
                s_low, s_high = case.standard.interval
                axes.errorbar([case.standard.crr], [y - 0.12],
                              xerr=[[case.standard.crr - s_low], [s_high - case.standard.crr]],
                              fmt="o", mfc="white", color=STANDARD, ecolor=STANDARD, capsize=3,
                              markersize=6)
            axes.plot([case.threshold, case.threshold], [y - 0.4, y + 0.4], color="#555",
                      linestyle="--", linewidth=1)
        axes.set_yticks(range(len(cases)), list(reversed(labels)))
        axes.set_xlim(-0.02, 1.02)
        axes.set_ylim(-0.6, len(cases) - 0.4)
        axes.xaxis.set_major_formatter(lambda value, _: f"{value:.0%}")
        axes.set_xlabel("CRR (95% interval)")
        axes.grid(axis="x", color="#e5e5e5")
        figure.legend(handles=[
            Line2D([], [], marker="o", color=ERASED, linestyle="", label="erased (red: fails)"),
            Line2D([], [], marker="o", color=PASSED, linestyle="", label="erased, passes"),
            Line2D([], [], marker="o", color=INCONCLUSIVE, linestyle="",
                   label="erased, inconclusive"),
            Line2D([], [], marker="o", color=STANDARD, mfc="white", linestyle="",
                   label="standard model"),
            Line2D([], [], color="#555", linestyle="--", label="threshold")],
            loc="outside lower center", ncols=3, frameon=False, fontsize=8)
        out = io.StringIO()
        figure.savefig(out, format="svg", metadata={"Date": None})
    return _tidy(out.getvalue())


def _tidy(svg: str) -> str:
    """The SVG without trailing spaces on its lines (matplotlib writes some), so the file
    passes whitespace checks of the repositories that keep it."""
    return re.sub(r"[ \t]+\n", "\n", svg)
