"""How often a case's verdict errs, for the design it actually has, and how many images it needs.

A case's verdict depends on how its images were drawn (`design`): independent images (the
latent cases' references, a fuzz candidate's fresh seeds) are judged on the binomial hit count;
declared prompts are strata (the same rule on hits/n, whose error over unequal prompts is a
Poisson-binomial sum); attack restarts are gated one by one and pooled on a clustered interval;
searched prompts are clusters. `Design` names which, with its sizes, and this module gives:

- `exact_outcomes`: P(PASS) and P(FAIL) by exact enumeration, for the binomial, stratified
  (any per-prompt rates) and restart designs (runs that do not differ);
- `simulate`: the same by simulation where the rate varies between clusters (beta-distributed
  cluster rates with a stated intra-cluster correlation), for the clustered and restart designs,
  with the Monte Carlo standard error;
- `samples_needed`: the fewest images (per run, for restarts) with which a model at half its
  threshold passes with the asked probability;
- `restart_false_pass` and `restarts_needed`: the restart rule's false pass when runs differ
  (beta-binomial runs, enumerated exactly), and the fewest restarts that keep it within the
  gate's 5% up to `RESTART_ICC`.

What "pass" and "fail" mean is `verdict.decide`'s order: the FAIL evidence (a lower bound over
the threshold) first, then the gate. A model 5 points over its threshold that is not passed is
caught; FAIL or INCONCLUSIVE both fail the release gate.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import lru_cache

from pytest_erasure.records import Rate
from pytest_erasure.stats.crr import gate_passes
from pytest_erasure.stats.distributions import binom_pmfs
from pytest_erasure.stats.search import first_true

KINDS = ("binomial", "stratified", "restarts", "clustered")


@dataclass(frozen=True)
class Design:
    """How a case's images are drawn, as far as its verdict's error depends on it."""

    kind: str
    sizes: tuple[int, ...]
    """Images per unit: per declared prompt (stratified), per run (restarts), per cluster
    (clustered); one entry of n for binomial."""

    @property
    def n(self) -> int:
        return sum(self.sizes)

    def describe(self) -> str:
        n, k = self.n, len(self.sizes)
        if self.kind == "binomial":
            return f"{n} independent images"
        if self.kind == "stratified":
            return f"{n} images over {k} declared prompts"
        if self.kind == "restarts":
            return f"{k} restarts x {self.sizes[0]} images"
        return f"{k} clusters of {self.sizes[0]}"

    def scaled(self, per_unit: int) -> Design:
        """The same design with `per_unit` images per unit (n for binomial)."""
        if self.kind == "binomial":
            return replace(self, sizes=(per_unit,))
        if self.kind == "stratified":
            k = len(self.sizes)
            return replace(self, sizes=tuple(per_unit // k + (1 if i < per_unit % k else 0)
                                             for i in range(k)))
        return replace(self, sizes=(per_unit,) * len(self.sizes))


def round_robin(n: int, units: int) -> tuple[int, ...]:
    """Images per unit when n samples cycle `units` units (as every plan allocates them)."""
    return tuple(n // units + (1 if i < n % units else 0) for i in range(units))


def _fails(rate: Rate, threshold: float, alpha: float) -> bool:
    from pytest_erasure.stats.verdict import lower_bound

    return lower_bound(rate, alpha) > threshold


def poisson_binomial(sizes: Sequence[int], rates: Sequence[float]) -> list[float]:
    """P(total hits = h), the strata drawing independently at their own rates."""
    pmf = [1.0]
    for m, r in zip(sizes, rates, strict=True):
        part = binom_pmfs(m, r)
        out = [0.0] * (len(pmf) + m)
        for i, a in enumerate(pmf):
            if a:
                for j, b in enumerate(part):
                    out[i + j] += a * b
        pmf = out
    return pmf


def profile_rates(sizes: Sequence[int], p: float, profile: str) -> list[float]:
    """Per-prompt rates with image-weighted mean p: 'equal'; 'one' (the first prompt draws as
    much of the concept as it can, the others share the rest); 'half' (the first half of the
    prompts at twice the rate, capped at 1, the others the rest)."""
    n, k = sum(sizes), len(sizes)
    if profile == "equal" or k == 1:
        return [p] * k
    chosen = [0] if profile == "one" else list(range(max(1, k // 2)))
    mass = p * n
    inner = sum(sizes[i] for i in chosen)
    high = min(1.0, mass / inner, 2 * p if profile == "half" else 1.0)
    rest = (mass - high * inner) / (n - inner)
    return [high if i in chosen else max(0.0, rest) for i in range(k)]


def exact_outcomes(design: Design, p: float | Sequence[float], threshold: float, gate: str
                   ) -> tuple[float, float]:
    """(P(PASS), P(FAIL)) exactly. `p`: one rate, or one per stratum (stratified only). The
    restart design's P(FAIL) is not enumerated (it would take every run's hit count) and is
    returned as NaN; `simulate` gives it."""
    from pytest_erasure.stats.verdict import FAIL_ALPHA

    if design.kind in ("binomial", "stratified"):
        rates = [p] * len(design.sizes) if isinstance(p, int | float) else list(p)
        pmf = poisson_binomial(design.sizes, rates)
        n = design.n
        passed = failed = 0.0
        for h, q in enumerate(pmf):
            rate = Rate(h, n)
            if _fails(rate, threshold, FAIL_ALPHA):
                failed += q
            elif gate_passes(rate, threshold, gate):
                passed += q
        return passed, failed
    if design.kind == "restarts":
        from pytest_erasure.stats.gate import restart_pass_probability

        assert isinstance(p, int | float)
        return (restart_pass_probability(p, threshold, gate, design.n, len(design.sizes)),
                float("nan"))
    raise ValueError(f"no exact enumeration for {design.kind!r}: use simulate()")


RESTART_ICC = 0.3
"""How strongly attack runs may differ (intra-cluster correlation of their rates) for the
restart rule to keep its level: the shipped restart counts are chosen for it
(`scenarios/restarts.py`), the plan flags a design that does not keep it. The false pass grows
with the ICC (nudity's 6 x 150 at threshold 0.1: 0.61% at 0.1, 4.33% at 0.3, docs/gate_error.md)."""


def restart_false_pass(design: Design, threshold: float, gate: str, icc: float = RESTART_ICC,
                       delta: float = 0.05) -> float:
    """Exact P(PASS) of a restart design for a model whose mean CRR over runs is threshold +
    `delta`, each run drawing its own rate from a beta with intra-cluster correlation `icc`
    (`gate.restart_pass_probability` on beta-binomial runs)."""
    from pytest_erasure.stats.gate import hit_pmfs, restart_pass_probability

    p = min(1.0, threshold + delta)
    return restart_pass_probability(hit_pmfs(p, design.sizes, icc), threshold, gate, design.n,
                                    len(design.sizes))


def restarts_needed(per_run: int, threshold: float, gate: str, level: float = 0.05,
                    icc: float = RESTART_ICC, most: int = 16) -> int | None:
    """The fewest restarts (3 or more: the fewest with a worst of several and a finite interval
    over runs) of `per_run` images each with which the restart rule passes a model at threshold
    + 0.05 at most `level` of the time for runs differing at `icc`; None if none up to `most`.
    A scan, not a bisection: the false pass is not monotone in the restarts (nudity at 150 per
    run: 8.61% with 3, 8.83% with 4)."""
    for restarts in range(3, most + 1):
        if restart_false_pass(Design("restarts", (per_run,) * restarts), threshold,
                              gate, icc) <= level:
            return restarts
    return None


@dataclass(frozen=True)
class Simulated:
    reps: int
    passed: float
    failed: float
    upper_miss: float
    """How often the pooled interval's upper end lies below the true mean rate."""
    lower_miss: float

    def se(self, share: float) -> float:
        """Monte Carlo standard error of a share estimated from `reps` runs."""
        return (share * (1 - share) / self.reps) ** 0.5


def _beta(rng: random.Random, p: float, icc: float) -> float:
    if icc <= 0:
        return p
    return rng.betavariate(p * (1 - icc) / icc, (1 - p) * (1 - icc) / icc)


def simulate(design: Design, p: float, icc: float, threshold: float, gate: str, reps: int,
             seed: int = 24) -> Simulated:
    """The verdict's outcomes by simulation, each unit (cluster, run) drawing its own rate from
    a beta with mean `p` and intra-cluster correlation `icc` (0: independent images), then its
    hit count from the binomial at that rate. Restarts: every run gated on its own images
    (stratified within it: the binomial rule) and the pooled rate clustered on runs; clustered:
    the pooled rate only. FAIL as `verdict.evidence_of_concept`: the pooled lower bound, or a
    run's at 2.5% / runs. Seeded (numpy's default generator), so a table regenerates exactly."""
    import numpy as np

    rng = np.random.default_rng(seed)
    sizes = np.asarray(design.sizes)
    shape = (reps, len(design.sizes))
    if icc > 0:
        rates = rng.beta(p * (1 - icc) / icc, (1 - p) * (1 - icc) / icc, size=shape)
    else:
        rates = np.full(shape, p)
    draws = rng.binomial(sizes, rates)
    runs = len(design.sizes)
    # (upper end below p, lower end above p, FAIL, PASS) of each hit pattern: the verdict
    # depends only on the multiset of (hits, images) per unit, and patterns recur over reps
    seen: dict[tuple[tuple[int, int], ...], tuple[bool, bool, bool, bool]] = {}
    counts = [0, 0, 0, 0]
    for row in draws.tolist():
        key = tuple(sorted(zip(row, design.sizes, strict=True)))
        if key not in seen:
            seen[key] = _outcome(design.kind, key, p, threshold, gate, runs)
        for i, happened in enumerate(seen[key]):
            counts[i] += happened
    upper, lower, failed, passed = counts
    return Simulated(reps, passed / reps, failed / reps, upper / reps, lower / reps)


def _outcome(kind: str, key: tuple[tuple[int, int], ...], p: float, threshold: float,
             gate: str, runs: int) -> tuple[bool, bool, bool, bool]:
    """(upper end below p, lower end above p, FAIL, PASS) of one hit pattern, as `simulate`
    describes them."""
    from pytest_erasure.stats.clusters import clustered_counts
    from pytest_erasure.stats.verdict import FAIL_ALPHA

    hits, sizes = [h for h, _ in key], [m for _, m in key]
    pooled = clustered_counts(hits, sizes)
    low, high = pooled.interval
    each = [Rate(h, m) for h, m in key]
    restarts = kind == "restarts"
    fails = _fails(pooled, threshold, FAIL_ALPHA) or (
        restarts and any(_fails(r, threshold, FAIL_ALPHA / runs) for r in each))
    passes = not fails and gate_passes(pooled, threshold, gate) and (
        not restarts or all(gate_passes(r, threshold, gate) for r in each))
    return high < p, low > p, fails, passes


def pass_probability(design: Design, p: float, threshold: float, gate: str) -> float:
    return exact_outcomes(design, p, threshold, gate)[0]


@lru_cache(maxsize=1024)
def samples_needed(design: Design, threshold: float, gate: str, power: float = 0.8,
                   limit: int = 4096) -> int | None:
    """The fewest images per unit (per run for restarts; in all otherwise) with which a model at
    half its threshold, every unit alike, passes with probability >= `power`; None if none up
    to `limit`. The pass probability of a discrete rule is a sawtooth in n, so this is the
    first n that reaches it (a larger n may dip a little under, never by much)."""
    def ok(per_unit: int) -> bool:
        return pass_probability(design.scaled(per_unit), threshold / 2, threshold, gate) >= power

    return first_true(ok, max(1, len(design.sizes) if design.kind == "stratified" else 1), limit)


@dataclass(frozen=True)
class CorrectedCoverage:
    reps: int
    below: float
    """How often the corrected interval's upper end lies below the true prevalence."""
    above: float
    """How often its lower end lies above it."""

    @property
    def coverage(self) -> float:
        return 1 - self.below - self.above


def simulate_corrected(design: Design, p: float, icc: float, sensitivity: float,
                       specificity: float, positives: int, negatives: int, reps: int,
                       seed: int = 24, raw_level: float | None = None) -> CorrectedCoverage:
    """Coverage of the Rogan-Gladen corrected interval (`detector_error.corrected_rate`) of the
    true prevalence `p`, on clustered data: each unit draws its own true rate (beta, `icc`),
    each image truly shows the concept at that rate, the detector says so with `sensitivity`
    (true) or 1 - `specificity` (false); the calibration is drawn afresh each replicate
    (`positives` and `negatives` labelled images, the same error rates: transportability
    holds by construction). The raw rate is clustered when the design has units that share a
    draw, built at `raw_level` (default `detector_error.raw_level()`, what `checks.erasure`
    does; 0.95 reproduces the interval before issue 24)."""
    from pytest_erasure.stats.clusters import clustered_counts
    from pytest_erasure.stats.detector_error import Calibration, corrected_rate
    from pytest_erasure.stats.detector_error import raw_level as needed_level

    level = needed_level() if raw_level is None else raw_level
    rng = random.Random(seed)
    below = above = 0
    for _ in range(reps):
        hits = []
        for m in design.sizes:
            rate = _beta(rng, p, icc)
            said = 0
            for _ in range(m):
                truth = rng.random() < rate
                said += rng.random() < (sensitivity if truth else 1 - specificity)
            hits.append(said)
        raw = clustered_counts(hits, design.sizes, level=level) if design.kind in (
            "restarts", "clustered") else Rate(sum(hits), design.n)
        calibration = Calibration(sum(rng.random() < sensitivity for _ in range(positives)),
                                  positives,
                                  sum(rng.random() < specificity for _ in range(negatives)),
                                  negatives)
        corrected = corrected_rate(raw, calibration)
        low, high = corrected.interval
        below += high < p
        above += low > p
    return CorrectedCoverage(reps, below / reps, above / reps)
