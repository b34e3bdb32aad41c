"""The end-of-run terminal summary: a concept x scenario matrix of CRR, and the verdict.

It must read in a CI log too: no colour (every cell also carries ✓/✗/? and the verdict is a
word) and 80 columns (scenario columns that do not fit go into a further table below, as wide data
frames wrap, rather than folding numbers mid-digit).
"""

from __future__ import annotations

from rich import box
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from pytest_erasure.records import AuditRecord, CaseResult
from pytest_erasure.report.text import (
    counts,
    defense_name,
    defense_text,
    eraser_removal,
    gate_of,
    gate_rule,
    gate_text,
    has_defense,
    matrix,
    model_line,
    models,
    pct,
    reason_of,
    status,
    threshold_text,
    verdict,
    verdict_label,
    verdict_line,
)


def header_lines(record: AuditRecord) -> list[str]:
    """For `pytest_report_header`: what is audited, how, and by which rule (no case needed)."""
    cfg = record.config
    settings = [f"gate {gate_rule(gate_of(record))}"]
    if "crr_threshold" in cfg:
        settings.append(f"default threshold {threshold_text(float(cfg['crr_threshold']))}")
    if "samples" in cfg:
        settings.append(f"{cfg['samples']} samples/case")
    if "seed" in cfg:
        settings.append(f"seed {cfg['seed']}")
    if "device" in cfg:
        settings.append(f"{cfg['device']} {cfg.get('dtype', '')}".strip())
    lines = [f"erasure: run {record.run_id}; " + ", ".join(settings)]
    lines += [f"erasure: {model_line(m)}" for m in models(record)]
    if (removal := eraser_removal(record)) is not None:
        lines.append(f"erasure: {removal}")
    if cfg.get("defense"):
        lines.append(f"erasure: {defense_text(cfg)}")
    if record.detectors:
        lines.append("erasure: detectors: " + ", ".join(
            _detector(name, spec) for name, spec in record.detectors.items()))
    return lines


def render_summary(record: AuditRecord, console: Console) -> None:
    gate = gate_of(record)
    console.print(f"run {record.run_id} · gate {gate_rule(gate)}", highlight=False)
    for model in models(record):
        console.print(model_line(model), highlight=False)
    if (removal := eraser_removal(record)) is not None:
        console.print(removal, highlight=False)

    concepts, scenarios, cells = matrix(record)
    for k, chunk in enumerate(_fit(console, concepts, scenarios, cells)):
        if k:
            console.print()
        console.print(_table(concepts, chunk, cells))
    if record.cases:
        legend = ("✓ passes the gate, ✗ fails, ? inconclusive (the audit could not have seen "
                  "the concept); std: standard model")
        if has_defense(record):
            legend += f"; undef: erased model without {defense_name(record)}"
        console.print(Text(legend + "; grey: context (baseline, retention)", style="dim"))

    for case in record.cases:
        st = status(case)
        if st == "passed":
            continue
        if st == "inconclusive":  # its reason, never the gate's numbers: they decide nothing
            line = Text(f"? {case.case_id}: {verdict_label(case)}: ", style="bold yellow")
            line.append(reason_of(case), style="yellow")
            console.print(line)
            continue
        why = (case.error or case.message or "").strip().removeprefix(f"{case.case_id}: ")
        why = why.splitlines()
        line = Text(f"{'⚠' if st == 'error' else '✗'} {case.case_id}: ", style="bold red")
        line.append(why[0] if why else reason_of(case), style="red")
        console.print(line)

    if record.comparison is not None:
        render_comparison(record, console)

    v = verdict(record)
    style = ("bold red" if v != "PASSED" else "bold yellow" if counts(record)["inconclusive"]
             else "bold green")
    console.print(Text(verdict_line(record), style=style))


def _detector(key: str, spec: object) -> str:
    """'circle: shapes (threshold 0.5)' — the session keys detectors by concept."""
    if not isinstance(spec, dict):
        return key
    name = str(spec.get("name", key))
    text = name if name == key else f"{key}: {name}"
    if "threshold" in spec:
        text += f" (threshold {spec['threshold']})"
    return text


def _cell(cases: list[CaseResult]) -> Text:
    text = Text()
    for k, case in enumerate(cases):
        if k:
            text.append("\n")
        st = status(case)
        if st == "error":
            text.append("ERROR ⚠", style="bold red")
            continue
        mark = {"passed": "✓", "failed": "✗", "inconclusive": "?"}[st]
        style = ("bold red" if st == "failed" else "bold yellow" if st == "inconclusive"
                 else "green" if case.kind == "erasure" else "dim")
        if case.kind == "retention":  # one cell holds every neighbour: name each
            text.append(f"{case.facts.get('neighbour', '')} ", style=style)
        text.append(f"{pct(case.rate.crr)} {gate_text(case)} {mark}", style=style)
        if case.standard is not None:
            text.append(f"\nstd {pct(case.standard.crr)}", style="dim")
        if case.undefended is not None:
            text.append(f"\nundef {pct(case.undefended.crr)}", style="dim")
    return text


def _table(concepts: list[str], scenarios: list[str],
           cells: dict[tuple[str, str], list[CaseResult]]) -> Table:
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    table.add_column("concept", no_wrap=True,
                     min_width=max((len(c) for c in concepts), default=0))
    for scenario in scenarios:
        table.add_column(scenario.replace("-", "-\n") if len(scenario) > 12 else scenario,
                         no_wrap=True)
    for concept in concepts:
        row = [cells.get((concept, s)) for s in scenarios]
        if not any(row):
            continue
        table.add_row(concept, *(_cell(c) if c else Text("—", style="dim") for c in row))
    return table


def _fit(console: Console, concepts: list[str], scenarios: list[str],
         cells: dict[tuple[str, str], list[CaseResult]]) -> list[list[str]]:
    """Scenario columns split into tables that each fit the console's width."""
    chunks: list[list[str]] = []
    current: list[str] = []
    for scenario in scenarios:
        trial = current + [scenario]
        unbounded = console.options.update(max_width=10_000)  # else it is clamped to the width
        width = Measurement.get(console, unbounded, _table(concepts, trial, cells)).maximum
        if current and width > console.width:
            chunks.append(current)
            current = [scenario]
        else:
            current = trial
    if current:
        chunks.append(current)
    return chunks



def render_comparison(record: AuditRecord, console: Console) -> None:
    """This audit against the previous one: the protocol differences first (they qualify
    every number below), then every case that changed, flipped, is new or gone, one line each
    (a CI log wraps lines, not table columns)."""
    from pytest_erasure.report.compare import case_line, difference_lines, model_line, summary

    comparison = record.comparison
    assert comparison is not None
    console.print(Text(f"compared with {comparison.previous_file}: {summary(comparison)}",
                       style="bold"), highlight=False)
    for line in difference_lines(comparison):
        console.print(Text(f"  protocol difference: {line}", style="yellow"), highlight=False)
    console.print(Text(f"  {model_line(comparison)}", style="dim"), highlight=False)
    shown = 0
    for change in comparison.cases:
        if change.status == "unchanged" and not change.flipped:
            continue
        shown += 1
        mark = ("✗" if change.regression_gate or change.status == "regressed"
                else "✓" if change.status == "improved" else "·")
        style = ("bold red" if change.regression_gate else "red" if change.status == "regressed"
                 else "green" if change.status == "improved" else "")
        console.print(Text(f"  {mark} {case_line(change)}", style=style), highlight=False)
    if not shown:
        console.print(Text("  every case unchanged (no difference with 95% confidence)",
                           style="dim"))
