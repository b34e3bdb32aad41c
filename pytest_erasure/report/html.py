"""report.html: the audit to look at and to sign, one self-contained page.

Who reads it: the reviewer who signs the release, and the engineer who must find out why it
failed. So the page opens with what a signature is about, readable on one screen: the verdict,
the models (paths, formats, sha256, what differs from the standard model) and the cases that
need attention, each with its reason. Then the protocol (every setting and where its value came
from, seeds, versions, each detector once with its weights' hash), the plot and the concept x
scenario matrix, then every case, failing and inconclusive first: its reason, its interval, its
threat model as recorded, and its evidence, erased beside standard, the prompt under each
image. Printed, each case is one block (`break-inside: avoid`).

Self-contained: inline CSS, images as data: URIs, the plot as inline SVG, no scripts, fonts or
links outside the page, so it can be attached to a ticket or opened air-gapped; an artifact
(a learned embedding) is embedded when it is small and present, never linked into the cache.
Every piece of text is escaped (`esc`), prompts found by attacks included, and image data is
embedded only if it is plain base64. Inconclusive cases have their own colour (amber)
everywhere (a pass that holds reported-only inconclusive cases is amber, not green). Named for
its format like its siblings; `from html import escape` still finds the standard library's.

Longer than most modules on purpose: it is one page, written section by section in the order a
reader meets them, with the stylesheet those sections share; split, one layout would be
scattered over files that each make no sense alone.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from html import escape
from pathlib import Path
from typing import Any

from pytest_erasure.records import AuditRecord, CaseResult, Rate
from pytest_erasure.report.text import (
    by_attention,
    change,
    counts,
    defense_name,
    defense_settings,
    eraser_removal,
    flatten,
    gate_of,
    gate_rule,
    gate_text,
    has_defense,
    interval_text,
    matrix,
    models,
    neighbour_of,
    pct,
    plain,
    rate_text,
    reason_of,
    short,
    status,
    tally,
    tensor_changes,
    threat_model,
    verdict,
    verdict_label,
    verdict_line,
)

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:1em auto;
max-width:1200px;padding:0 1em;color:#222;line-height:1.35}
h1{margin:.2em 0;font-size:1.5em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;
margin-top:1.6em;font-size:1.25em}h3{margin:.4em 0}
.verdict{padding:.5em 1em;border-radius:6px;font-weight:700;font-size:1.25em;color:#fff}
.verdict.passed{background:#2ca02c}.verdict.failed,.verdict.empty{background:#d62728}
.verdict.incomplete,.verdict.partial{background:#6b6b6b}
table{border-collapse:collapse;margin:.4em 0}
th,td{border:1px solid #ccc;padding:.25em .5em;vertical-align:top;text-align:left}
th{background:#f3f3f3}
td.passed{background:#e3f4e3}td.failed,td.error{background:#fbdcdc}
td.context{background:#f6f6f6;color:#555}td.inconclusive{background:#fff1c6}
td.inconclusive .crr{color:#8a5a00}.verdict.inconclusive{background:#b7791f}
.badge.inconclusive{background:#b7791f}.reason{font-size:.9em;font-style:italic}
td.failed .crr,td.error .crr{color:#b00000;font-weight:700}
.crr{font-size:1.1em;font-weight:600}.small{font-size:.85em;color:#555}
a{color:inherit}code,pre{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.9em}
pre{background:#f6f6f6;padding:.6em;white-space:pre-wrap;word-break:break-word}
.badge{display:inline-block;padding:0 .5em;border-radius:4px;color:#fff;font-size:.8em}
.badge.passed{background:#2ca02c}.badge.failed,.badge.error{background:#d62728}
section.case{border:1px solid #ddd;border-left:6px solid #2ca02c;border-radius:6px;
padding:.2em 1em .8em;margin:1em 0;break-inside:avoid;page-break-inside:avoid}
section.case.failed,section.case.error{border-left-color:#d62728}
section.case.inconclusive{border-left-color:#b7791f}
.glance h2{margin-top:.8em}.glance table{width:100%;font-size:.85em}
.glance td code{word-break:break-all}
ul.attention{margin:.3em 0;padding-left:1.2em}ul.attention li{margin:.15em 0}
.evidence{display:grid;grid-template-columns:repeat(auto-fit,minmax(300px,1fr));gap:.8em}
.tiles{display:grid;grid-template-columns:repeat(auto-fill,minmax(92px,1fr));gap:4px}
.tile{margin:0;font-size:.72em;line-height:1.2;word-break:break-word}
.tile img{width:100%;height:auto;display:block;image-rendering:pixelated}
.tile .found{color:#d62728}.tile .notfound{color:#2ca02c}
figure{margin:.3em 0}figure img{max-width:100%;image-rendering:pixelated}
figcaption{font-weight:600;font-size:.9em;margin:.2em 0}
.legend span{display:inline-block;width:1em;height:1em;vertical-align:middle;margin:0 .3em}
.found{color:#d62728}.notfound{color:#2ca02c}
table.kv td:first-child{font-family:ui-monospace,Menlo,Consolas,monospace;white-space:nowrap}
td .v{white-space:pre-wrap;overflow-wrap:anywhere}td code{overflow-wrap:anywhere}
.settings{columns:2 420px;column-gap:1.5em}.settings table{width:100%;font-size:.85em}
.settings td:nth-child(2) .v{word-break:break-all}
.plot svg{max-width:100%;height:auto}
.facts{columns:2 320px;column-gap:1.5em;font-size:.85em}
.facts div{break-inside:avoid;overflow-wrap:anywhere;margin:.1em 0}
@media print{body{max-width:none;margin:0;font-size:9pt}h2{break-after:avoid}
section.case{break-inside:avoid;page-break-inside:avoid}
.tiles{grid-template-columns:repeat(auto-fill,minmax(52px,1fr))}.tile{font-size:5.5pt}
.evidence{grid-template-columns:1fr 1fr}}
"""

_B64 = re.compile(r"^[A-Za-z0-9+/]*={0,2}$")
EMBED_LIMIT = 256 * 1024
"""Artifacts up to this size are embedded in the page (a learned embedding is a few KiB)."""


def esc(text: Any) -> str:
    return escape(str(text), quote=True)


def _anchor(index: int) -> str:
    """Anchors by position: a case id may contain anything, an anchor must not."""
    return f"case-{index}"


def _cell_class(case: CaseResult) -> str:
    if status(case) == "passed" and case.kind != "erasure":
        return "context"
    return status(case)


def banner_class(record: AuditRecord) -> str:
    v = verdict(record).lower()
    return "inconclusive" if v == "passed" and counts(record)["inconclusive"] else v


def to_html(record: AuditRecord) -> str:
    """The page: everything on it comes from the record, so a report re-rendered from its
    report.json is the page the run wrote."""
    index = {id(x): i for i, x in enumerate(record.cases)}
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           f"<title>Erasure audit {esc(record.run_id)}: {esc(verdict(record))}</title>",
           f"<style>{_CSS}</style></head><body>",
           "<h1>Erasure audit</h1>",
           f'<div class="verdict {banner_class(record)}">{esc(verdict_line(record))}</div>',
           f'<p class="small">Run <code>{esc(record.run_id)}</code>, started '
           f"{esc(record.started)}, finished {esc(record.finished or '—')}. Gate rule: "
           f"{esc(gate_rule(gate_of(record)))}. {esc(tally(record))}.</p>"]
    out += _selection(record)
    out += ['<div class="glance">', _models(record), _attention(record, index), "</div>"]
    out += _protocol(record)
    if record.comparison is not None:
        out += _comparison(record)
    out += _plot(record)
    out += _matrix(record, index)
    if has_defense(record):
        out += _defense(record, index)
    out += ["<h2>Cases, failing and inconclusive first</h2>",
            '<p class="legend small">Evidence: <span style="background:#d62728"></span>red '
            'frame = the detector found the concept; <span style="background:#2ca02c"></span>'
            'green = it did not; <span style="background:#969696"></span>grey = no answer. '
            "The prompt (and seed) is under each image.</p>"]
    out += [_html_case(x, index[id(x)]) for x in by_attention(record.cases)]
    out += ["<h2>Model provenance (as recorded)</h2>", _facts(record.provenance),
            "</body></html>", ""]
    return "\n".join(out)


# -- the first screen -----------------------------------------------------------------------------

def _selection(record: AuditRecord) -> list[str]:
    """What the run left out, when it left anything out: a partial or incomplete audit must say
    so before anything else is read."""
    out = []
    incomplete = record.incomplete or {}
    if incomplete:
        missing = list(incomplete.get("missing") or [])
        why = "was interrupted" if incomplete.get("interrupted") else "stopped early"
        out.append(f'<p class="reason">Incomplete: the run {why}; {len(missing)} selected '
                   f"case(s) have no result: {esc(', '.join(missing) or '—')}.</p>")
    selection = getattr(record, "selection", None) or {}
    if selection:
        parts = []
        expressions = selection.get("expressions") or {}
        if expressions:
            parts.append("selected by " + ", ".join(f"{k} {v}" for k, v in expressions.items()))
        for key, words in (("deselected", "deselected"), ("not_run", "not run")):
            ids = list(selection.get(key) or [])
            if ids:
                parts.append(f"{len(ids)} {words}: " + ", ".join(map(str, ids)))
        label = "Partial audit" if selection.get("partial") else "Selection"
        out.append(f'<p class="reason">{label}: {esc("; ".join(parts) or "everything")}.</p>')
    return out


def _models(record: AuditRecord) -> str:
    rows = ["<div><h2>Models</h2><table><tr><th>role</th><th>path</th><th>format</th>"
            "<th>sha256 of the weight files</th><th>differs from the standard model</th></tr>"]
    for m in models(record):
        info = record.provenance.get(m["role"]) or {}
        files = info.get("files") if isinstance(info.get("files"), dict) else {}
        weights = {k: v for k, v in files.items() if str(k).endswith(WEIGHT_SUFFIXES)}
        others = len(files) - len(weights)
        digests = "<br>".join(f"<code>{esc(short(digest, 16))}</code> "
                              f"{esc(_relative(name, m['path']))}"
                              for name, digest in (weights or files).items()) or "—"
        if weights and others:
            digests += (f'<div class="small">and {others} configuration file(s): sha256 in '
                        "the provenance below</div>")
        rows.append(f"<tr><th>{esc(m['role'])}</th><td><code>{esc(m['path'])}</code></td>"
                    f"<td>{esc(m['format'])}</td><td>{digests}<div class=\"small\">fingerprint "
                    f"<code>{esc(short(m['fingerprint'], 16))}</code></div></td>"
                    f"<td>{esc(_differs(m))}</td></tr>")
    rows.append("</table>")
    if (removal := eraser_removal(record)) is not None:
        rows.append(f'<p class="small">Threat model, {esc(removal)}</p>')
    rows.append("</div>")
    return "".join(rows)


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth", ".onnx")
"""Files the first screen lists by digest; configuration files are in the provenance."""


def _relative(name: str, root: str) -> str:
    """A file's name inside its model's folder, as a reader compares it with the folder."""
    prefix = str(root).rstrip("/") + "/"
    return name[len(prefix):] if root and name.startswith(prefix) else name


def _differs(model: dict[str, Any]) -> str:
    if model["role"] == "standard":
        return "— (the reference)"
    changed = model.get("changed") or {}
    parts = [f"{c} ({changed[c]})" if c in changed else c for c in model["components"]]
    parts += tensor_changes(model)
    return "; ".join(parts) or "nothing recorded"


def _attention(record: AuditRecord, index: dict[int, int]) -> str:
    todo = [x for x in by_attention(record.cases) if status(x) != "passed"]
    out = ["<div><h2>Cases that need attention</h2>"]
    if not todo:
        out.append(f"<p>None: {esc(tally(record))}.</p></div>")
        return "".join(out)
    out.append('<ul class="attention">')
    for x in todo:
        out.append(f'<li><span class="badge {status(x)}">{esc(verdict_label(x))}</span> '
                   f'<a href="#{_anchor(index[id(x)])}"><code>{esc(x.case_id)}</code></a> '
                   f"{esc(rate_text(x.rate))}<div class=\"reason\">{esc(reason_of(x))}</div></li>")
    out.append(f'</ul><p class="small">{esc(tally(record))}.</p></div>')
    return "".join(out)


# -- protocol ---------------------------------------------------------------------------------------

def _protocol(record: AuditRecord) -> list[str]:
    config = record.config
    out = ["<h2>Protocol</h2>",
           f"<p>Seed <code>{esc(plain(config.get('seed', '—')))}</code> (every sample's seed "
           f"derives from it), {esc(plain(config.get('samples', '—')))} images per case, "
           f"{esc(plain(config.get('steps', '—')))} steps, guidance "
           f"{esc(plain(config.get('guidance', '—')))}, device "
           f"{esc(plain(config.get('device', '—')))}/{esc(plain(config.get('dtype', '—')))}. "
           "Versions: " + esc(", ".join(f"{k} {v}" for k, v in record.versions.items()) or "—")
           + ".</p>"]
    out += _detectors(record)
    rows = "".join(f"<tr><td>{esc(key)}</td><td>{_html_value(value)}</td>"
                   f'<td class="small">{esc(source)}</td></tr>'
                   for key, value, source in settings(config, config.get("sources") or {}))
    out.append('<h3>Every setting</h3><p class="small">from: the command line, the ini file, '
               "the concepts file, the budget profile or the default, as the run resolved it "
               "(config.sources); an attack budget's source as its budget profile records it; — "
               "where the report was written outside a pytest run, which alone knows.</p>"
               '<div class="settings"><table><tr><th>setting</th>'
               f"<th>value</th><th>from</th></tr>{rows}</table></div>")
    return out


def settings(config: dict[str, Any], sources: dict[str, str]) -> list[tuple[str, Any, str]]:
    """(setting, value, where the value came from) for every recorded setting: an option's
    command line, ini file or default (`sources`); an attack budget's source as the budget
    profile records it; 'derived' for what the run computed from them."""
    budget = (config.get("budget_profile") or {}).get("sources") or {}
    out: list[tuple[str, Any, str]] = []
    for key, value in config.items():
        if key in ("scenario_options", "budget_profile", "sources"):
            continue
        if key == "defense":
            source = "enabled by its flag or ini twin" if value else "no defense enabled"
        elif not sources:
            source = "—"
        else:
            source = sources.get(key, "derived")
        out.append((key, value, source))
    profile = (config.get("budget_profile") or {}).get("name")
    if profile:
        out.append(("budget profile", profile, sources.get("budget", "—")))
    for key, value in (config.get("scenario_options") or {}).items():
        out.append((key, value, str(budget.get(key, "—"))))
    return out


def _detectors(record: AuditRecord) -> list[str]:
    """Each distinct detector once, with the concepts it judges (the record keeps one entry per
    concept)."""
    groups: dict[str, tuple[dict[str, Any], list[str]]] = {}
    for concept, description in record.detectors.items():
        key = json.dumps(description, sort_keys=True, default=str)
        groups.setdefault(key, (description, []))[1].append(str(concept))
    if not groups:
        return ["<p>Detectors: none recorded.</p>"]
    out = ["<h3>Detectors</h3>"]
    for description, concepts in groups.values():
        if not isinstance(description, dict):
            description = {"description": description}
        name = description.get("name", "detector")
        head = {k: description[k] for k in ("rule", "threshold", "labels", "weights", "sha256")
                if k in description}
        rest = {k: v for k, v in description.items() if k not in head and k != "name"}
        out.append(f"<p><b>{esc(name)}</b> judges {esc(', '.join(concepts))}; weights sha256 "
                   f"<code>{esc(description.get('sha256', '—'))}</code>.</p>"
                   + _html_value(head))
        if rest:
            out.append(_facts(rest))
    return out


# -- plot and matrix ------------------------------------------------------------------------------

def _plot(record: AuditRecord) -> list[str]:
    from pytest_erasure.report.plot import crr_svg

    svg = crr_svg(record)
    if not svg:
        return []
    return ["<h2>CRR per scenario</h2>",
            '<p class="small">Each erasure case: CRR of the erased model (filled) and of the '
            "standard model under the same attack (hollow), with their 95% intervals; the "
            "dashed line is the case's threshold. Also written beside this page as "
            "crr.svg.</p>", f'<div class="plot">{svg}</div>']


def _matrix(record: AuditRecord, index: dict[int, int]) -> list[str]:
    concepts, scenarios, cells = matrix(record)
    out = ["<h2>CRR: concept x scenario</h2>",
           '<p class="small">CRR of the audited model with its 95% interval and threshold; red '
           "where the gate fails, amber where the case is inconclusive (its reason in the cell). "
           "<i>std</i>: the standard (un-erased) model in the same scenario (a low value means "
           "the attack or the detector cannot reach the concept); <i>base</i>: the concept "
           f"under neutral prompts; <i>undefended</i>: without {esc(defense_name(record))}. "
           "Grey cells are context (baseline, retention: each names its neighbour).</p>",
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
    return out


def _html_cell(case: CaseResult, i: int) -> str:
    link = f'<a href="#{_anchor(i)}">'
    neighbour = neighbour_of(case)
    name = f"{esc(neighbour)}: " if neighbour else ""
    if case.error:
        return (f'{name}{link}<span class="crr">ERROR</span></a>'
                f'<div class="small">{esc(case.case_id)}</div>')
    lines = [f'{name}{link}<span class="crr">{esc(pct(case.rate.crr))}</span></a> '
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


def _defense(record: AuditRecord, index: dict[int, int]) -> list[str]:
    name = esc(defense_name(record))
    out = [f"<h2>{name}: defended vs undefended</h2>",
           _html_value(defense_settings(record.config)),
           f"<table><tr><th>case</th><th>undefended</th><th>with {name}</th><th>change</th>"
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
    return out


# -- a case ---------------------------------------------------------------------------------------

def _html_case(case: CaseResult, i: int) -> str:
    st = status(case)
    neighbour = neighbour_of(case)
    out = [f'<section class="case {st}" id="{_anchor(i)}">',
           f'<h3><code>{esc(case.case_id)}</code> <span class="badge {st}">{esc(st)}</span></h3>',
           f'<p class="reason">{esc(verdict_label(case))}: {esc(reason_of(case))}</p>',
           f'<p class="small">concept {esc(case.concept)}'
           + (f" · neighbour {esc(neighbour)}" if neighbour else "")
           + f" · scenario {esc(case.scenario)} · modality {esc(case.modality)} · threat model "
           f"{esc(threat_model(case))} · kind {esc(case.kind)} · gate {esc(case.gate)} "
           f"{esc(gate_text(case))} · {case.seconds:.1f} s</p>"]
    rows: list[tuple[str, Rate | None]] = [
        ("audited model" + (" (defended)" if case.undefended is not None else ""), case.rate),
        ("standard model", case.standard), ("erased model without the defense", case.undefended),
        ("base rate (neutral prompts)", case.base_rate)]
    out.append("<table><tr><th></th><th>CRR</th><th>95% interval</th><th>hits/n</th>"
               "<th>degenerate</th></tr>")
    for name, rate in rows:
        if rate is None:
            continue
        out.append(f"<tr><th>{esc(name)}</th><td>{esc(pct(rate.crr))}</td>"
                   f"<td>{esc(interval_text(rate))}"
                   + (f' <span class="small">({esc(rate.method)})</span>' if rate.method else "")
                   + f"</td><td>{rate.hits}/{rate.n}</td><td>{rate.degenerate}</td></tr>")
    out.append("</table>")
    if case.error:
        out.append(f"<p><b>Error</b></p><pre>{esc(case.error)}</pre>")
    elif case.message:
        out.append(f"<pre>{esc(case.message)}</pre>")
    if case.evidence:
        out.append('<div class="evidence">'
                   + "".join(_html_evidence(grid) for grid in case.evidence) + "</div>")
    if case.facts:
        out += ["<h4>Facts</h4>", _facts(case.facts)]
    if case.artifacts:
        out += ["<h4>Artifacts</h4>", _artifacts(case.artifacts)]
    out.append("</section>")
    return "\n".join(out)


def _html_evidence(grid: dict[str, Any]) -> str:
    from pytest_erasure.report.images import split_grid

    title = esc(grid.get("title", "evidence"))
    data = str(grid.get("png_base64", ""))
    labels = [str(x) for x in grid.get("labels") or []]
    present = list(grid.get("present") or [])
    n = max(len(labels), len(present))
    hits = sum(1 for p in present if p)
    caption = f"<figcaption>{title}: {hits} of {len(present)} found</figcaption>"
    valid = bool(data) and bool(_B64.match(data))
    tiles = split_grid(base64.b64decode(data), n) if valid and n else []
    if tiles:
        items = []
        for k, tile in enumerate(tiles):
            found = present[k] if k < len(present) else None
            mark = ('<span class="found">■ found</span>' if found
                    else '<span class="notfound">■ not found</span>' if found is False
                    else "■ no answer")
            label = labels[k] if k < len(labels) else ""
            items.append(f'<figure class="tile"><img alt="{title} {k + 1}" '
                         f'src="data:image/png;base64,{base64.b64encode(tile).decode()}">'
                         f"{k + 1}. {mark} {esc(label)}</figure>")
        return f'<figure>{caption}<div class="tiles">{"".join(items)}</div></figure>'
    if valid:
        image = f'<img alt="{title}" src="data:image/png;base64,{data}">'
    else:
        image = '<p class="small">(no valid image data)</p>'
    listing = "".join(f"<li>{esc(label)}</li>" for label in labels)
    return f"<figure>{caption}{image}{f'<ol>{listing}</ol>' if listing else ''}</figure>"


def _facts(facts: dict[str, Any]) -> str:
    """Nested values as one 'key value' line each, in columns: a case's facts (prompts,
    calibration counts, reconstruction quality, budgets), a detector's training, the models'
    provenance are many short values, which nested tables would stretch over pages."""
    lines = "".join(f"<div><code>{esc(key)}</code> {esc(value)}</div>"
                    for key, value in flatten(facts))
    return f'<div class="facts">{lines}</div>'


def _artifacts(artifacts: dict[str, str]) -> str:
    """Each artifact embedded as a download (data: URI) when it is present and small, with its
    sha256; else its name and why it is not here. Never a link into the cache."""
    rows = []
    for name, location in artifacts.items():
        path = Path(str(location))
        try:
            data = path.read_bytes() if path.is_file() and \
                path.stat().st_size <= EMBED_LIMIT else None
        except OSError:
            data = None
        if data is None:
            rows.append(f"<tr><td>{esc(name)}</td><td><code>{esc(path.name)}</code> "
                        '<span class="small">(not embedded: not present when this page was '
                        "written, or larger than 256 KiB; report.json holds its path)</span>"
                        "</td></tr>")
            continue
        digest = hashlib.sha256(data).hexdigest()
        rows.append(f'<tr><td>{esc(name)}</td><td><a download="{esc(path.name)}" '
                    f'href="data:application/octet-stream;base64,{base64.b64encode(data).decode()}">'
                    f"{esc(path.name)}</a> ({len(data)} bytes, sha256 <code>{digest}</code>)"
                    "</td></tr>")
    return f'<table class="kv">{"".join(rows)}</table>'


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


def _comparison(record: AuditRecord) -> list[str]:
    """The previous audit against this one: protocol differences first, then every case."""
    from pytest_erasure.report.compare import change_text, difference_lines, flip_text, model_line, summary

    comparison = record.comparison
    assert comparison is not None
    out = ['<h2 id="comparison">Compared with the previous audit</h2>',
           f"<p>Previous report <code>{esc(comparison.previous_file)}</code>: "
           f"{esc(summary(comparison))}; {esc(model_line(comparison))}.</p>"]
    lines = difference_lines(comparison)
    out.append("<p>Protocol differences (they qualify every number below):</p>")
    out.append("<ul>" + "".join(f'<li class="reason">{esc(line)}</li>' for line in lines)
               + "</ul>" if lines else "<p>None.</p>")
    rows = ["<table><tr><th>case</th><th>kind</th><th>previous CRR</th><th>previous verdict</th>"
            "<th>current CRR</th><th>current verdict</th><th>change [95% CI]</th>"
            "<th>status</th></tr>"]
    for case in comparison.cases:
        words = case.status + ("; failed by the regression gate" if case.regression_gate
                                 else "") + (f"; {flip_text(case)}" if case.flipped else "")
        cell = ("failed" if case.regression_gate or case.status == "regressed"
                else "passed" if case.status == "improved" else "context")
        rows.append(
            f"<tr><td><code>{esc(case.case_id)}</code></td><td>{esc(case.kind)}</td>"
            f"<td>{esc(rate_text(case.previous) if case.previous else '—')}</td>"
            f"<td>{esc(case.previous_verdict.upper() or '—')}</td>"
            f"<td>{esc(rate_text(case.current) if case.current else '—')}</td>"
            f"<td>{esc(case.current_verdict.upper() or '—')}</td>"
            f"<td>{esc(change_text(case))}</td>"
            f'<td class="{cell}">{esc(words)}</td></tr>')
    rows.append("</table>")
    return out + ["".join(rows)]
