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
from pytest_erasure.errors import ErasureInputError
from pytest_erasure.records import CaseResult, GenerationInput, Rate, Role
from pytest_erasure.scenarios.base import AuditContext
from pytest_erasure.stats import best_of_n

CHUNK = 8
"""Searches generated per call: their tries are in memory at once (24 x 8 images at 512 px is
150 MB)."""


def run_searches(ctx: AuditContext, concept: Concept, target: Role,
                 searches: list[list[GenerationInput]],
                 describe_try: Callable[[int], dict[str, Any]], *,
                 defended: bool | None = None
                 ) -> tuple[list[GenerationInput], list[dict[str, Any]]]:
    """(the kept try of every search, per search its facts: prompt, seed, tries flagged, the
    kept try's settings by `describe_try(index)` and whether it was flagged). `defended`: as
    `AuditContext.generate` (None: through the run's defense, as the released model draws)."""
    kept: list[GenerationInput] = []
    facts: list[dict[str, Any]] = []
    for start in range(0, len(searches), CHUNK):
        chunk = searches[start:start + CHUNK]
        tries = [t for search in chunk for t in search]
        images, degenerate = ctx.generate_flagged(target, tries, concept, defended=defended)
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
                          "tries_flagged": sum(flagged), "tries": len(flagged),
                          "kept": {**describe_try(best), "flagged": flagged[best],
                                   "try": best, "steering": dict(search[best].steering or {})}})
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


def null_searches(ctx: AuditContext, concept: Concept, salt: str,
                  build: Callable[[list[str], list[int]], list[list[GenerationInput]]]
                  ) -> Rate | None:
    """The measured null of a search (`best_of_n.measured_null`): `build(prompts, seeds)` makes
    the case's own searches (its N tries, its grid) for the given prompt and seed per search;
    here they are made on the neutral prompts, `--samples` of them on seeds of their own (salted
    by `salt`, no concept: the images are shared by every concept's case), run on the erased
    model undefended (the model and prompts of the per-image base rate), and judged for the
    concept. None when the concepts file declares no neutral prompts (then the formula is the
    fallback, `best_of_n.describe`)."""
    neutral = list(ctx.concepts.neutral_prompts)
    n = int(ctx.config.samples)
    if not neutral or n <= 0:
        return None
    seeds = ctx.seeds(n, f"{salt}/null")
    prompts = [neutral[i % len(neutral)] for i in range(n)]
    _, found = run_searches(ctx, concept, "erased", build(prompts, seeds), lambda k: {},
                            defended=False)
    return best_of_n.measured_null([[s["kept"]["flagged"]] for s in found])


def kept_hits(searches: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The kept try of every successful search (`run_searches`' facts): its search, prompt,
    seed and steering, everything that redraws its image but the model and the run's settings
    (what `--erasure-artifacts` exports, `findings`)."""
    return [{"search": i, "prompt": s["prompt"], "seed": s["seed"],
             "steering": s["kept"].get("steering") or {},
             **{k: v for k, v in s["kept"].items() if k not in ("flagged", "steering", "try")}}
            for i, s in enumerate(searches) if s["kept"]["flagged"]]


def findings(case: CaseResult) -> list[dict[str, Any]]:
    """A probe case's findings for `--erasure-artifacts` (`Scenario.findings`): the kept tries
    of its successful searches on the erased model (facts' `kept_hits`), one JSON finding of
    kind 'probe' that `scenarios/replay.py` replays with no search; nothing when no search
    succeeded."""
    facts = case.facts or {}
    tries = facts.get("kept_hits") or []
    if not tries:
        return []
    threat_ = facts.get("threat") or {}
    return [{"kind": "probe", "name": "kept-tries", "found_through": "erased",
             "data": {"probe": case.scenario, "tries": tries},
             "settings": {"scenario_settings": facts.get("scenario_settings"),
                          "attacked_through": threat_.get("attacked_through"),
                          "best_of_n": {k: (facts.get("best_of_n") or {}).get(k)
                                        for k in ("tries_per_search", "searches")}}}]


def threat(ctx: AuditContext, part: str) -> dict[str, Any]:
    """The threat model a probe's report names, beside `checks.threat_model`'s 'black-box'.

    A probe is a generation-side procedure, not a gradient attack: it queries the released model
    and keeps what it returns, so with a defense on, `part` (what the erased model generates)
    runs through the defense and the search keeps the best of the *defended* outputs: the
    black-box attacker of the defended release, who sees only what the defense lets through.
    There is no transfer form (nothing is optimised on the undefended model and carried over)
    and no gradient for an adaptive form (`AuditContext.attacked_through` is for white-box
    attacks); a search that chose its queries knowing the defense's code is not measured."""
    defense = getattr(ctx.config, "defense", None)
    return {"model": "black-box", "attacked_through": defense,
            "defended_part": part if defense else None,
            "search_sees": f"the erased model's outputs through {defense}" if defense
            else "the erased model's outputs",
            "why": "a generation-side probe (no gradient): it queries the released model, its "
                   "defense on when one is, and keeps the best of what it returns"}


def search_facts(tries: int, n: int, searches: list[dict[str, Any]], base: float | None,
                 kept_by: str, null: Rate | None = None) -> dict[str, Any]:
    """`best_of_n.describe` from the searches' facts (`null`: the measured null, when made)."""
    hits = sum(bool(s["kept"]["flagged"]) for s in searches)
    return best_of_n.describe(tries, n, hits, base_rate=base, kept_by=kept_by, null=null)


def parse_grid(given: Any, name: str, *, example: str, meaning: str) -> tuple[float, ...]:
    """A search's grid option (`--noise-etas`, `--guidance-scales`, ...): comma-separated finite
    numbers >= 0, in the order given, each once (the tries of a search share its seed, so a
    repeated grid point would redraw the same image and count it twice). Bad input is a usage
    error naming the option; `meaning` says why a negative value is refused for it."""
    text = str(given)
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        values = ()
    if not values:
        raise ErasureInputError(f"--{name}", f"is {text!r}",
                                f"give one or more numbers, comma-separated (e.g. {example})")
    bad = [v for v in values if not v >= 0 or v == float("inf")]
    if bad:
        raise ErasureInputError(f"--{name}", f"has {bad[0]:g}", f"give finite values >= 0: {meaning}")
    return tuple(dict.fromkeys(values))


def latent_findings(case: CaseResult, **settings: str) -> list[dict[str, Any]]:
    """A search case's kept initial latents as one `latents` finding (`artifacts.py`), with the
    facts a replay needs to draw the very images the case judged (`settings.regeneration`, and
    each named fact under its own key)."""
    facts = case.facts or {}
    if not case.artifacts.get("latents"):
        return []
    return [{"kind": "latents", "name": "latents", "source": case.artifacts["latents"],
             "found_through": "erased",
             "settings": {"regeneration": facts.get("regeneration"),
                          **{key: facts.get(fact) for key, fact in settings.items()}}}]


def encoded_references(ctx: AuditContext, role: Role, images: Any, *, namespace: str,
                       title: str) -> Any:
    """Reference images' VAE latents through `role`'s VAE, as a unit, cached under `namespace`
    (the probes that start from references: inpainting's known region, RECALL's starting
    latents). The key is what the latents depend on: the model, the images, the numerics."""
    from pytest_erasure.attacks.probes import encode_images
    from pytest_erasure.scenarios.embedding import images_digest, numerics

    key = {"version": 1, "model": ctx.fingerprint(role), "images": images_digest(images),
           **numerics(ctx.config)}

    def compute() -> tuple[dict[str, Any], dict[str, Any]]:
        latents = ctx.run(ctx.unit(encode_images, title=f"{title} ({role} model)",
                                   total=len(images), role=role, images=images,
                                   batch_size=ctx.config.batch_size))
        return {"latents": latents}, {}

    tensors, _ = ctx.cache.tensors(namespace, key, compute)
    return tensors["latents"]
