"""README's CRR table (`python -m pytest_erasure.table`): a real run on the tiny world, its rows
and verdict marks against the reports the audits wrote, its refusals, and README's table against
the output committed in benchmarks/results/crr_table.md."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_erasure.records import Rate
from pytest_erasure.table import markdown, rows

REPO = Path(__file__).resolve().parents[2]


def _table(text: str) -> list[list[str]]:
    """The Markdown table's rows (header first, separator left out), as cells."""
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in line.strip("|").split(" | ")] for line in lines]


def _expected(rate: dict, verdict: str | None) -> str:
    """A cell written from report.json's numbers (not the module's formatter)."""
    text = (f"{round(100 * rate['crr'])}% [{round(100 * rate['ci_low'])}%–"
            f"{round(100 * rate['ci_high'])}%]")
    return text + {None: "", "pass": " pass", "fail": " **FAIL**",
                   "inconclusive": " *inconclusive*"}[verdict]


def test_a_real_table_of_two_tiny_models(tiny_world, tmp_path: Path) -> None:
    out = tmp_path / "table"
    cmd = [sys.executable, "-m", "pytest_erasure.table", str(tiny_world["erased"]),
           str(tiny_world["leaky"]), "--out", str(out),
           f"--standard-model={tiny_world['standard']}", f"--concepts={tiny_world['concepts']}",
           "--samples=4", "--steps=2", "--batch-size=4", "--erasure-gate=point",
           "--scenarios=latent-white-null,text", "--no-erasure-cache"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    text = (out / "table.md").read_text(encoding="utf-8")
    assert text in done.stdout and "4 samples per cell" in text
    table = _table(text)
    # columns in the table's own order, whatever order --scenarios named them in
    assert table[0] == ["model", "text", "latent-white-null"]
    assert [row[0] for row in table[1:]] == ["standard", "erased", "leaky"]
    reports = {name: json.loads((out / name / "report.json").read_text())
               for name in ("erased", "leaky")}
    for row in table[1:]:
        name = row[0]
        for scenario, cell in zip(table[0][1:], row[1:], strict=True):
            report = reports["erased" if name == "standard" else name]
            case = next(c for c in report["cases"] if c["scenario"] == scenario)
            if name == "standard":
                assert cell == _expected(case["standard"], None)
            else:
                assert cell == _expected(case["rate"], case["verdict"])
    # the tiny world's erased model draws nothing, the leaky one draws the concept
    assert all(cell.endswith(" pass") for cell in table[2][1:])
    assert all(cell.endswith(" **FAIL**") for cell in table[3][1:])


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pytest_erasure.table", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_a_missing_model_is_refused_before_any_audit(tmp_path: Path) -> None:
    done = _run(str(tmp_path / "nope"), "--out", str(tmp_path / "out"))
    assert done.returncode == 2 and "no such model" in done.stderr
    assert not (tmp_path / "out").exists()  # no audit ran


def test_two_models_of_one_name_are_refused(tmp_path: Path) -> None:
    for folder in ("a/uce", "b/uce"):
        (tmp_path / folder).mkdir(parents=True)
    done = _run(str(tmp_path / "a/uce"), str(tmp_path / "b/uce"), "--out", str(tmp_path / "out"))
    assert done.returncode == 2 and "share a name" in done.stderr


def _case(scenario: str, verdict: str, hits: int, undefended: int | None = None) -> dict:
    def rate(k: int) -> dict:  # a rate as report.json stores it (Wilson's interval on k/10)
        return Rate(hits=k, n=10).to_dict()

    return {"concept": "circle", "kind": "erasure", "scenario": scenario, "verdict": verdict,
            "rate": rate(hits), "standard": rate(9),
            "undefended": rate(undefended) if undefended is not None else None}


def test_rows_with_a_defense_put_the_undefended_row_above_the_gated_one() -> None:
    report = {"cases": [_case("fuzz", "inconclusive", 3, undefended=8),
                        _case("text", "pass", 1, undefended=2),
                        {"concept": "circle", "kind": "retention", "scenario": "retention-square"}]}
    table = _table(markdown(rows({"uce": report}, "circle", irece=True)))
    nine, text, fuzz = (report["cases"][0]["standard"], report["cases"][1], report["cases"][0])
    assert table == [["model", "text", "fuzz"],
                     ["standard", _expected(nine, None), _expected(nine, None)],
                     ["uce", _expected(text["undefended"], None),
                      _expected(fuzz["undefended"], None)],
                     ["uce + IRECE", _expected(text["rate"], "pass"),
                      _expected(fuzz["rate"], "inconclusive")]]
    assert table[1][1] == "90% [60%–98%]"  # Wilson's 95% interval on 9/10


def test_a_concept_the_audit_did_not_gate_is_an_error_not_a_table_of_dashes() -> None:
    report = {"cases": [_case("text", "pass", 1)]}
    with pytest.raises(SystemExit, match="no erasure case of 'cirlce'.*erased: circle"):
        rows({"uce": report}, "cirlce", irece=False)


def test_readme_table_is_the_committed_output() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    committed = (REPO / "benchmarks" / "results" / "crr_table.md").read_text(encoding="utf-8")
    assert "benchmarks/results/crr_table.md" in readme
    header = "| model | text | adversarial-black |"
    start = readme.index(header)
    in_readme = _table(readme[start:readme.index("\n\n", start)])
    assert in_readme == _table(committed) and len(in_readme) == 6
