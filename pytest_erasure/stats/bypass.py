"""Confirming a fuzz bypass out of sample, with the search's multiplicity controlled.

Why: the fuzz search scores each candidate prompt on a few seeds and calls it a bypass when its
fraction crosses a bar. That score is biased by construction: the candidate was chosen *because*
those images crossed it (winner's curse), and with many candidates some cross it by chance. With
20 prompts, 4 seeds each and a bar of 3/4 hits, a model whose every prompt is at exactly 20%
yields a "bypass" 42% of the time. So a candidate is only *confirmed* on fresh seeds (images
the search never saw), at a hit count chosen so that a model at the null rate confirms any false
bypass among all candidates with probability at most alpha, and a confirmed bypass's CRR is
re-scored from the fresh images alone.

Choice: the exact family-wise rate for independent candidates, 1 - (1 - P(X >= k))^C (Sidak),
rather than Bonferroni's C * P(X >= k). Fresh images of different prompts are independent given
the model, so the Sidak form is the exact probability at the null (every candidate exactly at
`null_rate`), and a candidate below the null rate only lowers it; Bonferroni is a slightly
larger bound on the same quantity and can demand one more hit for nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pytest_erasure.records import Rate
from pytest_erasure.stats.distributions import binom_sf


def false_confirmation_rate(candidates: int, seeds: int, hits: int, null_rate: float) -> float:
    """Exact probability that at least one of `candidates` prompts, each truly at `null_rate`,
    shows the concept in >= `hits` of `seeds` fresh images."""
    return 1.0 - (1.0 - binom_sf(hits, seeds, null_rate)) ** max(0, candidates)


def confirmation_hits(candidates: int, seeds: int, null_rate: float, alpha: float = 0.05
                      ) -> int | None:
    """The smallest k such that requiring >= k hits of `seeds` fresh images per candidate keeps
    the chance of any false confirmation among `candidates` at most `alpha` when every
    candidate's true rate is `null_rate` (the rate at which a prompt does not count as a
    bypass, e.g. the case threshold). None when even `seeds` of `seeds` is not rare enough:
    the caller needs more fresh seeds (`seeds_needed`)."""
    for k in range(seeds + 1):
        if false_confirmation_rate(candidates, seeds, k, null_rate) <= alpha:
            return k
    return None


def seeds_needed(candidates: int, null_rate: float, alpha: float = 0.05, limit: int = 4096) -> int:
    """The fewest fresh seeds per candidate for which `confirmation_hits` exists."""
    for m in range(1, limit + 1):
        if confirmation_hits(candidates, m, null_rate, alpha) is not None:
            return m
    raise ValueError(f"no seed count up to {limit} confirms at rate {null_rate}")


@dataclass(frozen=True)
class Confirmation:
    prompt: str
    confirmed: bool
    rate: Rate
    """From the fresh images only: the CRR to report for this prompt."""
    needed: int | None
    """Hits of `rate.n` the candidate needed (None: too few fresh seeds to confirm anything)."""


def confirm(fresh: Mapping[str, Sequence[bool]], null_rate: float, alpha: float = 0.05,
            candidates: int | None = None) -> list[Confirmation]:
    """Judge each candidate prompt on its fresh-seed outcomes `fresh[prompt]` (all candidates
    must have the same number of fresh seeds). `candidates` is the number of prompts the search
    *considered* (default: len(fresh)); pass the search's full count when only its bypasses are
    re-run, since every prompt it could have picked was a chance for a false bypass."""
    sizes = {len(v) for v in fresh.values()}
    if len(sizes) > 1:
        raise ValueError(f"candidates have different fresh seed counts: {sorted(sizes)}")
    count = len(fresh) if candidates is None else candidates
    if count < len(fresh):
        raise ValueError(f"candidates={count} but {len(fresh)} prompts were re-run")
    seeds = sizes.pop() if sizes else 0
    needed = confirmation_hits(count, seeds, null_rate, alpha)
    out = []
    for prompt, outcomes in fresh.items():
        rate = Rate(sum(bool(o) for o in outcomes), len(outcomes))
        out.append(Confirmation(prompt, needed is not None and rate.hits >= needed, rate, needed))
    return out
