"""End-to-end runs of the plugin through pytester: real pipelines on disk, real reports."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

JUNIT_XSD = Path(__file__).resolve().parents[1] / "data" / "junit-10.xsd"

AUDIT = "def test_erasure(erasure_case, erasure_check):\n    erasure_check(erasure_case)\n"
# Plumbing tests gate with `point`: n=8 is below what the default `exact` gate can ever pass
# (tests/unit/test_gate.py and tests/e2e/test_verdict.py test the rules themselves).
FAST = ["--samples", "8", "--steps", "2", "--batch-size", "4", "-p", "no:randomly",
        "--erasure-gate=point"]


def _args(world: dict[str, Path], erased: str = "erased", *extra: str) -> list[str]:
    return ["--standard-model", str(world["standard"]), "--erased-model", str(world[erased]),
            "--concepts", str(world["concepts"]), *FAST, *extra]


def test_erased_model_passes_text_and_baseline(pytester: pytest.Pytester, tiny_world) -> None:
    pytester.makepyfile(test_audit=AUDIT)
    junit = pytester.path / "pytest.xml"
    result = pytester.runpytest_inprocess(
        *_args(tiny_world, "erased", "--scenarios", "text,baseline", f"--junitxml={junit}"))
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*concept erasure audit*", "*circle*"])
    root = ET.parse(junit).getroot()
    cases = {c.get("name"): c for c in root.iter("testcase")}
    assert set(cases) == {"test_erasure[circle-baseline]", "test_erasure[circle-text]"}
    props = {p.get("name"): p.get("value")
             for p in cases["test_erasure[circle-text]"].iter("property")}
    assert props["crr"] == "0.0" and props["n"] == "8" and props["threshold"] == "0.2"
    assert float(props["ci_high"]) > 0.0 and props["scenario"] == "text"
    suite_props = {p.get("name") for p in root.find("testsuite").find("properties")}
    assert {"erasure_run_id", "erasure_verdict", "version_torch"} <= suite_props


def test_leaky_model_fails_with_crr_interval_threshold_and_n(pytester: pytest.Pytester,
                                                             tiny_world) -> None:
    pytester.makepyfile(test_audit=AUDIT)
    result = pytester.runpytest_inprocess(*_args(tiny_world, "leaky", "--scenarios", "text"))
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "*circle-text: CRR 100.0% [[]*%, 100.0%[]] (8/8*) on the erased model; threshold 20.0%"
        " (gate 'point', n=8)*"])
    assert result.ret == 1


def test_retention_catches_a_model_that_draws_nothing(pytester: pytest.Pytester,
                                                      tiny_world) -> None:
    pytester.makepyfile(test_audit=AUDIT)
    result = pytester.runpytest_inprocess(*_args(tiny_world, "erased", "--scenarios", "retention"))
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*circle-retention-square*left 'square' at CRR 0.0%*"])


def test_k_selection_and_markers(pytester: pytest.Pytester, tiny_world) -> None:
    pytester.makepyfile(test_audit=AUDIT)
    result = pytester.runpytest_inprocess(*_args(tiny_world, "erased", "--co", "-q",
                                                 "-m", "erasure", "-k", "text or retention"))
    result.stdout.fnmatch_lines(["*[[]circle-text[]]", "*[[]circle-retention-square[]]"])
    assert "baseline" not in result.stdout.str()


def test_reports_are_written_and_parse_back(pytester: pytest.Pytester, tiny_world) -> None:
    pytester.makepyfile(test_audit=AUDIT)
    out = pytester.path / "report"
    junit = pytester.path / "erasure.xml"
    result = pytester.runpytest_inprocess(*_args(
        tiny_world, "leaky", "--scenarios", "text,baseline", f"--erasure-report={out}",
        f"--erasure-junit={junit}"))
    result.assert_outcomes(passed=1, failed=1)
    data = json.loads((out / "report.json").read_text())
    by_id = {c["case_id"]: c for c in data["cases"]}
    assert by_id["circle-text"]["passed"] is False and by_id["circle-text"]["rate"]["n"] == 8
    assert by_id["circle-baseline"]["passed"] is True
    assert data["provenance"]["erased"]["files"], "sha256 of every weight file is recorded"
    assert "circle-text" in (out / "report.html").read_text()
    assert JUNIT_XSD.is_file(), f"{JUNIT_XSD} is tracked in git: the JUnit output is checked against it"
    xmlschema = pytest.importorskip("xmlschema", reason="the dev extra's xmlschema validates "
                                    "the JUnit output (.ci/run fails on this skip)")
    xmlschema.XMLSchema(str(JUNIT_XSD)).validate(str(junit))
    root = ET.parse(junit).getroot()
    assert sum(int(s.get("failures")) for s in root.iter("testsuite")) == 1


def test_rerun_is_served_from_the_cache(pytester: pytest.Pytester, tiny_world) -> None:
    pytester.makepyfile(test_audit=AUDIT)
    cache = pytester.path / "cache"
    args = _args(tiny_world, "erased", "--scenarios", "text", f"--erasure-cache={cache}")
    pytester.runpytest_inprocess(*args).assert_outcomes(passed=1)
    entries = sorted(p for p in cache.rglob("*.safetensors"))
    stamps = [p.stat().st_mtime_ns for p in entries]
    assert entries, "the first run stores its images"
    pytester.runpytest_inprocess(*args).assert_outcomes(passed=1)
    assert sorted(cache.rglob("*.safetensors")) == entries
    assert [p.stat().st_mtime_ns for p in entries] == stamps, "nothing was recomputed"


def test_xdist_aggregates_one_report_on_the_controller(pytester: pytest.Pytester,
                                                       tiny_world) -> None:
    pytest.importorskip("xdist")
    pytester.makepyfile(test_audit=AUDIT)
    out = pytester.path / "report"
    result = pytester.runpytest_subprocess(*_args(
        tiny_world, "erased", "--scenarios", "text,baseline,retention", "-n", "2",
        f"--erasure-report={out}"))
    result.assert_outcomes(passed=2, failed=1)
    data = json.loads((out / "report.json").read_text())
    assert sorted(c["case_id"] for c in data["cases"]) == [
        "circle-baseline", "circle-retention-square", "circle-text"]
    assert data["provenance"], "workers' model provenance reaches the controller"


@pytest.mark.parametrize("flag, value, needle", [
    ("--erased-model", "/nonexistent/model", "--erased-model /nonexistent/model: does not exist"),
    ("--samples", "0", "--samples: is 0"),
    ("--crr-threshold", "1.5", "--crr-threshold: is 1.5"),
    ("--dtype", "float8", "--dtype: 'float8' is not supported"),
    ("--scenarios", "telepathy", "--scenarios: names unknown scenario(s) telepathy"),
    ("--erasure-gate", "maybe", "--erasure-gate: 'maybe' is not a gate rule"),
])
def test_bad_input_is_a_one_line_usage_error(pytester: pytest.Pytester, tiny_world, flag, value,
                                             needle) -> None:
    pytester.makepyfile(test_audit=AUDIT)
    args = _args(tiny_world)
    if flag in args:
        i = args.index(flag)
        args[i + 1] = value
    else:
        args += [flag, value]
    result = pytester.runpytest_subprocess(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    err = result.stderr.str()
    assert needle in err
    assert "Traceback" not in err + result.stdout.str()


def test_loading_the_plugin_imports_no_torch() -> None:
    """pytest loads the plugin on every run; torch and diffusers wait for an audit."""
    import subprocess
    import sys

    code = ("import sys, pytest_erasure.plugin; "
            "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
