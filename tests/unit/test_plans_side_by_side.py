"""Which plans are made side by side when the executor runs units so (`checks.plans`).

Ray's actors run an attack on each model at once (`Context.map`), but only a scenario whose two
plans share nothing may be planned so: fuzzing replays on the standard model the bypasses its
erased plan confirmed, and a concurrent standard plan missed them (found on the default audit
with 2 Ray workers: the fuzz case's standard images 15/16 instead of local's 31/32).
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pytest_erasure.checks import plans
from pytest_erasure.records import Plan
from pytest_erasure.scenarios.base import registry


class SideBySide:
    """The `map` of a context whose executor runs two units at once."""

    def map(self, fn: Any, items: Any) -> list[Any]:
        with ThreadPoolExecutor(2) as pool:
            return list(pool.map(fn, list(items)))


class Recording:
    """A scenario whose erased plan leaves a note the standard plan reads (fuzz's ledger)."""

    def __init__(self, independent: bool) -> None:
        self.independent_plans = independent
        self.note: list[str] = []
        self.both_running = threading.Barrier(2, timeout=0.5)

    def plan(self, ctx: Any, concept: Any, target: str, n: int) -> Plan:
        if self.independent_plans:
            self.both_running.wait()  # both plans under way at once, or BrokenBarrierError
        if target == "erased":
            time.sleep(0.2)
            self.note.append("confirmed bypass")
        return Plan(inputs=[], facts={"read": list(self.note) if target == "standard" else []})


def test_a_plan_that_reads_what_the_erased_plan_left_is_made_after_it() -> None:
    scenario = Recording(independent=False)
    _erased, standard = plans(SideBySide(), scenario, None, 4)  # type: ignore[arg-type]
    assert standard.facts["read"] == ["confirmed bypass"]


def test_independent_plans_are_made_side_by_side() -> None:
    scenario = Recording(independent=True)
    erased, standard = plans(SideBySide(), scenario, None, 4)  # type: ignore[arg-type]
    assert erased.facts == {"read": []} and standard.facts == {"read": []}


def test_only_attacks_on_each_model_declare_independent_plans() -> None:
    """Fuzzing (its ledger), Ring-A-Bell and black-box textual inversion (one search or
    token on the standard model, made once for both plans) must be planned in order."""
    scenarios = registry()
    assert {"fuzz", "embedding-black", "adversarial-black", "text", "embedding-white"} <= set(
        scenarios)
    independent = {s.id for s in scenarios.values() if s.independent_plans}
    assert "embedding-white" in independent
    assert not independent & {"fuzz", "embedding-black", "adversarial-black", "text"}
