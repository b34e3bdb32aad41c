"""Binomial, beta and Student-t tails in pure Python, for the CRR statistics.

Why not scipy: the CRR statistics run in the pytest plugin and in the report tools, which must not
pull a numerical stack in for a handful of tail sums. Binomial tails are exact finite sums
(n is at most a few thousand here); the regularized incomplete beta uses the classic continued
fraction (Lentz's method, as in Numerical Recipes 6.4), good to ~1e-12 for the arguments used
here, and quantiles are found by bisection, which cannot fail to converge on a monotone CDF.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache


def binom_pmf(k: int, n: int, p: float) -> float:
    if k < 0 or k > n:
        return 0.0
    if p <= 0.0:
        return 1.0 if k == 0 else 0.0
    if p >= 1.0:
        return 1.0 if k == n else 0.0
    return math.exp(math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
                    + k * math.log(p) + (n - k) * math.log1p(-p))


def binom_pmfs(n: int, p: float) -> list[float]:
    """P(X = k) for k = 0..n, X ~ Binomial(n, p)."""
    return [binom_pmf(k, n, p) for k in range(n + 1)]


def beta_binomial_pmfs(n: int, a: float, b: float) -> list[float]:
    """P(X = k), k = 0..n, X binomial(n, r) with r drawn from beta(a, b): the hit count of a
    cluster whose rate varies between clusters (mean a / (a + b), intra-cluster correlation
    1 / (a + b + 1))."""
    base = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) - math.lgamma(n + a + b)
    return [math.exp(math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) + base
                     + math.lgamma(k + a) + math.lgamma(n - k + b)) for k in range(n + 1)]


def binom_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k)."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    return min(1.0, sum(binom_pmf(i, n, p) for i in range(k + 1)))


def binom_sf(k: int, n: int, p: float) -> float:
    """P(X >= k)."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    return min(1.0, sum(binom_pmf(i, n, p) for i in range(k, n + 1)))


def _betacf(a: float, b: float, x: float) -> float:
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta I_x(a, b), a, b > 0 (real, not only whole numbers)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                     + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def bisect(f: Callable[[float], float], target: float, lo: float, hi: float) -> float:
    """x in [lo, hi] with f(x) = target, f increasing; 100 halvings (below float resolution)."""
    for _ in range(100):
        mid = (lo + hi) / 2
        if f(mid) < target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def beta_quantile(q: float, a: float, b: float) -> float:
    return bisect(lambda x: betainc(a, b, x), q, 0.0, 1.0)


def t_cdf(t: float, df: float) -> float:
    tail = 0.5 * betainc(df / 2, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


@lru_cache(maxsize=256)
def t_quantile(q: float, df: float) -> float:
    """Student t quantile, 0.5 <= q < 1 (the caller asks only for upper quantiles)."""
    return bisect(lambda t: t_cdf(t, df), q, 0.0, 1e7)
