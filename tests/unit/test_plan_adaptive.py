"""The plan counts the adaptive DDIM inversion's refinement: with a defense on and the adaptive
threat, latent-white-* refine every inverted latent through the defense for
--inversion-adaptive-steps unrolled steps (`inversion.adaptive_invert`), the bulk of the case's
time (benchmarks/results/adaptive_inversion_cost.json); the transfer threat, zero steps and the
black-box cases run no refinement."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pytest_erasure.errors import ErasureInputError
from pytest_erasure.plan import REPO, plan_file
from pytest_erasure.scenarios.latent import ADAPTIVE_EVALUATIONS

SHAPES = REPO / "audits" / "shapes.toml"
CASES = ["latent-white-null", "latent-white-prompt", "latent-black-null"]


def attack(**kwargs: object) -> dict[str, float]:
    plans = plan_file(SHAPES, samples=64, scenarios=CASES, power=False, **kwargs)  # type: ignore[arg-type]
    return {p.case.removeprefix("circle-"): p.attack_seconds for p in plans}  # type: ignore[misc]


def test_the_refinement_counts_only_when_the_adaptive_attacker_runs_it() -> None:
    plain = attack()
    adaptive = attack(defense="irece")
    n = 16  # the shapes world's references (min(--samples, references))
    steps, iterations, rate = 25, 20, 0.166  # the shapes profile's --steps and budget; plan rate
    per_latent = (iterations * steps * 4 + 2 * ADAPTIVE_EVALUATIONS * steps + iterations) / steps
    for case in ("latent-white-null", "latent-white-prompt"):
        assert adaptive[case] == pytest.approx(plain[case] + n * per_latent * rate), case
        assert adaptive[case] > 50 * plain[case]
    assert adaptive["latent-black-null"] == plain["latent-black-null"]  # a transfer attack
    assert attack(defense="irece", threat="transfer") == plain
    assert attack(defense="irece", given={"inversion-adaptive-steps": 0}) == plain
    fewer = attack(defense="irece", given={"inversion-adaptive-steps": 10})
    assert plain["latent-white-null"] < fewer["latent-white-null"] < adaptive["latent-white-null"]


def test_the_plan_command_takes_the_defense_and_the_threat() -> None:
    def minutes(*extra: str) -> str:
        done = subprocess.run([sys.executable, "-m", "pytest_erasure.plan", str(SHAPES),
                               "--samples", "64", "--scenarios", "latent-white-null", *extra],
                              capture_output=True, text=True, cwd=REPO, timeout=300)
        row = next(line for line in done.stdout.splitlines()
                   if line.startswith("| circle-latent-white-null"))
        return row.split(" | ")[7]

    plain = minutes()
    assert minutes("--irece") != plain and float(minutes("--irece").split()[0]) > 1.0
    assert minutes("--irece", "--erasure-threat", "transfer") == plain
    assert minutes("--irece", "--inversion-adaptive-steps", "0") == plain


def test_an_unknown_defense_or_threat_is_refused() -> None:
    with pytest.raises(ErasureInputError, match="not a registered defense"):
        attack(defense="nowhere")
    with pytest.raises(ErasureInputError, match="not a threat model"):
        attack(defense="irece", threat="oblivious")


def test_the_plan_offers_the_threats_the_audit_knows() -> None:
    from pytest_erasure.config import THREATS
    from pytest_erasure.plan import THREATS as PLANNED

    assert PLANNED == THREATS
