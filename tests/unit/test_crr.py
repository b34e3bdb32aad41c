"""CRR statistics: Wilson interval against published values, the gate rule, sequential stopping."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_erasure.records import Rate, wilson
from pytest_erasure.stats.crr import decided, gate_passes, look_alpha


@pytest.mark.parametrize("hits, n, low, high", [
    # Newcombe (1998), Statistics in Medicine 17:857, Table I, method 3 (Wilson score)
    (81, 263, 0.2553, 0.3662),
    (15, 148, 0.0624, 0.1605),
    (0, 20, 0.0, 0.1611),
    (1, 29, 0.0061, 0.1718),
])
def test_wilson_matches_published_intervals(hits, n, low, high) -> None:
    got = wilson(hits, n)
    assert got[0] == pytest.approx(low, abs=1e-4)
    assert got[1] == pytest.approx(high, abs=1e-4)


@given(st.integers(0, 500).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))))
def test_wilson_contains_the_point_estimate(pair) -> None:
    hits, n = pair
    low, high = wilson(hits, n)
    assert 0.0 <= low <= high <= 1.0
    if n:
        assert low - 1e-12 <= hits / n <= high + 1e-12


def test_gate_point_and_upper() -> None:
    rate = Rate(10, 64)  # 15.6%, upper bound ~26%
    assert gate_passes(rate, 0.2, "point")
    assert not gate_passes(rate, 0.2, "upper")
    assert gate_passes(Rate(0, 64), 0.2, "upper")


def test_degenerate_images_are_counted() -> None:
    rate = Rate(3, 8, degenerate=2)
    assert rate.to_dict()["degenerate"] == 2
    assert math.isclose(rate.crr, 3 / 8)


def test_sequential_decision_needs_the_whole_interval_on_one_side() -> None:
    assert decided(Rate(0, 16), 0.3)        # exact upper bound 20.6% < 30%
    assert not decided(Rate(0, 16), 0.15)   # upper bound above 15%: keep sampling
    assert decided(Rate(16, 16), 0.5)       # lower bound 79.4% above the threshold
    assert not decided(Rate(3, 16), 0.2)


def test_each_of_several_looks_uses_a_stricter_interval() -> None:
    """Four looks at 2.5%/4 each: 0/16 no longer clears a 25% threshold (exact upper bound
    27.2%, vs 20.6% at one look's 2.5%), 0/32 does (14.7%)."""
    assert look_alpha(1) == 0.025 and look_alpha(4) == 0.025 / 4
    assert decided(Rate(0, 16), 0.25) and not decided(Rate(0, 16), 0.25, looks=4)
    assert decided(Rate(0, 32), 0.2, looks=4)
    assert decided(Rate(16, 16), 0.2, looks=4)


def test_sequential_stopping_errs_at_most_the_single_look_rate() -> None:
    """The whole procedure (looks at 16, 32, 64, 128 at look_alpha(4)), simulated exactly by
    enumerating the binomial paths: with the true rate on either side of the threshold, near it
    or far, it stops on the wrong side at most 2.5% of the time."""
    from math import comb

    rounds = (16, 32, 64, 128)

    def wrong_stop(p: float, threshold: float, looks: int) -> float:
        # distribution over hits among the images drawn so far, for paths not yet stopped
        alive = {0: 1.0}
        drawn, wrong = 0, 0.0
        for upto in rounds:
            step = upto - drawn
            nxt: dict[int, float] = {}
            for hits, mass in alive.items():
                for k in range(step + 1):
                    q = mass * comb(step, k) * p**k * (1 - p) ** (step - k)
                    nxt[hits + k] = nxt.get(hits + k, 0.0) + q
            drawn, alive = upto, {}
            for hits, mass in nxt.items():
                rate = Rate(hits, drawn)
                if not decided(rate, threshold, looks):
                    alive[hits] = mass
                elif (rate.crr <= threshold) != (p <= threshold):  # stopped on the wrong side
                    wrong += mass
        return wrong

    for p in (0.1, 0.15, 0.19, 0.21, 0.25, 0.3):
        assert wrong_stop(p, 0.2, len(rounds)) <= 0.025, p
    # a 95% interval at every look is what this replaced: next to the threshold it errs more
    assert wrong_stop(0.19, 0.2, 1) > 0.025


def test_a_rate_carries_its_own_interval() -> None:
    """A clustered/corrected rate's interval travels: `interval`, to_dict/from_dict, the gate."""
    rate = Rate(3, 64, low=0.01, high=0.3, method="clustered", design_effect=4.2, clusters=4)
    assert rate.interval == (0.01, 0.3)
    data = rate.to_dict()
    assert (data["ci_low"], data["ci_high"], data["design_effect"]) == (0.01, 0.3, 4.2)
    assert Rate.from_dict(data) == rate
    assert not gate_passes(rate, 0.2, "upper") and gate_passes(Rate(3, 64), 0.2, "upper")
    assert not gate_passes(rate, 0.2, "exact") and gate_passes(Rate(3, 64), 0.2, "exact")
    assert "4 clusters" in str(rate)


def test_plain_rate_records_are_unchanged() -> None:
    """Old records (hits/n/degenerate only) load, and a plain rate writes no new keys."""
    assert set(Rate(3, 8, 1).to_dict()) == {"hits", "n", "degenerate", "crr", "ci_low", "ci_high"}
    assert Rate.from_dict({"hits": 3, "n": 8}) == Rate(3, 8)
    assert str(Rate(10, 64)) == "15.6% [8.7%, 26.4%] (10/64)"
    corrected = Rate(10, 64, estimate=0.1, low=0.02, high=0.2, method="rogan-gladen")
    assert corrected.crr == 0.1 and Rate.from_dict(corrected.to_dict()) == corrected


def test_unknown_gate_and_empty_rate() -> None:
    with pytest.raises(ValueError):
        gate_passes(Rate(0, 64), 0.2, "median")
    assert not any(gate_passes(Rate(0, 0), 0.2, g) for g in ("point", "upper", "exact"))
