"""The comparison's rules on numbers (report/compare.py): statuses by direction, the regression
gate only ever adding a failure, clustered intervals carried into the difference, and the
comparability key's refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_erasure.errors import ErasureInputError
from pytest_erasure.records import AuditRecord, CaseResult, Rate
from pytest_erasure.report.compare import (
    apply_regression_gate,
    change_of,
    check_comparable,
    compare,
    differences,
    refusals,
)


def case(case_id: str = "circle-text", rate: Rate | None = None, kind: str = "erasure",
         verdict: str = "pass", threshold: float = 0.5) -> CaseResult:
    rate = rate if rate is not None else Rate(2, 64)
    return CaseResult(case_id=case_id, concept="circle", scenario="text", modality="text",
                      access=None, kind=kind, threshold=threshold, gate="exact",
                      passed=verdict == "pass", rate=rate, verdict=verdict, reason="gate")


def test_status_follows_the_interval_and_the_kind_s_direction() -> None:
    assert change_of(case(rate=Rate(2, 64)), case(rate=Rate(20, 64))).status == "regressed"
    assert change_of(case(rate=Rate(20, 64)), case(rate=Rate(2, 64))).status == "improved"
    assert change_of(case(rate=Rate(2, 64)), case(rate=Rate(4, 64))).status == "unchanged"
    # retention and baseline: a drop is the worse direction
    drop = change_of(case(kind="retention", rate=Rate(60, 64)),
                     case(kind="retention", rate=Rate(20, 64)))
    assert drop.status == "regressed"
    assert change_of(None, case()).status == "new"
    assert change_of(case(), None).status == "gone"
    assert change_of(case(), case(rate=Rate(0, 0))).status == "unmeasured"


def test_the_gate_fails_a_rise_beyond_the_margin_under_the_threshold_and_never_passes() -> None:
    previous, current = case(rate=Rate(2, 64)), case(rate=Rate(20, 64))  # 31% < 50%
    change = change_of(previous, current)
    apply_regression_gate(current, change, 0.05, "abc")
    assert change.regression_gate and not current.passed and current.verdict == "fail"
    assert current.reason.startswith("regressed: CRR rose from 3.1% (run abc) to 31.2%")
    # the same rise, judged against a margin it does not clear with 95% confidence
    kept = case(rate=Rate(20, 64))
    apply_regression_gate(kept, change_of(previous, kept), 0.2, "abc")
    assert kept.passed and kept.verdict == "pass"
    # a failing case stays failed whatever the comparison says (here: improved)
    failing = case(rate=Rate(30, 64), verdict="fail", threshold=0.2)
    improved = change_of(case(rate=Rate(60, 64), verdict="fail"), failing)
    apply_regression_gate(failing, improved, 0.0, "abc")
    assert improved.status == "improved" and not failing.passed and failing.verdict == "fail"
    # a failing case that also regressed keeps its reason and gains this one
    worse = case(rate=Rate(40, 64), verdict="fail", threshold=0.2)
    apply_regression_gate(worse, change_of(previous, worse), 0.05, "abc")
    assert worse.reason.startswith("gate; regressed: ")


def test_a_clustered_rate_brings_its_wider_interval_into_the_difference() -> None:
    """8 clusters, design effect 6: the same counts no longer show a rise beyond 5%."""
    plain = change_of(case(rate=Rate(2, 64)), case(rate=Rate(14, 64)))
    clustered = change_of(case(rate=Rate(2, 64)),
                          case(rate=Rate(14, 64, low=0.02, high=0.45, method="clustered",
                                         design_effect=6.0, clusters=8)))
    assert plain.interval[0] > 0.05 and plain.status == "regressed"
    assert clustered.interval[0] < 0 and clustered.status == "unchanged"


KEY = {"protocol": 1, "detectors": {"circle": {"name": "shapes", "options": {"threshold": 0.5},
                                               "files": {"weights.pt": "a" * 64}}},
       "settings": {"steps": 25, "seed": 0}}


def test_a_detector_or_protocol_change_is_refused_other_settings_are_listed() -> None:
    other = {**KEY, "settings": {"steps": 50, "seed": 1}}
    assert refusals(KEY, other) == []
    assert [d["what"] for d in differences(KEY, other)] == ["settings.seed", "settings.steps"]
    threshold = {**KEY, "detectors": {"circle": {**KEY["detectors"]["circle"],
                                                 "options": {"threshold": 0.6}}}}
    assert [d["what"] for d in refusals(KEY, threshold)] == ["detectors.circle.options.threshold"]
    weights = {**KEY, "detectors": {"circle": {**KEY["detectors"]["circle"],
                                               "files": {"weights.pt": "b" * 64}}}}
    assert [d["what"] for d in refusals(KEY, weights)] == ["detectors.circle.files.weights.pt"]
    assert [d["what"] for d in refusals(KEY, {**KEY, "protocol": 2})] == ["protocol"]
    # a concept only one audit has is a new or gone case, not another detector
    assert refusals(KEY, {**KEY, "detectors": {**KEY["detectors"], "square": {"name": "x"}}}) \
        == []
    # refused differences are listed first
    both = {**threshold, "settings": {"steps": 50, "seed": 0}}
    assert differences(KEY, both)[0]["what"].startswith("detectors.")


def record(cases: list[CaseResult], key: dict | None = KEY) -> AuditRecord:
    return AuditRecord(run_id="r", started="2026-12-01T00:00:00+00:00", config={},
                       provenance={}, detectors={}, versions={}, cases=cases,
                       comparability=key)


def test_check_comparable_is_one_usage_error(tmp_path: Path) -> None:
    threshold = {**KEY, "detectors": {"circle": {**KEY["detectors"]["circle"],
                                                 "options": {"threshold": 0.6}}}}
    with pytest.raises(ErasureInputError) as error:
        check_comparable(record([]), threshold, tmp_path / "prev.json")
    text = str(error.value)
    assert "\n" not in text and "another detector" in text and "0.5" in text and "0.6" in text
    with pytest.raises(ErasureInputError, match="recorded no protocol version"):
        check_comparable(record([], key=None), KEY, tmp_path / "prev.json")
    check_comparable(record([]), KEY, tmp_path / "prev.json")  # the same: no error


def test_compare_lists_every_case_of_either_audit() -> None:
    previous = record([case("a"), case("gone")])
    current = record([case("a", rate=Rate(30, 64)), case("new")])
    result = compare(previous, current, Path("prev.json"), 0.05)
    assert [(c.case_id, c.status, c.regression_gate) for c in result.cases] == [
        ("a", "regressed", True), ("new", "new", False), ("gone", "gone", False)]
    back = AuditRecord.from_dict({**current.to_dict(), "comparison": result.to_dict()})
    assert back.comparison == result
