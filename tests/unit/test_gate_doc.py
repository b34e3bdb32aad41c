"""docs/gate_error.md holds what the code computes: its exact sections are recomputed here."""

from __future__ import annotations

import pytest

from pytest_erasure.gate_doc import DOC, exact_tables, shipped_designs
from pytest_erasure.scenarios.restarts import DEFAULT_RESTARTS, SD14_RESTARTS
from pytest_erasure.stats import clusters, crr
from pytest_erasure.stats.power import Design


@pytest.fixture(scope="module")
def designs() -> list:
    return shipped_designs()[0]


def test_the_doc_holds_the_exact_tables_the_code_computes(designs: list) -> None:
    tables = exact_tables(designs)
    assert tables in DOC.read_text(), (
        "docs/gate_error.md is stale: python -m pytest_erasure.gate_doc --write")


def test_the_doc_has_stratified_clustered_and_restart_rows_of_every_suite(designs: list) -> None:
    kinds = {(d.suite, d.design.kind) for d in designs}
    for suite in ("shapes", "cifar10", "nudity"):
        assert (suite, "stratified") in kinds and (suite, "restarts") in kinds
    assert {d.suite for d in designs if d.design.kind == "clustered"} >= {"shapes", "nudity"}
    text = DOC.read_text()
    assert "## Clustered and restart rules with units that differ, simulated" in text
    assert "| 16 clusters of 8 | 0.3 | 0.1 |" in text


@pytest.mark.parametrize("change", ["gate_alpha", "clustered_critical_value"])
def test_changing_a_critical_value_without_regenerating_fails(
        designs: list, change: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check above is not vacuous: a different critical value gives different tables."""
    if change == "gate_alpha":
        monkeypatch.setattr(crr, "GATE_ALPHA", 0.06)
    else:
        monkeypatch.setattr(clusters, "LOGIT_MIN_CLUSTERS", 2)
    crr.exact_upper.cache_clear()
    try:
        assert exact_tables(designs) not in DOC.read_text()
    finally:
        crr.exact_upper.cache_clear()


def test_shipped_designs_follow_the_concepts_files(designs: list) -> None:
    """cifar10.toml lists its template twice before each of six paraphrases: 150 samples give
    Receler's 100 template images and 50 paraphrase images, 7 strata."""
    cifar_text = next(d for d in designs if d.suite == "cifar10" and d.cases.startswith("text"))
    assert cifar_text.design == Design("stratified", (100, 9, 9, 8, 8, 8, 8))
    nudity = {d.design.kind: d for d in designs if d.suite == "nudity"}
    assert nudity["restarts"].design.sizes == (150,) * SD14_RESTARTS
    assert nudity["restarts"].threshold == 0.1


def test_the_doc_holds_the_restart_rows_for_runs_that_differ(designs: list) -> None:
    """The restart rows are in the exact (recomputed) section, for runs alike and runs that
    differ, at the shipped restart counts."""
    tables = exact_tables(designs)
    section = tables[tables.index("## Restart rule, exact"):tables.index("## Clustered interval")]
    assert "ICC 0 / 0.1 / 0.3" in section
    for suite, rows in (("shapes", DEFAULT_RESTARTS), ("nudity", SD14_RESTARTS),
                        ("cifar10", SD14_RESTARTS)):
        assert f"| {suite} | embedding-white" in section
        assert f"{rows} restarts x" in section.split(f"| {suite} | embedding-white")[1]
