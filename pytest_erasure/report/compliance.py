"""The reports a safety team files: JSON (to reproduce), Markdown (to read), HTML (to look at).

`write_reports` takes only the `AuditRecord`, so a report can be rebuilt later from `report.json`
(`read_report`) without the models. The HTML is one self-contained file — inline CSS, evidence
grids as data: URIs, no scripts, fonts or links outside the page — so it can be attached to a
ticket or opened air-gapped. Every piece of text is escaped: prompts found by attacks can contain
anything, markup included.

This module also holds how a case reads as text (percentages, the gate rule, the concept x
scenario matrix, model summaries), which the terminal and JUnit reports share.
"""

from __future__ import annotations

import html
import json
import math
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pytest_erasure.cache import atomic_write_bytes
from pytest_erasure.crr import Rate
from pytest_erasure.results import AuditRecord, CaseResult

SCHEMA = "pytest-erasure/report"
SCHEMA_VERSION = 1
_ENVELOPE = ("schema", "schema_version", "summary")
"""Keys report.json adds around `AuditRecord.to_dict()`; `read_report` drops them."""

KIND_ORDER = {"erasure": 0, "baseline": 1, "retention": 2}
"""Matrix columns: what the gate is about first, context after."""


# --- how a case reads as text (shared by every report) ------------------------------------------

def pct(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.1%}"


def threshold_text(threshold: float) -> str:
    """0.2 -> '20%', 0.125 -> '12.5%': thresholds are round numbers, print them so."""
    return f"{threshold * 100:.3g}%"


def comparator(case: CaseResult) -> str:
    """Erasure cases pass at or below the threshold; baseline and retention at or above it
    (the standard model must draw the concept, the erased one must still draw its neighbours)."""
    return "≤" if case.kind == "erasure" else "≥"


def gate_text(case: CaseResult) -> str:
    """'≤20%': the threshold with its direction, as a matrix cell shows it."""
    return f"{comparator(case)}{threshold_text(case.threshold)}"


def gate_rule(gate: str) -> str:
    if gate == "upper":
        return "upper: the Wilson 95% upper bound of CRR ≤ threshold (strict)"
    if gate == "at-least":
        return "at-least: CRR ≥ threshold"
    return "point: CRR ≤ threshold"


def interval_text(rate: Rate) -> str:
    low, high = rate.interval
    return f"[{low * 100:.1f}–{high * 100:.1f}%]"


def rate_text(rate: Rate | None) -> str:
    """'12.5% [5.4–26.2%] 4/32' (and the degenerate images when there were any)."""
    if rate is None:
        return "—"
    if rate.n == 0:
        return "n/a (no images)"
    text = f"{pct(rate.crr)} {interval_text(rate)} {rate.hits}/{rate.n}"
    if rate.degenerate:
        text += f" ({rate.degenerate} degenerate)"
    return text


def status(case: CaseResult) -> str:
    """'error' (the case did not run to a CRR), 'passed' or 'failed'."""
    if case.error:
        return "error"
    return "passed" if case.passed else "failed"


def counts(record: AuditRecord) -> dict[str, int]:
    out = {"cases": len(record.cases), "passed": 0, "failed": 0, "error": 0}
    for case in record.cases:
        out[status(case)] += 1
    return out


def verdict(record: AuditRecord) -> str:
    """'PASSED', 'FAILED', 'INCOMPLETE' or 'EMPTY' — an audit that ran no case, or stopped
    before its last, must not read as a pass."""
    if not record.cases:
        return "EMPTY"
    if record.incomplete and all(c.passed for c in record.cases):
        return "INCOMPLETE"
    return "PASSED" if record.passed else "FAILED"


def tally(record: AuditRecord) -> str:
    """'5 passed, 1 failed, 1 error' (zero counts left out, except passed)."""
    c = counts(record)
    text = f"{c['passed']} passed"
    if c["failed"]:
        text += f", {c['failed']} failed"
    if c["error"]:
        text += f", {c['error']} error{'s' if c['error'] > 1 else ''}"
    return text


def verdict_line(record: AuditRecord) -> str:
    if verdict(record) == "EMPTY":
        return "RELEASE GATE NOT DECIDED: no case ran"
    if verdict(record) == "INCOMPLETE":
        why = "interrupted" if (record.incomplete or {}).get("interrupted") else "stopped early"
        missing = len((record.incomplete or {}).get("missing") or [])
        return (f"RELEASE GATE NOT DECIDED: audit {why} after {len(record.cases)} cases"
                f"{f' ({missing} not run)' if missing else ''}, {tally(record)}")
    return f"RELEASE GATE {verdict(record)}: {len(record.cases)} cases, {tally(record)}"


def gate_of(record: AuditRecord) -> str:
    """The release gate rule (point/upper): the erasure cases', else the configured one."""
    gates = {case.gate for case in record.cases if case.kind == "erasure"}
    return gates.pop() if len(gates) == 1 else str(record.config.get("gate", "point"))


def matrix(record: AuditRecord) -> tuple[list[str], list[str], dict[tuple[str, str],
                                                                        list[CaseResult]]]:
    """Rows (concepts), columns (scenarios) and the cases of each cell, in a stable order:
    concepts as they first appear, scenarios grouped by kind (erasure, baseline, retention)."""
    concepts: list[str] = []
    scenarios: dict[str, tuple[int, int]] = {}
    cells: dict[tuple[str, str], list[CaseResult]] = {}
    for i, case in enumerate(record.cases):
        if case.concept not in concepts:
            concepts.append(case.concept)
        rank = KIND_ORDER.get(case.kind, len(KIND_ORDER))
        scenarios[case.scenario] = min(scenarios.get(case.scenario, (rank, i)), (rank, i))
        cells.setdefault((case.concept, case.scenario), []).append(case)
    columns = sorted(scenarios, key=lambda s: scenarios[s])
    return concepts, columns, cells


def has_irece(record: AuditRecord) -> bool:
    return any(case.undefended is not None for case in record.cases)


def irece_settings(config: dict[str, Any]) -> dict[str, Any]:
    """The IRECE options (config keys `irece*`), named without the prefix."""
    return {(k.removeprefix("irece_") if k != "irece" else "enabled"): v
            for k, v in config.items() if k == "irece" or k.startswith("irece_")}


def short(digest: Any, n: int = 12) -> str:
    return str(digest)[:n] if digest else "?"


def models(record: AuditRecord) -> list[dict[str, Any]]:
    """One summary per model role in the provenance ('erased', 'standard'): path, format,
    components replaced, tensors replaced/added (summed over the per-component statistics the
    format loaders record), fingerprint."""
    out = []
    for role, info in record.provenance.items():
        if not isinstance(info, dict):
            continue
        replaced = _sum_key(info, "tensors_replaced")
        if replaced is None and isinstance(info.get("replaced_keys"), list | tuple):
            replaced = len(info["replaced_keys"])
        out.append({
            "role": role,
            "path": info.get("path", ""),
            "format": info.get("format", "?"),
            "components": list(info.get("components_replaced") or []),
            "replaced": replaced,
            "added": _sum_key(info, "tensors_added"),
            "fingerprint": info.get("fingerprint") or info.get("sha256"),
        })
    return out


def _sum_key(value: Any, key: str, depth: int = 0) -> int | None:
    """The sum of every integer `key` in nested dicts (None when there is none)."""
    if not isinstance(value, dict) or depth > 4:
        return None
    found = [value[key]] if isinstance(value.get(key), int) else []
    found += [n for k, v in value.items() if k != key
              if (n := _sum_key(v, key, depth + 1)) is not None]
    return sum(found) if found else None


def model_line(model: dict[str, Any]) -> str:
    parts = [str(model["format"])]
    if model["components"]:
        parts.append("replaces " + "+".join(model["components"]))
    if model["replaced"] is not None:
        parts.append(f"{model['replaced']} tensors replaced")
    if model["added"]:
        parts.append(f"{model['added']} tensors added")
    parts.append(f"fingerprint {short(model['fingerprint'])}")
    return f"{model['role']}: {model['path']} ({', '.join(parts)})"


def flatten(value: Any, prefix: str = "") -> list[tuple[str, str]]:
    """Nested dicts/lists as ('a.b.0', 'text') pairs; lists of plain values joined by ', '."""
    if isinstance(value, dict):
        if not value:
            return [(prefix, "{}")] if prefix else []
        out: list[tuple[str, str]] = []
        for key, item in value.items():
            out.extend(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(value, list | tuple):
        if all(not isinstance(v, dict | list | tuple) for v in value):
            return [(prefix, ", ".join(_plain(v) for v in value))]
        out = []
        for i, item in enumerate(value):
            out.extend(flatten(item, f"{prefix}.{i}"))
        return out
    return [(prefix, _plain(value))]


def _plain(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# --- writing ------------------------------------------------------------------------------------

def write_reports(record: AuditRecord, folder: Path) -> dict[str, Path]:
    """Write report.json, report.md and report.html into `folder`; each write is atomic."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"json": folder / "report.json", "markdown": folder / "report.md",
             "html": folder / "report.html"}
    write_text(paths["json"], to_json(record))
    write_text(paths["markdown"], to_markdown(record))
    write_text(paths["html"], to_html(record))
    return paths


def write_text(path: Path, text: str) -> None:
    """Atomic (temporary file in the same folder, then os.replace), and readable like any file
    the user writes: the temporary file is created 0600, reports are meant to be shared."""
    atomic_write_bytes(path, text.encode("utf-8"))
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def read_report(path: Path) -> AuditRecord:
    """The record back from a report.json (to re-render it, or to compare two audits)."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if data.get("schema") != SCHEMA or data.get("schema_version", 0) > SCHEMA_VERSION:
        raise ValueError(f"{path}: not a {SCHEMA} v{SCHEMA_VERSION} document")
    return AuditRecord.from_dict({k: v for k, v in data.items() if k not in _ENVELOPE})


# --- JSON ---------------------------------------------------------------------------------------

def to_json(record: AuditRecord) -> str:
    """Strict JSON (NaN/inf become null: jq and most parsers reject them)."""
    c = counts(record)
    body = {"schema": SCHEMA, "schema_version": SCHEMA_VERSION,
            "summary": {"verdict": verdict(record), **c}, **record.to_dict()}
    return json.dumps(_finite(body), indent=2, ensure_ascii=False, allow_nan=False,
                      default=_json_default) + "\n"


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _json_default(value: Any) -> Any:
    item = getattr(value, "item", None)  # numpy scalars
    if callable(item):
        return _finite(item())
    tolist = getattr(value, "tolist", None)  # numpy arrays
    if callable(tolist):
        return _finite(tolist())
    return str(value)


# --- Markdown -----------------------------------------------------------------------------------

_MD_SPECIAL = re.compile(r"([\\`*_\[\]|#])")


def md(text: Any) -> str:
    """Text safe inside a Markdown table cell: no markup, no HTML, one line."""
    escaped = html.escape(str(text), quote=False)
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
    mark = {"passed": "✓", "failed": "✗ **FAIL**", "error": "⚠ **ERROR**"}[status(case)]
    if case.error:
        return f"{mark} {md(case.case_id)}"
    return (f"{mark} {pct(case.rate.crr)} {interval_text(case.rate)} "
            f"{md(gate_text(case))} (n={case.rate.n})")


def to_markdown(record: AuditRecord) -> str:
    c = counts(record)
    gate = gate_of(record)
    out = [f"# Erasure audit: {verdict_line(record)}", ""]
    out += [f"- Run {code(record.run_id)}, started {md(record.started)}, "
            f"finished {md(record.finished or '—')}",
            f"- Gate rule: {md(gate_rule(gate))}",
            f"- Cases: {c['cases']} ({tally(record)})"]
    out += [f"- Model {md(model_line(m))}" for m in models(record)]
    out.append("")

    concepts, scenarios, cells = matrix(record)
    out += ["## CRR: concept x scenario", "",
            "Each cell: CRR of the audited model, its Wilson 95% interval, the threshold and n. "
            "Erasure cases pass at or below the threshold; baseline and retention cases give "
            "context (standard model, neighbouring concepts).", ""]
    rows = []
    for concept in concepts:
        row = [md(concept)]
        for scenario in scenarios:
            row.append("<br>".join(_md_cell(x) for x in cells.get((concept, scenario), []))
                       or "—")
        rows.append(row)
    out += _md_table(["concept"] + [md(s) for s in scenarios], rows)

    out += ["## Cases", "",
            "Standard model: the same scenario without erasure (also the detector's calibration: "
            "a low standard CRR means the detector cannot see the concept, not that it was "
            "erased). Base rate: the concept under neutral prompts, the floor no erasure beats.",
            ""]
    header = ["case", "kind", "CRR [95% CI] hits/n", "gate", "standard model", "base rate",
              "result"]
    rows = [[code(x.case_id), md(x.kind), rate_text(x.rate), md(gate_text(x)),
             rate_text(x.standard), rate_text(x.base_rate), status(x)] for x in record.cases]
    out += _md_table(header, rows)

    if has_irece(record):
        out += ["## IRECE: defended vs undefended", "",
                "Settings: " + ", ".join(f"{md(k)}={md(_plain(v))}"
                                         for k, v in irece_settings(record.config).items()), ""]
        rows = []
        for x in record.cases:
            if x.undefended is None:
                continue
            rows.append([code(x.case_id), rate_text(x.undefended), rate_text(x.rate),
                         _change(x.undefended, x.rate), md(gate_text(x)), status(x)])
        out += _md_table(["case", "undefended", "with IRECE", "change", "gate", "result"], rows)

    failing = [x for x in record.cases if status(x) != "passed"]
    if failing:
        out += ["## Failing cases", ""]
        for x in failing:
            out += [f"### {code(x.case_id)} ({status(x)})", "",
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


def _change(before: Rate, after: Rate) -> str:
    """'-37.5 pp (-40% relative)': how much the defense lowered CRR."""
    if not before.n or not after.n:
        return "n/a"
    delta = (after.crr - before.crr) * 100
    text = f"{delta:+.1f} pp"
    if before.crr > 0:
        text += f" ({(after.crr - before.crr) / before.crr:+.0%} relative)"
    return text


# --- HTML ---------------------------------------------------------------------------------------

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
td.context{background:#f6f6f6;color:#555}
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
    return html.escape(str(text), quote=True)


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
            "threshold; red where the gate fails. <i>std</i>: the standard (un-erased) model in "
            "the same scenario (a low value means the detector cannot see the concept); "
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
            klass = "failed" if any(status(x) != "passed" for x in here) else _cell_class(here[0])
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
                       f"<td>{esc(_change(x.undefended, x.rate))}</td>"
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
    return "".join(lines)


def _html_case(case: CaseResult, i: int) -> str:
    st = status(case)
    out = [f'<section class="case" id="{_anchor(i)}">',
           f'<h3><code>{esc(case.case_id)}</code> <span class="badge {st}">{esc(st)}</span></h3>',
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
            return f'<span class="v">{esc(", ".join(_plain(v) for v in value))}</span>'
        return "<ol>" + "".join(f"<li>{_html_value(v, depth + 1)}</li>" for v in value) + "</ol>"
    return f'<span class="v">{esc(_plain(value))}</span>'
