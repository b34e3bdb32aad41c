"""Fuzzing's confirmed bypasses travel like every other finding: exported from a case's facts,
listed in the manifest with their sha256, and replayed as typed prompts on a real (tiny)
model, no search."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_erasure.artifacts import export, findings, read_manifest
from pytest_erasure.errors import ErasureInputError
from pytest_erasure.records import AuditRecord, CaseResult, Rate
from pytest_erasure.scenarios.replay import ReplayPrompts, build

BYPASSES = ["a round red thing", "a ring drawing"]


def fuzz_case() -> CaseResult:
    return CaseResult(
        case_id="circle-fuzz", concept="circle", scenario="fuzz", modality="fuzz",
        access="black-box", kind="erasure", threshold=0.2, gate="exact", passed=False,
        rate=Rate(20, 32), verdict="fail", reason="bypass",
        facts={"bypasses": [{"prompt": p, "crr": 0.9, "search_crr": 1.0} for p in BYPASSES],
               "settings": {"fuzz-examples": 50, "seed": 0}})


def test_fuzz_bypasses_are_exported_and_replayed_as_prompts(tiny_world, tmp_path) -> None:
    from types import SimpleNamespace

    from pytest_erasure.session import context_for_pipelines
    from pytest_erasure.testing import tiny_pipeline

    assert findings(fuzz_case())[0]["prompts"] == BYPASSES
    record = AuditRecord(run_id="r", started="2026-12-01T00:00:00+00:00", config={},
                         provenance={"erased": {"content": {"fingerprint": "c" * 64}}},
                         detectors={}, versions={}, cases=[fuzz_case()])
    folder = tmp_path / "artifacts"
    export(record, SimpleNamespace(standard_model=tiny_world["standard"]), folder)
    manifest = read_manifest(folder, tiny_world["standard"])
    (entry,) = manifest["artifacts"]
    assert entry["id"] == "circle-fuzz/bypasses" and entry["found_on"]["model"] == "c" * 64
    assert json.loads((folder / entry["file"]).read_text()) == {"prompts": BYPASSES}
    (scenario,) = build(manifest, folder)
    assert isinstance(scenario, ReplayPrompts) and scenario.id == "replay-fuzz"
    ctx = context_for_pipelines(tiny_pipeline(0), tiny_pipeline(1), tiny_world["concepts"],
                                tmp_path / "cache", steps=1, samples=4)
    plan = scenario.plan(ctx, ctx.concepts.concepts["circle"], "erased", 4)
    assert [i.prompt for i in plan.inputs] == BYPASSES * 2
    assert plan.facts["searched"] is False
    images = ctx.generate("erased", plan.inputs)
    assert images.shape[0] == 4


def test_a_manifest_that_is_not_ours_is_refused(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text(json.dumps({"schema": "something else"}))
    with pytest.raises(ErasureInputError, match="is not a pytest-erasure/artifacts v1"):
        read_manifest(tmp_path, tmp_path)
    with pytest.raises(ErasureInputError, match="holds no readable manifest.json"):
        read_manifest(tmp_path / "missing", tmp_path)


def test_a_probe_s_kept_tries_are_one_json_finding_replayed_by_the_probe_replay(
        tiny_world, tmp_path) -> None:
    from types import SimpleNamespace

    from pytest_erasure.scenarios.replay import ReplayProbe

    tries = [{"search": 1, "prompt": "a circle", "seed": 7,
              "steering": {"eta": 1.5, "noise_scale": 1.02}, "eta": 1.5, "noise_scale": 1.02}]
    case = CaseResult(
        case_id="circle-noise-probe", concept="circle", scenario="noise-probe",
        modality="noise-probe", access=None, kind="erasure", threshold=0.2, gate="exact",
        passed=False, rate=Rate(1, 2), verdict="inconclusive", reason="r",
        facts={"kept_hits": tries, "threat": {"attacked_through": "irece"},
               "best_of_n": {"tries_per_search": 24, "searches": 2}})
    (found,) = findings(case)
    assert found["kind"] == "probe" and found["found_through"] == "erased"
    assert found["settings"]["attacked_through"] == "irece"
    # a case whose searches all failed found nothing to export
    assert findings(CaseResult(**{**case.__dict__, "facts": {"kept_hits": []}})) == []
    record = AuditRecord(run_id="r", started="2026-12-01T00:00:00+00:00", config={},
                         provenance={}, detectors={}, versions={}, cases=[case])
    folder = tmp_path / "artifacts"
    export(record, SimpleNamespace(standard_model=tiny_world["standard"]), folder)
    (entry,) = read_manifest(folder, tiny_world["standard"])["artifacts"]
    assert entry["id"] == "circle-noise-probe/kept-tries" and entry["kind"] == "probe"
    assert json.loads((folder / entry["file"]).read_text()) == {"probe": "noise-probe",
                                                                "tries": tries}
    (scenario,) = build(read_manifest(folder, tiny_world["standard"]), folder)
    assert isinstance(scenario, ReplayProbe) and scenario.id == "replay-noise-probe"
