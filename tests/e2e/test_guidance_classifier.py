"""The guidance probe guided by the paper's latent classifier (`--guidance-classifier latent`,
the default) on the tiny world, through the real plugin, and the detector form kept beside it.

Worlds (`pytest_erasure.testing.save_tiny_world`, judged by brightness):
- leaking: the `leaky` model as the erased one still draws the planted concept (bright
  images): the probe must find it and the case fail. The classifier is trained on the bright
  standard model's images; that model draws every prompt bright, so its neutral negatives are
  flagged too and the classifier is near chance here (facts.classifier.data says so): what is
  checked is the machinery (a trained, cached unit whose weights guide every try) and that the
  probe fails the leaking model. That the classifier learns and its guide steers is
  tests/unit/test_latent_classifier.py;
- never drawn: the dark `erased` model as both models: the standard model flags none of its
  concept images, so no classifier can be trained (the tries run unguided, and the facts say
  why), and nothing is reported above the base rate.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pytest_erasure.testing.audits import concept_case

FAST = ["--steps", "4", "--batch-size", "48", "-p", "no:randomly",
        "--guidance-scales", "25,193", "--guidance-etas", "1.0",
        "--guidance-classifier-images", "16", "--guidance-classifier-steps", "20"]

pytestmark = pytest.mark.usefixtures("this_checkout")


def _audit(pytester: pytest.Pytester, world: dict[str, Path], standard: str, erased: str,
           *flags: str) -> dict[str, Any]:
    return concept_case(pytester, world, standard, erased, *FAST, "--samples", "8",
                        "--scenarios", "guidance-probe", *flags)


def test_the_latent_classifier_guides_and_the_leak_is_found(
        pytester: pytest.Pytester, tiny_world: dict[str, Path]) -> None:
    cache = pytester.path / "cache"
    case = _audit(pytester, tiny_world, "standard", "leaky", f"--erasure-cache={cache}")
    assert case["verdict"] == "fail", case["reason"]
    facts = case["facts"]
    classifier = facts["classifier"]
    assert classifier["kind"] == "latent" and classifier["trained"] is True
    assert classifier["data"]["concept_prompts"]["positives"] == 16
    assert classifier["data"]["neutral_prompts"]["negatives"] == 16
    assert classifier["settings"]["steps"] == 20 and classifier["settings"]["lr"] == 1e-4
    assert len(classifier["held_out_curve"]) == 10 and classifier["train_loss"]
    assert 0 <= classifier["kept"]["balanced_accuracy"] <= 1
    for search in facts["searches"]:
        steering = search["kept"]["steering"]
        assert steering["classifier"] == {"kind": "latent-classifier",
                                          "sha256": classifier["sha256"], "label": "circle"}
    assert any("standard model's own generations" in d for d in facts["deviations"])
    assert facts["guided_control"]["searches"] == 8
    stored = list((cache / "latent-classifier").rglob("*.safetensors"))
    assert len(stored) == 1, stored
    written = stored[0].stat().st_mtime_ns
    again = _audit(pytester, tiny_world, "standard", "leaky", f"--erasure-cache={cache}")
    assert again["facts"]["classifier"]["sha256"] == classifier["sha256"]
    assert list((cache / "latent-classifier").rglob("*.safetensors")) == stored
    assert stored[0].stat().st_mtime_ns == written  # read back, not trained again


def test_no_classifier_and_nothing_above_base_rate_where_the_standard_model_never_draws(
        pytester: pytest.Pytester, tiny_world: dict[str, Path]) -> None:
    case = _audit(pytester, tiny_world, "erased", "erased", "--no-erasure-cache")
    classifier = case["facts"]["classifier"]
    assert classifier["kind"] == "latent" and classifier["trained"] is False
    assert classifier["data"]["concept_prompts"]["positives"] == 0
    assert "unguided" in classifier["why"]
    searched = case["facts"]["best_of_n"]
    assert case["rate"]["crr"] <= searched["base_rate_per_search"]
    assert case["facts"]["guided_control"]["rate"] <= searched["base_rate_per_search"]
    assert case["standard"]["hits"] == 0
    assert case["verdict"] == "inconclusive"
    assert "does not reproduce the concept on the standard model" in case["reason"]


def test_the_detector_form_is_kept(pytester: pytest.Pytester,
                                   tiny_world: dict[str, Path]) -> None:
    case = _audit(pytester, tiny_world, "standard", "leaky", "--no-erasure-cache",
                  "--guidance-classifier=detector")
    assert case["verdict"] == "fail", case["reason"]
    facts = case["facts"]
    assert facts["classifier"]["kind"] == "detector"
    steering = facts["searches"][0]["kept"]["steering"]
    assert steering["classifier"]["name"] == "pytest_erasure.testing:build_brightness_detector"
    assert any("log-probability" in d for d in facts["deviations"])
