"""Reports as a registry (issue 23): a report writer from outside the package, added through the
`pytest_erasure.reports` entry point of an installed-looking distribution, and a report.json
field added by a plugin's `pytest_erasure_report_json` hook, both reach a real audit of the tiny
world end to end; neither touches a file of the package."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_erasure.records import AuditRecord
from pytest_erasure.report.files import write_reports
from pytest_erasure.report.json import read_report
from pytest_erasure.report.writers import BUILTIN, ReportWriter, registry

REPO = Path(__file__).resolve().parents[2]
AUDIT = "def test_erasure(erasure_case, erasure_check):\n    erasure_check(erasure_case)\n"

# A made-up writer: one CSV line per case. It imports nothing of ours: a writer only needs the
# protocol's shape (name, filename, render) and the record's fields. A second one claims the
# name "json" and must not replace ours.
CSV_WRITER = '''
class CsvWriter:
    name = "csv"
    filename = "report.csv"

    def render(self, record, extensions):
        lines = ["case_id,verdict,crr,n"]
        for case in record.cases:
            lines.append(f"{case.case_id},{case.verdict},{case.rate.crr},{case.rate.n}")
        if extensions:
            lines.append("# extensions: " + ",".join(sorted(extensions)))
        return "\\n".join(lines) + "\\n"


class Impostor:
    name = "json"
    filename = "impostor.json"

    def render(self, record, extensions):
        return "{}"


WRITERS = [CsvWriter(), Impostor()]
'''

# A plugin adding a field to report.json through our hookspec.
FIELD_PLUGIN = '''
def pytest_erasure_report_json(record, config):
    return {"acme": {"ticket": "REL-7", "cases": len(record.cases),
                     "rootdir": config.rootpath.name}}
'''


def write_writer_package(root: Path) -> Path:
    """An installed-looking distribution: its module and a dist-info with the entry point."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "csv_report.py").write_text(CSV_WRITER)
    info = root / "csv_report-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: csv-report\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[pytest_erasure.reports]\ncsv = csv_report:WRITERS\n")
    return root


@pytest.fixture
def writer_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    package = write_writer_package(tmp_path / "site")
    monkeypatch.syspath_prepend(str(package))  # importlib.metadata finds the dist-info here
    return package


def test_registry_lists_builtins_first_and_a_plugin_cannot_take_their_names(writer_on_path):
    writers = registry()
    assert list(writers)[:len(BUILTIN)] == ["json", "markdown", "html", "plot"]
    assert "csv" in writers and isinstance(writers["csv"], ReportWriter)
    assert writers["json"].filename == "report.json"  # the impostor was refused


def test_listing_writers_imports_no_renderer(writer_on_path: Path) -> None:
    code = ("import json, sys; import pytest_erasure.plugin; "
            "from pytest_erasure.report.writers import registry; names = list(registry()); "
            "print(json.dumps([names, [m for m in ('matplotlib', 'pytest_erasure.report.html', "
            "'torch') if m in sys.modules]]))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(writer_on_path)])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env=env, cwd=REPO)
    names, imported = json.loads(out.stdout)
    assert names == ["json", "markdown", "html", "plot", "csv"] and imported == []


def test_a_plugin_writer_and_json_field_reach_a_real_audit(pytester: pytest.Pytester, tiny_world,
                                                           writer_on_path: Path) -> None:
    out = pytester.path / "report"
    pytester.makepyfile(test_audit=AUDIT)
    pytester.makeconftest(FIELD_PLUGIN)
    pytester.makeini("[pytest]\nerasure_seed = 7\n")
    result = pytester.runpytest_inprocess(
        f"--standard-model={tiny_world['standard']}", f"--erased-model={tiny_world['erased']}",
        f"--concepts={tiny_world['concepts']}", "--samples", "4", "--steps", "2",
        "--batch-size", "4", "-p", "no:randomly", "--erasure-gate=point",
        "--scenarios", "text,baseline", f"--erasure-report={out}")
    result.assert_outcomes(passed=2)
    report = json.loads((out / "report.json").read_text())
    assert report["extensions"]["acme"] == {"ticket": "REL-7", "cases": 2,
                                            "rootdir": pytester.path.name}
    # where each setting came from is recorded once, in the record's config, not as an extension
    sources = report["config"]["sources"]
    assert sources["samples"] == "command line" and sources["seed"] == "ini file (erasure_seed)"
    assert sources["dtype"] == "default" and report["config"]["seed"] == 7
    page = (out / "report.html").read_text()
    assert '<tr><td>seed</td><td><span class="v">7</span></td><td class="small">ini file' in page
    csv = (out / "report.csv").read_text().splitlines()
    assert csv[0] == "case_id,verdict,crr,n" and len(csv) == 4
    assert csv[1].startswith("circle-baseline,pass,") and csv[1].endswith(",4")
    assert csv[-1] == "# extensions: acme"  # ours adds none: sources live in config
    assert not (out / "impostor.json").exists()
    assert read_report(out / "report.json").cases[0].case_id == "circle-baseline"


def test_write_reports_outside_pytest_adds_no_plugin_fields(tmp_path: Path) -> None:
    record = AuditRecord(run_id="r", started="2026-11-22T07:30:00+00:00", config={},
                         provenance={}, detectors={}, versions={})
    paths = write_reports(record, tmp_path)
    assert "extensions" not in json.loads(paths["json"].read_text())
    paths = write_reports(record, tmp_path, extensions={"acme": {"signed": "QA"}})
    assert json.loads(paths["json"].read_text())["extensions"] == {"acme": {"signed": "QA"}}
