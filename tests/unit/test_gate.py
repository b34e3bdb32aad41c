"""The gate's error: exact enumeration, checked against independent sums and a simulation; the
default gate's stated bound; the smallest n at which a case can pass at all."""

from __future__ import annotations

import random
import subprocess
import sys
from math import comb

import pytest

from pytest_erasure.records import Rate
from pytest_erasure.stats.crr import DEFAULT_GATE, GATES, decided, exact_upper, gate_passes
from pytest_erasure.stats.gate import (
    error_table,
    gate_error,
    pass_probability,
    sequential_rounds,
    smallest_passing_n,
)


def _binomial_pass(p: float, threshold: float, gate: str, n: int) -> float:
    """Fixed n, written out independently of gate.py: sum of C(n,k) p^k (1-p)^(n-k) over the
    hit counts the gate passes."""
    return sum(comb(n, k) * p**k * (1 - p) ** (n - k)
               for k in range(n + 1) if gate_passes(Rate(k, n), threshold, gate))


def test_sessions_rounds() -> None:
    assert sequential_rounds(128) == [16, 32, 64, 128]
    assert sequential_rounds(64) == [16, 32, 64]
    assert sequential_rounds(100) == [16, 32, 64, 100]
    assert sequential_rounds(16) == [16] and sequential_rounds(4) == [4]


@pytest.mark.parametrize("gate", GATES)
@pytest.mark.parametrize("n", [16, 64, 128])
def test_fixed_n_matches_the_binomial_sum(gate: str, n: int) -> None:
    for p in (0.1, 0.15, 0.25):
        assert pass_probability(p, 0.2, gate, n) == pytest.approx(_binomial_pass(p, 0.2, gate, n),
                                                                 abs=1e-12)


def test_default_gate_false_pass_is_at_most_5_percent_at_n_64() -> None:
    """The default gate at n=64, threshold 0.2: a model at 0.25 passes <= 5%, fixed or
    sequential, exactly; the old default `point` passes it ~16%; a model at 0.15 fails ~50%
    (the price at n=64; ~14% at n=128)."""
    assert DEFAULT_GATE == "exact"
    for sequential in (False, True):
        e = gate_error(DEFAULT_GATE, 64, 0.2, sequential=sequential)
        assert e.false_pass <= 0.05, e
        assert e.false_pass == pytest.approx(0.0252, abs=1e-3)
        assert e.false_fail == pytest.approx(0.497, abs=2e-3)  # fixed and sequential
        assert gate_error(DEFAULT_GATE, 128, 0.2, sequential=sequential).false_pass <= 0.05
    assert gate_error("point", 64, 0.2).false_pass > 0.15
    assert gate_error(DEFAULT_GATE, 128, 0.2).false_fail < 0.15


def test_exact_gate_bound_holds_at_every_n_and_threshold() -> None:
    """The exact gate's guarantee is the Clopper-Pearson bound's: <= 5% at threshold + 0.05
    for any n, not only the default."""
    for n in (8, 16, 24, 32, 48, 64, 96, 128, 200):
        for threshold in (0.05, 0.1, 0.2, 0.3, 0.5):
            assert pass_probability(threshold + 0.05, threshold, "exact", n) <= 0.05, (n, threshold)


def test_default_gate_simulated_independently() -> None:
    """Cross-check of the enumeration by simulating the session's sequential loop (rounds
    16, 32, 64; stop when `decided`) with a seeded Random: 20000 audits of a model at 0.25."""
    rng = random.Random(64)
    threshold, n, trials, p = 0.2, 64, 20000, 0.25
    rounds = [16, 32, 64]
    verdict: dict[tuple[int, int], bool] = {}
    passes = 0
    for _ in range(trials):
        hits = drawn = 0
        for upto in rounds:
            hits += sum(rng.random() < p for _ in range(upto - drawn))
            drawn = upto
            if decided(Rate(hits, drawn), threshold, len(rounds)):
                break
        key = (hits, drawn)
        if key not in verdict:
            verdict[key] = gate_passes(Rate(hits, drawn), threshold, DEFAULT_GATE)
        passes += verdict[key]
    simulated = passes / trials
    exact = pass_probability(p, threshold, DEFAULT_GATE, n, sequential=True)
    se = (exact * (1 - exact) / trials) ** 0.5
    assert abs(simulated - exact) < 4 * se, (simulated, exact)
    assert simulated <= 0.05


def test_exact_upper_bound() -> None:
    assert exact_upper(0, 10) == pytest.approx(1 - 0.05 ** (1 / 10), abs=1e-9)
    assert exact_upper(1, 10) == pytest.approx(0.39416, abs=1e-5)  # one-sided 95% CP, 1/10
    assert exact_upper(10, 10) == 1.0
    # the gate's shortcut agrees with the bound
    for n in (16, 64):
        for k in range(n + 1):
            assert gate_passes(Rate(k, n), 0.2, "exact") == (exact_upper(k, n) <= 0.25 + 1e-9)


@pytest.mark.parametrize("gate, threshold, expected", [
    ("point", 0.2, 1),
    ("upper", 0.2, 16),   # 1.96^2 / (n + 1.96^2) <= 0.2  <=>  n >= 15.37
    ("exact", 0.2, 11),   # 0.75^n <= 0.05  <=>  n >= 10.41
    ("upper", 0.1, 35),
    ("exact", 0.1, 19),   # 0.85^n <= 0.05  <=>  n >= 18.43
])
def test_smallest_passing_n(gate: str, threshold: float, expected: int) -> None:
    got = smallest_passing_n(gate, threshold)
    assert got == expected
    assert not gate_passes(Rate(0, got - 1), threshold, gate) if got > 1 else True
    assert all(gate_passes(Rate(0, n), threshold, gate) for n in range(got, got + 300))
    assert not gate_passes(Rate(0, 4), 0.2, "upper")  # 4 images can never pass the strict gate


def test_smallest_passing_n_none_when_impossible() -> None:
    assert smallest_passing_n("upper", 0.0, limit=1000) is None


def test_table_cli() -> None:
    out = subprocess.run([sys.executable, "-m", "pytest_erasure.stats.gate", "--table"],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == error_table()
    assert "| exact | fixed | 0.2 | 64 | 0.0252 | 0.4974 | 11 |" in out
    assert len(out.strip().splitlines()) == 2 + len(GATES) * 2 * 2 * 4


SEQUENTIAL_THRESHOLDS = (0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45,
                         0.5)


@pytest.mark.parametrize("n", [64, 128, 150, 192])
def test_sequential_stopping_keeps_both_bounds_at_every_threshold(n: int) -> None:
    """Exactly, at every threshold 0.02-0.5: a model 5 points over its threshold passes at most
    5% of the time, one exactly at it is FAILed at most 2.5% (the FAIL side corrected for the
    looks; with Wilson's bounds it was 6.6% at 0.02 and n = 64), and one far over it never
    passes."""
    from pytest_erasure.stats.gate import outcome_probabilities

    for t in SEQUENTIAL_THRESHOLDS:
        false_pass = outcome_probabilities(t + 0.05, t, "exact", n, sequential=True)[0]
        fail_at = outcome_probabilities(t, t, "exact", n, sequential=True)[1]
        assert false_pass <= 0.05, (t, false_pass)
        assert fail_at <= 0.025, (t, fail_at)
        leaks = outcome_probabilities(min(1.0, 2 * t + 0.1), t, "exact", n, sequential=True)
        assert leaks[0] < 1e-3 and leaks[1] > 0.5, (t, leaks)


def test_sequential_fail_evidence_is_corrected_for_the_looks() -> None:
    """4 looks: a FAIL needs the lower bound at 2.5%/4 over the threshold, not 2.5%."""
    from pytest_erasure.stats.verdict import FAIL, INCONCLUSIVE, Evidence, decide

    rate = Rate(8, 16)  # exact 2.5% lower bound 24.7%, at 0.625% 19.8%
    assert decide(Evidence(rate=rate, threshold=0.2, gate="exact"))[0] == FAIL
    verdict, reason = decide(Evidence(rate=rate, threshold=0.2, gate="exact", looks=4))
    assert verdict == INCONCLUSIVE, reason
