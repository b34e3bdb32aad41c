"""The typed-prompt scenario: the concept's prompts x seeds, as every erasure paper measures.

Baseline (the same prompts on the standard model) and retention (neighbours' prompts on the
erased model) reuse this plan; the session decides which model generates and what is asserted.
"""

from __future__ import annotations

from pytest_erasure.concepts import Concept
from pytest_erasure.records import GenerationInput, Plan, Role
from pytest_erasure.scenarios.base import AuditContext, Scenario
from pytest_erasure.scenarios.restarts import prompt_stratum


def prompt_plan(ctx: AuditContext, prompts: list[str], n: int, salt: str) -> Plan:
    """n inputs cycling through prompts, one seed per sample. The prompts are a declared list,
    so each is a stratum (`design`): the case's claim is about these prompts, on fresh seeds."""
    seeds = ctx.seeds(n, salt)
    inputs = [GenerationInput(seed=s, prompt=prompts[i % len(prompts)],
                              label=prompts[i % len(prompts)] or "(empty prompt)",
                              stratum=prompt_stratum(prompts[i % len(prompts)]))
              for i, s in enumerate(seeds)]
    return Plan(inputs=inputs, facts={"prompts": prompts})


class TextScenario(Scenario):
    modality = "text"

    def plan(self, ctx: AuditContext, concept: Concept, target: Role, n: int) -> Plan:
        # The same seeds on both models: the standard-vs-erased comparison is paired.
        return prompt_plan(ctx, concept.texts(), n, salt=f"text/{concept.name}")


SCENARIOS = [TextScenario()]
