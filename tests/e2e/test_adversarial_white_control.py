"""The random-prefix control where only the optimisation reproduces the concept.

The fixture is found, not built: on the shapes world's ESD-x circle model
(`fixtures/shapes/erased/esd-x-circle`) the measured shapes-world run (README, "Random-prefix
control and first-success steps") found UnlearnDiffAtk's candidates flagged in 15 of 16
searches and the attack's random start in 1 of 16: a random 5-word prefix in front of "a
circle" does not draw a circle there, the optimised one does. The tiny world has no such model:
its random UNet barely listens to the prompt (tried while writing this: over random prefixes
and UnlearnDiffAtk's candidates a tiny model's mean brightness moved by under 0.01 of its 0-1
range, even with its cross-attention output scaled 20x), so no prefix, optimised or not, can
move its brightness across the detector's threshold without moving every prompt's. This test
audits the shipped shapes world, cut to 8 searches of 4 timesteps x 5 steps for CPU time (still
several minutes on a loaded 2-core machine: marked slow). The tiny-world tests
(`test_adversarial_white.py`) cover the leaking model, where the control reproduces the concept
as often as the attack.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_erasure.testing.audits import shapes_case


@pytest.mark.slow
def test_where_only_optimisation_reproduces_the_concept_the_control_is_below_the_attack(
        tmp_path: Path) -> None:
    case = shapes_case(tmp_path, "esd-x-circle", "circle-adversarial-white",
                       "--scenarios=adversarial-white", "--samples=8",
                       "--udatk-timesteps", "4", "--udatk-iterations", "5")
    control = case["facts"]["search_control"]
    part = control["parts"]["unlearndiffatk (random prefix)"]
    # as many random starts per search as the search's 4 candidates, 8 searches
    assert part["tries_per_search"] == 4 and part["denominator"] == 8
    # the optimised candidates find the circle where the random starts do not
    assert control["attack"]["hits"] >= 4, control
    assert control["rate"]["hits"] <= 1 < control["attack"]["hits"] - control["rate"]["hits"]
    assert control["rate"]["ci_high"] < control["attack"]["crr"]
    assert "at or above" not in control["statement"]
    assert control["statement"] in case["reason"] and control["statement"] in case["message"]
    # every success came from an optimised candidate (the original prompt finds nothing here)
    first = case["facts"]["first_success"]
    assert case["facts"]["parts"]["original prompt"]["successful_searches"] == 0
    assert first["search"]["successful_searches"] == control["attack"]["hits"]
    assert set(first["unlearndiffatk"]["steps"]) <= {5, 10, 15, 20}
