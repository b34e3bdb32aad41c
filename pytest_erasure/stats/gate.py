"""The gate's error, computed exactly: how often each gate rule passes a model that should fail
and fails one that should pass, at a given n, fixed or with sequential stopping.

Why exact enumeration and not simulation: the numbers go into README and into a safety team's
sign-off, so they must not carry Monte Carlo noise. Every hit count 0..n is a term of a finite
binomial sum; the sequential rule (`crr.decided` at each of the session's doubling rounds
16, 32, ..., n with `len(rounds)` looks) is a finite tree of paths, summed round by round over
the hit counts still undecided. The only assumption is the binomial one: images independent
with one true CRR (see `pytest_erasure.stats.clusters` for when they are not).

`python -m pytest_erasure.stats.gate --table` prints every gate rule at a few n for independent
images; docs/gate_error.md (`gate_doc`) gives the error of the rule each case applies, at
the shipped suites' designs.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from dataclasses import dataclass

from pytest_erasure.records import Rate
from pytest_erasure.stats.crr import (  # smallest_passing_n: here too, as before
    GATES,
    decided,
    gate_passes,
    smallest_passing_n,
)
from pytest_erasure.stats.distributions import binom_pmfs

FIRST_ROUND = 16
"""The first sequential round: `checks.measure` samples in these rounds (`sequential_rounds`)."""


def sequential_rounds(n: int, first: int = FIRST_ROUND) -> list[int]:
    """The session's rounds for n samples: first, 2*first, ... while below n, then n."""
    rounds, k = [], first
    while k < n:
        rounds.append(k)
        k *= 2
    return rounds + [n]


def outcome_probabilities(p: float, threshold: float, gate: str, n: int, *,
                          sequential: bool = False, first: int = FIRST_ROUND
                          ) -> tuple[float, float]:
    """Exact (P(PASS), P(FAIL)) of a case of `n` independent images that show the concept with
    probability `p`, under the verdict's rules for a binomial rate (`verdict.decide`: FAIL
    evidence, the lower bound over the threshold, first; then the gate). With `sequential`,
    sampling stops at the first round where `crr.decided` (as `checks.measure` does) and the
    FAIL evidence is corrected for the looks (`verdict.Evidence.looks`)."""
    from pytest_erasure.stats.verdict import FAIL_ALPHA, lower_bound

    rounds = sequential_rounds(n, first) if sequential else [n]
    looks = len(rounds)
    alive = {0: 1.0}
    drawn, passed, failed = 0, 0.0, 0.0
    for i, upto in enumerate(rounds):
        step = upto - drawn
        pmf = binom_pmfs(step, p)
        grown: dict[int, float] = {}
        for hits, mass in alive.items():
            for k, q in enumerate(pmf):
                if q:
                    grown[hits + k] = grown.get(hits + k, 0.0) + mass * q
        drawn, alive = upto, {}
        last = i == len(rounds) - 1
        for hits, mass in grown.items():
            rate = Rate(hits, drawn)
            if last or (sequential and decided(rate, threshold, looks)):
                if lower_bound(rate, FAIL_ALPHA / looks) > threshold:
                    failed += mass
                elif gate_passes(rate, threshold, gate, looks):
                    passed += mass
            else:
                alive[hits] = mass
    return min(1.0, passed), min(1.0, failed)


def pass_probability(p: float, threshold: float, gate: str, n: int, *,
                     sequential: bool = False, first: int = FIRST_ROUND) -> float:
    """Exact P(PASS) (see `outcome_probabilities`)."""
    return outcome_probabilities(p, threshold, gate, n, sequential=sequential, first=first)[0]


@dataclass(frozen=True)
class GateError:
    gate: str
    n: int
    threshold: float
    delta: float
    sequential: bool
    false_pass: float
    """P(pass) for a model whose true CRR is threshold + delta."""
    false_fail: float
    """P(fail) for a model whose true CRR is threshold - delta."""


def gate_error(gate: str, n: int, threshold: float, delta: float = 0.05, *,
               sequential: bool = False) -> GateError:
    """Both errors of a gate rule, exactly (see `pass_probability`)."""
    return GateError(
        gate, n, threshold, delta, sequential,
        false_pass=pass_probability(threshold + delta, threshold, gate, n, sequential=sequential),
        false_fail=1.0 - pass_probability(threshold - delta, threshold, gate, n,
                                          sequential=sequential))


def restart_pass_probability(p: float | Sequence[float], threshold: float, gate: str, n: int,
                             restarts: int) -> float:
    """Exact probability that an attack case of `n` images spread round-robin over `restarts`
    runs passes: every run must pass the gate on its own images and the pooled rate,
    clustered on runs (`clusters.clustered_rate`), must pass too (`verdict.decide`). `p`: the
    rate every run draws the concept at (runs that do not differ), or each run's hit-count
    distribution over its passing counts as a pmf list (`hit_pmfs`: e.g. beta-binomial runs
    that differ). The cost of gating the attacker's best run: 1 minus this at p = threshold / 2
    is the false-fail rate of a model comfortably under its threshold.

    How, exactly and fast: a run can only take the handful of hit counts with which it passes
    on its own, and the pooled interval depends on the runs' counts only through each size
    group's sum of hits and sum of squared hits (the cluster-robust spread: `clusters.
    design_effect_of_spread`); the enumeration carries those sums run by run (a few thousand
    states for 7 runs of 150) instead of every combination of counts (16^7)."""
    sizes = [n // restarts + (1 if r < n % restarts else 0) for r in range(restarts)]
    pmfs = hit_pmfs(p, sizes) if isinstance(p, int | float) else [list(q) for q in p]
    passing = [[h if pmf[h] and gate_passes(Rate(h, m), threshold, gate) else None
                for h in range(m + 1)] for m, pmf in zip(sizes, pmfs, strict=True)]
    if restarts < 2:
        return sum(pmfs[0][h] for h in passing[0] if h is not None)
    options = [[h for h in c if h is not None] for c in passing]
    combinations = math.prod(len(c) for c in options)
    top = max((h for c in options for h in c), default=0)
    if len(set(sizes)) == 1 and (restarts * top + 1) * (restarts * top * top + 1) < combinations:
        return _alike_sizes(pmfs, passing, sizes, threshold, gate)
    # every combination of passing counts: fewer than the sums' states (few or large runs), or
    # runs of two sizes (n not a multiple of the restarts)
    import itertools

    from pytest_erasure.stats.clusters import clustered_counts

    pooled: dict[tuple[tuple[int, int], ...], bool] = {}
    total = 0.0
    for hits in itertools.product(*options):
        key = tuple(sorted(zip(hits, sizes, strict=True)))
        if key not in pooled:
            pooled[key] = gate_passes(clustered_counts([h for h, _ in key],
                                                       [m for _, m in key]), threshold, gate)
        if pooled[key]:
            mass = 1.0
            for h, pmf in zip(hits, pmfs, strict=True):
                mass *= pmf[h]
            total += mass
    return total


def _alike_sizes(pmfs: list[list[float]], passing: list[list[int | None]], sizes: list[int],
                 threshold: float, gate: str) -> float:
    """`restart_pass_probability` for runs of one size m: the state after each run is (sum of
    hits S1, sum of squared hits S2), a numpy array of probabilities, and the pooled interval
    passes, at each S1, exactly for S2 up to a bound (the spread, S2 - S1^2 / k up to a
    constant, only widens the interval), found by bisection."""
    import numpy as np

    from pytest_erasure.stats.clusters import clustered_given_deff, design_effect_of_spread

    k, m = len(sizes), sizes[0]
    n = k * m
    top = max(h for c in passing for h in c if h is not None) if any(
        h is not None for c in passing for h in c) else 0
    state = np.zeros((k * top + 1, k * top * top + 1))
    state[0, 0] = 1.0
    for pmf, counts in zip(pmfs, passing, strict=True):
        grown = np.zeros_like(state)
        for h in counts:
            if h is not None:
                rows, cols = state.shape[0] - h, state.shape[1] - h * h
                grown[h:, h * h:] += pmf[h] * state[:rows, :cols]
        state = grown

    def passes(s1: int, s2: int) -> bool:
        if s1 in (0, n):
            deff = 1.0
        else:
            rate = s1 / n
            spread = (s2 - 2 * rate * m * s1 + k * (rate * m) ** 2) / (1 - m / n)
            deff = design_effect_of_spread(spread, s1, n)
        return gate_passes(clustered_given_deff(s1, sizes, deff), threshold, gate)

    total = 0.0
    for s1 in range(state.shape[0]):
        row = state[s1]
        cols = np.flatnonzero(row)
        if not len(cols):
            continue
        lo, hi = -1, len(cols)  # passes(cols[:lo + 1]) all True, cols[hi:] all False
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if passes(s1, int(cols[mid])):
                lo = mid
            else:
                hi = mid
        if lo >= 0:
            total += float(row[: int(cols[lo]) + 1].sum())
    return total


def hit_pmfs(p: float, sizes: Sequence[int], icc: float = 0.0) -> list[list[float]]:
    """Each run's hit-count distribution: binomial at `p`, or beta-binomial with mean `p` and
    intra-cluster correlation `icc` (each run draws its own rate from the beta, as
    `power.simulate` does)."""
    if icc <= 0:
        return [binom_pmfs(m, p) for m in sizes]
    from pytest_erasure.stats.distributions import beta_binomial_pmfs

    a, b = p * (1 - icc) / icc, (1 - p) * (1 - icc) / icc
    return [beta_binomial_pmfs(m, a, b) for m in sizes]


def error_table(ns: tuple[int, ...] = (16, 32, 64, 128), thresholds: tuple[float, ...] = (0.1, 0.2),
                delta: float = 0.05) -> str:
    """A Markdown table: every gate, fixed and sequential, at each n and threshold."""
    lines = [f"| gate | sampling | threshold | n | false pass (CRR = thr + {delta}) | false fail "
             f"(CRR = thr - {delta}) | 0 hits passes from n |",
             "|---|---|---|---|---|---|---|"]
    for gate in GATES:
        for sequential in (False, True):
            for threshold in thresholds:
                floor = smallest_passing_n(gate, threshold)
                for n in ns:
                    e = gate_error(gate, n, threshold, delta, sequential=sequential)
                    lines.append(f"| {gate} | {'sequential' if sequential else 'fixed'} | "
                                 f"{threshold:g} | {n} | {e.false_pass:.4f} | {e.false_fail:.4f} | "
                                 f"{floor} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--table", action="store_true", help="print the gate error table")
    parser.add_argument("--delta", type=float, default=0.05)
    args = parser.parse_args(argv)
    if not args.table:
        parser.print_help()
        return 2
    print(error_table(delta=args.delta))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
