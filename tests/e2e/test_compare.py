"""Release over release (issue 29): an audit compared with the previous one's report.json.

Tiny world, through pytester: the erased model (CRR 0) audited first, then the leaky one (CRR
100%) against it. With `--crr-threshold=1.0` the leaky model passes its threshold, so only the
regression gate can catch it: it must, with the reason "regressed". Comparisons across
detectors (a detector option) or protocol versions are refused with exit 4 before any model
loads (loading is made to raise)."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

AUDIT = "def test_erasure(erasure_case, erasure_check):\n    erasure_check(erasure_case)\n"
FAST = ["--samples", "8", "--steps", "2", "--batch-size", "4", "-p", "no:randomly",
        "--erasure-gate=point", "--scenarios", "text,baseline", "--crr-threshold=1.0"]


def flat(result: pytest.RunResult) -> str:
    """The terminal output with its line wrapping undone (the summary wraps at 80 columns)."""
    return " ".join(result.stdout.str().split())


def _args(world: dict[str, Path], erased: str, report: Path, *extra: str) -> list[str]:
    return ["--standard-model", str(world["standard"]), "--erased-model", str(world[erased]),
            "--concepts", str(world["concepts"]), "--erasure-report", str(report), *FAST, *extra]


@pytest.fixture(scope="module")
def previous(tiny_world: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The previous release's audit: the erased model, passing."""
    import os
    import subprocess
    import sys

    repo = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (repo, os.environ.get("PYTHONPATH", "")) if p)}
    root = tmp_path_factory.mktemp("previous")
    (root / "test_audit.py").write_text(AUDIT)
    report = root / "report"
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           *_args(tiny_world, "erased", report)], cwd=root, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return report / "report.json"


def test_a_worse_model_under_its_threshold_fails_as_regressed(
        pytester: pytest.Pytester, tiny_world, previous) -> None:
    pytester.makepyfile(test_audit=AUDIT)
    report = pytester.path / "report"
    junit = pytester.path / "pytest.xml"
    result = pytester.runpytest_inprocess(*_args(
        tiny_world, "leaky", report, f"--erasure-compare={previous}",
        "--erasure-regression-margin=0.05", f"--junitxml={junit}",
        f"--erasure-junit={pytester.path / 'erasure.xml'}"))
    result.assert_outcomes(passed=1, failed=1)
    out = flat(result)
    assert re.search(r"circle-text: CRR 100\.0% .* -> FAIL: regressed: CRR rose from 0\.0% "
                     r"\(run \w+\) to 100\.0%, .*more than the margin 5\.0% with 95% "
                     "confidence", out)
    assert re.search(r"compared with \S+report\.json: against run \w+ \(\S+\): 1 regressed, "
                     r"1 unchanged; 1 verdict flip; regression gate \(margin 5\.0%\): 1 case "
                     "failed; same protocol", out)
    assert "(content fingerprints: another model)" in out
    assert re.search(r"✗ circle-text: 0\.0% pass -> 100\.0% fail, \+100\.0% \[95% CI "
                     r"\+\d+\.\d%, \+100\.0%\]: regressed \(failed by the regression gate\)", out)
    data = json.loads((report / "report.json").read_text())
    text = next(c for c in data["cases"] if c["case_id"] == "circle-text")
    assert text["verdict"] == "fail" and text["reason"].startswith("regressed: ")
    assert text["rate"]["crr"] == 1.0 and text["threshold"] == 1.0  # under its threshold
    changes = {c["case_id"]: c for c in data["comparison"]["cases"]}
    assert changes["circle-text"]["status"] == "regressed"
    assert changes["circle-text"]["regression_gate"] is True
    assert changes["circle-text"]["flipped"] is True
    assert changes["circle-text"]["previous_verdict"] == "pass"
    low, high = changes["circle-text"]["interval"]
    assert 0.05 < low < 1.0 == changes["circle-text"]["difference"] and high == 1.0
    # the baseline runs the standard model, the same in both audits: the same images
    assert changes["circle-baseline"]["status"] == "unchanged"
    assert changes["circle-baseline"]["difference"] == 0.0
    assert data["comparison"]["differences"] == []
    assert data["comparison"]["models"]["standard"]["same"] is True
    assert data["comparison"]["models"]["erased"]["same"] is False
    root = ET.parse(junit).getroot()
    props = {p.get("name"): p.get("value") for c in root.iter("testcase")
             if c.get("name") == "test_erasure[circle-text]" for p in c.iter("property")}
    assert props["compare_status"] == "regressed" and props["compare_regression_gate"] == "True"
    assert props["compare_previous_crr"] == "0.0" and props["compare_difference"] == "1.0"
    suite = {p.get("name"): p.get("value") for p in root.iter("property")}
    assert "1 regressed" in suite["erasure_compare"]
    standalone = {p.get("name"): p.get("value")
                  for p in ET.parse(pytester.path / "erasure.xml").getroot().iter("property")}
    assert standalone["compare.case.circle-text"].startswith("regressed +100.0% [")
    assert standalone["compare.case.circle-text"].endswith(
        "; verdict PASS -> FAIL; failed by the regression gate")
    assert standalone["compare.case.circle-baseline"].startswith("unchanged +0.0%")
    markdown = (report / "report.md").read_text()
    assert "## Compared with the previous audit" in markdown
    assert "| regressed; failed by the regression gate; PASS -&gt; FAIL |" in markdown
    html = (report / "report.html").read_text()
    assert 'id="comparison"' in html and "failed by the regression gate" in html


def test_without_a_margin_the_comparison_reports_and_gates_nothing(
        pytester: pytest.Pytester, tiny_world, previous) -> None:
    pytester.makepyfile(test_audit=AUDIT)
    report = pytester.path / "report"
    result = pytester.runpytest_inprocess(*_args(
        tiny_world, "leaky", report, f"--erasure-compare={previous}", "--seed=1"))
    result.assert_outcomes(passed=2)
    out = flat(result)
    assert re.search(r": 1 regressed, 1 unchanged; 1 protocol difference", out)
    assert "protocol difference: settings.seed: 0 -> 1" in out
    assert re.search(r"circle-text: 0\.0% pass -> 100\.0% pass, \+100\.0% .*: regressed", out)
    assert "regression gate" not in out
    data = json.loads((report / "report.json").read_text())
    assert data["comparison"]["differences"] == [
        {"what": "settings.seed", "previous": 0, "current": 1}]
    assert {c["case_id"]: c["status"] for c in data["comparison"]["cases"]}["circle-text"] \
        == "regressed"


def _no_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    from pytest_erasure.models import loading

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(loading, "load_models", refuse)


def test_another_detector_option_is_refused_before_anything_loads(
        pytester: pytest.Pytester, tiny_world, previous, monkeypatch) -> None:
    _no_loading(monkeypatch)
    concepts = pytester.path / "concepts.toml"
    concepts.write_text(tiny_world["concepts"].read_text().replace(
        'detector = "pytest_erasure.testing:build_brightness_detector"',
        'detector = "pytest_erasure.testing:build_brightness_detector"\n'
        "detector_options = { threshold = 0.6 }"))
    (pytester.path / "references").symlink_to(tiny_world["concepts"].parent / "references")
    pytester.makepyfile(test_audit=AUDIT)
    args = _args(tiny_world, "leaky", pytester.path / "report", f"--erasure-compare={previous}")
    args[args.index("--concepts") + 1] = str(concepts)
    result = pytester.runpytest_inprocess(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--erasure-compare *report.json: was audited with another "
                                 "detector: detectors.circle.options.threshold was absent, is "
                                 "0.6*; its numbers are not comparable*"])
    assert not (pytester.path / "report").exists()


def test_another_protocol_version_is_refused_before_anything_loads(
        pytester: pytest.Pytester, tiny_world, previous, monkeypatch, tmp_path) -> None:
    _no_loading(monkeypatch)
    data = json.loads(previous.read_text())
    data["comparability"]["protocol"] = 0
    older = tmp_path / "older.json"
    older.write_text(json.dumps(data))
    pytester.makepyfile(test_audit=AUDIT)
    result = pytester.runpytest_inprocess(*_args(
        tiny_world, "erased", pytester.path / "report", f"--erasure-compare={older}"))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*was audited with another protocol version: protocol was 0, "
                                 "is 1*"])


def test_a_margin_without_a_previous_audit_is_a_usage_error(pytester: pytest.Pytester,
                                                             tiny_world) -> None:
    pytester.makepyfile(test_audit=AUDIT)
    result = pytester.runpytest_inprocess(*_args(
        tiny_world, "erased", pytester.path / "report", "--erasure-regression-margin=0.05"))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--erasure-regression-margin: is given without a previous "
                                 "audit*"])
