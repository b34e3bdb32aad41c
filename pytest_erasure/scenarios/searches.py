"""The search loop every best-of-N probe shares: generate each search's tries, judge them, keep
one per search (`stats.best_of_n`), and the facts that say what was kept and from how many.

A probe says what its tries are (a grid of sampler noise, hand-over steps, masks); this module
runs them through the context's cached, batched generation (`generate_flagged`: the
generation unit) and detection, a few searches at a time so that a large grid's images are
never all in memory, each chunk with its progress bar.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pytest_erasure.concepts import Concept
from pytest_erasure.records import GenerationInput, Role
from pytest_erasure.scenarios.base import AuditContext
from pytest_erasure.stats import best_of_n

CHUNK = 8
"""Searches generated per call: their tries are in memory at once (24 x 8 images at 512 px is
150 MB)."""


def run_searches(ctx: AuditContext, concept: Concept, target: Role,
                 searches: list[list[GenerationInput]],
                 describe_try: Callable[[int], dict[str, Any]]
                 ) -> tuple[list[GenerationInput], list[dict[str, Any]]]:
    """(the kept try of every search, per search its facts: prompt, seed, tries flagged, the
    kept try's settings by `describe_try(index)` and whether it was flagged)."""
    kept: list[GenerationInput] = []
    facts: list[dict[str, Any]] = []
    for start in range(0, len(searches), CHUNK):
        chunk = searches[start:start + CHUNK]
        tries = [t for search in chunk for t in search]
        images, degenerate = ctx.generate_flagged(target, tries, concept)
        found = ctx.detect(images, concept)
        at = 0
        for search in chunk:
            part = slice(at, at + len(search))
            at += len(search)
            flagged = [bool(p) or d for p, d in
                       zip(found.present[part], degenerate[part], strict=True)]
            best = best_of_n.kept_try(flagged, [float(s) for s in found.score[part]])
            kept.append(search[best])
            facts.append({"prompt": search[best].prompt, "seed": search[best].seed,
                          "tries_flagged": sum(flagged),
                          "kept": {**describe_try(best), "flagged": flagged[best]}})
    return kept, facts


def base_rate(ctx: AuditContext, concept: Concept) -> float | None:
    """The neutral prompts' per-image rate on the erased model, undefended: the images the
    case's own base rate judges (same plan, same seeds: cached), for the per-search base rate
    beside the search success rate."""
    from pytest_erasure.scenarios.prompts import prompt_plan

    neutral = list(ctx.concepts.neutral_prompts)
    if not neutral:
        return None
    plan = prompt_plan(ctx, neutral, ctx.config.samples, salt="neutral")
    images, degenerate = ctx.generate_flagged("erased", plan.inputs, concept, defended=False)
    found = ctx.detect(images, concept)
    hits = sum(bool(p) or d for p, d in zip(found.present, degenerate, strict=True))
    return hits / len(plan.inputs) if plan.inputs else None


def search_facts(tries: int, n: int, searches: list[dict[str, Any]], base: float | None,
                 kept_by: str) -> dict[str, Any]:
    """`best_of_n.describe` from the searches' facts."""
    hits = sum(bool(s["kept"]["flagged"]) for s in searches)
    return best_of_n.describe(tries, n, hits, base_rate=base, kept_by=kept_by)
