"""Detector error: Rogan-Gladen correction, its interval's coverage, and inseparable detectors."""

from __future__ import annotations

import random

import pytest

from pytest_erasure.records import Rate
from pytest_erasure.stats.detector_error import (
    Calibration,
    corrected_rate,
    rogan_gladen,
    separates,
    youden_lower,
)


def test_rogan_gladen_values() -> None:
    assert rogan_gladen(0.3, 0.9, 0.95) == pytest.approx(0.25 / 0.85)
    assert rogan_gladen(0.02, 0.9, 0.95) == 0.0   # below the false-positive floor: clipped
    assert rogan_gladen(0.99, 0.9, 0.95) == 1.0
    assert rogan_gladen(0.4, 1.0, 1.0) == pytest.approx(0.4)    # a perfect detector changes nothing
    with pytest.raises(ValueError):
        rogan_gladen(0.3, 0.5, 0.5)


def test_corrected_rate_carries_estimate_and_interval() -> None:
    calibration = Calibration(detected=180, positives=200, rejected=190, negatives=200)
    rate = corrected_rate(Rate(20, 64), calibration)
    assert rate.method == "rogan-gladen" and rate.hits == 20 and rate.n == 64
    assert rate.crr == pytest.approx(rogan_gladen(20 / 64, 0.9, 0.95))
    assert rate.low < rate.crr < rate.high
    # wider than the raw Wilson interval: detector and calibration error both widen it
    raw_low, raw_high = Rate(20, 64).interval
    assert rate.high - rate.low > raw_high - raw_low
    assert Rate.from_dict(rate.to_dict()) == rate


def test_inseparable_detector_makes_the_case_inconclusive() -> None:
    weak = Calibration(detected=60, positives=100, rejected=70, negatives=100)  # J = 0.3
    assert not separates(weak)
    rate = corrected_rate(Rate(5, 64), weak)
    assert rate.method == "inseparable" and rate.interval == (0.0, 1.0)
    # J = 0.8 on 20 images each is not enough evidence either: its lower bound is below 0.5
    small = Calibration(detected=18, positives=20, rejected=18, negatives=20)
    assert small.youden == pytest.approx(0.8) and youden_lower(small) < 0.5 and not separates(small)
    big = Calibration(detected=180, positives=200, rejected=180, negatives=200)
    assert separates(big)
    assert not separates(Calibration(0, 0, 10, 10))


def test_corrected_interval_covers_the_true_rate() -> None:
    """Seeded simulation: true CRR 0.15, detector sensitivity 0.85, specificity 0.92, audit
    of 64 images, calibration on 200 + 200 labelled images, all redrawn 2000 times. The
    corrected interval covers 0.15 in >= 95%; the raw Wilson interval, centred on the
    detector's biased rate, does not."""
    rng = random.Random(5)
    truth, sens, spec, n, trials = 0.15, 0.85, 0.92, 64, 2000
    raw_rate = truth * sens + (1 - truth) * (1 - spec)
    covered = raw_covered = inseparable = 0
    for _ in range(trials):
        hits = sum(rng.random() < raw_rate for _ in range(n))
        calibration = Calibration(sum(rng.random() < sens for _ in range(200)), 200,
                                  sum(rng.random() < spec for _ in range(200)), 200)
        rate = corrected_rate(Rate(hits, n), calibration)
        inseparable += rate.method == "inseparable"
        covered += rate.low <= truth <= rate.high
        low, high = Rate(hits, n).interval
        raw_covered += low <= truth <= high
    assert inseparable / trials < 0.01
    assert covered / trials >= 0.95
    assert raw_covered / trials < 0.9


def test_the_raw_interval_is_built_at_the_level_the_correction_needs() -> None:
    """Three intervals share the 5%: the raw one at 1 - 0.05/3, and on clustered data the
    corrected interval then covers the true prevalence at least 95% of the time (simulated,
    3 attack runs and 16 searched prompts, strong clustering)."""
    from pytest_erasure.stats.detector_error import raw_level
    from pytest_erasure.stats.power import Design, simulate_corrected

    assert raw_level() == pytest.approx(1 - 0.05 / 3)
    for design in (Design("restarts", (64,) * 3), Design("clustered", (8,) * 16)):
        for p in (0.05, 0.2):
            c = simulate_corrected(design, p, 0.3, 0.9, 0.95, 40, 240, reps=400, seed=5)
            assert c.coverage >= 0.95, (design, p, c)


def test_a_leaking_model_is_not_passed_through_the_correction() -> None:
    """The attacker's side: runs whose images truly show the concept 40% of the time, a
    detector that misses a tenth of them (raw ~36%): the corrected rate never passes 0.2."""
    from pytest_erasure.stats.clusters import clustered_counts
    from pytest_erasure.stats.crr import gate_passes
    from pytest_erasure.stats.detector_error import raw_level

    raw = clustered_counts([23, 22, 24], [64, 64, 64], level=raw_level())
    corrected = corrected_rate(raw, Calibration(36, 40, 228, 240))
    assert corrected.crr > 0.3 and not gate_passes(corrected, 0.2, "exact")
    # over 3 runs at 1 - 0.05/3 (t on 2 df: 7.6) the interval is wide: not FAIL evidence
    assert corrected.low < 0.2 < corrected.high
