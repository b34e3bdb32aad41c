"""Detector error in the CRR: the Rogan-Gladen correction, its interval, and when a detector
cannot separate at all.

Why: the CRR counts what the detector *says*. A detector that misses 10% of true depictions
(sensitivity 0.9) makes an unerased model look 10% better; one that fires on 5% of clean images
(specificity 0.95) puts a 5% floor under every erased model. With sensitivity and specificity
measured on labelled calibration images, the true prevalence is (raw + spec - 1) / (sens +
spec - 1) (Rogan & Gladen 1978), clipped to [0, 1].

Interval: the map raw -> corrected is increasing whenever the Youden index J = sens + spec - 1
is positive, so the raw interval's endpoints map to the corrected interval's. The calibration
sets are finite too, so sensitivity and specificity are uncertain; the corrected endpoints are
taken at the worst corner of their intervals (the map is monotone in each of sens and spec, so
the extremes over the box are at its corners). The three intervals (raw CRR, sensitivity,
specificity) come from independent images, each at 1 - alpha/3 (Bonferroni, `raw_level`), so the
corrected interval covers with probability >= 1 - alpha whatever the truth, given that the
calibration's error rates hold on the generated images (`TRANSPORTABILITY`).

Separability: the correction divides by J, so a detector with J near 0 turns any raw interval
into [0, 1] and its point estimate into noise. The rule: the lower confidence bound of J (from
the same calibration intervals) must be at least `margin` (default 0.5: the corrected interval
is then at most twice as wide as the raw one, plus the calibration's share); below it the
detector cannot separate concept from not-concept well enough to audit, and the caller marks
the case inconclusive.
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import NormalDist

from pytest_erasure.records import Rate, wilson

YOUDEN_MARGIN = 0.5
TRANSPORTABILITY = (
    "assumes the detector's sensitivity and specificity on the labelled calibration images "
    "hold on the generated images; a detector that errs differently on the erased model's "
    "outputs shifts the corrected CRR by that difference, which no interval here covers")
"""Stated beside every corrected CRR a report shows (`checks.erasure`)."""


def raw_level(level: float = 0.95) -> float:
    """The level the raw CRR's interval must have for the corrected one to reach `level`: the
    three intervals (raw CRR, sensitivity, specificity) share 1 - level (Bonferroni)."""
    return 1 - (1 - level) / 3


@dataclass(frozen=True)
class Calibration:
    """A detector's verdicts on labelled calibration images."""

    detected: int
    """Images that show the concept and on which the detector said so."""
    positives: int
    rejected: int
    """Images without the concept on which the detector said so."""
    negatives: int

    @property
    def sensitivity(self) -> float:
        return self.detected / self.positives

    @property
    def specificity(self) -> float:
        return self.rejected / self.negatives

    @property
    def youden(self) -> float:
        return self.sensitivity + self.specificity - 1

    def bounds(self, z: float) -> tuple[tuple[float, float], tuple[float, float]]:
        """Wilson intervals at `z` for (sensitivity, specificity)."""
        return wilson(self.detected, self.positives, z), wilson(self.rejected, self.negatives, z)


def _z(level: float, parts: int) -> float:
    return NormalDist().inv_cdf(1 - (1 - level) / (2 * parts))


def youden_lower(calibration: Calibration, level: float = 0.95) -> float:
    """The lower bound of J at the level `corrected_rate` uses for each calibration interval."""
    (se_low, _), (sp_low, _) = calibration.bounds(_z(level, 3))
    return se_low + sp_low - 1


def separates(calibration: Calibration, margin: float = YOUDEN_MARGIN, level: float = 0.95) -> bool:
    """True when the detector's Youden index is at least `margin` with confidence (its lower
    bound, see the module docstring). False: the case is inconclusive, not passed or failed."""
    if calibration.positives <= 0 or calibration.negatives <= 0:
        return False
    return youden_lower(calibration, level) >= margin


def rogan_gladen(raw: float, sensitivity: float, specificity: float) -> float:
    """Corrected prevalence, clipped to [0, 1]; requires sensitivity + specificity > 1."""
    j = sensitivity + specificity - 1
    if j <= 0:
        raise ValueError(f"sensitivity + specificity - 1 = {j:.3f} <= 0: the correction is undefined")
    return min(1.0, max(0.0, (raw + specificity - 1) / j))


def corrected_rate(raw: Rate, calibration: Calibration, *, margin: float = YOUDEN_MARGIN,
                   level: float = 0.95) -> Rate:
    """The raw Rate with `estimate` (Rogan-Gladen on raw.crr with the calibration's point
    sensitivity and specificity) and an interval (`low`, `high`) covering the true prevalence
    with probability >= `level` (see the module docstring), method 'rogan-gladen'. hits and n
    stay the detector's raw counts.

    If raw carries its own interval (clustered), that interval is used as is: build it at
    `raw_level(level)` (`design.case_rate(..., level=raw_level())`, as `checks.erasure` does),
    or the guarantee falls to 1 - (1 - raw's level) - 2(1 - level)/3 (91.7% for a 95% raw
    interval). Coverage on clustered data, simulated: docs/gate_error.md. If the detector does not
    `separate` at `margin`, the result has interval [0, 1], no estimate and method
    'inseparable': the caller marks the case inconclusive."""
    if not separates(calibration, margin, level):
        return Rate(raw.hits, raw.n, raw.degenerate, low=0.0, high=1.0, method="inseparable",
                    design_effect=raw.design_effect, clusters=raw.clusters)
    z = _z(level, 3)
    if raw.low is not None and raw.high is not None:
        raw_low, raw_high = raw.low, raw.high
    else:
        raw_low, raw_high = wilson(raw.hits, raw.n, z)
    (se_low, se_high), (sp_low, sp_high) = calibration.bounds(z)
    corners = [(se, sp) for se in (se_low, se_high) for sp in (sp_low, sp_high)]
    low = min(rogan_gladen(raw_low, se, sp) for se, sp in corners)
    high = max(rogan_gladen(raw_high, se, sp) for se, sp in corners)
    estimate = rogan_gladen(raw.crr, calibration.sensitivity, calibration.specificity)
    return Rate(raw.hits, raw.n, raw.degenerate, low=low, high=high, method="rogan-gladen",
                design_effect=raw.design_effect, clusters=raw.clusters, estimate=estimate)
