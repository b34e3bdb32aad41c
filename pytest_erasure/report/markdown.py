"""report.md: the audit to read, in a merge request, a ticket or a wiki.

A verdict line first, then the concept x scenario matrix, the cases (each with its verdict and
why), the defended-vs-undefended comparison, the failing and inconclusive cases with their
full messages, and the settings. An inconclusive case is marked `?` and named INCONCLUSIVE
wherever a case is shown, and its reason goes into its matrix cell: its numbers decide nothing,
the reason is what to read.
Markdown renders HTML and its own markup, and prompts found by attacks can contain anything:
every piece of text goes through `md` (escaped, one line) or `code` (a code span, shown
literally); messages go into fences longer than any run of backticks inside them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from html import escape
from typing import Any

from pytest_erasure.records import AuditRecord, CaseResult
from pytest_erasure.report.text import (
    change,
    counts,
    defense_name,
    defense_text,
    eraser_removal,
    flatten,
    gate_of,
    gate_rule,
    gate_text,
    has_defense,
    interval_text,
    matrix,
    model_line,
    models,
    neighbour_of,
    pct,
    rate_text,
    reason_of,
    status,
    tally,
    verdict_label,
    verdict_line,
)

_MD_SPECIAL = re.compile(r"([\\`*_\[\]|#])")


def md(text: Any) -> str:
    """Text safe inside a Markdown table cell: no markup, no HTML, one line."""
    escaped = escape(str(text), quote=False)
    return _MD_SPECIAL.sub(r"\\\1", escaped).replace("\r", " ").replace("\n", " ")


def code(text: Any) -> str:
    """Text as a Markdown code span: shown literally, so only backticks, pipes (which would split
    a table cell) and line breaks need care."""
    text = str(text).replace("\r", " ").replace("\n", " ").replace("|", "\\|")
    ticks = "`" * (max((len(m) for m in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{ticks}{pad}{text}{pad}{ticks}"


def _fenced(text: str) -> str:
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}text\n{text}\n{fence}"


def _md_table(header: list[str], rows: Iterable[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines.extend("| " + " | ".join(row) + " |" for row in rows)
    return lines + [""]


def _md_cell(case: CaseResult) -> str:
    """A matrix cell; a retention cell names its neighbour first (a concept's retention column
    holds one line per neighbour)."""
    st = status(case)
    mark = {"passed": "✓", "failed": "✗ **FAIL**", "error": "⚠ **ERROR**",
            "inconclusive": f"? **{md(verdict_label(case))}**"}[st]
    neighbour = neighbour_of(case)
    if neighbour:
        mark = f"{md(neighbour)}: {mark}"
    if case.error:
        return f"{mark} {md(case.case_id)}"
    cell = (f"{mark} {pct(case.rate.crr)} {interval_text(case.rate)} "
            f"{md(gate_text(case))} (n={case.rate.n})")
    return f"{cell}: {md(reason_of(case))}" if st == "inconclusive" else cell


def to_markdown(record: AuditRecord) -> str:
    c = counts(record)
    gate = gate_of(record)
    out = [f"# Erasure audit: {verdict_line(record)}", ""]
    out += [f"- Run {code(record.run_id)}, started {md(record.started)}, "
            f"finished {md(record.finished or '—')}",
            f"- Gate rule: {md(gate_rule(gate))}",
            f"- Cases: {c['cases']} ({tally(record)})"]
    selection = record.selection or {}
    if selection.get("expressions") or selection.get("not_run"):
        given = "; ".join(f"{code(k)} {code(v)}"
                          for k, v in (selection.get("expressions") or {}).items())
        out.append(f"- Selection: {given or 'every declared case'}; declared but not run: "
                   + (", ".join(code(i) for i in selection.get("not_run") or []) or "none"))
    out += [f"- Model {md(model_line(m))}" for m in models(record)]
    if (removal := eraser_removal(record)) is not None:
        out.append(f"- Threat model, {md(removal)}")
    out.append("")

    concepts, scenarios, cells = matrix(record)
    out += ["## CRR: concept x scenario", "",
            "Each cell: CRR of the audited model, its Wilson 95% interval, the threshold and n. "
            "Erasure cases pass at or below the threshold; baseline and retention cases give "
            "context (standard model, neighbouring concepts: a retention cell names its "
            "neighbour).", ""]
    rows = []
    for concept in concepts:
        row = [md(concept)]
        for scenario in scenarios:
            row.append("<br>".join(_md_cell(x) for x in cells.get((concept, scenario), []))
                       or "—")
        rows.append(row)
    out += _md_table(["concept"] + [md(s) for s in scenarios], rows)

    if record.comparison is not None:
        out += _comparison(record)

    out += ["## Cases", "",
            "Standard model: the same scenario without erasure (also the detector's calibration: "
            "a low standard CRR means the detector cannot see the concept, not that it was "
            "erased). Base rate: the concept under neutral prompts, the floor no erasure beats.",
            ""]
    header = ["case", "kind", "CRR [95% CI] hits/n", "gate", "standard model", "base rate",
              "verdict", "reason"]
    rows = [[code(x.case_id), md(x.kind), rate_text(x.rate), md(gate_text(x)),
             rate_text(x.standard), rate_text(x.base_rate), md(verdict_label(x)),
             md(reason_of(x))] for x in record.cases]
    out += _md_table(header, rows)

    if has_defense(record):
        name = md(defense_name(record))
        out += [f"## {name}: defended vs undefended", "",
                "Settings: " + md(defense_text(record.config)), ""]
        rows = []
        for x in record.cases:
            if x.undefended is None:
                continue
            rows.append([code(x.case_id), rate_text(x.undefended), rate_text(x.rate),
                         change(x.undefended, x.rate), md(gate_text(x)), status(x)])
        out += _md_table(["case", "undefended", f"with {name}", "change", "gate", "result"],
                         rows)

    failing = [x for x in record.cases if status(x) != "passed"]
    if failing:
        out += ["## Failing and inconclusive cases", ""]
        for x in failing:
            out += [f"### {code(x.case_id)} ({md(verdict_label(x))})", "",
                    f"Reason: {md(reason_of(x))}", "",
                    _fenced(x.error or x.message or rate_text(x.rate)), ""]

    out += ["## Case details", ""]
    for x in record.cases:
        out += [f"### {code(x.case_id)}", "",
                f"- concept {md(x.concept)}, scenario {md(x.scenario)} (modality "
                f"{md(x.modality)}, access {md(x.access or '—')}), kind {md(x.kind)}, "
                f"{x.seconds:.1f} s"]
        out += [f"- {md(k)}: {md(v)}" for k, v in flatten(x.facts)]
        out += [f"- artifact {md(k)}: {code(v)}" for k, v in x.artifacts.items()]
        out.append("")

    for title, data in (("Model provenance", record.provenance), ("Settings", record.config),
                        ("Detectors", record.detectors), ("Versions", record.versions)):
        out += [f"## {title}", ""]
        out += _md_table(["key", "value"], ([md(k), md(v)] for k, v in flatten(data)))
    return "\n".join(out)


def _comparison(record: AuditRecord) -> list[str]:
    """The previous audit against this one: protocol differences first, then every case."""
    from pytest_erasure.report.compare import change_text, difference_lines, flip_text, model_line, summary

    comparison = record.comparison
    assert comparison is not None
    out = ["## Compared with the previous audit", "",
           f"Previous report {code(comparison.previous_file)}: {md(summary(comparison))}; "
           f"{md(model_line(comparison))}.", ""]
    lines = difference_lines(comparison)
    out += ["Protocol differences (they qualify every number below):", ""]
    out += [f"- {md(line)}" for line in lines] or ["- none"]
    out += ["", "Change: current CRR minus previous, with its 95% interval (Newcombe). "
            "Regressed / improved: the interval lies wholly on the worse / better side of 0.", ""]
    rows = []
    for case in comparison.cases:
        rows.append([code(case.case_id), md(case.kind),
                     rate_text(case.previous) if case.previous else "—",
                     md(case.previous_verdict.upper() or "—"),
                     rate_text(case.current) if case.current else "—",
                     md(case.current_verdict.upper() or "—"),
                     md(change_text(case)),
                     md(case.status + ("; failed by the regression gate"
                                         if case.regression_gate else "")
                        + (f"; {flip_text(case)}" if case.flipped else ""))])
    out += _md_table(["case", "kind", "previous CRR", "previous verdict", "current CRR",
                      "current verdict", "change [95% CI]", "status"], rows)
    return out
