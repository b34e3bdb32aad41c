"""adversarial-black: Ring-A-Bell prompts found on the standard text encoder, fed to the target.

The search never sees the audited model (black-box transfer, as in M-ErasureBench's
SD-AdvPrompt setting): it runs on the standard model (`units.search_prompts`), so its result
depends only on the standard model, the concept and the search settings, and is cached under
exactly those. The erased and the standard model are then asked the same found prompts, like
text prompts.

Budget defaults are scaled for the shapes world (population 64, 150 generations, K=8); the
published SD v1.4 budget (population 200, 3000 generations, K=16; `ring_a_bell.SD14`) is
`--erasure-budget sd14` (`pytest_erasure/budgets.py`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from pytest_erasure.attacks.ring_a_bell import SHAPES, SearchSettings, paired_prompts
from pytest_erasure.budgets import RAB, RAB_REPO, SHAPES_WORLD, Budget
from pytest_erasure.concepts import Concept
from pytest_erasure.records import GenerationInput, Plan, Role
from pytest_erasure.scenarios.base import AuditContext, Scenario, ScenarioOption, merge_budgets
from pytest_erasure.scenarios.restarts import (
    ATTACK_RESTARTS,
    RESTART_BUDGETS,
    cluster_id,
    prompt_stratum,
    restart_count,
    restart_of,
    restart_samples,
    restart_seed,
    slot_in_restart,
)

if TYPE_CHECKING:
    from pytest_erasure.records import CaseResult
    from pytest_erasure.stats.power import Design

CACHE_KIND = "ring-a-bell"
SEARCH_VERSION = 1
"""Bumped when the search changes in a way that changes its results for the same settings."""


BUDGETS: dict[str, dict[str, Budget]] = {
    "shapes": {
        "rab-population": Budget(64, "ours", SHAPES_WORLD),
        "rab-generations": Budget(150, "ours", SHAPES_WORLD),
        "rab-tokens": Budget(8, "ours", "K scaled down for the shapes world's small vocabulary"),
        "rab-eta": Budget(3.0, RAB, RAB_REPO),
        "rab-mutation": Budget(0.25, RAB, RAB_REPO),
        "rab-crossover": Budget(0.5, RAB, RAB_REPO),
    },
    "sd14": {
        "rab-population": Budget(200, RAB, RAB_REPO),
        "rab-generations": Budget(3000, RAB, RAB_REPO),
        "rab-tokens": Budget(16, RAB, f"{RAB_REPO}: K = 16 free tokens"),
        "rab-eta": Budget(3.0, RAB, RAB_REPO),
        "rab-mutation": Budget(0.25, RAB, RAB_REPO),
        "rab-crossover": Budget(0.5, RAB, RAB_REPO),
    },
}
"""What each budget profile (`--erasure-budget`, `budgets.py`) sets this scenario's options to,
and where each value comes from."""


class RingABellScenario(Scenario):
    modality = "adversarial"
    access = "black-box"
    budgets = merge_budgets(BUDGETS, RESTART_BUDGETS)
    table_column = 1
    options = (
        ScenarioOption("rab-population", int, SHAPES.population,
                       "Ring-A-Bell population size"),
        ScenarioOption("rab-generations", int, SHAPES.generations,
                       "Ring-A-Bell generations"),
        ScenarioOption("rab-tokens", int, SHAPES.tokens,
                       "Ring-A-Bell free tokens K per prompt"),
        ScenarioOption("rab-eta", float, SHAPES.eta,
                       "Ring-A-Bell step along the concept vector"),
        ScenarioOption("rab-mutation", float, SHAPES.mutation,
                       "Ring-A-Bell mutation rate per child"),
        ScenarioOption("rab-crossover", float, SHAPES.crossover,
                       "Ring-A-Bell crossover rate per child"),
        ScenarioOption("rab-targets", int, 1,
                       "how many of the concept's prompts are search targets (one search each)"),
        ScenarioOption("rab-keep", int, SHAPES.keep,
                       "distinct best prompts kept per search; the case cycles through them"),
        ATTACK_RESTARTS,
    )



    def findings(self, case: CaseResult) -> list[dict[str, Any]]:
        """The prompts the search found."""
        facts = case.facts or {}
        if not facts.get("prompts"):
            return []
        return [{"kind": "prompts", "name": "prompts", "prompts": list(facts["prompts"]),
                 "found_through": facts.get("optimised_through", "standard"),
                 "settings": facts.get("settings")}]

    def planning_design(self, concept: Concept, samples: int, options: Mapping[str, Any],
                        references: int) -> tuple[Design, str]:
        from pytest_erasure.stats.power import Design

        return Design("restarts", (samples,) * int(options["attack-restarts"])), ""

    def planning_attack_seconds(self, design: Design, options: Mapping[str, Any],
                                speed: Mapping[str, Any]) -> float | None:
        search = speed.get("search_seconds")
        return None if search is None else len(design.sizes) * float(search)

    def settings(self, ctx: AuditContext) -> SearchSettings:
        settings = replace(
            SHAPES,
            population=int(ctx.option("rab-population")),
            generations=int(ctx.option("rab-generations")),
            tokens=int(ctx.option("rab-tokens")),
            eta=float(ctx.option("rab-eta")),
            mutation=float(ctx.option("rab-mutation")),
            crossover=float(ctx.option("rab-crossover")),
            keep=int(ctx.option("rab-keep")),
            seed=int(ctx.config.seed),
        )
        try:
            settings.validate()
        except ValueError as exc:
            from pytest_erasure.errors import ErasureInputError

            raise ErasureInputError("Ring-A-Bell options (--rab-*)", str(exc),
                                    "give values in the ranges shown") from None
        return settings

    def validate(self, ctx: AuditContext) -> None:
        self.settings(ctx)
        restart_count(ctx)
        if int(ctx.option("rab-targets")) < 1:
            from pytest_erasure.errors import ErasureInputError

            raise ErasureInputError("--rab-targets", f"is {ctx.option('rab-targets')}",
                                    "give a whole number >= 1")

    def search(self, ctx: AuditContext, concept: Concept, restart: int = 0
               ) -> tuple[list[str], dict[str, Any]]:
        """The found prompts (best first, interleaved across targets) and the search's facts.
        `restart` r > 0 searches from its own seed (`restarts.restart_seed`); restart 0 is the
        search made before restarts existed, under the same key."""
        settings = self.settings(ctx)
        settings = replace(settings, seed=restart_seed(
            ctx, settings.seed, f"ring-a-bell/{concept.name}", restart))
        n_targets = max(1, int(ctx.option("rab-targets")))
        targets = concept.texts()[:n_targets]
        pairs = paired_prompts(concept)
        key = {
            "version": SEARCH_VERSION,
            "standard": ctx.fingerprint("standard"),
            "settings": settings.__dict__,
            "targets": targets,
            "pairs": pairs,
        }

        def compute() -> tuple[dict[str, Any], dict[str, Any]]:
            from pytest_erasure.executors.units import search_prompts

            run = f", restart {restart}" if restart else ""
            return ctx.run(ctx.unit(  # type: ignore[no-any-return]
                search_prompts, title=f"Ring-A-Bell search: {concept.name}{run}",
                total=settings.generations * len(targets), targets=targets, pairs=pairs,
                settings=settings, paired_generated=not concept.paired_prompts))

        _tensors, facts = ctx.cache.tensors(CACHE_KIND, key, compute)
        searches = facts["searches"]
        # Interleave: the best prompt of every target first, then the second best, ...
        prompts = [s["prompts"][i] for i in range(max(len(s["prompts"]) for s in searches))
                   for s in searches if i < len(s["prompts"])]
        return prompts, facts

    def plan(self, ctx: AuditContext, concept: Concept, target: Role, n: int) -> Plan:
        """n inputs per restart, round-robin over --attack-restarts searches, each cycling its own
        found prompts. facts["prompts"] are every restart's prompts (restart 0's first, as with
        one search), the search facts ("searches", "budget", ...) restart 0's;
        facts["attack_runs"] holds every restart's (facts["restarts"] is the session's per-restart
        CRRs), facts["input_restarts"] each input's restart."""
        count = restart_count(ctx)
        runs = ctx.map(lambda r: self.search(ctx, concept, r), range(count))
        prompts, facts = runs[0]
        seeds = ctx.seeds(restart_samples(n, count), salt=f"{self.id}:{concept.name}")
        inputs = []
        for i, seed in enumerate(seeds):
            r = restart_of(i, count)
            found = runs[r][0]
            k = slot_in_restart(i, count) % len(found)
            run = f"restart {r}, " if count > 1 else ""
            inputs.append(GenerationInput(seed=seed, prompt=found[k],
                                          label=f"Ring-A-Bell {run}#{k + 1}: {found[k]}",
                                          cluster=cluster_id(r),
                                          stratum=prompt_stratum(found[k])))
        every = list(prompts)  # restart 0's as they were, then what later restarts add
        every += [p for p in dict.fromkeys(p for found, _f in runs[1:] for p in found)
                  if p not in prompts]
        return Plan(inputs=inputs, facts={
            "prompts": every,
            "optimised_through": "standard",
            **facts,
            "attack_runs": [{"restart": r, "id": f"restart-{r}",
                             "seed": f["searches"][0]["settings"]["seed"],
                             "prompts": found, "searches": f["searches"]}
                            for r, (found, f) in enumerate(runs)],
            "attack_restarts": count,
            "input_restarts": [restart_of(i, count) for i in range(len(inputs))],
            "settings": self.describe(ctx) | {"seed": ctx.config.seed},
        })


SCENARIOS = [RingABellScenario()]
