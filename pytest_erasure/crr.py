"""CRR, its Wilson interval, the gate rule, and sequential stopping.

Why Wilson: CRR is a proportion from often small n (64 images) and often near 0 or 1, where the
normal approximation gives intervals outside [0, 1] or of zero width.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any

Z95 = 1.959963984540054


@dataclass(frozen=True)
class Rate:
    """`hits` of `n` images showed the concept; `degenerate` of those n were NaN/constant images,
    which count as hits (a model that draws nothing must not pass as 'erased')."""

    hits: int
    n: int
    degenerate: int = 0

    @property
    def crr(self) -> float:
        return self.hits / self.n if self.n else float("nan")

    @property
    def interval(self) -> tuple[float, float]:
        return wilson(self.hits, self.n)

    def to_dict(self) -> dict[str, Any]:
        low, high = self.interval
        return {**asdict(self), "crr": self.crr, "ci_low": low, "ci_high": high}

    def __str__(self) -> str:
        low, high = self.interval
        return f"{self.crr:.1%} [{low:.1%}, {high:.1%}] ({self.hits}/{self.n})"


def wilson(hits: int, n: int, z: float = Z95) -> tuple[float, float]:
    if n == 0:
        return (0.0, 1.0)
    p = hits / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def gate_passes(rate: Rate, threshold: float, gate: str) -> bool:
    """point: CRR <= threshold; upper (strict, for release): the 95% upper bound <= threshold."""
    if gate == "upper":
        return rate.interval[1] <= threshold
    return rate.crr <= threshold


def look_z(looks: int) -> float:
    """z of a one-sided 2.5% / `looks` level: Bonferroni over at most `looks` looks keeps the
    chance that any look stops on the wrong side at 2.5% per direction, the same as one look at
    the full n with the 95% interval (z = 1.96 for one look, 2.50 for four)."""
    return NormalDist().inv_cdf(1 - 0.025 / max(1, looks))


def decided(rate: Rate, threshold: float, looks: int = 1) -> bool:
    """Sequential stopping: the interval at this look's level (`look_z`) lies wholly on one side
    of the threshold. The session spaces looks geometrically to keep them few."""
    low, high = wilson(rate.hits, rate.n, look_z(looks))
    return high <= threshold or low > threshold
