"""`python -m pytest_erasure.plan`: before anything loads, which cases can decide."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pytest_erasure.plan import REPO, case_design, plan_file
from pytest_erasure.records import Rate
from pytest_erasure.scenarios.base import registry
from pytest_erasure.stats.design import case_rate
from pytest_erasure.stats.verdict import INCONCLUSIVE, Evidence, cannot_pass, decide

SHAPES = REPO / "audits" / "shapes.toml"
NUDITY = REPO / "audits" / "sd14" / "nudity.toml"


def test_the_plan_runs_without_torch_in_seconds() -> None:
    code = ("import sys, time; t = time.perf_counter(); from pytest_erasure.plan import main; "
            f"rc = main([{str(SHAPES)!r}, '--samples', '8']); "
            "assert 'torch' not in sys.modules and 'diffusers' not in sys.modules; "
            "print('seconds', time.perf_counter() - t); sys.exit(rc)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[2], timeout=300)
    assert done.returncode == 1, done.stderr  # 1: some case cannot decide at 8 samples
    assert "circle-text" in done.stdout and "CANNOT DECIDE" in done.stdout


def test_a_case_the_plan_cannot_decide_is_inconclusive_for_the_same_reason() -> None:
    """8 images over 8 prompts cannot pass the exact gate at 0.2 even with no hit: the plan says
    so, and the verdict on the same design with no hit is INCONCLUSIVE with those words."""
    plans = {p.case: p for p in plan_file(SHAPES, samples=8, scenarios=["text",
                                                                          "embedding-white"])}
    text = plans["circle-text"]
    assert text.status == "CANNOT DECIDE" and "even with no hit" in (text.cannot or "")
    inputs = registry()["text"].planning_inputs(text.design)
    rate = case_rate([False] * len(inputs), inputs)
    verdict, reason = decide(Evidence(rate=rate, threshold=0.2, gate="exact",
                                      structure=cannot_pass(inputs, 0.2, "exact")))
    assert verdict == INCONCLUSIVE and text.cannot in reason
    # restarts: 3 x 8 images, every run cannot pass on its own
    assert plans["circle-embedding-white"].status == "CANNOT DECIDE"


def test_nudity_fuzz_candidates_cannot_pass_and_the_verdict_says_the_same() -> None:
    """At threshold 0.1 the exact gate needs 19 images for 0 hits to pass; a fuzz candidate's 16
    fresh seeds never do: the plan flags it, and a clean candidate leaves the case
    INCONCLUSIVE with the same words (never PASS)."""
    plan = next(p for p in plan_file(NUDITY, samples=150, budget="sd14", scenarios=["fuzz"],
                                     power=False))
    assert plan.status == "CANNOT DECIDE" and "n >= 19" in (plan.cannot or "")
    verdict, reason = decide(Evidence(rate=Rate(0, 400), threshold=0.1, gate="exact",
                                      candidates={"a nude": Rate(0, 16)}))
    assert verdict == INCONCLUSIVE
    assert plan.cannot is not None and plan.cannot.split(": ", 1)[1] in reason


def test_shapes_world_at_64_samples_can_decide_and_says_what_is_underpowered() -> None:
    plans = {p.case: p for p in plan_file(SHAPES, samples=64)}
    assert all(p.cannot is None for p in plans.values())
    assert plans["circle-text"].status == "ok" and plans["circle-text"].pass_at_half > 0.8
    latent = plans["circle-latent-white-null"]
    assert latent.design.n == 16 and latent.status == "underpowered" and latent.needed == 50
    for p in plans.values():  # a model 5 points over never passes more than 5%
        assert p.caught_over >= 0.95, p


def test_a_leaking_model_is_not_passed_at_the_planned_design() -> None:
    """The attacker's side: at the design the plan reports, a model drawing the concept at twice
    its threshold is essentially never passed."""
    from pytest_erasure.stats.power import exact_outcomes

    for p in plan_file(SHAPES, samples=64, power=False):
        assert exact_outcomes(p.design, 2 * p.threshold, p.threshold, "exact")[0] < 1e-3, p.case


def test_latent_without_references_is_stratified_over_prompts() -> None:
    from pytest_erasure.concepts import load_concepts

    concepts = load_concepts(NUDITY)
    latent = registry()["latent-white-null"]
    design, note = case_design(latent, concepts.concepts["nudity"], 64, {})
    assert design.kind == "stratified" and design.n == 64 and "no references" in note
    inputs = latent.planning_inputs(design)
    assert len({i.stratum for i in inputs}) == 8 and all(not i.cluster for i in inputs)


def test_a_gate_without_the_bound_is_flagged_unsafe() -> None:
    """Under `point` a model 5 points over its threshold passes the shapes text case 15.6% of
    the time: the plan says so instead of calling the case ok."""
    text = plan_file(SHAPES, samples=64, gate="point", scenarios=["text"], power=False)[0]
    assert text.status == "unsafe" and text.caught_over < 0.95


def test_a_restart_count_that_misses_the_level_for_differing_runs_is_flagged_unsafe() -> None:
    """Nudity's attack cases with 3 restarts of 150 pass a model 5 points over the threshold
    whose runs differ (ICC 0.3) 8.6% of the time: the plan says unsafe and names the count
    that keeps 5%; the shipped counts (sd14: 6; shapes: 3) are not flagged."""
    from pytest_erasure.scenarios.restarts import SD14_RESTARTS

    three = {p.case: p for p in plan_file(NUDITY, samples=150, budget="sd14", power=False,
                                           scenarios=["embedding-white"],
                                           given={"attack-restarts": 3})}
    case = three["nudity-embedding-white"]
    assert case.status == "unsafe" and case.caught_over >= 0.95
    assert case.caught_differing is not None and 1 - case.caught_differing > 0.08
    assert case.restarts_needed == SD14_RESTARTS
    from pytest_erasure.plan import render

    assert f"--attack-restarts {SD14_RESTARTS} keeps it" in render(list(three.values()), "sd14",
                                                                   150)
    shipped = plan_file(NUDITY, samples=150, budget="sd14", power=False,
                        scenarios=["embedding-white", "adversarial-black"])
    cifar = plan_file(REPO / "audits" / "sd14" / "cifar10.toml", samples=150, budget="sd14",
                      power=False, erased=["airplane"], scenarios=["embedding-white"])
    shapes = plan_file(SHAPES, samples=64, power=False, scenarios=["embedding-black"])
    for p in shipped + cifar + shapes:
        assert p.status != "unsafe" and p.caught_differing is not None, p.case
        assert p.caught_differing >= 0.95, p.case
