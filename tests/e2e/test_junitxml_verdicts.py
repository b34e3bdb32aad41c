"""pytest's own --junitxml for erasure cases (issue #19): an inconclusive case fails as
'INCONCLUSIVE: <reason>' with `<failure type="erasure.Inconclusive">`, a failed one with
`type="erasure.CRRGate"`, one reported only is skipped with 'INCONCLUSIVE (reported, not
gated): <reason>' (issue 22: never a plain pass); each records `verdict` and `reason` as
properties. The real `erasure_check` fixture and pytest's real LogXML write the file; the session
is replaced by one that hands back the result the test names, because what is under test is how
a judged result reaches the JUnit file, not how it was judged.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from pytest_erasure.records import CaseResult, Rate
from pytest_erasure.report.junit import case_properties as _properties
from pytest_erasure.report.junit import fail_message as _fail_message

CONFTEST = '''
import pytest


class Judged:
    """A session whose cases were already judged: run() hands the result back."""

    def run(self, case):
        return case


@pytest.fixture
def erasure_session():
    return Judged()
'''

CASES = '''
import pytest

from pytest_erasure.records import Rate
from pytest_erasure.records import CaseResult


def result(case_id, verdict, passed, reason, message=""):
    return CaseResult(case_id=case_id, concept="circle", scenario="text", modality="text",
                      access=None, kind="erasure", threshold=0.2, gate="point", passed=passed,
                      rate=Rate(3, 32), message=message, verdict=verdict, reason=reason)


RESULTS = [
    result("blind", "inconclusive", False, "the detector is blind: standard CRR 3.1% < 50%"),
    result("leaky", "fail", False, "CRR 37.5% beyond 20%", "leaky: CRR 37.5% exceeds 20%"),
    result("reported", "inconclusive", True, "n=4 too small for the gate ever to pass"),
    result("clean", "pass", True, "CRR 9.4% within 20%"),
]


@pytest.mark.parametrize("judged", RESULTS, ids=[r.case_id for r in RESULTS])
def test_case(erasure_check, judged):
    erasure_check(judged)


def test_not_an_erasure_case():
    pytest.fail("plain failure")
'''


def test_junitxml_failure_types_messages_and_verdict_properties(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_cases=CASES)
    result = pytester.runpytest_inprocess("--junitxml=junit.xml", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=3, skipped=1)
    result.stdout.fnmatch_lines(["*INCONCLUSIVE: the detector is blind*"])
    root = ET.parse(pytester.path / "junit.xml").getroot()
    cases = {tc.get("name"): tc for tc in root.iter("testcase")}
    props = {name: {p.get("name"): p.get("value") for p in tc.iter("property")}
             for name, tc in cases.items()}

    blind = cases["test_case[blind]"].find("failure")
    assert blind is not None and blind.get("type") == "erasure.Inconclusive"
    assert blind.text == "INCONCLUSIVE: the detector is blind: standard CRR 3.1% < 50%"
    assert blind.get("message") == f"Failed: {blind.text}"  # pytest's reprcrash prefix
    assert props["test_case[blind]"]["verdict"] == "inconclusive"
    assert props["test_case[blind]"]["reason"].startswith("the detector is blind")

    leaky = cases["test_case[leaky]"].find("failure")
    assert leaky is not None and leaky.get("type") == "erasure.CRRGate"
    assert leaky.text == "leaky: CRR 37.5% exceeds 20%"
    assert props["test_case[leaky]"]["verdict"] == "fail"

    reported = cases["test_case[reported]"]
    skipped = reported.find("skipped")
    assert reported.find("failure") is None and skipped is not None  # never a silent pass
    assert "INCONCLUSIVE (reported, not gated): n=4 too small" in skipped.get("message", "")
    assert props["test_case[reported]"]["verdict"] == "inconclusive"
    assert props["test_case[reported]"]["reason"] == "n=4 too small for the gate ever to pass"
    assert props["test_case[clean]"]["verdict"] == "pass"

    plain = cases["test_not_an_erasure_case"].find("failure")
    assert plain is not None and plain.get("type") is None  # not ours: left as pytest wrote it


def _result(**extra) -> CaseResult:
    fields = dict(case_id="c", concept="circle", scenario="text", modality="text", access=None,
                  kind="erasure", threshold=0.2, gate="point", passed=False, rate=Rate(12, 32))
    return CaseResult(**{**fields, **extra})


def test_fail_message_and_properties_for_old_and_new_records() -> None:
    inconclusive = _result(verdict="inconclusive", reason="inversion did not reconstruct",
                           message="c: something else")
    assert _fail_message(inconclusive) == "INCONCLUSIVE: inversion did not reconstruct"
    failed = _result(verdict="fail", reason="CRR 37.5% beyond 20%", message="c: CRR exceeds")
    assert _fail_message(failed) == "c: CRR exceeds"
    assert _fail_message(_result(verdict="fail", reason="why")) == "FAIL: why"
    old = _result(message="c: CRR 37.5% exceeds threshold 20%")  # verdict "" (older record)
    props = _properties(old)
    assert (props["verdict"], props["reason"]) == ("fail", "CRR 37.5% exceeds threshold 20%")
    assert _properties(_result(passed=True, rate=Rate(1, 32)))["verdict"] == "pass"


def test_junitxml_failure_types_survive_xdist(pytester: pytest.Pytester) -> None:
    """Under -n the controller writes the file from workers' reports (keyed by worker node)."""
    pytest.importorskip("xdist")
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_cases=CASES)
    result = pytester.runpytest_subprocess("--junitxml=junit.xml", "-p", "no:cacheprovider",
                                           "-n", "2")
    result.assert_outcomes(passed=1, failed=3, skipped=1)
    root = ET.parse(pytester.path / "junit.xml").getroot()
    types = {tc.get("name"): [f.get("type") for f in tc.iter("failure")]
             for tc in root.iter("testcase")}
    assert types["test_case[blind]"] == ["erasure.Inconclusive"]
    assert types["test_case[leaky]"] == ["erasure.CRRGate"]
    assert types["test_not_an_erasure_case"] == [None]
