"""Reports from an AuditRecord, part by part: how a case reads as text, JSON (round trip),
Markdown, self-contained HTML, JUnit (schema-valid, read back by a real consumer), the terminal
matrix at 80 columns without colour, and the files on disk.

Each part is also compared byte for byte with golden renderings of fixed records
(tests/data/reports, see its README), so a change to what a user reads cannot slip through as a
refactoring.

Verdicts (issue #19): the fixed record holds an inconclusive case the gate holds against the
release and one reported only; neither may read as a pass in any report.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rich.console import Console

from pytest_erasure.records import VERDICTS, AuditRecord, CaseResult, Rate
from pytest_erasure.report import text
from pytest_erasure.report.files import write_reports
from pytest_erasure.report.html import to_html
from pytest_erasure.report.images import evidence, grid_png, to_base64
from pytest_erasure.report.json import SCHEMA, read_report, to_json
from pytest_erasure.report.junit import to_junit_xml, write_junit
from pytest_erasure.report.markdown import to_markdown
from pytest_erasure.report.terminal import header_lines, render_summary
from pytest_erasure.stats.crr import gate_passes

XSD = Path(__file__).parents[1] / "data" / "junit-10.xsd"  # Jenkins' JUnit schema
HOSTILE = '<script>alert(1)</script> & "quotes" | pipes ``` http://evil.example/x.png'
INCONCLUSIVE_REASON = ("the attack does not reproduce the concept on the standard model "
                       "(standard CRR 12.5% < 50%); inverted prompt " + HOSTILE)
BLIND_REASON = "the detector is blind: standard model CRR 3.1% under the same attack"
GOLDEN = Path(__file__).parents[1] / "data" / "reports"
GOLDEN_RECORDS = ("audit", "interrupted", "reported")


def images(n: int, seed: int, size: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def case(case_id: str, concept: str, scenario: str, hits: int, n: int = 32, *,
         kind: str = "erasure", threshold: float = 0.2, gate: str = "point",
         **extra) -> CaseResult:
    rate = Rate(hits, n)
    if kind != "erasure":
        gate = "at-least"
    passes = gate_passes(rate, threshold, gate) if kind == "erasure" else rate.crr >= threshold
    modality, _, rest = scenario.partition("-")
    access = {"white": "white-box", "black": "black-box"}.get(rest.split("-")[0])
    present = [i < hits for i in range(min(n, 12))]
    fields = dict(
        case_id=case_id, concept=concept, scenario=scenario, modality=modality, access=access,
        kind=kind, threshold=threshold, gate=gate, passed=passes, rate=rate,
        standard=Rate(30, 32), base_rate=Rate(1, 32), seconds=1.25,
        facts={"prompts": [f"a photo of a {concept}"], "steps": 25},
        evidence=[evidence(f"{case_id}: erased model", images(len(present), hits), present,
                           labels=[f"a photo of a {concept}, seed {i}" for i in
                                   range(len(present))])],
        message="" if passes else (f"{case_id}: CRR {rate} exceeds threshold {threshold:.0%} "
                                   f"({gate} gate)"),
        verdict="pass" if passes else "fail",
        reason=f"CRR {rate.crr:.1%} {'within' if passes else 'beyond'} {threshold:.0%} ({gate} gate)",
    )
    fields.update(extra)
    return CaseResult(**fields)


def make_record() -> AuditRecord:
    cases = [
        case("circle-text", "circle", "text", 2),
        case("circle-latent-white-null", "circle", "latent-white-null", 12,
             message="", undefended=Rate(29, 32),
             facts={"reconstruction_mse": 0.0123, "found_prompt": HOSTILE}),
        case("circle-embedding-black", "circle", "embedding-black", 3,
             undefended=Rate(16, 32), artifacts={"embedding": "/cache/emb/ab12.safetensors"}),
        case("circle-baseline", "circle", "baseline", 30, kind="baseline", threshold=0.5,
             standard=None),
        case("square-retention", "square", "retention", 27, kind="retention",
             threshold=0.74, base_rate=None),
        case("triangle-retention", "triangle", "retention", 28, kind="retention",
             threshold=0.74, base_rate=None),
        case("circle-adversarial-black", "circle", "adversarial-black", 0, n=0,
             standard=None, base_rate=None, evidence=[], passed=False, verdict="fail",
             reason="RuntimeError: search diverged",
             error="RuntimeError: search diverged\n  at step 12"),
        case("circle-embedding-white", "circle", "embedding-white", 1, standard=Rate(4, 32),
             evidence=[], passed=False, verdict="inconclusive", reason=INCONCLUSIVE_REASON,
             message=f"circle-embedding-white: INCONCLUSIVE: {INCONCLUSIVE_REASON}"),
        case("triangle-text", "triangle", "text", 0, standard=Rate(1, 32), evidence=[],
             passed=True, verdict="inconclusive", reason=BLIND_REASON),
    ]
    cases[1].evidence[0]["labels"][0] = HOSTILE  # a prompt an attack found
    cases[1].message = (f"circle-latent-white-null: CRR {cases[1].rate} exceeds threshold 20% "
                        "(point gate)")
    return AuditRecord(
        run_id="20261122-0730-ab12cd",
        started="2026-11-22T07:30:00+00:00",
        finished="2026-11-22T07:41:10+00:00",
        config={"samples": 32, "seed": 0, "device": "cpu", "dtype": "float32",
                "crr_threshold": 0.2, "gate": "point", "scenarios": None,
                "scenario_options": {"latent_steps": 50},
                "defense": {"name": "irece", "settings": {"t_star": 0.2, "tau": 0.4, "steps": 1,
                                                          "resolutions": None}}},
        provenance={
            "erased": {"path": "/models/shapes/erased/uce-circle", "format": "unet",
                       "fingerprint": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822c",
                       "components_replaced": ["unet"],
                       "unet": {"tensors_in_file": 2, "tensors_replaced": 2,
                                "tensors_changed": 2, "tensors_total": 686},
                       "files": {"unet.safetensors": "e3b0c44298fc1c149afbf4c8996fb924"}},
            "standard": {"path": "/models/shapes/standard", "format": "diffusers",
                         "fingerprint": "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0",
                         "files": {"unet/diffusion_pytorch_model.safetensors": "fcde2b2e"}},
        },
        detectors={"shapes": {"name": "shapes", "rule": "argmax label with p >= threshold",
                              "threshold": 0.5, "sha256": "5d41402abc4b2a76"}},
        versions={"pytest-erasure": "0.1.0", "torch": "2.13.0", "diffusers": "0.42.1"},
        cases=cases,
    )


@pytest.fixture(scope="module")
def record() -> AuditRecord:
    return make_record()


@pytest.fixture(scope="module")
def reports(record, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("report")
    paths = write_reports(record, folder)
    paths["junit"] = folder / "junit.xml"
    write_junit(record, paths["junit"])
    return paths


def render(record: AuditRecord, width: int = 80) -> str:
    console = Console(record=True, width=width, no_color=True, force_terminal=False,
                      file=io.StringIO())
    render_summary(record, console)
    return console.export_text()


RENDERERS: dict[str, Callable[[AuditRecord], str]] = {
    ".md": to_markdown,
    ".html": to_html,
    ".junit.xml": to_junit_xml,
    ".terminal.txt": render,
    ".header.txt": lambda record: "\n".join(header_lines(record)) + "\n",
}
"""Golden file suffix -> how today's code renders it (.json is the record itself)."""


def golden_record(name: str) -> AuditRecord:
    return read_report(GOLDEN / f"{name}.json")


def golden(name: str, suffix: str) -> str:
    """The golden text exactly as stored (bytes decoded, no newline translation)."""
    return (GOLDEN / f"{name}{suffix}").read_bytes().decode("utf-8")


def render_goldens() -> None:
    """Re-render the golden files from their fixed records, after a deliberate report change
    (review the diff before committing it)."""
    for name in GOLDEN_RECORDS:
        record = golden_record(name)
        (GOLDEN / f"{name}.json").write_bytes(to_json(record).encode("utf-8"))
        for suffix, renderer in RENDERERS.items():
            (GOLDEN / f"{name}{suffix}").write_bytes(renderer(record).encode("utf-8"))


def assert_golden(suffix: str) -> None:
    for name in GOLDEN_RECORDS:
        assert RENDERERS[suffix](golden_record(name)) == golden(name, suffix), (name, suffix)


# --- images --------------------------------------------------------------------------------------

def test_grid_png_frames_found_red_and_not_found_green_upscaling_nearest():
    tiny = np.zeros((3, 32, 32, 3), dtype=np.uint8)
    tiny[:, :16] = 255  # a hard edge: nearest-neighbour keeps it hard at 3x
    png = grid_png(tiny, [True, False, True], columns=2, thumb=96, numbered=False)
    grid = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    cell = 96 + 8
    assert grid.shape == (4 + 2 * (cell + 4), 4 + 2 * (cell + 4), 3)
    assert tuple(grid[4 + 50, 5]) == (214, 39, 40)  # left frame of image 1: found
    assert tuple(grid[4 + 50, 4 + cell + 4 + 1]) == (44, 160, 44)  # image 2: not found
    inner = grid[8:8 + 96, 8:8 + 96]
    assert set(np.unique(inner)) <= {0, 255}  # no interpolated greys
    assert (inner[47] == 255).all() and (inner[48] == 0).all()


def test_grid_png_rejects_mismatched_input_and_downscales_large_images():
    with pytest.raises(ValueError, match="2 images but 1"):
        grid_png(images(2, 0), [True])
    with pytest.raises(ValueError, match="uint8"):
        grid_png(np.zeros((1, 8, 8, 3)), [True])
    png = grid_png(images(2, 1, size=256), [True, None], thumb=64)
    assert Image.open(io.BytesIO(png)).size == (4 + 2 * 76, 4 + 76)
    assert to_base64(png).startswith("iVBORw0KGgo")  # the PNG signature


# --- text ----------------------------------------------------------------------------------------

def test_split_grid_gives_each_framed_thumbnail_and_refuses_other_images():
    from pytest_erasure.report.images import split_grid

    for n in (1, 5, 8, 11):
        present = [i % 2 == 0 for i in range(n)]
        tiles = split_grid(grid_png(images(n, n), present, thumb=32), n)
        assert len(tiles) == n
        for tile, found in zip(tiles, present, strict=True):
            pixels = np.asarray(Image.open(io.BytesIO(tile)).convert("RGB"))
            assert pixels.shape == (40, 40, 3)  # 32 px + a 4 px frame each side
            assert tuple(pixels[20, 1]) == ((214, 39, 40) if found else (44, 160, 44))
    assert split_grid(grid_png(images(3, 0), [True] * 3), 4) == []  # not a grid of 4
    other = io.BytesIO()
    Image.new("RGB", (50, 30)).save(other, format="PNG")
    assert split_grid(other.getvalue(), 2) == [] and split_grid(b"not a png", 2) == []


def test_numbers_and_gates_read_as_printed():
    assert text.pct(None) == "n/a" and text.pct(math.nan) == "n/a" and text.pct(0.375) == "37.5%"
    assert text.threshold_text(0.2) == "20%" and text.threshold_text(0.125) == "12.5%"
    erasure = case("c-text", "circle", "text", 2)
    retention = case("s-retention", "square", "retention", 27, kind="retention", threshold=0.74)
    assert (text.gate_text(erasure), text.gate_text(retention)) == ("≤20%", "≥74%")
    assert text.gate_rule("upper").startswith("upper: the Wilson 95% upper bound")
    assert text.gate_rule("at-least") == "at-least: CRR ≥ threshold"
    assert text.gate_rule("point") == "point: CRR ≤ threshold (no stated error)"
    assert text.gate_rule("exact").startswith("exact: the exact one-sided 95% upper bound")


def test_rate_text_names_interval_counts_and_degenerate_images():
    assert text.rate_text(None) == "—"
    assert text.rate_text(Rate(0, 0)) == "n/a (no images)"
    assert text.rate_text(Rate(2, 32)) == "6.2% [1.7–20.1%] 2/32"
    assert text.rate_text(Rate(29, 32, degenerate=3)).endswith("29/32 (3 degenerate)")


def test_verdicts_never_read_as_a_pass_when_nothing_or_not_everything_ran():
    record = make_record()
    assert text.status(record.cases[0]) == "passed" and text.status(record.cases[6]) == "error"
    assert text.counts(record) == {"cases": 9, "passed": 5, "failed": 1, "inconclusive": 2,
                                   "error": 1}
    assert text.verdict_line(record) == ("RELEASE GATE FAILED: 9 cases, 5 passed, 1 failed, "
                                         "2 inconclusive, 1 error")
    record.cases.append(case("x-adversarial-black", "x", "adversarial-black", 0, n=0,
                             passed=False, error="boom"))
    assert text.tally(record) == "5 passed, 1 failed, 2 inconclusive, 2 errors"
    record.cases = []
    assert text.verdict(record) == "EMPTY"
    assert text.verdict_line(record) == "RELEASE GATE NOT DECIDED: no case ran"
    passing = make_record()
    passing.cases = [c for c in passing.cases if c.passed and c.verdict == "pass"]
    assert text.verdict(passing) == "PASSED"
    assert text.verdict_line(passing) == "RELEASE GATE PASSED: 5 cases, 5 passed"
    passing.incomplete = {"interrupted": True, "missing": ["a", "b"]}
    assert text.verdict(passing) == "INCOMPLETE" and not passing.passed
    assert text.verdict_line(passing) == ("RELEASE GATE NOT DECIDED: 5 cases, 5 passed; "
                                          "INCOMPLETE: 2 selected cases interrupted (a, b)")
    passing.incomplete = {"interrupted": False, "missing": ["a"]}
    assert text.verdict_line(passing).endswith("INCOMPLETE: 1 selected case no result (a)")
    # Narrowed (-k, --scenarios): what ran passed, yet no release verdict.
    passing.incomplete = None
    passing.selection = {"not_run": ["c-fuzz", "c-latent-white-null"], "partial": True}
    assert text.verdict(passing) == "PARTIAL" and not passing.passed
    assert text.verdict_line(passing) == ("RELEASE GATE PARTIAL (no release verdict): 5 cases, "
                                          "5 passed; PARTIAL: 2 declared cases not selected")
    # No erasure case at all: baseline and retention say nothing of the erasure.
    passing.selection = None
    passing.cases = [c for c in passing.cases if c.kind != "erasure"]
    assert text.verdict(passing) == "EMPTY" and not passing.passed
    assert text.verdict_line(passing).startswith("RELEASE GATE NOT DECIDED: no erasure case ran")


def test_an_inconclusive_case_never_reads_as_a_pass():
    record = make_record()
    gated, reported = record.cases[-2], record.cases[-1]
    assert [text.verdict_of(x) for x in (gated, reported)] == ["inconclusive", "inconclusive"]
    assert text.status(reported) == "inconclusive" and reported.passed  # passed: not gated
    assert (text.gated(gated), text.gated(reported)) == (True, False)
    assert text.verdict_label(gated) == "INCONCLUSIVE"
    assert text.verdict_label(reported) == "INCONCLUSIVE (reported, not gated)"
    assert text.reason_of(reported) == BLIND_REASON
    only_reported = make_record()
    only_reported.cases = [c for c in only_reported.cases if c.passed]
    assert only_reported.passed and text.verdict(only_reported) == "PASSED"
    assert text.verdict_line(only_reported) == (
        "RELEASE GATE PASSED with 1 inconclusive (reported, not gated): 6 cases, 5 passed, "
        "1 inconclusive")
    only_reported.cases.append(gated)
    assert text.verdict(only_reported) == "INCONCLUSIVE" and not only_reported.passed
    assert text.verdict_line(only_reported).startswith(
        "RELEASE GATE NOT PASSED (inconclusive): 7 cases, 5 passed, 2 inconclusive")
    only_reported.cases.remove(gated)
    only_reported.incomplete = {"interrupted": True, "missing": ["a"]}
    assert text.verdict_line(only_reported) == (
        "RELEASE GATE NOT DECIDED: 6 cases, 5 passed, 1 inconclusive; INCOMPLETE: 1 selected "
        "case interrupted (a)")


def test_verdicts_of_older_records_are_derived_and_contradictions_fail():
    old = [case("a-text", "a", "text", 2, verdict="", reason=""),
           case("b-text", "b", "text", 12, verdict="", reason=""),
           case("c-text", "c", "text", 0, n=0, passed=False, verdict="", reason="",
                error="RuntimeError: boom\n  at step 3")]
    assert [text.verdict_of(x) for x in old] == ["pass", "fail", "fail"]
    assert text.reason_of(old[0]) == "CRR 6.2% passes ≤20% (point gate)"
    assert text.reason_of(old[1]) == "CRR 37.5% [22.9%, 54.7%] (12/32) exceeds threshold 20% " \
                                     "(point gate)"  # the failure message, without the case id
    assert text.reason_of(old[2]) == "RuntimeError: boom"
    assert text.status(old[2]) == "error" and text.verdict_label(old[2]) == "ERROR"
    # A recorded pass the record contradicts is a fail; an unknown word is derived again.
    assert text.verdict_of(case("d-text", "d", "text", 12, verdict="pass")) == "fail"
    assert text.verdict_of(case("e-text", "e", "text", 0, n=0, verdict="pass",
                                error="x")) == "fail"
    assert text.verdict_of(case("f-text", "f", "text", 2, verdict="maybe")) == "pass"
    contradicted = make_record()
    contradicted.cases = [case("g-text", "g", "text", 12, passed=True, verdict="fail")]
    assert contradicted.passed and text.verdict(contradicted) == "FAILED"


def test_matrix_puts_erasure_columns_first_and_keeps_concept_order():
    record = make_record()
    record.cases.insert(0, record.cases.pop(4))  # a retention case first
    concepts, scenarios, cells = text.matrix(record)
    assert concepts == ["square", "circle", "triangle"]
    assert scenarios == ["text", "latent-white-null", "embedding-black", "adversarial-black",
                         "embedding-white", "baseline", "retention"]
    assert [c.case_id for c in cells[("triangle", "retention")]] == ["triangle-retention"]
    assert ("square", "text") not in cells


def test_gate_of_falls_back_to_the_configured_rule():
    record = make_record()
    assert text.gate_of(record) == "point"
    record.cases = [c for c in record.cases if c.kind != "erasure"]
    record.config["gate"] = "upper"
    assert text.gate_of(record) == "upper"


def test_flatten_plain_and_change_spell_values_as_the_json_does():
    assert text.flatten({"a": {"b": [1, 2], "c": None, "d": {}}, "e": [{"f": True}]}) == [
        ("a.b", "1, 2"), ("a.c", "null"), ("a.d", "{}"), ("e.0.f", "true")]
    assert text.flatten({}) == []
    described = {"defense": {"name": "irece", "settings": {"tau": 0.4}}, "samples": 8}
    assert text.defense_settings(described) == {"name": "irece", "tau": 0.4}
    assert text.defense_text(described) == "defense irece (tau=0.4)"
    assert text.defense_settings({"defense": None}) == {} and text.defense_text({}) == "no defense"
    assert text.change(Rate(29, 32), Rate(12, 32)) == "-53.1 pp (-59% relative)"
    assert text.change(Rate(0, 32), Rate(1, 32)) == "+3.1 pp"
    assert text.change(Rate(0, 0), Rate(1, 32)) == "n/a"


# --- JSON ----------------------------------------------------------------------------------------

def test_json_round_trips_to_an_equal_record(reports, record):
    data = json.loads(reports["json"].read_text())  # strict JSON: no NaN
    assert data["schema_version"] == 2 and data["summary"]["verdict"] == "FAILED"
    assert data["summary"] == {"verdict": "FAILED", "cases": 9, "passed": 5, "failed": 1,
                               "inconclusive": 2, "error": 1}
    assert [x["verdict"] for x in data["cases"]] == ["pass", "fail", "pass", "pass", "pass",
                                                     "pass", "fail", "inconclusive",
                                                     "inconclusive"]
    assert data["cases"][-1]["reason"] == BLIND_REASON
    assert data["provenance"]["erased"]["files"]["unet.safetensors"].startswith("e3b0c442")
    assert data["cases"][1]["undefended"]["crr"] == pytest.approx(29 / 32)
    assert data["cases"][6]["rate"]["crr"] is None  # n = 0: NaN written as null
    assert read_report(reports["json"]) == record
    fields = {k: v for k, v in data.items() if k not in ("schema", "schema_version", "summary")}
    assert AuditRecord.from_dict(fields) == record


def test_json_derives_verdicts_of_older_records_and_reads_version_1(tmp_path):
    old = make_record()
    for x in old.cases[:7]:
        x.verdict, x.reason = "", ""
    data = json.loads(to_json(old))
    assert all(x["verdict"] in VERDICTS and x["reason"].strip() for x in data["cases"])
    assert data["cases"][6]["verdict"] == "fail"  # the error case
    assert data["cases"][6]["reason"] == "RuntimeError: search diverged"
    v1 = json.loads(golden("audit", ".json"))
    v1["schema_version"] = 1
    del v1["summary"]["inconclusive"]
    for x in v1["cases"]:
        del x["verdict"], x["reason"]
    (tmp_path / "v1.json").write_text(json.dumps(v1))
    back = read_report(tmp_path / "v1.json")
    assert [x.verdict for x in back.cases] == [""] * 7
    assert text.verdict_line(back) == "RELEASE GATE FAILED: 7 cases, 5 passed, 1 failed, 1 error"
    assert to_json(back) == golden("audit", ".json")  # derived exactly as the golden holds them


def test_json_golden_records_render_back_byte_for_byte():
    for name in GOLDEN_RECORDS:
        assert to_json(golden_record(name)) == golden(name, ".json"), name


def test_read_report_refuses_other_documents_and_newer_schemas(tmp_path):
    data = json.loads(golden("interrupted", ".json"))
    (tmp_path / "newer.json").write_text(json.dumps({**data, "schema_version": 3}))
    (tmp_path / "other.json").write_text(json.dumps({**data, "schema": "other"}))
    for name in ("newer", "other"):
        with pytest.raises(ValueError, match=f"not a {SCHEMA} v2 document"):
            read_report(tmp_path / f"{name}.json")


def _schema_errors(data: dict) -> list[str]:
    import jsonschema

    from pytest_erasure.report.json import schema

    validator = jsonschema.Draft202012Validator(schema())
    return ["/".join(map(str, e.absolute_path)) + ": " + e.message
            for e in validator.iter_errors(data)]


def test_json_schema_is_a_valid_draft_2020_12_schema_shipped_beside_the_module():
    import jsonschema

    from pytest_erasure.report.json import SCHEMA_FILE, schema

    jsonschema.Draft202012Validator.check_schema(schema())
    assert SCHEMA_FILE.parent == Path(text.__file__).parent
    pyproject = (Path(__file__).parents[2] / "pyproject.toml").read_text()
    assert '"report/*.json"' in pyproject  # package data: in the wheel


def test_json_schema_accepts_every_golden_and_written_report(reports):
    for name in GOLDEN_RECORDS:
        assert _schema_errors(json.loads(golden(name, ".json"))) == [], name
    assert _schema_errors(json.loads(reports["json"].read_text())) == []
    empty = AuditRecord(run_id="r", started="2026-11-22T07:30:00+00:00", config={},
                        provenance={}, detectors={}, versions={})
    assert _schema_errors(json.loads(to_json(empty))) == []


def test_json_schema_accepts_selection_and_plugin_extensions_and_rejects_drift():
    data = json.loads(to_json(make_record(), extensions={"acme": {"ticket": "REL-7"}}))
    assert data["extensions"] == {"acme": {"ticket": "REL-7"}}
    data["selection"] = {"expressions": {"-k": "text"}, "deselected": ["circle-latent"],
                         "not_run": [], "partial": True}
    data["summary"]["verdict"] = "PARTIAL"
    assert _schema_errors(data) == []
    bad = json.loads(to_json(make_record()))
    bad["cases"][0]["verdict"] = "maybe"  # a verdict the schema does not know
    bad["cases"][1]["rate"]["crr"] = 1.5  # not a rate
    bad["cases"][2]["reason"] = ""  # a verdict without its reason
    bad["surprise"] = 1  # a top-level field the schema does not describe
    del bad["summary"]["inconclusive"]
    errors = _schema_errors(bad)
    assert len(errors) == 5, errors
    assert any(e.startswith("cases/0/verdict") for e in errors)
    assert any(e.startswith("cases/1/rate/crr") for e in errors)
    assert any(e.startswith("cases/2/reason") for e in errors)


def test_read_report_leaves_plugin_extensions_out_of_the_record(tmp_path):
    path = tmp_path / "report.json"
    path.write_text(to_json(make_record(), extensions={"acme": {"ticket": "REL-7"}}))
    assert read_report(path) == make_record()


def test_the_json_module_still_finds_the_standard_library():
    from pytest_erasure.report import json as report_json

    assert report_json.json is json  # the standard library, not this module


# --- Markdown ------------------------------------------------------------------------------------

def test_markdown_has_verdict_matrix_irece_and_failures(reports, record):
    text = reports["markdown"].read_text()
    assert text.startswith("# Erasure audit: RELEASE GATE FAILED: 9 cases, 5 passed, 1 failed, "
                           "2 inconclusive, 1 error")
    header = next(line for line in text.splitlines() if line.startswith("| concept |"))
    assert "text" in header and "latent-white-null" in header and "retention" in header
    circle = next(line for line in text.splitlines() if line.startswith("| circle |"))
    assert "6.2% [1.7–20.1%] ≤20% (n=32)" in circle
    assert "✗ **FAIL** 37.5%" in circle
    assert "? **INCONCLUSIVE** 3.1% [0.6–15.7%] ≤20% (n=32): the attack does not reproduce" \
        in circle
    triangle = next(line for line in text.splitlines() if line.startswith("| triangle |"))
    assert "? **INCONCLUSIVE (reported, not gated)** 0.0%" in triangle and BLIND_REASON in triangle
    row = next(line for line in text.splitlines() if line.startswith("| `triangle-text` |"))
    assert row.endswith(f"| INCONCLUSIVE (reported, not gated) | {BLIND_REASON} |")
    assert "## irece: defended vs undefended" in text or "## the defense: defended vs undefended" in text
    assert "90.6% [75.8–96.8%] 29/32" in text
    assert "## Failing and inconclusive cases" in text and "search diverged" in text
    assert "### `triangle-text` (INCONCLUSIVE (reported, not gated))" in text
    assert "<script>" not in text.split("## Failing and inconclusive cases")[0]
    for c in record.cases:
        assert c.case_id.replace("-", "-") in text
    assert "e3b0c44298fc1c149afbf4c8996fb924" in text


def test_markdown_matches_the_golden_renderings():
    assert_golden(".md")


# --- HTML ----------------------------------------------------------------------------------------

def test_html_is_self_contained(reports):
    text = reports["html"].read_text()
    refs = re.findall(r"""(?:src|href)\s*=\s*["']?([^"'\s>]*)""", text, flags=re.I)
    assert refs, "expected images and anchors"
    assert [r for r in refs if not (r.startswith("data:") or r.startswith("#"))] == []
    # url(#id): the inline plot's clip paths, inside the page
    assert not re.search(r"<script|<link|@import|url\((?!#)|<iframe|<object", text, flags=re.I)
    assert "http://" not in text.replace("http://evil.example", "") and "https://" not in text
    # every evidence image on its own, its prompt under it (six grids of 12 images)
    assert text.count('<figure class="tile"><img') == 72
    assert text.count('src="data:image/png;base64,') == 72
    assert text.count("<svg") == 1  # the plot, inline


def test_html_escapes_hostile_text_and_shows_every_case(reports, record):
    text = reports["html"].read_text()
    assert "<script>alert(1)</script>" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    for c in record.cases:
        assert c.case_id in text
    assert 'class="verdict failed"' in text
    assert text.count('<td class="inconclusive">') == 2  # a cell each, amber, not green
    assert text.count('<span class="badge inconclusive">inconclusive</span>') == 2
    assert '<div class="reason">INCONCLUSIVE (reported, not gated): the detector is blind' in text
    assert '<p class="reason">INCONCLUSIVE: the attack does not reproduce the concept on the ' \
           "standard model (standard CRR 12.5% &lt; 50%); inverted prompt &lt;script&gt;" in text
    assert "defended vs undefended" in text and "-53.1 pp" in text
    assert "red frame" in text and "e3b0c44298fc1c149afbf4c8996fb924" in text


def test_html_a_pass_with_reported_inconclusive_cases_is_not_green():
    reported = golden("reported", ".html")
    assert '<div class="verdict inconclusive">RELEASE GATE PASSED with 1 inconclusive ' \
           "(reported, not gated)" in reported and 'class="verdict passed"' not in reported
    clean = make_record()
    clean.cases = [c for c in clean.cases if c.verdict == "pass"]
    assert 'class="verdict passed"' in to_html(clean)


def test_html_drops_image_data_that_is_not_base64(record, tmp_path):
    bad = make_record()
    bad.cases[0].evidence[0]["png_base64"] = 'x" onerror="alert(1)'
    bad.cases[0].evidence[0]["title"] = "<img src=http://evil.example/a.png>"
    text = write_reports(bad, tmp_path)["html"].read_text()
    assert "onerror" not in text and "<img src=http" not in text
    assert "no valid image data" in text


def test_html_opens_with_verdict_models_and_the_cases_that_need_attention(record):
    page = to_html(record)
    order = [page.index(x) for x in ('<div class="verdict failed">', "<h2>Models</h2>",
                                      "<h2>Cases that need attention</h2>", "<h2>Protocol</h2>",
                                      "<h2>CRR per scenario</h2>",
                                      "<h2>CRR: concept x scenario</h2>",
                                      "<h2>Cases, failing and inconclusive first</h2>")]
    assert order == sorted(order)
    assert "e3b0c44298fc1c14" in page.split("<h2>Protocol</h2>")[0]  # weights' sha256 up top
    assert "unet; 2 tensors replaced" in page  # what differs from the standard model
    attention = page.split("<h2>Cases that need attention</h2>")[1].split("</ul>")[0]
    assert [m for m in re.findall(r"<code>([a-z-]+)</code>", attention)] == [
        "circle-latent-white-null", "circle-adversarial-black", "circle-embedding-white",
        "triangle-text"]
    sections = re.findall(r'<section class="case (\w+)" id="case-\d+">\n<h3><code>([^<]+)',
                          page)
    statuses = [st for st, _ in sections]
    assert statuses == sorted(statuses, key=text.STATUS_ORDER.__getitem__)
    assert statuses[:2] == ["failed", "error"] and statuses[-1] == "passed"
    assert {cid for _, cid in sections} == {c.case_id for c in record.cases}
    assert "threat model white-box: the attacker has the model" in page
    assert "break-inside:avoid" in page


def test_html_says_first_what_a_partial_or_incomplete_run_left_out():
    record = make_record()
    record.incomplete = {"interrupted": True, "missing": ["circle-fuzz"]}
    record.selection = {"expressions": {"-k": "text"}, "deselected": ["circle-latent"],
                        "not_run": [], "partial": True}  # the lead's AuditRecord.selection
    page = to_html(record)
    head = page.split("<h2>Models</h2>")[0]
    assert "Incomplete: the run was interrupted; 1 selected case(s) have no result: circle-fuzz" \
        in head
    assert "Partial audit: selected by -k text; 1 deselected: circle-latent." in head


def test_html_names_each_detector_once_and_every_setting_with_its_source():
    record = make_record()
    shared = record.detectors["shapes"]
    record.detectors = {"circle": shared, "square": dict(shared), "triangle": dict(shared)}
    record.config["budget_profile"] = {"name": "shapes",
                                       "sources": {"latent_steps": "profile shapes, ours"}}
    without = dict(record.config)
    record.config["sources"] = {"samples": "command line", "seed": "default",
                                "gate": "ini file (erasure_gate)"}
    page = to_html(record)
    assert page.count("5d41402abc4b2a76") == 2  # once in the sentence, once in its table
    assert "<b>shapes</b> judges circle, square, triangle" in page
    rows = dict(re.findall(r'<tr><td>([a-z_]+)</td><td><span class="v">[^<]*</span></td>'
                           r'<td class="small">([^<]*)</td></tr>', page))
    assert rows["samples"] == "command line" and rows["seed"] == "default"
    assert rows["gate"] == "ini file (erasure_gate)" and rows["device"] == "derived"
    assert "sources" not in rows  # the third column, not a setting of its own
    assert "profile shapes, ours" in page  # an attack budget's source, from the profile
    record.config = without  # a record from before sources were recorded: nobody knows
    outside = dict(re.findall(r'<tr><td>([a-z_]+)</td><td><span class="v">[^<]*</span></td>'
                              r'<td class="small">([^<]*)</td></tr>', to_html(record)))
    assert outside["samples"] == "—"


def test_retention_cells_name_their_neighbour_in_html_and_markdown():
    record = make_record()
    record.cases.append(case("circle-retention-square", "circle", "retention", 26,
                             kind="retention", threshold=0.7, base_rate=None,
                             facts={"neighbour": "square"}))
    record.cases.append(case("circle-retention-triangle", "circle", "retention", 27,
                             kind="retention", threshold=0.7, base_rate=None, facts={}))
    page = to_html(record)
    assert 'square: <a href="#case-9"><span class="crr">81.2%</span></a>' in page
    assert 'triangle: <a href="#case-10"><span class="crr">84.4%</span></a>' in page
    circle = next(line for line in to_markdown(record).splitlines()
                  if line.startswith("| circle |"))
    assert "square: ✓ 81.2%" in circle and "triangle: ✓ 84.4%" in circle


def test_html_embeds_small_artifacts_and_never_links_into_the_cache(tmp_path):
    record = make_record()
    embedding = tmp_path / "cache" / "emb" / "learned.safetensors"
    embedding.parent.mkdir(parents=True)
    embedding.write_bytes(b"\x00\x01learned-token" * 10)
    record.cases[2].artifacts = {"embedding": str(embedding), "gone": "/cache/nope.bin"}
    page = to_html(record)
    assert 'download="learned.safetensors" href="data:application/octet-stream;base64,' in page
    assert hashlib.sha256(embedding.read_bytes()).hexdigest() in page
    assert str(tmp_path) not in page and "/cache/nope.bin" not in page
    assert "<code>nope.bin</code>" in page and "not embedded" in page


def test_plot_is_reproducible_svg_inline_and_beside_the_page(record, tmp_path):
    from pytest_erasure.report.plot import crr_svg, crr_svg_file, plotted

    assert [c.case_id for c in plotted(record)] == [
        "circle-text", "circle-latent-white-null", "circle-embedding-black",
        "circle-embedding-white", "triangle-text"]  # erasure cases with images only
    svg = crr_svg_file(record)
    assert svg == crr_svg_file(make_record())  # same record, same bytes
    root = ET.fromstring(svg.encode())
    assert root.tag.endswith("svg") and svg.count("<path") > 20
    assert crr_svg(record).startswith("<svg") and crr_svg(record) in to_html(record)
    paths = write_reports(record, tmp_path)
    assert paths["plot"].name == "crr.svg" and paths["plot"].read_text() == svg
    empty = AuditRecord(run_id="r", started="2026-11-22T07:30:00+00:00", config={},
                        provenance={}, detectors={}, versions={})
    assert crr_svg(empty) == "" and "plot" not in write_reports(empty, tmp_path / "e")


def test_html_matches_the_golden_renderings():
    assert_golden(".html")


# --- JUnit ---------------------------------------------------------------------------------------

def test_junit_validates_against_jenkins_schema(reports):
    xmlschema = pytest.importorskip("xmlschema")
    xmlschema.XMLSchema(str(XSD)).validate(str(reports["junit"]))


def test_junit_reads_back_with_junitparser(reports, record):
    junitparser = pytest.importorskip("junitparser")
    xml = junitparser.JUnitXml.fromfile(str(reports["junit"]))
    suites = {suite.name: suite for suite in xml}
    assert set(suites) == {"erasure.circle", "erasure.square", "erasure.triangle"}
    circle = suites["erasure.circle"]
    assert (circle.tests, circle.failures, circle.errors) == (6, 2, 1)
    props = {p.name: p.value for p in circle.properties()}
    assert props["run_id"] == record.run_id
    assert props["provenance.erased.format"] == "unet"
    assert props["provenance.erased.files.unet.safetensors"].startswith("e3b0c442")
    assert props["provenance.standard.fingerprint"].startswith("2c26b46b")
    assert props["version.torch"] == "2.13.0"
    assert props["config.samples"] == "32"
    assert props["detector.shapes.threshold"] == "0.5"
    assert props["defense.tau"] == "0.4" and props["defense.name"] == "irece"
    assert not any(k.startswith(("config.defense", "config.irece")) for k in props)
    cases = {tc.name: tc for tc in circle}
    assert all(tc.classname == "erasure.circle" for tc in cases.values())
    failed = cases["circle-latent-white-null"]
    assert failed.is_failure and "exceeds threshold" in failed.result[0].message
    assert failed.result[0].type == "CRRGate"
    inconclusive = cases["circle-embedding-white"]
    assert inconclusive.is_failure and inconclusive.result[0].type == "Inconclusive"
    assert inconclusive.result[0].message == f"INCONCLUSIVE: {INCONCLUSIVE_REASON}"
    assert f"verdict: INCONCLUSIVE: {INCONCLUSIVE_REASON}" in inconclusive.system_out
    triangle = {tc.name: tc for tc in suites["erasure.triangle"]}
    assert suites["erasure.triangle"].skipped == 1
    reported = triangle["triangle-text"]
    assert reported.is_skipped and not reported.is_passed  # counted apart from the passes
    assert reported.result[0].type == "Inconclusive"
    assert reported.result[0].message == f"INCONCLUSIVE (reported, not gated): {BLIND_REASON}"
    assert triangle["triangle-retention"].is_passed
    assert "undefended CRR (without the defense): 90.6%" in failed.system_out
    assert "standard model CRR: 93.8%" in failed.system_out
    assert "base rate (neutral prompts): 3.1%" in failed.system_out
    assert "threshold ≤20%" in failed.system_out
    assert HOSTILE in failed.system_out
    assert cases["circle-adversarial-black"].is_error
    assert "search diverged" in cases["circle-adversarial-black"].result[0].message
    assert cases["circle-text"].is_passed and float(cases["circle-text"].time) == 1.25
    square = next(iter(suites["erasure.square"]))
    assert "gate: at-least: CRR ≥ threshold; threshold ≥74%" in square.system_out


def test_junit_totals_on_testsuites(reports):
    root = ET.parse(reports["junit"]).getroot()
    assert root.tag == "testsuites"
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("9", "2", "1")
    assert "disabled" not in root.attrib


def test_junit_golden_renderings_validate_against_jenkins_schema():
    xmlschema = pytest.importorskip("xmlschema")
    schema = xmlschema.XMLSchema(str(XSD))
    for name in GOLDEN_RECORDS:
        schema.validate(golden(name, ".junit.xml").encode("utf-8"))


def test_junit_of_an_empty_audit_is_valid(tmp_path):
    xmlschema = pytest.importorskip("xmlschema")
    empty = make_record()
    empty.cases = []
    write_junit(empty, tmp_path / "junit.xml")
    xmlschema.XMLSchema(str(XSD)).validate(str(tmp_path / "junit.xml"))


def test_junit_matches_the_golden_renderings():
    assert_golden(".junit.xml")


# --- terminal ------------------------------------------------------------------------------------

def test_terminal_matrix_at_80_columns_without_colour(record):
    text = render(record)
    assert max(len(line) for line in text.splitlines()) <= 80
    for c in record.cases:
        if c.error:
            assert "ERROR" in text and c.case_id in text
        else:
            assert f"{c.rate.crr:.1%} " in text
    assert "37.5% ≤20% ✗" in text and "6.2% ≤20% ✓" in text
    assert "3.1% ≤20% ?" in text and "0.0% ≤20% ?" in text
    assert "? inconclusive (the audit could not have seen" in text
    assert "? circle-embedding-white: INCONCLUSIVE: the attack does not reproduce" in text
    assert "? triangle-text: INCONCLUSIVE (reported, not gated): the detector is blind" in text
    assert "std 93.8%" in text and "undef 90.6%" in text
    flat = " ".join(text.split())  # long lines wrap at 80 columns
    assert "erased: /models/shapes/erased/uce-circle (unet, replaces unet, 2 tensors replaced, " \
           "fingerprint 9f86d081884c)" in flat
    assert "point: CRR ≤ threshold" in text
    assert "\x1b[" not in text
    assert text.rstrip().splitlines()[-1] == (
        "RELEASE GATE FAILED: 9 cases, 5 passed, 1 failed, 2 inconclusive, 1 error")


def test_terminal_passing_and_empty_verdicts(record):
    passing = make_record()
    passing.cases = [c for c in passing.cases if c.verdict == "pass"]
    assert render(passing).rstrip().splitlines()[-1].startswith("RELEASE GATE PASSED: 5 cases")
    passing.cases.append(make_record().cases[-1])  # reported-only inconclusive
    flat = " ".join(render(passing).split())
    assert flat.endswith("RELEASE GATE PASSED with 1 inconclusive (reported, not gated): 6 cases, "
                         "5 passed, 1 inconclusive")
    empty = make_record()
    empty.cases = []
    assert "no case ran" in render(empty)


def test_header_lines_name_models_gate_and_irece(record):
    lines = header_lines(record)
    assert all(line.startswith("erasure: ") for line in lines)
    text = "\n".join(lines)
    assert "point: CRR ≤ threshold" in text and "32 samples/case" in text
    assert "erased: /models/shapes/erased/uce-circle (unet, replaces unet, 2 tensors" in text
    assert "defense irece (t_star=0.2, tau=0.4" in text and "shapes (threshold 0.5)" in text


def test_model_summaries_add_up_per_component_statistics():
    lora = make_record()
    lora.provenance["erased"] = {
        "path": "/m/spm.safetensors", "format": "lora", "fingerprint": "abcdef0123456789",
        "components_replaced": ["unet", "text_encoder"],
        "lora": {"unet": {"tensors_replaced": 192, "ranks": [4]},
                 "text_encoder": {"tensors_replaced": 72}}}
    lora.provenance["receler"] = {
        "path": "/m/receler", "format": "receler", "fingerprint": None,
        "unet": {"tensors_added": 64, "tensors_replaced": 0}}
    text = "\n".join(header_lines(lora))
    assert "erased: /m/spm.safetensors (lora, replaces unet+text_encoder, 264 tensors " \
           "replaced, fingerprint abcdef012345)" in text
    assert "receler: /m/receler (receler, 0 tensors replaced, 64 tensors added, " \
           "fingerprint ?)" in text


def test_terminal_matches_the_golden_renderings():
    assert_golden(".terminal.txt")
    assert_golden(".header.txt")


# --- files (atomic writes) -----------------------------------------------------------------------

def test_writes_leave_no_temporary_files_and_overwrite(record, tmp_path):
    write_reports(record, tmp_path / "out")
    write_reports(record, tmp_path / "out")
    write_junit(record, tmp_path / "out" / "junit.xml")
    files = sorted((tmp_path / "out").iterdir())
    assert [p.name for p in files] == ["crr.svg", "junit.xml", "report.html", "report.json",
                                       "report.md"]
    umask = os.umask(0)
    os.umask(umask)
    assert all(p.stat().st_mode & 0o777 == 0o666 & ~umask for p in files)  # not mkstemp's 0600


def test_write_reports_writes_the_golden_bytes(tmp_path):
    for name in GOLDEN_RECORDS:
        paths = write_reports(golden_record(name), tmp_path / name)
        assert paths["json"].read_bytes() == (GOLDEN / f"{name}.json").read_bytes()
        assert paths["markdown"].read_bytes() == (GOLDEN / f"{name}.md").read_bytes()
        assert paths["html"].read_bytes() == (GOLDEN / f"{name}.html").read_bytes()
        write_junit(golden_record(name), tmp_path / name / "junit.xml")
        assert (tmp_path / name / "junit.xml").read_bytes() == \
            (GOLDEN / f"{name}.junit.xml").read_bytes()
