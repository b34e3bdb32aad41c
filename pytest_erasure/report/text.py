"""How a case and an audit read as text: percentages, the gate rule, verdicts, the concept x
scenario matrix, model summaries.

Every report (Markdown, HTML, JUnit, terminal) says the same things about a case, so the wording
lives here once: a reader who compares the terminal summary with the HTML page, or a CI log with
the Markdown, must find the same numbers written the same way. Only strings, no markup: each
report escapes for its own format.
"""

from __future__ import annotations

import math
from typing import Any

from pytest_erasure.records import VERDICTS, AuditRecord, CaseResult, Rate

KIND_ORDER = {"erasure": 0, "baseline": 1, "retention": 2}
"""Matrix columns: what the gate is about first, context after."""

REPORTED_ONLY = "reported, not gated"
"""How every report names an inconclusive case the run was told not to gate on."""


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
    if gate == "exact":
        return ("exact: the exact one-sided 95% upper bound of CRR ≤ threshold + 5 points "
                "(a model 5 points over passes at most 5% of the time)")
    if gate == "upper":
        return "upper: the Wilson 95% upper bound of CRR ≤ threshold (strict)"
    if gate == "at-least":
        return "at-least: CRR ≥ threshold"
    if gate == "point":
        return "point: CRR ≤ threshold (no stated error)"
    return gate


def interval_text(rate: Rate) -> str:
    low, high = rate.interval
    return f"[{low * 100:.1f}–{high * 100:.1f}%]"


def rate_text(rate: Rate | None) -> str:
    """'12.5% [5.0–28.1%] 4/32' (and the degenerate images when there were any)."""
    if rate is None:
        return "—"
    if rate.n == 0:
        return "n/a (no images)"
    text = f"{pct(rate.crr)} {interval_text(rate)} {rate.hits}/{rate.n}"
    if rate.degenerate:
        text += f" ({rate.degenerate} degenerate)"
    return text


def verdict_of(case: CaseResult) -> str:
    """The case's verdict, one of VERDICTS: the recorded one, derived for records written before
    verdicts existed (`verdict == ""`): an error fails, else `passed` decides.

    A recorded 'pass' the rest of the record contradicts (an error, or `passed` false) reads as
    'fail': a report must never show a pass the gate did not grant. 'inconclusive' is kept as
    recorded whether or not it was gated: that is `passed`'s business, told by `gated`.
    """
    recorded = case.verdict if case.verdict in VERDICTS else ""
    if case.error:
        return recorded if recorded == "inconclusive" else "fail"
    if recorded == "pass" and not case.passed:
        return "fail"
    return recorded or ("pass" if case.passed else "fail")


def reason_of(case: CaseResult) -> str:
    """Why the verdict, never empty: the recorded reason, else (older records) the error's first
    line, the failure message's, or the gate's comparison."""
    if case.reason.strip():
        return case.reason.strip() + control_note(case)
    for text in (case.error, case.message):
        lines = (text or "").strip().splitlines()
        if lines:
            return lines[0].removeprefix(f"{case.case_id}: ")
    if case.rate.n == 0:
        return "no images to judge"
    word = "passes" if verdict_of(case) == "pass" else "fails"
    return f"CRR {pct(case.rate.crr)} {word} {gate_text(case)} ({case.gate} gate)"


def control_note(case: CaseResult) -> str:
    """'; ' and the statement a search case's control carries (adversarial-white's random-prefix
    control, `facts.search_control.statement`): reported beside the reason, never gated."""
    control = case.facts.get("search_control") if isinstance(case.facts, dict) else None
    statement = control.get("statement") if isinstance(control, dict) else None
    return f"; {statement}" if statement and statement not in case.reason else ""


def gated(case: CaseResult) -> bool:
    """Whether an inconclusive case fails the gate (`--erasure-inconclusive=fail`, the default);
    false when the run reports it only (`passed` then stays true)."""
    return verdict_of(case) == "inconclusive" and not case.passed


def status(case: CaseResult) -> str:
    """'error' (the case did not run to a CRR), 'passed', 'failed' or 'inconclusive' — the word a
    report prints, and the key `counts` counts it under. An inconclusive case is never 'passed',
    gated or not."""
    if case.error:
        return "error"
    v = verdict_of(case)
    return {"pass": "passed", "fail": "failed", "inconclusive": "inconclusive"}[v]


def verdict_label(case: CaseResult) -> str:
    """'PASS', 'FAIL', 'ERROR', 'INCONCLUSIVE' or 'INCONCLUSIVE (reported, not gated)'."""
    st = status(case)
    if st == "error":
        return "ERROR"
    if st == "inconclusive" and not gated(case):
        return f"INCONCLUSIVE ({REPORTED_ONLY})"
    return verdict_of(case).upper()


def counts(record: AuditRecord) -> dict[str, int]:
    out = {"cases": len(record.cases), "passed": 0, "failed": 0, "inconclusive": 0, "error": 0}
    for case in record.cases:
        out[status(case)] += 1
    return out


def passes_gate(record: AuditRecord) -> bool:
    """Every case passed the gate and none contradicts it: `AuditRecord.passed`, plus no case
    that reads as failed or errored in a report (a record whose `passed` disagrees with its
    verdict must not print PASSED)."""
    return record.passed and _cases_pass(record)


def _cases_pass(record: AuditRecord) -> bool:
    return all(c.passed and status(c) in ("passed", "inconclusive") for c in record.cases)


AUDIT_VERDICTS = ("PASSED", "FAILED", "INCONCLUSIVE", "INCOMPLETE", "PARTIAL", "EMPTY")


def verdict(record: AuditRecord) -> str:
    """The audit's verdict, one of AUDIT_VERDICTS, the first that holds of:

    - 'FAILED': a case failed or errored (evidence against the model, whatever else is missing);
    - 'INCOMPLETE': a selected case has no result (interrupted, -x, a crashed xdist worker);
    - 'INCONCLUSIVE': a gated case could not decide;
    - 'EMPTY': no erasure case ran (baseline and retention alone say nothing of the erasure);
    - 'PARTIAL': a declared case of an erased concept was not selected (-k, -m, --lf,
      --scenarios, node ids): the cases that ran passed, but no release verdict is given;
    - 'PASSED': every declared case ran and passed the gate (reported-only inconclusive cases
      included: `verdict_line` names them).
    """
    if any(status(c) in ("failed", "error") for c in record.cases):
        return "FAILED"
    if record.incomplete:
        return "INCOMPLETE"
    if any(gated(c) for c in record.cases):
        return "INCONCLUSIVE"
    if not any(c.kind == "erasure" for c in record.cases):
        return "EMPTY"
    if (record.selection or {}).get("partial"):
        return "PARTIAL"
    return "PASSED" if _cases_pass(record) else "FAILED"


def tally(record: AuditRecord) -> str:
    """'5 passed, 1 failed, 2 inconclusive, 1 error' (zero counts left out, except passed)."""
    c = counts(record)
    text = f"{c['passed']} passed"
    if c["failed"]:
        text += f", {c['failed']} failed"
    if c["inconclusive"]:
        text += f", {c['inconclusive']} inconclusive"
    if c["error"]:
        text += f", {c['error']} error{'s' if c['error'] > 1 else ''}"
    return text


def verdict_line(record: AuditRecord) -> str:
    """'RELEASE GATE FAILED: 15 cases, 8 passed, 5 failed, 2 inconclusive'; what was missing or
    left out is said in the same line, so no reader takes a narrowed or broken run for a pass:
    a pass that holds reported-only inconclusive cases says so before anything else ('RELEASE
    GATE PASSED with 2 inconclusive (reported, not gated): ...'), an incomplete audit names its
    missing cases, a partial one how many declared cases it left out."""
    v = verdict(record)
    incomplete = record.incomplete or {}
    missing = list(incomplete.get("missing") or [])
    not_run = list((record.selection or {}).get("not_run") or [])
    if not record.cases:
        return "RELEASE GATE NOT DECIDED: no case ran" + (
            f" ({len(missing)} selected cases have no result)" if missing else "")
    if v == "EMPTY":
        return (f"RELEASE GATE NOT DECIDED: no erasure case ran ({len(record.cases)} cases, "
                f"{tally(record)})")
    notes = []
    if missing:
        why = "interrupted" if incomplete.get("interrupted") else "no result"
        notes.append(f"INCOMPLETE: {len(missing)} selected case{'s' if len(missing) > 1 else ''}"
                     f" {why} ({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''})")
    elif incomplete.get("interrupted"):
        notes.append("INCOMPLETE: interrupted")
    if not_run:
        notes.append(f"PARTIAL: {len(not_run)} declared case{'s' if len(not_run) > 1 else ''} "
                     "not selected")
    head = {"INCOMPLETE": "NOT DECIDED",
            "PARTIAL": "PARTIAL (no release verdict)",
            "INCONCLUSIVE": "NOT PASSED (inconclusive)"}.get(v, v)
    inconclusive = counts(record)["inconclusive"]
    if v in ("PASSED", "PARTIAL") and inconclusive:
        head += f" with {inconclusive} inconclusive ({REPORTED_ONLY})"
    line = f"RELEASE GATE {head}: {len(record.cases)} cases, {tally(record)}"
    return line + "".join(f"; {n}" for n in notes)


def gate_of(record: AuditRecord) -> str:
    """The release gate rule (exact/upper/point): the erasure cases', else the configured one."""
    gates = {case.gate for case in record.cases if case.kind == "erasure"}
    return gates.pop() if len(gates) == 1 else str(record.config.get("gate", "exact"))


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


def has_defense(record: AuditRecord) -> bool:
    return any(case.undefended is not None for case in record.cases)


def defense_name(record: AuditRecord) -> str:
    """The defense the run enabled, as its reports name it ('irece'), or 'the defense'."""
    return str(defense_settings(record.config).get("name") or "the defense")


def defense_settings(config: dict[str, Any]) -> dict[str, Any]:
    """The enabled defense's name and settings (config `defense`, from its `describe`); {}
    when none ran."""
    described = config.get("defense") or {}
    return {"name": described["name"], **(described.get("settings") or {})} if described else {}


def defense_text(config: dict[str, Any]) -> str:
    """'defense irece (t_star=0.2, tau=0.4, ...)', or 'no defense'."""
    from pytest_erasure.defenses import settings_text

    return settings_text(config.get("defense"))


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
            "changed": _changed_per_component(info),
            "replaced": replaced,
            "added": _sum_key(info, "tensors_added"),
            "fingerprint": info.get("fingerprint") or info.get("sha256"),
            "differs": content_text(info.get("content")),
            "content": (info.get("content") or {}).get("fingerprint"),
        })
    return out


def eraser_removal(record: AuditRecord) -> str | None:
    """The plug-in eraser's threat-model statement the session recorded (`session.
    eraser_removal`), or None."""
    statement = record.provenance.get("eraser_removal")
    return statement if isinstance(statement, str) and statement else None


def content_text(content: Any) -> str | None:
    """'14 of 686 tensors differ from the standard model' (and how many it adds), from the
    loaded model's content (`models.identity.content_identity`): the same sentence for every
    packaging of one edit, where the files' own counts ('324 tensors replaced') differ."""
    if not isinstance(content, dict) or not isinstance(content.get("tensors_differing"), int):
        return None
    text = (f"{content['tensors_differing']} of {content.get('tensors_total', '?')} tensors "
            "differ from the standard model")
    if content.get("tensors_added"):
        text += f", {content['tensors_added']} added"
    if content.get("differs_in"):
        text += ", other " + " and ".join(map(str, content["differs_in"]))
    return text


def _changed_per_component(info: dict[str, Any]) -> dict[str, str]:
    """{component: '32 of 686 tensors changed'} for each replaced component compared whole with
    the standard one (a full pipeline folder: no tensor came from an override file, so the count
    that says what differs is the changed one), or {component: 'config: ...'} / 'differs in ...'
    when what differs is not tensors. Override formats (their stats carry `tensors_replaced`)
    keep their summed "N tensors replaced"."""
    out: dict[str, str] = {}
    for component in info.get("components_replaced") or []:
        stats = info.get(component)
        if not isinstance(stats, dict) or "tensors_replaced" in stats:
            continue
        if stats.get("config_changed"):
            out[component] = "config: " + ", ".join(map(str, stats["config_changed"]))
        elif isinstance(stats.get("tensors_changed"), int):
            out[component] = (f"{stats['tensors_changed']} of {stats.get('tensors_total', '?')} "
                              "tensors changed")
        elif stats.get("differs_in"):
            out[component] = "differs in " + ", ".join(map(str, stats["differs_in"]))
    return out


def _sum_key(value: Any, key: str, depth: int = 0) -> int | None:
    """The sum of every integer `key` in nested dicts (None when there is none)."""
    if not isinstance(value, dict) or depth > 4:
        return None
    found = [value[key]] if isinstance(value.get(key), int) else []
    found += [n for k, v in value.items() if k != key
              if (n := _sum_key(v, key, depth + 1)) is not None]
    return sum(found) if found else None


def tensor_changes(model: dict[str, Any]) -> list[str]:
    """What a format's summary says of its tensors: how many differ from the standard model
    where that was measured, else how many it replaced and added."""
    if model.get("differs"):
        return [model["differs"]]
    out = []
    if model["replaced"] is not None:
        out.append(f"{model['replaced']} tensors replaced")
    if model["added"]:
        out.append(f"{model['added']} tensors added")
    return out


def model_line(model: dict[str, Any]) -> str:
    parts = [str(model["format"])]
    if model["components"]:
        changed = model.get("changed") or {}
        parts.append("replaces " + "+".join(
            f"{c} ({changed[c]})" if c in changed else c for c in model["components"]))
    parts += tensor_changes(model)
    parts.append(f"fingerprint {short(model['fingerprint'])}")
    if model.get("content"):
        parts.append(f"content {short(model['content'])}")
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
            return [(prefix, ", ".join(plain(v) for v in value))]
        out = []
        for i, item in enumerate(value):
            out.extend(flatten(item, f"{prefix}.{i}"))
        return out
    return [(prefix, plain(value))]


def plain(value: Any) -> str:
    """A scalar as report.json spells it (null, true, false), so a setting reads the same in every
    report as in the file that reproduces the audit."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def change(before: Rate, after: Rate) -> str:
    """'-37.5 pp (-40% relative)': how much the defense lowered CRR."""
    if not before.n or not after.n:
        return "n/a"
    delta = (after.crr - before.crr) * 100
    text = f"{delta:+.1f} pp"
    if before.crr > 0:
        text += f" ({(after.crr - before.crr) / before.crr:+.0%} relative)"
    return text


# -- display helpers (reports' wording; no verdict logic) ------------------------------------------

STATUS_ORDER = {"failed": 0, "error": 0, "inconclusive": 1, "passed": 2}
"""How reports order cases: what fails the release first, then what decided nothing."""

THREAT_MODELS = {
    "white-box": "white-box: the attacker has the model's weights",
    "black-box": "black-box: the attacker can only send prompts",
    "white-box transfer": "white-box transfer: the attack optimised on the undefended model, "
                          "its findings generated through the defense",
    "white-box adaptive": "white-box adaptive: the attack optimised through the defense "
                          "as well as the weights",
}


def by_attention(cases: list[CaseResult]) -> list[CaseResult]:
    """Failed and errored cases first, then inconclusive, then passed; stable otherwise."""
    return sorted(cases, key=lambda c: STATUS_ORDER.get(status(c), 3))


def neighbour_of(case: CaseResult) -> str | None:
    """The neighbouring concept a retention case is about (its facts, else its id)."""
    if case.kind != "retention":
        return None
    named = case.facts.get("neighbour") if isinstance(case.facts, dict) else None
    if named:
        return str(named)
    prefix = f"{case.concept}-retention-"
    return case.case_id[len(prefix):] if case.case_id.startswith(prefix) else None


def threat_model(case: CaseResult) -> str:
    """The access the attack assumed, as recorded, in words: the case's threat model
    (`checks.threat_model`, which says transfer or adaptive under a defense) where it has one."""
    recorded = case.facts.get("threat_model") if isinstance(case.facts, dict) else None
    if recorded:
        return THREAT_MODELS.get(recorded, recorded)
    if case.access:
        return THREAT_MODELS.get(case.access, case.access)
    return "none: the concept's own prompts, no attacker"
