"""This audit against a previous one (`--erasure-compare=PREVIOUS.json`): is this release worse?

Two report.json files are compared case by case (`read_report`), after their comparability keys
(`models.identity.comparability_key`) say the numbers mean the same thing. Some differences
make numbers incomparable, and the comparison is refused before anything loads (a one-line
usage error): another protocol version (`pytest_erasure.PROTOCOL_VERSION`, bumped when a
release changes how a number is computed), or another detector for a concept (its name, its
options, thresholds included, its files' sha256 or its factory's source). Every other
difference (sampler, steps, budgets, seeds, gate, samples, prompts, the standard model) is
listed first in every report, since it qualifies every number below it, and the comparison
goes on.

Per case: both CRRs, the difference with its 95% interval (Newcombe's, built from each rate's
own interval, so a clustered or stratified rate brings its wider interval along), the verdicts
and a status (`records.CHANGES`). The regression gate (`--erasure-regression-margin`) fails an
erasure case whose CRR rose by more than the margin with 95% confidence, even under its
threshold. A comparison only ever adds failures: no status, flip or missing previous case turns
a failing case into a pass.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_erasure.errors import ErasureInputError
from pytest_erasure.records import AuditRecord, CaseChange, CaseResult, Comparison, Rate

if TYPE_CHECKING:
    from pytest_erasure.config import AuditConfig

OPTION = "--erasure-compare"
REFUSED = ("protocol", "detectors")
"""Key parts whose difference makes the numbers incomparable: the comparison is refused."""


def differences(previous: dict[str, Any], current: dict[str, Any]) -> list[dict[str, Any]]:
    """[{"what": "settings.steps", "previous": 25, "current": 50}] for every leaf that differs,
    the refused parts (protocol, detectors) first."""
    found: list[dict[str, Any]] = []

    def walk(a: Any, b: Any, path: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b), key=str):
                walk(a.get(k, _ABSENT), b.get(k, _ABSENT), f"{path}.{k}" if path else str(k))
        elif a != b:
            found.append({"what": path, "previous": None if a is _ABSENT else a,
                          "current": None if b is _ABSENT else b})

    walk(previous, current, "")
    return sorted(found, key=lambda d: (d["what"].split(".")[0] not in REFUSED, d["what"]))


class _Absent:
    def __repr__(self) -> str:
        return "absent"


_ABSENT = _Absent()


def refusals(previous: dict[str, Any], current: dict[str, Any]) -> list[dict[str, Any]]:
    """The differences that make the numbers incomparable: another protocol version, or another
    detector for a concept both audits have (a concept only one has is a new or gone case)."""
    out = [d for d in differences({"protocol": previous.get("protocol")},
                                  {"protocol": current.get("protocol")})]
    ours, theirs = previous.get("detectors") or {}, current.get("detectors") or {}
    for concept in sorted(set(ours) & set(theirs)):
        out += differences({"detectors": {concept: ours[concept]}},
                           {"detectors": {concept: theirs[concept]}})
    return out


def check_margin(config: AuditConfig) -> None:
    """The regression margin needs a previous audit, and is a CRR difference in [0, 1)."""
    margin = config.regression_margin
    if margin is None:
        return
    if config.compare_file is None:
        raise ErasureInputError("--erasure-regression-margin", "is given without a previous "
                                "audit to compare with", f"add {OPTION}=PREVIOUS/report.json")
    if not 0 <= margin < 1:
        raise ErasureInputError("--erasure-regression-margin", f"is {margin}",
                                "give a CRR difference between 0 and 1, e.g. 0.05")


def read_previous(path: Path) -> AuditRecord:
    """The previous audit's record, or a usage error naming the file."""
    from pytest_erasure.report.json import read_report

    what = f"{OPTION} {path}"
    if not Path(path).is_file():
        raise ErasureInputError(what, "does not exist", "give the report.json a previous audit "
                                "wrote (--erasure-report DIR writes DIR/report.json)")
    try:
        return read_report(Path(path))
    except (ValueError, KeyError, TypeError, OSError) as error:
        raise ErasureInputError(what, f"is not a pytest-erasure report.json ({error})",
                                "give the report.json a previous audit wrote") from None


def check_comparable(previous: AuditRecord, current_key: dict[str, Any], path: Path) -> None:
    """Refuse, before anything loads, a previous audit whose numbers cannot be compared with
    this one's: one usage error naming the first difference (and how many there are)."""
    what = f"{OPTION} {path}"
    if not previous.comparability:
        raise ErasureInputError(what, "was written by a release that recorded no protocol "
                                "version", "audit the previous model again with this release "
                                "and compare with that report")
    refused = refusals(previous.comparability, current_key)
    if not refused:
        return
    first = refused[0]
    more = f" (and {len(refused) - 1} more difference{'s' if len(refused) > 2 else ''})" \
        if len(refused) > 1 else ""
    kind = ("another protocol version" if first["what"] == "protocol"
            else "another detector")
    raise ErasureInputError(
        what, f"was audited with {kind}: {first['what']} was {_short(first['previous'])}, is "
        f"{_short(first['current'])}{more}; its numbers are not comparable with this audit's",
        "compare audits judged by the same detector (name, options, thresholds, weights) under "
        "the same protocol version, or audit the previous model again with this setup")


def _short(value: Any, n: int = 60) -> str:
    text = "absent" if value is None else str(value)
    return text if len(text) <= n else text[: n - 1] + "…"


# -- per case ----------------------------------------------------------------------------------

def _measured(rate: Rate | None) -> bool:
    return rate is not None and rate.n > 0


def change_of(previous: CaseResult | None, current: CaseResult | None) -> CaseChange:
    """One case in both audits: difference, interval, verdicts, status."""
    from pytest_erasure.report.text import verdict_of
    from pytest_erasure.stats.crr import difference_interval

    case = current or previous
    assert case is not None
    out = CaseChange(
        case_id=case.case_id, kind=case.kind, status="",
        previous=previous.rate if previous else None, current=current.rate if current else None,
        previous_verdict=verdict_of(previous) if previous else "",
        current_verdict=verdict_of(current) if current else "",
        previous_threshold=_finite(previous.threshold) if previous else None,
        current_threshold=_finite(current.threshold) if current else None)
    if previous is None:
        out.status = "new"
    elif current is None:
        out.status = "gone"
    elif not (_measured(previous.rate) and _measured(current.rate)) or previous.error \
            or current.error:
        out.status = "unmeasured"
    else:
        low, high = difference_interval(current.rate, previous.rate)
        out.difference = current.rate.crr - previous.rate.crr
        out.interval = (low, high)
        higher_is_worse = case.kind == "erasure"
        worse, better = (low > 0, high < 0) if higher_is_worse else (high < 0, low > 0)
        out.status = "regressed" if worse else "improved" if better else "unchanged"
    return out


def _finite(value: float) -> float | None:
    return value if value == value and abs(value) != float("inf") else None


def regressed_beyond(change: CaseChange, margin: float | None) -> bool:
    """The regression gate: an erasure case whose CRR rose by more than `margin` with 95%
    confidence (the lower end of the difference's interval is above the margin)."""
    return (margin is not None and change.kind == "erasure" and change.interval is not None
            and change.interval[0] > margin)


def apply_regression_gate(result: CaseResult, change: CaseChange, margin: float | None,
                          previous_run: str) -> None:
    """Fail `result` with the reason 'regressed' when the regression gate says so; a case that
    fails already keeps its reason and gains this one. Never makes a case pass."""
    if not regressed_beyond(change, margin):
        return
    assert change.previous is not None and change.current is not None
    assert change.interval is not None and margin is not None
    change.regression_gate = True
    low, high = change.interval
    why = (f"regressed: CRR rose from {change.previous.crr:.1%} (run {previous_run}) to "
           f"{change.current.crr:.1%}, +{change.difference:.1%} [95% CI {low:+.1%}, "
           f"{high:+.1%}], more than the margin {margin:.1%} with 95% confidence")
    if result.verdict == "fail" or (not result.passed and result.verdict != "inconclusive"):
        result.reason = f"{result.reason}; {why}" if result.reason else why
        result.message = f"{result.message}; {why}" if result.message else why
    else:
        result.verdict, result.reason = "fail", why
        result.message = f"{result.case_id}: CRR {change.current} -> FAIL: {why}"
    result.passed = False


def compare(previous: AuditRecord, current: AuditRecord, path: Path,
            margin: float | None) -> Comparison:
    """The whole comparison: protocol differences, models, every case of either audit."""
    before = {c.case_id: c for c in previous.cases}
    now = {c.case_id: c for c in current.cases}
    cases = []
    for case_id in list(now) + [i for i in before if i not in now]:
        change = change_of(before.get(case_id), now.get(case_id))
        change.regression_gate = regressed_beyond(change, margin)
        cases.append(change)
    found = differences(previous.comparability or {}, current.comparability or {})
    return Comparison(previous_file=str(path), previous_run=previous.run_id,
                      previous_started=previous.started, margin=margin, differences=found,
                      models=_models(previous, current), cases=cases)


def _models(previous: AuditRecord, current: AuditRecord) -> dict[str, dict[str, Any]]:
    """Each role's model in both audits, by content where recorded (the same weights in
    another packaging are the same model), else by file fingerprint."""
    out = {}
    for role in ("standard", "erased"):
        ids = [r.model_id(role) for r in (previous, current)]
        out[role] = {"previous": ids[0], "current": ids[1],
                     "same": ids[0] is not None and ids[0] == ids[1]}
    return out



# -- words for every report ------------------------------------------------------------------------

def summary(comparison: Comparison) -> str:
    """'against run abc123 (2026-12-01): 1 regressed, 2 unchanged, 1 new; 2 protocol
    differences'"""
    tally: dict[str, int] = {}
    for change in comparison.cases:
        tally[change.status] = tally.get(change.status, 0) + 1
    from pytest_erasure.records import CHANGES

    parts = [f"{tally[s]} {s}" for s in CHANGES if tally.get(s)]
    gated = sum(c.regression_gate for c in comparison.cases)
    text = (f"against run {comparison.previous_run} ({comparison.previous_started}): "
            + (", ".join(parts) or "no cases"))
    flips = sum(c.flipped for c in comparison.cases)
    if flips:
        text += f"; {flips} verdict flip{'s' if flips != 1 else ''}"
    if comparison.margin is not None:
        text += (f"; regression gate (margin {comparison.margin:.1%}): {gated} case"
                 f"{'s' if gated != 1 else ''} failed")
    n = len(comparison.differences)
    text += f"; {n} protocol difference{'s' if n != 1 else ''}" if n else \
        "; same protocol"
    return text


def difference_lines(comparison: Comparison) -> list[str]:
    """'settings.steps: 25 -> 50' for every protocol difference; a changed standard model (the
    reference every number is read against) is one too."""
    lines = [f"{d['what']}: {_short(d['previous'])} -> {_short(d['current'])}"
             for d in comparison.differences]
    standard = comparison.models.get("standard") or {}
    if standard and not standard.get("same"):
        lines.append(f"standard model: {_short(standard.get('previous'), 12)} -> "
                     f"{_short(standard.get('current'), 12)} (content fingerprints)")
    return lines


def model_line(comparison: Comparison) -> str:
    """Whether the audited model is the previous one, by content."""
    erased = comparison.models.get("erased") or {}
    if erased.get("same"):
        return "erased model: the same weights as the previous audit's"
    return (f"erased model: {_short(erased.get('previous'), 12)} -> "
            f"{_short(erased.get('current'), 12)} (content fingerprints: another model)")


def case_line(change: CaseChange) -> str:
    """'circle-text: 0.0% pass -> 100.0% fail, +100.0% [95% CI +54.1%, +100.0%]: regressed
    (failed by the regression gate)'"""
    def side(rate: Rate | None, verdict: str) -> str:
        return f"{rate.crr:.1%} {verdict}" if rate is not None and rate.n else (verdict or "—")

    text = f"{change.case_id}: {side(change.previous, change.previous_verdict)} -> " \
        f"{side(change.current, change.current_verdict)}"
    if change.interval is not None and change.difference is not None:
        text += f", {change.difference:+.1%} [95% CI {change.interval[0]:+.1%}, " \
            f"{change.interval[1]:+.1%}]"
    text += f": {change.status}"
    if change.regression_gate:
        text += " (failed by the regression gate)"
    return text


def change_text(change: CaseChange) -> str:
    """'+12.5% [+3.1%, +21.0%]' or what stands instead."""
    if change.interval is None or change.difference is None:
        return "—"
    low, high = change.interval
    return f"{change.difference:+.1%} [{low:+.1%}, {high:+.1%}]"


def flip_text(change: CaseChange) -> str:
    return (f"{change.previous_verdict.upper()} -> {change.current_verdict.upper()}"
            if change.flipped else "")
