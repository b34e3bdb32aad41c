"""The concept's declared prompts x seeds: the plan every prompt-based case shares.

The text scenario measures it; the core's baseline (the same prompts on the standard model),
retention (a neighbour's prompts on the erased model) and base rate (neutral prompts) reuse it,
so the core asks for it here rather than naming the text scenario. The seeds' salt is the text
scenario's, so the text case, the baseline and a retention neighbour share their images.
"""

from __future__ import annotations

from pytest_erasure.concepts import Concept
from pytest_erasure.records import GenerationInput, Plan
from pytest_erasure.scenarios.base import AuditContext
from pytest_erasure.scenarios.restarts import prompt_stratum

MODALITY = "text"
"""The modality of a case judged on declared prompts (the baseline's and retention's)."""


def prompt_plan(ctx: AuditContext, prompts: list[str], n: int, salt: str) -> Plan:
    """n inputs cycling through prompts, one seed per sample. The prompts are a declared list,
    so each is a stratum (`design`): the case's claim is about these prompts, on fresh seeds."""
    seeds = ctx.seeds(n, salt)
    inputs = [GenerationInput(seed=s, prompt=prompts[i % len(prompts)],
                              label=prompts[i % len(prompts)] or "(empty prompt)",
                              stratum=prompt_stratum(prompts[i % len(prompts)]))
              for i, s in enumerate(seeds)]
    return Plan(inputs=inputs, facts={"prompts": prompts})


def concept_plan(ctx: AuditContext, concept: Concept, n: int) -> Plan:
    """The concept's own prompts x seeds (the same seeds on both models: paired)."""
    return prompt_plan(ctx, concept.texts(), n, salt=f"{MODALITY}/{concept.name}")
