"""Pure-Python tails against published values (the CRR statistics use no scipy)."""

from __future__ import annotations

from math import comb

import pytest

from pytest_erasure.stats.distributions import (
    beta_quantile,
    betainc,
    binom_cdf,
    binom_sf,
    t_quantile,
)


@pytest.mark.parametrize("df, value", [(1, 12.7062), (3, 3.1824), (10, 2.2281), (30, 2.0423)])
def test_t_quantiles_match_tables(df: int, value: float) -> None:
    assert t_quantile(0.975, df) == pytest.approx(value, abs=1e-4)


def test_beta_and_binomial_agree() -> None:
    # I_p(k+1, n-k) = P(X >= k+1 | n, p): the identity behind the exact bound
    for n, k, p in ((10, 3, 0.2), (64, 9, 0.25), (128, 40, 0.3)):
        assert betainc(k + 1, n - k, p) == pytest.approx(binom_sf(k + 1, n, p), abs=1e-12)
        assert binom_cdf(k, n, p) == pytest.approx(
            sum(comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k + 1)), abs=1e-12)
    assert beta_quantile(0.95, 1, 10) == pytest.approx(1 - 0.05 ** 0.1, abs=1e-12)
