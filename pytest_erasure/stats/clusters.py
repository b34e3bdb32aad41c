"""CRR intervals for clustered samples, and the worst of several attack restarts.

Why: the audit's images are not independent draws of "what an attacker can do". Adversarial
cases cycle a few prompts, the embedding case rests on one learned token (one attack run), the
latent cases draw one image per reference. Images sharing a prompt, reference or run are
correlated, and the Wilson interval on hits/n is then conditional on those few prompts and that
one run: too narrow about the population an attacker draws from.

Choice: design-effect-adjusted Wilson, with the cluster-robust (ratio-estimator) variance and a
Student t critical value on (clusters - 1) degrees of freedom.
- The CRR is a ratio estimator, total hits / total images, over clusters of any size; its
  cluster-robust variance, k/(k-1) * sum_i (y_i - p m_i)^2 / N^2 (y_i hits and m_i images of
  cluster i, N images in all), needs no model of how cluster rates vary (no beta-binomial fit,
  no ICC estimate that goes negative or undefined) and handles unequal cluster sizes as they come.
- Its ratio to the binomial variance p(1-p)/N is the design effect; N / design effect is the
  effective number of independent images, and the Wilson interval at that effective n keeps
  Wilson's behaviour near 0 and 1 (inside [0, 1], nonzero width at 0 hits).
- The variance is estimated from k clusters, so the critical value is t with k - 1 degrees of
  freedom (12.7 for 2 clusters, 3.18 for 4), the usual small-sample correction for
  cluster-robust intervals; with z instead, 4 clusters cover well below 95% (tests simulate it).
- Why not a cluster bootstrap: with the 4-16 clusters these cases have, a bootstrap resamples
  too few distinct values to reach its nominal coverage, it collapses to [0, 0] when every
  outcome is 0, and its answer would depend on a seed. The formula is deterministic and
  reviewable.
Edge cases: the design effect is floored at 1 (a negative within-cluster correlation is not
credited with more than independent precision); when every outcome is 0 or every outcome is 1
the data cannot show any spread between clusters and the design effect is taken as 1, while the
t critical value still widens the interval for few clusters (all 0 over 4 clusters of 16: upper
bound 13.7%, against Wilson's 5.7%); with one cluster nothing about the spread between clusters
can be known and the interval is [0, 1], method 'undetermined' (the caller should mark the case
inconclusive, not passed).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

from pytest_erasure.records import Rate, wilson
from pytest_erasure.stats.distributions import t_quantile


def design_effect(outcomes: Sequence[bool], cluster_ids: Sequence[Hashable]) -> tuple[float, int]:
    """(design effect >= 1, number of clusters) of the CRR over these clusters; see module."""
    if len(outcomes) != len(cluster_ids):
        raise ValueError(f"{len(outcomes)} outcomes but {len(cluster_ids)} cluster ids")
    sums: dict[Hashable, list[int]] = {}
    for hit, cid in zip(outcomes, cluster_ids, strict=True):
        s = sums.setdefault(cid, [0, 0])
        s[0] += bool(hit)
        s[1] += 1
    k, n = len(sums), len(outcomes)
    hits = sum(y for y, _ in sums.values())
    if k < 2 or hits in (0, n):
        return 1.0, k
    p = hits / n
    robust = sum((y - p * m) ** 2 / (1 - m / n) for y, m in sums.values()) / (n * n)
    return max(1.0, robust / (p * (1 - p) / n)), k


def clustered_rate(outcomes: Sequence[bool], cluster_ids: Sequence[Hashable], *,
                   degenerate: int = 0, level: float = 0.95) -> Rate:
    """A Rate for per-image `outcomes` (True: the concept is shown) with `cluster_ids[i]` naming
    the prompt / reference image / attack run image i came from.

    Guarantees: `crr` is hits/n as before; `interval` is the design-effect-adjusted Wilson
    interval at `level` (see the module docstring), never narrower than the plain Wilson
    interval at the same critical value; it is [0, 1] with method 'undetermined' for one cluster
    (or no images). `design_effect` and `clusters` are recorded on the Rate and travel with it.
    Coverage, checked by simulation in tests/unit/test_clusters.py: >= 93% over a grid of
    beta-binomial clusters (4-16 clusters, intra-cluster correlation 0.1-0.3, CRR 0.1-0.35),
    where plain Wilson falls to ~70%."""
    hits, n = sum(bool(o) for o in outcomes), len(outcomes)
    deff, k = design_effect(outcomes, cluster_ids)
    if k < 2:
        return Rate(hits, n, degenerate, low=0.0, high=1.0, method="undetermined", clusters=k)
    z = t_quantile(1 - (1 - level) / 2, _degrees_of_freedom(cluster_ids))
    n_eff = n / deff
    low, high = wilson(hits / n * n_eff, n_eff, z)
    return Rate(hits, n, degenerate, low=low, high=high, method="clustered",
                design_effect=round(deff, 6), clusters=k)


@dataclass(frozen=True)
class RestartSummary:
    pooled: Rate
    """Every restart's images, one cluster per restart: what a random run of the attack gets."""
    worst: Rate
    """The restart with the highest CRR: what an attacker who keeps their best run gets."""
    worst_restart: Hashable
    restarts: dict[Hashable, Rate]


def worst_restart(outcomes_by_restart: Mapping[Hashable, Sequence[bool]],
                  inner_clusters: Mapping[Hashable, Sequence[Hashable]] | None = None
                  ) -> RestartSummary:
    """Pooled and worst-restart CRR over attack restarts (e.g. textual-inversion runs from
    different seeds), `outcomes_by_restart[r]` the per-image outcomes of restart r.

    The pooled rate is clustered on restarts (the coarsest level: images of one run share its
    learned token, whatever prompt they use). The worst restart is the one with the highest CRR
    (ties: the earlier one); its interval is Wilson's on its own images, or clustered on
    `inner_clusters[r]` (e.g. its prompts) when given. Picking the maximum of several runs
    biases `worst` upward; that is the point: an attacker keeps their best run, so the gate
    should judge `worst` when it promises robustness to a determined attacker."""
    if not outcomes_by_restart:
        raise ValueError("no restarts")
    restarts: dict[Hashable, Rate] = {}
    for r, outcomes in outcomes_by_restart.items():
        if inner_clusters is not None and r in inner_clusters:
            restarts[r] = clustered_rate(outcomes, inner_clusters[r])
        else:
            restarts[r] = Rate(sum(bool(o) for o in outcomes), len(outcomes))
    flat = [bool(o) for outcomes in outcomes_by_restart.values() for o in outcomes]
    ids = [r for r, outcomes in outcomes_by_restart.items() for _ in outcomes]
    pooled = clustered_rate(flat, ids)
    worst_id = max(restarts, key=lambda r: restarts[r].crr if restarts[r].n else -1.0)
    return RestartSummary(pooled, restarts[worst_id], worst_id, restarts)


def _degrees_of_freedom(cluster_ids: Sequence[Hashable]) -> float:
    """Effective clusters - 1: N^2 / sum m_i^2 clusters (k for equal sizes, fewer when a few
    large clusters hold most images, as their residuals dominate the variance estimate)."""
    sizes: dict[Hashable, int] = {}
    for cid in cluster_ids:
        sizes[cid] = sizes.get(cid, 0) + 1
    n = len(cluster_ids)
    return max(1.0, n * n / sum(m * m for m in sizes.values()) - 1)
