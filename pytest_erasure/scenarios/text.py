"""The typed-prompt scenario: the concept's prompts x seeds, as every erasure paper measures.

Baseline (the same prompts on the standard model) and retention (neighbours' prompts on the
erased model) reuse this plan (`scenarios/prompts.py`); the session decides which model
generates and what is asserted.
"""

from __future__ import annotations

from pytest_erasure.concepts import Concept
from pytest_erasure.records import Plan, Role
from pytest_erasure.scenarios.base import AuditContext, Scenario
from pytest_erasure.scenarios.prompts import MODALITY, concept_plan, prompt_plan

__all__ = ["SCENARIOS", "TextScenario", "prompt_plan"]


class TextScenario(Scenario):
    modality = MODALITY
    table_column = 0

    def plan(self, ctx: AuditContext, concept: Concept, target: Role, n: int) -> Plan:
        # The same seeds on both models: the standard-vs-erased comparison is paired.
        return concept_plan(ctx, concept, n)


SCENARIOS = [TextScenario()]
