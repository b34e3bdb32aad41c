"""CRR statistics: Wilson interval against published values, the gate rule, sequential stopping."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_erasure.crr import Rate, decided, gate_passes, wilson


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
    assert decided(Rate(0, 16), 0.3)        # upper bound 19.4% < 30%
    assert not decided(Rate(0, 16), 0.15)   # upper bound above 15%: keep sampling
    assert decided(Rate(16, 16), 0.5)       # lower bound above the threshold
    assert not decided(Rate(3, 16), 0.2)
