"""The standalone JUnit document (`--erasure-junit FILE`), built with junit-xml.

One testsuite per concept, one testcase per case. Jenkins' schema (junit-10.xsd, which GitLab
and GitHub readers accept too) allows <properties> only on a testsuite, so suite properties hold
the audit's facts (model provenance with sha256, versions, config, detectors, the defense's settings, run
id) and each case's numbers go to its <system-out> as readable text. junit-xml also writes a
`disabled` attribute that the schema does not know, and may write float times the schema's
pattern rejects (`1e-05`); both are fixed after it builds the tree.

Verdicts: a failed case is `<failure type="CRRGate">`, an errored one `<error>`. An inconclusive
case the gate holds against the release (`--erasure-inconclusive=fail`, the default) is
`<failure type="Inconclusive" message="INCONCLUSIVE: reason">`: it fails the build exactly as the
pytest run did, and its type tells a CI dashboard it is not a measured regression. One the run
reports only is `<skipped type="Inconclusive" message="INCONCLUSIVE (reported, not gated):
reason">`: not a failure, since the pytest run passed it and this document must not contradict
the exit status; and not a pass either, since every JUnit reader (Jenkins, GitLab, GitHub,
junitparser) counts and shows a skipped case apart from the passing ones. `<skipped>` is the one
element the schema has for "ran, decided nothing".

pytest's own --junitxml gets each case's numbers as per-testcase properties (`case_properties`),
which that schema rejects; `--erasure-junitxml-valid` moves them to the testcase's <system-out>
(`FailureTypes`, `ValidProperties`), so that file validates too.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from junit_xml import TestCase, TestSuite, to_xml_report_string

from pytest_erasure.records import AuditRecord, CaseChange, CaseResult, Comparison
from pytest_erasure.report.files import write_text
from pytest_erasure.report.text import (
    defense_settings,
    flatten,
    gate_of,
    gate_rule,
    gate_text,
    gated,
    rate_text,
    reason_of,
    status,
    verdict,
    verdict_label,
    verdict_line,
    verdict_of,
)


def write_junit(record: AuditRecord, path: Path) -> None:
    write_text(Path(path), to_junit_xml(record))


def to_junit_xml(record: AuditRecord) -> str:
    properties = suite_properties(record)
    suites: dict[str, list[TestCase]] = {}
    for case in record.cases:
        suites.setdefault(case.concept, []).append(_testcase(case))
    built = [TestSuite(f"erasure.{concept}", cases, id=str(i), package="erasure",
                       timestamp=record.started, properties=properties)
             for i, (concept, cases) in enumerate(suites.items())]
    root = ET.fromstring(to_xml_report_string(built, prettyprint=False, encoding="utf-8"))
    root.set("name", f"pytest-erasure {record.run_id}")
    for skipped in root.iter("skipped"):  # junit-xml takes no type for it; only ours skip
        skipped.set("type", "Inconclusive")
    for element in (root, *root.iter("testsuite")):
        element.attrib.pop("disabled", None)
        element.attrib.pop("assertions", None)
        if element.tag == "testsuite":
            seconds = sum(float(tc.get("time", 0)) for tc in element.iter("testcase"))
        else:
            seconds = sum(float(ts.get("time", 0)) for ts in root.iter("testsuite"))
        element.set("time", f"{seconds:.3f}")
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def suite_properties(record: AuditRecord) -> dict[str, str]:
    """What every suite shares: the facts a CI reader needs to know what was audited."""
    props = {"run_id": record.run_id, "started": record.started,
             "finished": record.finished or "", "verdict": verdict(record),
             "gate": gate_rule(gate_of(record))}
    config = {k: v for k, v in record.config.items() if k != "defense"}
    selection = {k: v for k, v in (record.selection or {}).items() if k != "selected"}
    for prefix, data in (("provenance", record.provenance), ("version", record.versions),
                         ("config", config), ("detector", record.detectors),
                         ("defense", defense_settings(record.config)),
                         ("selection", selection)):
        for key, value in flatten(data):
            props[f"{prefix}.{key}"] = value
    if record.comparison is not None:
        props.update(comparison_properties(record.comparison))
    return props


def comparison_properties(comparison: Comparison) -> dict[str, str]:
    """The comparison with the previous audit as suite properties: summary, each protocol
    difference, and each case's status, difference and interval."""
    from pytest_erasure.report.compare import change_text, difference_lines, flip_text, summary

    props = {"compare.summary": summary(comparison),
             "compare.previous_file": comparison.previous_file,
             "compare.previous_run": comparison.previous_run}
    for i, line in enumerate(difference_lines(comparison)):
        props[f"compare.difference.{i}"] = line
    for change in comparison.cases:
        text = f"{change.status} {change_text(change)}"
        if change.flipped:
            text += f"; verdict {flip_text(change)}"
        if change.regression_gate:
            text += "; failed by the regression gate"
        props[f"compare.case.{change.case_id}"] = text
    return props


def case_text(case: CaseResult) -> str:
    """The case's numbers, one per line, as a CI log shows them."""
    lines = [f"case: {case.case_id} ({case.kind}; concept {case.concept}, scenario "
             f"{case.scenario}, modality {case.modality}, access {case.access or '-'})",
             f"result: {status(case)}",
             f"verdict: {verdict_label(case)}: {reason_of(case)}",
             f"CRR: {rate_text(case.rate)}",
             f"gate: {gate_rule(case.gate)}; threshold {gate_text(case)}",
             f"n: {case.rate.n} images, {case.rate.hits} with the concept, "
             f"{case.rate.degenerate} degenerate"]
    for name, rate in (("standard model CRR", case.standard),
                       ("undefended CRR (without the defense)", case.undefended),
                       ("base rate (neutral prompts)", case.base_rate)):
        if rate is not None:
            lines.append(f"{name}: {rate_text(rate)}")
    lines += [f"fact {k}: {v}" for k, v in flatten(case.facts)]
    lines += [f"artifact {k}: {v}" for k, v in case.artifacts.items()]
    if case.message:
        lines += ["", case.message]
    return "\n".join(lines)


def _testcase(case: CaseResult) -> TestCase:
    tc = TestCase(case.case_id, classname=f"erasure.{case.concept}",
                  elapsed_sec=round(case.seconds, 3) or None, stdout=case_text(case))
    if case.error:
        first = case.error.strip().splitlines()[0] if case.error.strip() else "error"
        tc.add_error_info(message=first, output=case.error, error_type="error")
    elif status(case) == "inconclusive":
        message = f"{verdict_label(case)}: {reason_of(case)}"
        if gated(case):
            tc.add_failure_info(message=message, output=message, failure_type="Inconclusive")
        else:
            tc.add_skipped_info(message=message, output=message)
    elif not case.passed or status(case) != "passed":
        message = case.message or f"CRR {rate_text(case.rate)} fails {gate_text(case)}"
        tc.add_failure_info(message=message.splitlines()[0], output=message,
                            failure_type="CRRGate")
    return tc


# --- pytest's own --junitxml --------------------------------------------------------------------

def case_properties(result: CaseResult, change: CaseChange | None = None) -> dict[str, Any]:
    """A case's numbers as `record_property`s of its testcase in pytest's own JUnit; with a
    previous audit (`--erasure-compare`), the case against it (`compare_*`)."""
    low, high = result.rate.interval
    props: dict[str, Any] = {
        "verdict": verdict_of(result), "reason": reason_of(result),
        "concept": result.concept, "scenario": result.scenario, "kind": result.kind,
        "crr": round(result.rate.crr, 6), "ci_low": round(low, 6), "ci_high": round(high, 6),
        "n": result.rate.n, "threshold": result.threshold, "gate": result.gate,
        "degenerate": result.rate.degenerate,
    }
    for name in ("standard", "undefended", "base_rate"):
        rate = getattr(result, name)
        if rate is not None:
            props[f"{name}_crr"] = round(rate.crr, 6)
    if change is not None:
        props.update(compare_properties(change))
    return props


def compare_properties(change: CaseChange) -> dict[str, Any]:
    """compare_status, the previous CRR and verdict, the difference and its 95% interval."""
    props: dict[str, Any] = {"compare_status": change.status,
                             "compare_previous_verdict": change.previous_verdict,
                             "compare_regression_gate": change.regression_gate}
    if change.previous is not None and change.previous.n:
        props["compare_previous_crr"] = round(change.previous.crr, 6)
    if change.difference is not None and change.interval is not None:
        props["compare_difference"] = round(change.difference, 6)
        props["compare_ci_low"] = round(change.interval[0], 6)
        props["compare_ci_high"] = round(change.interval[1], 6)
    return props


CASE_PROPERTY_CORE = frozenset({"verdict", "reason", "concept", "scenario", "kind", "crr",
                                "ci_low", "ci_high", "n", "threshold", "gate", "degenerate"})
"""The properties every case records (`case_properties`): how a report's properties are told
apart from a test's own `record_property`s."""
CASE_PROPERTY_NAMES = CASE_PROPERTY_CORE | {
    "standard_crr", "undefended_crr", "base_rate_crr", "compare_status",
    "compare_previous_verdict", "compare_regression_gate", "compare_previous_crr",
    "compare_difference", "compare_ci_low", "compare_ci_high"}


def add_pytest_suite_properties(xml: Any, record: AuditRecord, outputs: list[str]) -> None:
    """Suite facts in pytest's own --junitxml (its LogXML, or None without --junitxml),
    written once, from the controller; where the reports went when that was not where asked."""
    if xml is None:
        return
    xml.add_global_property("erasure_run_id", record.run_id)
    xml.add_global_property("erasure_verdict", verdict_line(record))
    for role, info in sorted(record.provenance.items()):
        if isinstance(info, dict):
            xml.add_global_property(f"erasure_{role}_model",
                                    json.dumps(info, sort_keys=True, default=str))
    for name, value in sorted(record.versions.items()):
        xml.add_global_property(f"version_{name}", value)
    xml.add_global_property("erasure_config", json.dumps(record.config, sort_keys=True, default=str))
    if record.comparison is not None:
        from pytest_erasure.report.compare import summary

        xml.add_global_property("erasure_compare", summary(record.comparison))
        xml.add_global_property("erasure_compare_detail", json.dumps(
            record.comparison.to_dict(), sort_keys=True, default=str))
    if any(line.endswith(" instead") or "NOT WRITTEN" in line for line in outputs):
        # CI reads where the reports went from pytest's own JUnit too
        xml.add_global_property("erasure_outputs", " | ".join(outputs))


def fail_message(result: CaseResult) -> str:
    """An inconclusive case fails as 'INCONCLUSIVE: <reason>' (the gate's numbers decide nothing
    there), so no CI reader takes it for a measured regression; a failed one with its message."""
    if verdict_of(result) == "inconclusive":
        return f"INCONCLUSIVE: {reason_of(result)}"
    return result.message or f"FAIL: {reason_of(result)}"


VALID_SETTING = "erasure_junitxml_valid"
"""`--erasure-junitxml-valid` and its ini twin (config.py's options table)."""


def junitxml_valid(config: Any) -> bool:
    """Whether the run asked for a schema-valid pytest --junitxml (flag, else ini)."""
    value = config.getoption(VALID_SETTING, None)
    if value in (None, False):
        value = config.getini(VALID_SETTING)
    return str(value).strip().lower() in ("1", "true", "yes", "on")


def properties_text(properties: list[tuple[str, Any]]) -> str:
    """A case's properties as the lines its <system-out> holds with --erasure-junitxml-valid:
    'name: value', in the order `case_properties` gives them, so no number is lost."""
    return "\n".join(["pytest-erasure case properties:"]
                     + [f"{name}: {value}" for name, value in properties])


class FailureTypes:
    """pytest's own --junitxml for erasure cases, adjusted after LogXML writes it.

    Failure types: gives the <failure> pytest's --junitxml writes for an erasure case a type
    that says which verdict failed it: `erasure.Inconclusive` or `erasure.CRRGate`. LogXML
    writes only a message (pytest 9, `_NodeReporter.append_failure`), so this runs after it
    (trylast) on the same call report and sets the attribute on the node it just appended. A
    case is recognised by its `verdict` property (`case_properties`); other failures (usage
    errors, exceptions) keep pytest's plain <failure>.

    Valid properties (`--erasure-junitxml-valid`): Jenkins' JUnit schema (junit-10.xsd) allows
    <properties> only on a testsuite, yet pytest writes `user_properties` as per-testcase
    <properties>. LogXML writes them from the teardown report, so this runs before it
    (tryfirst) on that report, takes the case's own properties out of `user_properties` (a
    test's other `record_property`s stay, they are the test's business) and writes them to the
    testcase's <system-out> as 'name: value' lines; the standalone --erasure-junit holds them
    too. The call report keeps them, so the failure types above still find the verdict.

    A plugin object, not bare hooks: the hooks get no config."""

    TYPES = {"inconclusive": "erasure.Inconclusive", "fail": "erasure.CRRGate"}

    def __init__(self, config: Any) -> None:
        self.config = config
        if junitxml_valid(config):
            config.pluginmanager.register(ValidProperties(config), "erasure-junitxml-valid")

    @pytest.hookimpl(trylast=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        from _pytest.junitxml import xml_key

        xml = self.config.stash.get(xml_key, None)
        verdict = dict(report.user_properties).get("verdict")
        if xml is None or report.when != "call" or not report.failed or verdict not in self.TYPES:
            return
        if (report.nodeid, getattr(report, "node", None)) not in xml.node_reporters:
            return
        failures = [n for n in xml.node_reporter(report).nodes if n.tag == "failure"]
        if failures:
            failures[-1].set("type", self.TYPES[str(verdict)])


class ValidProperties:
    """The tryfirst half of `FailureTypes` (pluggy orders hooks per plugin object, so the two
    orders need two objects); registered by `FailureTypes` itself when the setting is on."""

    def __init__(self, config: Any) -> None:
        self.config = config

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        from _pytest.junitxml import bin_xml_escape, xml_key

        xml = self.config.stash.get(xml_key, None)
        if xml is None or report.when != "teardown":
            return
        names = dict(report.user_properties)
        if "verdict" not in names or not set(names) >= CASE_PROPERTY_CORE:
            return
        ours = [(k, v) for k, v in report.user_properties if k in CASE_PROPERTY_NAMES]
        report.user_properties = [(k, v) for k, v in report.user_properties
                                  if k not in CASE_PROPERTY_NAMES]
        out = ET.Element("system-out")
        out.text = bin_xml_escape(properties_text(ours))
        xml.node_reporter(report).append(out)

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        """pytest (9.0) writes a nameless, empty <testcase/> for a test interrupted in its call
        (Ctrl-C), which the schema rejects (`name` is required); nothing was recorded in it, so
        it is left out before LogXML writes the file."""
        from _pytest.junitxml import xml_key

        xml = self.config.stash.get(xml_key, None)
        if xml is not None:  # a finalized reporter keeps only its to_xml
            xml.node_reporters_ordered[:] = [r for r in xml.node_reporters_ordered
                                             if r.to_xml().get("name") is not None]
