"""Sequential stopping in `checks.measure`, on an outcome table: a leaking model is not passed,
a clean one stops early, and a clustered plan decides on its clustered interval."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")

from pytest_erasure.checks import measure  # noqa: E402
from pytest_erasure.concepts import load_concepts  # noqa: E402
from pytest_erasure.records import GenerationInput, Plan  # noqa: E402
from pytest_erasure.stats.verdict import FAIL, PASS, Evidence, decide  # noqa: E402
from pytest_erasure.testing import tiny_concepts  # noqa: E402
from pytest_erasure.testing.outcomes import OutcomeContext  # noqa: E402


class Table(OutcomeContext):
    def generate_flagged(self, role: str, inputs: list[Any], concept: Any = None,
                         defended: Any = None, overlays: Any = ()) -> Any:
        assert not overlays, "the outcome table has no model to overlay"
        return super().generate_flagged(role, inputs, concept)


def _ctx(tmp_path: Path, rule: Any) -> tuple[Table, Any]:
    path = tmp_path / "concepts.toml"
    path.write_text(tiny_concepts())
    concept = load_concepts(path).concepts["circle"]
    return Table(rule, concept, tmp_path / "db"), concept


def _restart_plan(n_per_run: int, runs: int = 3) -> Plan:
    return Plan(inputs=[GenerationInput(seed=i, prompt=f"p{i % 2}", cluster=f"restart-{i % runs}",
                                        stratum=f"prompt: p{i % 2}")
                        for i in range(n_per_run * runs)])


def _judge(ctx: Table, concept: Any, plan: Plan) -> tuple[str, str, int]:
    measured = measure(ctx, "erased", plan, concept, stop_at=0.2)
    from pytest_erasure.stats.design import run_rates

    runs = run_rates(measured.present, measured.inputs, measured.degenerate)
    verdict, reason = decide(Evidence(rate=measured.rate, threshold=0.2, gate="exact", runs=runs,
                                      looks=measured.looks))
    return verdict, reason, len(measured.present)


def test_a_leaking_restart_is_not_passed_under_sequential_stopping(tmp_path: Path) -> None:
    """Two runs draw nothing, one draws the concept in every image: the pooled rate is a
    third, the leaking run is the attacker's. Stopping early must not pass it."""
    ctx, concept = _ctx(tmp_path, lambda prompt, seed: "hit" if seed % 3 == 2 else "miss")
    verdict, reason, judged = _judge(ctx, concept, _restart_plan(64))
    assert verdict == FAIL, reason
    assert "restart-2 alone" in reason


def test_a_clean_clustered_plan_runs_in_full_and_passes(tmp_path: Path) -> None:
    """Over 3 runs a look's share of the error would cost t on 2 df at 0.5% (9.9) and no clean
    model would pass: a clustered plan is not stopped early."""
    ctx, concept = _ctx(tmp_path, lambda prompt, seed: "miss")
    verdict, reason, judged = _judge(ctx, concept, _restart_plan(64))
    assert verdict == PASS and judged == 192, reason


def test_a_clean_stratified_plan_stops_early_and_passes(tmp_path: Path) -> None:
    ctx, concept = _ctx(tmp_path, lambda prompt, seed: "miss")
    plan = Plan(inputs=[GenerationInput(seed=i, prompt=f"p{i % 8}", stratum=f"prompt: p{i % 8}")
                        for i in range(128)])
    verdict, reason, judged = _judge(ctx, concept, plan)
    assert verdict == PASS and judged == 32, reason  # 0/32: exact upper 14.7% at 2.5%/4


def test_a_model_over_its_threshold_is_never_passed_at_any_look(tmp_path: Path) -> None:
    """Independent images (no clusters), every third a hit (33% against a 20% threshold)."""
    ctx, concept = _ctx(tmp_path, lambda prompt, seed: "hit" if seed % 3 == 0 else "miss")
    plan = Plan(inputs=[GenerationInput(seed=i, prompt="p") for i in range(128)])
    verdict, reason, _ = _judge(ctx, concept, plan)
    assert verdict != PASS, reason


def test_the_erasure_case_judges_textual_inversion_convergence_on_the_audited_model() -> None:
    """`checks._convergence`: only an attack optimised through the audited model is judged,
    against the standard model's run of the same attack."""
    from pytest_erasure.checks import _convergence

    flat = [0.2] * 10 + [0.05] * 10
    falling = [0.2 - 0.0075 * i for i in range(20)]
    standard = Plan(inputs=[], facts={"optimised_through": "standard",
                                      "attack_runs": [{"id": "restart-0", "loss_curve": flat}]})
    erased = Plan(inputs=[], facts={"optimised_through": "erased",
                                    "attack_runs": [{"id": "restart-0", "loss_curve": falling}]})
    reasons = _convergence(erased, standard)
    assert len(reasons) == 1 and "stopped short" in reasons[0] and "--ti-steps" in reasons[0]
    # a fine-tuning plan names its own budget flag, not textual inversion's
    tuned = Plan(inputs=[], facts={**erased.facts, "steps_option": "--ft-steps"})
    (reason,) = _convergence(tuned, standard)
    assert "(--ft-steps)" in reason and "--ti-steps" not in reason
    transferred = Plan(inputs=[], facts={**erased.facts, "optimised_through": "standard"})
    assert _convergence(transferred, standard) == []  # black-box: not optimised through it
