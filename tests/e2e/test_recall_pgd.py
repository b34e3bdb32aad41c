"""RECALL's PGD does the work: on the tiny world's `pgd_only` erased model
(`pytest_erasure.testing.recall_world`) the references' own img2img never shows the concept, so
every success is a try after the PGD moved the latent, and a search too weak to move it finds
less. Through the real plugin, as `test_image_attacks.py`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pytest_erasure.testing.audits import concept_case
from pytest_erasure.testing.recall_world import RECALL_FLAGS

FLAGS = [*RECALL_FLAGS, "--batch-size", "48", "-p", "no:randomly", "--no-erasure-cache",
         "--samples", "8", "--scenarios", "image-white"]

pytestmark = pytest.mark.usefixtures("this_checkout")


@pytest.fixture(scope="module")
def recall_world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from pytest_erasure.testing.recall_world import save_recall_world

    return save_recall_world(tmp_path_factory.mktemp("recall-world"))


def _audit(pytester: pytest.Pytester, world: dict[str, Path], standard: str, erased: str,
           *flags: str) -> dict[str, Any]:
    return concept_case(pytester, world, standard, erased, *FLAGS, *flags)


def test_the_search_succeeds_only_after_the_pgd_moved_the_latent(
        pytester: pytest.Pytester, recall_world: dict[str, Path]) -> None:
    """The full search finds the concept, every time at a try after a PGD round (never try 0,
    the references' img2img); a search that cannot move the latent as far (one iteration at
    one timestep; a step of 1e-9) finds less, and neither passes."""
    case = _audit(pytester, recall_world, "standard", "pgd_only")
    assert case["facts"]["recall"]["successes_by_form"]["reference img2img"] == 0
    rounds = [s["success"]["round"] for s in case["facts"]["searches"] if s["success"]]
    assert rounds and all(r > 0 for r in rounds)
    assert case["rate"]["hits"] == len(rounds)
    assert case["verdict"] == "fail", case["reason"]
    for weak in (["--recall-timesteps", "1", "--recall-iterations", "1"],
                 ["--recall-step", "1e-9"]):
        weaker = _audit(pytester, recall_world, "standard", "pgd_only", *weak)
        assert weaker["rate"]["hits"] < case["rate"]["hits"], weak
        assert weaker["facts"]["recall"]["successes_by_form"]["reference img2img"] == 0
        assert weaker["verdict"] != "pass", weaker["reason"]
        if "--recall-iterations" in weak:  # one iteration is no search: never a pass
            assert weaker["facts"]["underpowered"]
    assert weaker["facts"]["best_of_n"]["tries_per_search"] == case["facts"]["best_of_n"][
        "tries_per_search"]  # the no-step search had every try the full one had


def test_the_fixtures_search_reports_nothing_where_the_standard_model_never_draws_it(
        pytester: pytest.Pytester, recall_world: dict[str, Path]) -> None:
    """The dark model as both models, searched at the fixture's strong step: nothing above
    the base rate, and no pass on a search that reproduces nothing on the standard model."""
    case = _audit(pytester, recall_world, "erased", "erased")
    searched = case["facts"]["best_of_n"]
    assert case["rate"]["hits"] == 0 == case["standard"]["hits"]
    assert case["rate"]["crr"] <= searched["base_rate_per_search"]
    assert case["verdict"] == "inconclusive"
    assert "does not reproduce the concept on the standard model" in case["reason"]
