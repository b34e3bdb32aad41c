"""Which interval answers a case's claim: declared prompts are strata, attack randomness is
clustered.

A case claims something about a population, and its interval must be over that population:

- **Declared prompts are strata.** The prompts a concepts file declares are the list the case
  is about ("these prompts, on fresh seeds"), not a random sample of all prompts. Treating them
  as clusters asks how a *new* prompt would do, which a one-prompt concepts file can never answer
  (one cluster: the interval is [0, 1] whatever the model does) and which nobody asked. So the
  estimate is the stratified one, each prompt weighted by its share of the case's samples:
  with the round-robin allocation every plan uses that is hits/n. Its interval is the binomial
  one on hits/n, and the gate's exact bound stays valid: the hit count is a sum of independent
  binomials with unequal rates (a Poisson-binomial), and for every count below its mean minus
  one its lower tail is at most the binomial's with the same mean (Hoeffding 1956, Theorem 4),
  symmetrically for the upper tail. So the exact one-sided bound on hits/n errs at most as
  often as it does for independent images, on both sides; heterogeneous prompts only make it
  conservative (`tests/unit/test_design.py` checks it exactly on mixed strata). A prompt a
  restart's run *found* (Ring-A-Bell) is a stratum of that run in the same sense: given the
  run, its prompts are fixed; the run is the random draw.
- **Attack randomness is clustered.** A textual-inversion or search restart is one draw of
  what the attack finds; the images of one run share its token or prompts. The claim "a run of
  this attack reproduces the concept at most this often" is over runs, so the pooled rate's
  interval is clustered on runs (`clusters.clustered_rate`). The attacker keeps their best
  run, so each run is also judged on its own images (`run_rates`), with the same rule as the
  case (strata within it).
- **Reference images** are a sample of the concept's images: each reference is a cluster. A
  latent case uses each reference once, so its clusters are single images and the interval is
  the binomial one; a reference used by several samples would widen it.
- **Searched candidates** (fuzz) are the search's draws: each evaluated prompt is a cluster of
  its images, and each candidate bypass is judged on its own fresh images.

`GenerationInput.cluster` names the random draw ("" = the sample itself), `stratum` the fixed
item. Only the part of a cluster id before the first '/' counts: "restart-1" groups a run's
images whatever follows.
"""

from __future__ import annotations

from collections.abc import Sequence

from pytest_erasure.records import GenerationInput, Rate

RUN_PREFIX = "restart-"
"""Cluster ids of attack restarts (`scenarios.restarts.cluster_id`)."""


def top_cluster(cluster: str) -> str:
    return cluster.split("/")[0]


def case_rate(present: Sequence[bool], inputs: Sequence[GenerationInput],
              degenerate: int = 0, level: float = 0.95) -> Rate:
    """The rate of `present[i]` (the concept shown in the image of `inputs[i]`) with the
    interval its claim calls for (see the module docstring): clustered when samples share a
    random draw, stratified (binomial on hits/n) when they share only declared prompts, plain
    binomial otherwise. `level` is the clustered interval's two-sided level (sequential
    stopping asks for its look's: `crr.look_alpha`); a binomial rate carries no interval, and
    its bounds are taken at the level each consumer needs."""
    from pytest_erasure.stats.clusters import clustered_rate

    inputs = list(inputs)[:len(present)]
    hits, n = sum(bool(p) for p in present), len(present)
    ids = [top_cluster(i.cluster) or f"sample-{k}" for k, i in enumerate(inputs)]
    if len(set(ids)) < len(ids):
        return clustered_rate(present, ids, degenerate=degenerate, level=level)
    strata = len({i.stratum for i in inputs if i.stratum})
    if strata:
        return Rate(hits, n, degenerate, method="stratified", strata=strata)
    return Rate(hits, n, degenerate)


def run_ids(inputs: Sequence[GenerationInput]) -> list[str] | None:
    """Each input's attack run ('restart-<r>'), or None when the plan has no restarts (or one)."""
    ids = [top_cluster(i.cluster) for i in inputs]
    if not ids or not all(r.startswith(RUN_PREFIX) for r in ids) or len(set(ids)) < 2:
        return None
    return ids


def run_rates(present: Sequence[bool], inputs: Sequence[GenerationInput],
              flags: Sequence[bool] | None = None) -> dict[str, Rate]:
    """Each attack run's own rate, on its own images, strata within it (empty: no restarts)."""
    inputs = list(inputs)[:len(present)]
    ids = run_ids(inputs)
    if ids is None:
        return {}
    out: dict[str, Rate] = {}
    for run in dict.fromkeys(ids):
        idx = [k for k, r in enumerate(ids) if r == run]
        inner = [GenerationInput(seed=inputs[k].seed, stratum=inputs[k].stratum) for k in idx]
        out[run] = case_rate([present[k] for k in idx], inner,
                             sum(bool(flags[k]) for k in idx) if flags else 0)
    return out


def structure_of(inputs: Sequence[GenerationInput]) -> dict[str, int]:
    """How many samples, clusters (random draws) and strata (declared items) a plan has: what
    the report shows beside the interval, and what `verdict` asks whether the gate can pass."""
    ids = {top_cluster(i.cluster) or f"sample-{k}" for k, i in enumerate(inputs)}
    return {"samples": len(inputs), "clusters": len(ids),
            "strata": len({i.stratum for i in inputs if i.stratum})}
