"""Where an audit writes: refused up front when it cannot write there, and never lost at the end.

Read-only is made real, not simulated. Tests may run as root, which ignores mode bits, so a
folder is made immutable with `chattr +i` (refused to root too) when running as root, and
read-only by `chmod 555` otherwise; only where neither can be had (root on a filesystem without
the immutable flag) are those tests skipped. Paths under a file fail for everyone and need no
such help: the catalogue in test_bad_input.py covers them.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_bad_input import AUDIT, FAST, assert_usage_error, record_loads


@contextlib.contextmanager
def read_only(folder: Path) -> Iterator[None]:
    """`folder` refuses new entries, to root as well, for the duration."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        done = subprocess.run(["chattr", "+i", str(folder)], capture_output=True, text=True) \
            if shutil.which("chattr") else None
        if done is None or done.returncode != 0:
            pytest.skip("running as root without chattr +i here: no way to make a folder "
                        "read-only for root")
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
    else:
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)


def _args(world: dict[str, Path], *extra: str) -> list[str]:
    return [f"--standard-model={world['standard']}", f"--erased-model={world['erased']}",
            f"--concepts={world['concepts']}", "--scenarios=text", *FAST, *extra]


@pytest.mark.parametrize("option, target, what, fix", [
    ("--erasure-report", "reports", "--erasure-report {ro}/reports: is not writable (in {ro})",
     "give --erasure-report a writable folder"),
    ("--erasure-report", "", "--erasure-report {ro}: is not writable",
     "give --erasure-report a writable folder"),
    ("--erasure-junit", "erasure.xml", "--erasure-junit {ro}/erasure.xml: is not writable",
     "give --erasure-junit a file path in a writable folder"),
    ("--junitxml", "junit.xml", "--junitxml {ro}/junit.xml: is not writable",
     "give --junitxml a file path in a writable folder"),
    ("--erasure-cache", "cache", "--erasure-cache {ro}/cache: is not writable (in {ro})",
     "give --erasure-cache a writable folder"),
])
def test_read_only_destination_is_a_usage_error(option: str, target: str, what: str, fix: str,
                                                pytester: pytest.Pytester, tiny_world,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    pytester.makepyfile(test_audit=AUDIT)
    folder = pytester.path / "locked"
    path = folder / target if target else folder
    args = _args(tiny_world, f"{option}={path}")
    if option == "--erasure-cache":
        args.remove("--no-erasure-cache")
    loads = record_loads(monkeypatch)
    with read_only(folder):
        result = pytester.runpytest_inprocess(*args)
    assert_usage_error(result, what.replace("{ro}", str(folder)), fix)
    assert loads == []
    assert not (folder / "cache").exists()


def test_immutable_existing_junit_file_is_a_usage_error(pytester: pytest.Pytester, tiny_world,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """An existing file the audit would replace, locked itself (its folder is writable)."""
    if os.geteuid() != 0 or not shutil.which("chattr"):
        pytest.skip("needs root and chattr to lock a file against root")
    pytester.makepyfile(test_audit=AUDIT)
    junit = pytester.path / "erasure.xml"
    junit.write_text("<old/>")
    if subprocess.run(["chattr", "+i", str(junit)], capture_output=True).returncode:
        pytest.skip("this filesystem has no immutable flag")
    try:
        result = pytester.runpytest_inprocess(*_args(tiny_world, f"--erasure-junit={junit}"))
    finally:
        subprocess.run(["chattr", "-i", str(junit)], check=True)
    assert_usage_error(result, f"--erasure-junit {junit}: is not writable",
                       "give --erasure-junit a file path")


def test_default_cache_that_cannot_be_created(pytester: pytest.Pytester, tiny_world) -> None:
    """.pytest_cache is a file: pytest's own cache folder cannot hold ours."""
    pytester.makepyfile(test_audit=AUDIT)
    (pytester.path / ".pytest_cache").write_text("in the way")
    result = pytester.runpytest_inprocess(
        f"--standard-model={tiny_world['standard']}", f"--erased-model={tiny_world['erased']}",
        f"--concepts={tiny_world['concepts']}", "--scenarios=text", "--samples=2", "--steps=1",
        "-p", "no:randomly")
    assert_usage_error(result, "default erasure cache folder (.pytest_cache/d/erasure): cannot "
                       "be created", "pass --erasure-cache=DIR on a writable disk, or "
                       "--no-erasure-cache")


BREAK = '''
import shutil
import subprocess
from pathlib import Path


def test_zz_the_disk_changes_under_the_audit():
    """Runs after the audit's cases: its outputs' folders go away or lock."""
    report, junit_folder = Path(r"{report}"), Path(r"{junit_folder}")
    shutil.rmtree(junit_folder)
    junit_folder.write_text("a file now")
    if "{how}" == "replaced":
        shutil.rmtree(report, ignore_errors=True)
        report.write_text("a file now")
    else:
        report.mkdir(exist_ok=True)
        subprocess.run(["chattr", "+i", str(report)], check=True)
'''


@pytest.mark.parametrize("how, model, exit_code", [
    ("replaced", "erased", pytest.ExitCode.OK),
    ("immutable", "leaky", pytest.ExitCode.TESTS_FAILED),
])
def test_reports_that_cannot_be_written_at_the_end_go_to_a_fallback(
        how: str, model: str, exit_code: int, pytester: pytest.Pytester, tiny_world) -> None:
    """The destinations pass the checks, then change mid-run: nothing is lost, the terminal says
    where the results went, pytest's JUnit still comes out, the exit code is still the gate's."""
    if how == "immutable" and (os.geteuid() != 0 or not shutil.which("chattr")):
        pytest.skip("locking a folder mid-run against root needs chattr")
    report = pytester.path / "report"
    junit_folder = pytester.path / "junit"
    junit_folder.mkdir()
    pytester.makepyfile(test_audit=AUDIT + BREAK.replace("{report}", str(report)).replace(
        "{junit_folder}", str(junit_folder)).replace("{how}", how))
    junitxml = pytester.path / "pytest-junit.xml"
    args = [f"--standard-model={tiny_world['standard']}", f"--erased-model={tiny_world[model]}",
            f"--concepts={tiny_world['concepts']}", "--scenarios=text,baseline", *FAST,
            "--erasure-gate=point",  # n=2: the exit code must be the gate's, not "too small"
            f"--erasure-report={report}", f"--erasure-junit={junit_folder / 'erasure.xml'}",
            f"--junitxml={junitxml}"]
    try:
        result = pytester.runpytest_inprocess(*args)
    finally:
        if how == "immutable":
            subprocess.run(["chattr", "-i", str(report)], check=True)
    out = result.stdout.str()
    assert result.ret == exit_code, out[-3000:]
    assert "concept erasure audit" in out, "the terminal summary is still printed"
    assert "Traceback" not in out + result.stderr.str()
    found = re.search(rf"erasure reports: could not be written to {re.escape(str(report))} "
                      r"\((\w+): .*\); written to (\S+) instead", out)
    assert found, out[-3000:]
    assert found.group(1) == ("FileExistsError" if how == "replaced" else "PermissionError")
    fallback = Path(found.group(2))
    try:
        data = json.loads((fallback / "report.json").read_text())
        assert sorted(c["case_id"] for c in data["cases"]) == ["circle-baseline", "circle-text"]
        assert (fallback / "report.html").is_file() and (fallback / "report.md").is_file()
        assert re.search(rf"erasure standalone JUnit: could not be written to "
                         rf"{re.escape(str(junit_folder / 'erasure.xml'))} .*; written to "
                         rf"{re.escape(str(fallback / 'erasure.xml'))} instead", out), out[-3000:]
        names = {c.get("name") for c in ET.parse(fallback / "erasure.xml").getroot()
                 .iter("testcase")}
        assert names == {"circle-baseline", "circle-text"}
    finally:
        shutil.rmtree(fallback, ignore_errors=True)
    root = ET.parse(junitxml).getroot()
    cases = {c.get("name") for c in root.iter("testcase")}
    assert {"test_erasure[circle-text]", "test_erasure[circle-baseline]"} <= cases, \
        "pytest's own --junitxml still comes out"
    props = {p.get("name"): p.get("value") for p in root.iter("property")}
    assert str(fallback) in props["erasure_outputs"], "CI sees where the reports went"
