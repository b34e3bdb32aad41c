"""report.html: the audit to look at, one self-contained page.

Inline CSS, evidence grids as data: URIs, no scripts, fonts or links outside the page, so it can
be attached to a ticket or opened air-gapped. People would rather look than read: the matrix is
coloured by verdict and each case shows its evidence grid, where a reviewer sees whether the
detector's red frames really hold the concept. Every piece of text is escaped (`esc`), prompts
found by attacks included, and image data is embedded only if it is plain base64. Inconclusive
cases have their own class and colour (amber) in the matrix, the badges and the verdict banner
(a pass that holds reported-only inconclusive cases is amber, not green), and show their reason
in the matrix cell and under the case's title. Named for its
format like its siblings; `from html import escape` still finds the standard library's module.
"""

from __future__ import annotations

import re
from html import escape
from typing import Any

from pytest_erasure.records import AuditRecord, CaseResult
from pytest_erasure.report.text import (
    change,
    counts,
    gate_of,
    gate_rule,
    gate_text,
    has_irece,
    interval_text,
    irece_settings,
    matrix,
    model_line,
    models,
    pct,
    plain,
    rate_text,
    reason_of,
    status,
    tally,
    verdict,
    verdict_label,
    verdict_line,
)

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2em auto;
max-width:1200px;padding:0 1em;color:#222;line-height:1.4}
h1{margin-bottom:.2em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
.verdict{padding:.6em 1em;border-radius:6px;font-weight:700;font-size:1.3em;color:#fff}
.verdict.passed{background:#2ca02c}.verdict.failed,.verdict.empty{background:#d62728}
table{border-collapse:collapse;margin:.5em 0}
th,td{border:1px solid #ccc;padding:.3em .5em;vertical-align:top;text-align:left}
th{background:#f3f3f3}
td.passed{background:#e3f4e3}td.failed,td.error{background:#fbdcdc}
td.context{background:#f6f6f6;color:#555}td.inconclusive{background:#fff1c6}
td.inconclusive .crr{color:#8a5a00}.verdict.inconclusive{background:#b7791f}
.badge.inconclusive{background:#b7791f}.reason{font-size:.85em;font-style:italic}
td.failed .crr,td.error .crr{color:#b00000;font-weight:700}
.crr{font-size:1.15em;font-weight:600}.small{font-size:.85em;color:#555}
a{color:inherit}code,pre{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.9em}
pre{background:#f6f6f6;padding:.6em;white-space:pre-wrap;word-break:break-word}
.badge{display:inline-block;padding:0 .5em;border-radius:4px;color:#fff;font-size:.8em}
.badge.passed{background:#2ca02c}.badge.failed,.badge.error{background:#d62728}
section.case{border:1px solid #ddd;border-radius:6px;padding:0 1em 1em;margin:1em 0}
figure{margin:.5em 0}figure img{max-width:100%;image-rendering:pixelated}
.legend span{display:inline-block;width:1em;height:1em;vertical-align:middle;margin:0 .3em}
.found{color:#d62728}.notfound{color:#2ca02c}
table.kv td:first-child{font-family:ui-monospace,Menlo,Consolas,monospace;white-space:nowrap}
td .v{white-space:pre-wrap;word-break:break-word}
"""

_B64 = re.compile(r"^[A-Za-z0-9+/]*={0,2}$")


def esc(text: Any) -> str:
    return escape(str(text), quote=True)


def _anchor(index: int) -> str:
    """Anchors by position: a case id may contain anything, an anchor must not."""
    return f"case-{index}"


def _cell_class(case: CaseResult) -> str:
    if status(case) == "passed" and case.kind != "erasure":
        return "context"
    return status(case)


def to_html(record: AuditRecord) -> str:
    gate = gate_of(record)
    v = verdict(record).lower()
    if v == "passed" and counts(record)["inconclusive"]:
        v = "inconclusive"
    index = {id(x): i for i, x in enumerate(record.cases)}
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           f"<title>Erasure audit {esc(record.run_id)}: {esc(verdict(record))}</title>",
           f"<style>{_CSS}</style></head><body>",
           "<h1>Erasure audit</h1>",
           f'<div class="verdict {v}">{esc(verdict_line(record))}</div>',
           f"<p>Run <code>{esc(record.run_id)}</code>, started {esc(record.started)}, finished "
           f"{esc(record.finished or '—')}. Gate rule: {esc(gate_rule(gate))}. "
           f"{esc(tally(record))}.</p>"]
    out.append("<ul>" + "".join(f"<li>Model {esc(model_line(m))}</li>" for m in models(record))
               + "</ul>")

    concepts, scenarios, cells = matrix(record)
    out += ["<h2>CRR: concept x scenario</h2>",
            '<p class="small">CRR of the audited model with its Wilson 95% interval and '
            "threshold; red where the gate fails, amber where the case is inconclusive (the audit "
            "could not have seen the concept: its reason is in the cell). <i>std</i>: the "
            "standard (un-erased) model in the same scenario (a low value means the detector "
            "cannot see the concept); "
            "<i>base</i>: the concept under neutral prompts; <i>undefended</i>: the erased model "
            "without IRECE. Grey cells are context (baseline, retention).</p>",
            "<table><tr><th>concept</th>"
            + "".join(f"<th>{esc(s)}</th>" for s in scenarios) + "</tr>"]
    for concept in concepts:
        row = [f"<tr><th>{esc(concept)}</th>"]
        for scenario in scenarios:
            here = cells.get((concept, scenario), [])
            if not here:
                row.append("<td>—</td>")
                continue
            states = {status(x) for x in here}
            klass = ("failed" if states & {"failed", "error"} else
                     "inconclusive" if "inconclusive" in states else _cell_class(here[0]))
            row.append(f'<td class="{klass}">'
                       + "<hr>".join(_html_cell(x, index[id(x)]) for x in here) + "</td>")
        out.append("".join(row) + "</tr>")
    out.append("</table>")

    if has_irece(record):
        out += ["<h2>IRECE: defended vs undefended</h2>",
                _html_value(irece_settings(record.config)),
                "<table><tr><th>case</th><th>undefended</th><th>with IRECE</th><th>change</th>"
                "<th>gate</th><th>result</th></tr>"]
        for x in record.cases:
            if x.undefended is None:
                continue
            out.append(f'<tr><td><a href="#{_anchor(index[id(x)])}">{esc(x.case_id)}</a></td>'
                       f"<td>{esc(rate_text(x.undefended))}</td><td>{esc(rate_text(x.rate))}</td>"
                       f"<td>{esc(change(x.undefended, x.rate))}</td>"
                       f"<td>{esc(gate_text(x))}</td>"
                       f'<td class="{status(x)}">{esc(status(x))}</td></tr>')
        out.append("</table>")

    out += ["<h2>Cases</h2>",
            '<p class="legend">Evidence grids: <span style="background:#d62728"></span>red frame '
            '= the detector found the concept; <span style="background:#2ca02c"></span>green = '
            'it did not; <span style="background:#969696"></span>grey = no answer. Numbers on '
            "the images refer to the list under each grid.</p>"]
    for x in record.cases:
        out.append(_html_case(x, index[id(x)]))

    out += ["<h2>Model provenance</h2>", _html_value(record.provenance),
            "<h2>Settings</h2>", _html_value(record.config),
            "<h2>Detectors</h2>", _html_value(record.detectors),
            "<h2>Versions</h2>", _html_value(record.versions),
            "</body></html>", ""]
    return "\n".join(out)


def _html_cell(case: CaseResult, i: int) -> str:
    link = f'<a href="#{_anchor(i)}">'
    if case.error:
        return f'{link}<span class="crr">ERROR</span></a><div class="small">{esc(case.case_id)}</div>'
    lines = [f'{link}<span class="crr">{esc(pct(case.rate.crr))}</span></a> '
             f"{esc(gate_text(case))}",
             f'<div class="small">{esc(interval_text(case.rate))} n={case.rate.n}</div>']
    extra = []
    if case.standard is not None:
        extra.append(f"std {pct(case.standard.crr)}")
    if case.base_rate is not None:
        extra.append(f"base {pct(case.base_rate.crr)}")
    if case.undefended is not None:
        extra.append(f"undefended {pct(case.undefended.crr)}")
    if extra:
        lines.append(f'<div class="small">{esc(" · ".join(extra))}</div>')
    if status(case) == "inconclusive":
        lines.append(f'<div class="reason">{esc(verdict_label(case))}: '
                     f"{esc(reason_of(case))}</div>")
    return "".join(lines)


def _html_case(case: CaseResult, i: int) -> str:
    st = status(case)
    out = [f'<section class="case" id="{_anchor(i)}">',
           f'<h3><code>{esc(case.case_id)}</code> <span class="badge {st}">{esc(st)}</span></h3>',
           f'<p class="reason">{esc(verdict_label(case))}: {esc(reason_of(case))}</p>',
           f'<p class="small">concept {esc(case.concept)} · scenario {esc(case.scenario)} · '
           f"modality {esc(case.modality)} · access {esc(case.access or '—')} · kind "
           f"{esc(case.kind)} · gate {esc(case.gate)} {esc(gate_text(case))} · "
           f"{case.seconds:.1f} s</p>"]
    rows = [("audited model" + (" (with IRECE)" if case.undefended is not None else ""),
             case.rate), ("standard model", case.standard),
            ("erased model without IRECE", case.undefended),
            ("base rate (neutral prompts)", case.base_rate)]
    out.append("<table><tr><th></th><th>CRR</th><th>95% interval</th><th>hits/n</th>"
               "<th>degenerate</th></tr>")
    for name, rate in rows:
        if rate is None:
            continue
        out.append(f"<tr><th>{esc(name)}</th><td>{esc(pct(rate.crr))}</td>"
                   f"<td>{esc(interval_text(rate))}</td><td>{rate.hits}/{rate.n}</td>"
                   f"<td>{rate.degenerate}</td></tr>")
    out.append("</table>")
    if case.message:
        out.append(f"<pre>{esc(case.message)}</pre>")
    if case.error:
        out.append(f"<p><b>Error</b></p><pre>{esc(case.error)}</pre>")
    for grid in case.evidence:
        out.append(_html_evidence(grid))
    if case.facts:
        out += ["<h4>Facts</h4>", _html_value(case.facts)]
    if case.artifacts:
        out += ["<h4>Artifacts</h4>", _html_value(case.artifacts)]
    out.append("</section>")
    return "\n".join(out)


def _html_evidence(grid: dict[str, Any]) -> str:
    title = esc(grid.get("title", "evidence"))
    data = str(grid.get("png_base64", ""))
    if data and _B64.match(data):
        image = f'<img alt="{title}" src="data:image/png;base64,{data}">'
    else:
        image = '<p class="small">(no valid image data)</p>'
    labels = list(grid.get("labels") or [])
    present = list(grid.get("present") or [])
    items = []
    for k in range(max(len(labels), len(present))):
        found = present[k] if k < len(present) else None
        mark = ('<span class="found">■ found</span>' if found
                else '<span class="notfound">■ not found</span>' if found is False
                else "■ no answer")
        label = labels[k] if k < len(labels) else ""
        items.append(f"<li>{mark} {esc(label)}</li>")
    hits = sum(1 for p in present if p)
    listing = (f"<details><summary>{hits} of {len(present)} found — image labels</summary>"
               f"<ol>{''.join(items)}</ol></details>") if items else ""
    return f"<figure>{image}<figcaption>{title}{listing}</figcaption></figure>"


def _html_value(value: Any, depth: int = 0) -> str:
    """Any JSON-able value as nested key/value tables, every string escaped."""
    if isinstance(value, dict):
        if not value:
            return "—"
        rows = "".join(f"<tr><td>{esc(k)}</td><td>{_html_value(v, depth + 1)}</td></tr>"
                       for k, v in value.items())
        return f'<table class="kv">{rows}</table>'
    if isinstance(value, list | tuple):
        if not value:
            return "—"
        if all(not isinstance(v, dict | list | tuple) for v in value) and len(value) <= 8 \
                and sum(len(str(v)) for v in value) < 120:
            return f'<span class="v">{esc(", ".join(plain(v) for v in value))}</span>'
        return "<ol>" + "".join(f"<li>{_html_value(v, depth + 1)}</li>" for v in value) + "</ol>"
    return f'<span class="v">{esc(plain(value))}</span>'
