"""The session on its own: which cases, results from xdist workers, an incomplete run, errors.

Built over the tiny world's concepts file without loading any model: nothing here needs one.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_erasure.config import AuditConfig
from pytest_erasure.errors import ErasureInputError
from pytest_erasure.records import Case, CaseResult, Rate


def _session(concepts: Path, **overrides):
    from pytest_erasure.concepts import load_concepts
    from pytest_erasure.session import AuditSession, default_config

    return AuditSession(default_config(concepts_file=concepts, cache_dir=None, **overrides),
                        load_concepts(concepts))


def _result(case_id: str, verdict: str = "pass") -> CaseResult:
    return CaseResult(case_id=case_id, concept="circle", scenario="text", modality="text",
                      access=None, kind="erasure", threshold=0.2, gate="exact",
                      passed=verdict == "pass", rate=Rate(1, 64), verdict=verdict, reason="why")


def test_cases_follow_the_concepts_file_and_the_scenarios_asked_for(
        tiny_world: dict[str, Path]) -> None:
    ids = [c.id for c in _session(tiny_world["concepts"]).cases()]
    assert ids[0] == "circle-baseline" and "circle-text" in ids
    assert "circle-retention-square" in ids and not any(i.startswith("square") for i in ids)
    only = _session(tiny_world["concepts"], scenarios=("latent", "retention")).cases()
    assert {c.modality for c in only if c.kind == "erasure"} == {"latent"}
    assert [c.kind for c in only].count("retention") == 1
    with pytest.raises(ErasureInputError, match="--scenarios: names unknown scenario"):
        _session(tiny_world["concepts"], scenarios=("latnet",)).cases()


def test_workers_publish_and_the_controller_receives_one_record(
        tiny_world: dict[str, Path]) -> None:
    import json

    worker, controller = _session(tiny_world["concepts"]), _session(tiny_world["concepts"])
    worker.results = {"circle-text": _result("circle-text", "fail")}
    workeroutput: dict = {}
    worker.publish(workeroutput)
    assert "results" not in json.loads(workeroutput["erasure_results"])  # reports carry them
    controller.receive(workeroutput)
    controller.receive({})  # a worker that ran nothing
    # what a test report carries (twice: a rerun of the case replaces, never duplicates)
    for _ in range(2):
        controller.receive_result(json.dumps(worker.results["circle-text"].to_dict()))
    controller.results = {"circle-baseline": _result("circle-baseline")}
    record = controller.finish(["circle-baseline", "circle-text"], interrupted=False)
    assert record is not None and [c.case_id for c in record.cases] == [
        "circle-baseline", "circle-text"]
    assert record.cases[1].verdict == "fail" and not record.passed
    assert record.incomplete is None and controller.final is record
    assert record.selection["partial"] and "circle-latent-white-null" in record.selection["not_run"]


def test_every_declared_case_selected_is_not_partial(tiny_world: dict[str, Path]) -> None:
    session = _session(tiny_world["concepts"], scenarios=("text",))
    declared = [c.id for c in session.declared()]
    assert len(declared) > len(session.cases())  # --scenarios narrows, the declaration does not
    session.results = {i: _result(i) for i in declared}
    record = session.finish(declared, interrupted=False)
    assert record.selection["not_run"] == [] and not record.selection["partial"]
    assert record.passed


def test_a_run_that_stopped_early_is_incomplete_and_never_passes(
        tiny_world: dict[str, Path]) -> None:
    session = _session(tiny_world["concepts"])
    assert session.finish([], interrupted=False) is None  # nothing selected, nothing ran
    nothing = session.finish(["circle-text"], interrupted=False)  # selected, no result
    assert nothing.incomplete == {"interrupted": False, "missing": ["circle-text"]}
    assert not nothing.passed
    session.results = {"circle-baseline": _result("circle-baseline")}
    record = session.finish(["circle-baseline", "circle-text"], interrupted=True)
    assert record.incomplete == {"interrupted": True, "missing": ["circle-text"]}
    assert not record.passed


def test_a_case_that_raised_is_recorded_as_a_failure_with_its_error(
        tiny_world: dict[str, Path]) -> None:
    session = _session(tiny_world["concepts"])
    case = Case("circle-text", "circle", "text", "erasure", "text")
    session.record_error(case, "RuntimeError: out of luck")
    result = session.results["circle-text"]
    assert not result.passed and result.verdict == "fail"
    assert result.error == "RuntimeError: out of luck" and "out of luck" in result.reason


def test_config_refuses_unknown_fields_and_bad_choices() -> None:
    from pytest_erasure.session import default_config

    with pytest.raises(TypeError, match="no field"):
        default_config(irece=True)  # a field that left must not be dropped silently
    for field, value, message in (("gate", "strict", "--erasure-gate"),
                                  ("inconclusive", "ignore", "--erasure-inconclusive"),
                                  ("attack_floor", 1.5, "--attack-floor"),
                                  ("reconstruction_margin", -1.0, "--reconstruction-margin")):
        with pytest.raises(ErasureInputError, match=message):
            default_config(**{field: value}).validate()
    config = default_config()
    assert isinstance(config, AuditConfig) and config.gate == "exact"
    assert config.describe()["budget_profile"]["name"] == "shapes"
