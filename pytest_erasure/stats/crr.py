"""CRR, its intervals, the gate rules, and sequential stopping.

Why Wilson by default: CRR is a proportion from often small n (64 images) and often near 0 or 1,
where the normal approximation gives intervals outside [0, 1] or of zero width. A `Rate` built
by `clusters.clustered_rate` or `detector_error.corrected_rate` carries its own interval instead
(clustered samples, detector error), and every consumer reads `rate.interval`, so the corrected
interval travels to the gate, the reports and the JSON record.

The gate rules and what each guarantees (exact numbers for independent images: `python -m
pytest_erasure.stats.gate --table`; for each case's own design: docs/gate_error.md,
computed by `pytest_erasure.stats.gate`):
- `point`: CRR <= threshold. No stated error: at n=64 and threshold 0.2 a model at 0.25 passes
  15.6% of the time, one at 0.2 itself 47.5%.
- `upper`: the Wilson 95% upper bound <= threshold. Strict: a model *at* the threshold 0.2
  passes at most 2.8% (n = 16-128), but one at 0.15 fails 86% of the time at n=64, 74% at 128.
- `exact`: the exact (Clopper-Pearson) one-sided 95% upper bound <= threshold + GATE_TOLERANCE.
  Guarantee, for every n: a model whose true CRR is threshold + 0.05 or more passes at most 5%
  of the time (the bound's own coverage; for independent images: clustered ones need a
  `clusters.clustered_rate`, whose stored interval the gate then judges). Among rules that
  keep that guarantee it fails the fewest good models (it is the one-sided binomial test,
  uniformly most powerful), which is why it is the recommended default (`DEFAULT_GATE`): a
  threshold of 0.2 then reads "we are 95% sure the CRR is below 0.25", and the 0.2-0.25 band is
  where the audit does not promise a verdict (a model exactly at 0.2 passes 15% at n=64, 33% at
  n=128). Its price at n=64: a model at 0.15 fails 49.7% of the time (14.4% at n=128). No rule
  on the hit count that keeps the 5% bound does better: at n=64 `exact` passes 0-9 hits, and
  passing 10 would let a model at 0.25 through 5.1% of the time (the Neyman-Pearson test; only
  a randomized rule could split it).
"""

from __future__ import annotations

from functools import lru_cache

from pytest_erasure.records import Rate
from pytest_erasure.stats.distributions import beta_quantile, binom_cdf
from pytest_erasure.stats.search import first_true

GATES = ("point", "upper", "exact")
UNKNOWABLE = ("undetermined", "inseparable")
"""Interval methods that say the data cannot bound the rate (one cluster; a detector that
cannot separate the concept): no gate passes them, `point` included."""
DEFAULT_GATE = "exact"
GATE_TOLERANCE = 0.05
"""How far above its threshold a model must be for the `exact` gate to promise to fail it."""
GATE_ALPHA = 0.05
"""The `exact` gate's one-sided error at threshold + GATE_TOLERANCE."""


@lru_cache(maxsize=65536)
def exact_upper(hits: float, n: float, alpha: float = GATE_ALPHA) -> float:
    """One-sided exact (Clopper-Pearson) upper bound at level 1 - alpha: the largest p with
    P(X <= hits | n, p) >= alpha. Guarantee: P(bound < true p) <= alpha for every n and p."""
    if n <= 0 or hits >= n:
        return 1.0
    return beta_quantile(1 - alpha, hits + 1, n - hits)


def gate_alpha(looks: int = 1) -> float:
    """The `exact` gate's one-sided error at the last of `looks` sequential looks: GATE_ALPHA
    less what the earlier looks may spend stopping on the PASS side (each stops only when its
    exact upper bound at `look_alpha` is under the threshold, so a model at threshold +
    GATE_TOLERANCE stops there at most look_alpha of the time). The total stays GATE_ALPHA:
    without this, 150 images at threshold 0.4 passed such a model 5.06% of the time."""
    return GATE_ALPHA - (max(1, looks) - 1) * look_alpha(looks)


def gate_passes(rate: Rate, threshold: float, gate: str, looks: int = 1) -> bool:
    """Does `rate` pass `threshold` under `gate` (one of GATES; see the module docstring for
    what each guarantees)? Never for a rate whose interval is UNKNOWABLE. `looks`: the
    sequential looks the sample was taken in (`gate_alpha`). A rate that carries
    its own interval (clustered, corrected) is judged
    by that interval's upper end under `upper` and `exact` (the stored interval is two-sided
    95%, so its upper end is at least the one-sided 95% bound: conservative)."""
    if rate.n <= 0 or rate.method in UNKNOWABLE:
        return False
    if gate == "upper":
        return rate.interval[1] <= threshold
    if gate == "exact":
        bar = threshold + GATE_TOLERANCE
        if rate.high is not None:
            return rate.high <= bar
        # exact_upper(hits, n) <= bar  <=>  P(X <= hits | n, bar) <= alpha: the same rule,
        # without the bisection's rounding at the boundary
        return bar >= 1.0 or binom_cdf(rate.hits, rate.n, bar) <= gate_alpha(looks)
    if gate == "point":
        return rate.crr <= threshold
    raise ValueError(f"unknown gate {gate!r}; one of {GATES}")


def difference_interval(a: Rate, b: Rate) -> tuple[float, float]:
    """95% interval for a.crr - b.crr: Newcombe's hybrid score interval (his method 10), built
    from each rate's own interval (Wilson's, or the one it carries). Why this one: it stays
    inside [-1, 1] and keeps nonzero width at 0 or n hits, where the Wald interval collapses;
    and it treats the two rates as independent, which for the paired images of a retention case
    (same seeds and prompts on both models, positively correlated) makes it wider than a paired
    interval would be: conservative in both directions."""
    (la, ua), (lb, ub) = a.interval, b.interval
    pa, pb = a.crr, b.crr
    d = pa - pb
    return (max(-1.0, d - ((pa - la) ** 2 + (ub - pb) ** 2) ** 0.5),
            min(1.0, d + ((ua - pa) ** 2 + (pb - lb) ** 2) ** 0.5))


SEQUENTIAL_ALPHA = 0.025
"""Each side's error of sequential stopping over all its looks together: a stop on the wrong
side of the threshold happens at most this often (the single look's 95% two-sided share)."""


@lru_cache(maxsize=65536)
def exact_lower(hits: float, n: float, alpha: float) -> float:
    """One-sided exact (Clopper-Pearson) lower bound at level 1 - alpha: the smallest p with
    P(X >= hits | n, p) >= alpha. Guarantee: P(bound > true p) <= alpha for every n and p."""
    if n <= 0 or hits <= 0:
        return 0.0
    return beta_quantile(alpha, hits, n - hits + 1)


def look_alpha(looks: int) -> float:
    """Each look's one-sided error: SEQUENTIAL_ALPHA / looks (Bonferroni), so the chance that
    any of the looks stops on the wrong side stays at SEQUENTIAL_ALPHA per direction."""
    return SEQUENTIAL_ALPHA / max(1, looks)


def decided(rate: Rate, threshold: float, looks: int = 1) -> bool:
    """Sequential stopping: this look's bounds at `look_alpha(looks)` lie wholly on one side of
    the threshold. Exact (Clopper-Pearson) bounds, not Wilson's: Wilson's lower end is
    anti-conservative at small rates, which let a model at a 2% threshold stop on the FAIL side
    6.6% of the time at n = 64 (nominal 2.5%). A rate that carries its own interval (clustered:
    built at the look's level by `design.case_rate`) is judged on it."""
    if rate.method in UNKNOWABLE:
        return False
    if rate.low is not None and rate.high is not None:
        low, high = rate.low, rate.high
    else:
        alpha = look_alpha(looks)
        low, high = exact_lower(rate.hits, rate.n, alpha), exact_upper(rate.hits, rate.n, alpha)
    return high <= threshold or low > threshold


def smallest_passing_n(gate: str, threshold: float, limit: int = 1_000_000) -> int | None:
    """The smallest n at which 0 hits of n passes `gate` at `threshold`; None if none up to
    `limit`. Below it the case cannot pass whatever the model draws, so the caller reports
    'inconclusive: n=4, the gate needs n >= N' instead of a failure. Relies on every gate in
    GATES passing 0/n for all n above the first that does (their upper bounds for 0 hits fall
    with n), which the tests check."""
    def ok(n: int) -> bool:
        return gate_passes(Rate(0, n), threshold, gate)

    return first_true(ok, 1, limit)
