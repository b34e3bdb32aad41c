"""`--erasure-junitxml-valid` (ini twin `erasure_junitxml_valid`): pytest's own --junitxml stays
valid against Jenkins' JUnit schema (tests/data/junit-10.xsd), which allows <properties> only on
a testsuite. Without the setting pytest writes each case's numbers as per-testcase <properties>
(invalid there); with it they go to the testcase's <system-out>, a test's own record_property
stays where pytest puts it, and the failure types still come through. Real pytest LogXML, real
schema validation (xmlschema), and one real audit of the tiny world writing both files.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from test_junitxml_verdicts import CASES, CONFTEST  # tests/e2e is on sys.path (no packages)

XSD = Path(__file__).resolve().parents[1] / "data" / "junit-10.xsd"
AUDIT = "def test_erasure(erasure_case, erasure_check):\n    erasure_check(erasure_case)\n"

OWN_PROPERTY = '''

def test_records_its_own_property(record_property):
    record_property("ticket", "REL-7")
'''


def _errors(path: Path) -> list[str]:
    xmlschema = pytest.importorskip("xmlschema")
    return [str(e.reason) for e in xmlschema.XMLSchema(str(XSD)).iter_errors(str(path))]


def _system_out(testcase: ET.Element) -> str:
    return "\n".join(node.text or "" for node in testcase.iter("system-out"))


def test_without_the_setting_per_testcase_properties_break_the_schema(pytester: pytest.Pytester):
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_cases=CASES)
    pytester.runpytest_inprocess("--junitxml=junit.xml", "-p", "no:cacheprovider")
    errors = _errors(pytester.path / "junit.xml")
    assert len(errors) == 4, errors  # one per erasure case: <properties> under a <testcase>
    # a tolerant reader takes them: junitparser (README names it) reads each case's properties
    junitparser = pytest.importorskip("junitparser")
    read = {case.name: {p.name: p.value for props in case.iterchildren(junitparser.Properties)
                        for p in props}
            for suite in junitparser.JUnitXml.fromfile(str(pytester.path / "junit.xml"))
            for case in suite}
    assert read["test_case[blind]"]["verdict"] == "inconclusive"
    assert read["test_case[clean]"]["crr"] == "0.09375"  # Rate(3, 32)


def test_the_ini_setting_moves_case_numbers_to_system_out(pytester: pytest.Pytester):
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_cases=CASES + OWN_PROPERTY)
    pytester.makeini("[pytest]\nerasure_junitxml_valid = true\n")
    result = pytester.runpytest_inprocess("--junitxml=junit.xml", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, failed=3, skipped=1)  # reported: skipped
    cases = {tc.get("name"): tc
             for tc in ET.parse(pytester.path / "junit.xml").getroot().iter("testcase")}
    blind = cases["test_case[blind]"]
    assert blind.find("properties") is None
    out = _system_out(blind)
    assert "verdict: inconclusive" in out and "crr: 0.09375" in out and "n: 32" in out
    assert "reason: the detector is blind: standard CRR 3.1% < 50%" in out
    assert blind.find("failure").get("type") == "erasure.Inconclusive"  # still typed
    assert cases["test_case[leaky]"].find("failure").get("type") == "erasure.CRRGate"
    # not an erasure case: its own property is the test's business and stays a property
    own = cases["test_records_its_own_property"].find("properties")
    assert own is not None and [p.get("name") for p in own] == ["ticket"]
    assert len(_errors(pytester.path / "junit.xml")) == 1  # that one, which we leave alone


def test_an_interrupted_run_stays_valid(pytester: pytest.Pytester):
    """pytest writes a nameless <testcase/> for a test stopped in its call (Ctrl-C, or
    pytest.exit, which takes the same path and, unlike a KeyboardInterrupt, stays inside the
    pytester run); the setting drops it."""
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_cases=CASES + "\n\ndef test_zz_interrupted():\n"
                        "    pytest.exit('stopped', returncode=2)\n")
    pytester.makeini("[pytest]\nerasure_junitxml_valid = true\n")
    result = pytester.runpytest_inprocess("--junitxml=junit.xml", "-p", "no:cacheprovider")
    assert result.ret == 2
    assert _errors(pytester.path / "junit.xml") == []
    names = [tc.get("name") for tc in
             ET.parse(pytester.path / "junit.xml").getroot().iter("testcase")]
    assert None not in names and "test_case[blind]" in names


def test_a_real_audit_writes_both_junit_files_schema_valid(pytester: pytest.Pytester, tiny_world):
    pytester.makepyfile(test_audit=AUDIT)
    result = pytester.runpytest_inprocess(
        "--standard-model", str(tiny_world["standard"]), "--erased-model",
        str(tiny_world["leaky"]), "--concepts", str(tiny_world["concepts"]), "--samples", "8",
        "--steps", "2", "--batch-size", "4", "-p", "no:randomly", "--erasure-gate=point",
        "--scenarios", "text,baseline", "--junitxml=pytest.xml", "--erasure-junit=erasure.xml",
        "--erasure-junitxml-valid")
    result.assert_outcomes(passed=1, failed=1)
    assert _errors(pytester.path / "pytest.xml") == []
    assert _errors(pytester.path / "erasure.xml") == []
    root = ET.parse(pytester.path / "pytest.xml").getroot()
    cases = {tc.get("name"): tc for tc in root.iter("testcase")}
    text = cases["test_erasure[circle-text]"]
    assert text.find("properties") is None and "crr: 1.0" in _system_out(text)
    assert text.find("failure").get("type") == "erasure.CRRGate"
    suite = {p.get("name") for p in root.find("testsuite").find("properties")}
    assert {"erasure_run_id", "erasure_verdict"} <= suite  # suite facts stay properties
