"""What a scenario is, and the registry that maps scenario ids to them.

A scenario turns (concept, audited model, standard model) into a `Plan`: the inputs the audited
model generates from — prompts, prompt embeddings, initial latents — plus facts the report must
show (a learned embedding's file, an inversion's reconstruction error, the prompts a search
found). The session generates, detects and computes CRR; scenarios only say *what* to feed.

`target` is the model under audit. White-box attacks optimise through the target; black-box
attacks through the standard model and transfer. The session calls `plan` once with
target="erased" (the audit) and once with target="standard" (what the same attack achieves
without erasure, reported beside it).

Third parties register scenarios under the entry-point group `pytest_erasure.scenarios`
(value: a module:attribute that is a `Scenario` instance or a list of them).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from pytest_erasure.budgets import Budget
from pytest_erasure.concepts import Concept, ConceptSet
from pytest_erasure.detectors.base import Detection
from pytest_erasure.records import GenerationInput, Overlay, Plan, Role

if TYPE_CHECKING:
    import torch
    from diffusers import StableDiffusionPipeline

    from pytest_erasure.cache import Cache
    from pytest_erasure.config import AuditConfig
    from pytest_erasure.executors.units import Unit
    from pytest_erasure.models.identity import ModelFacts
    from pytest_erasure.records import CaseResult
    from pytest_erasure.stats.power import Design


@dataclass(frozen=True)
class ScenarioOption:
    """A budget or setting a scenario reads; the plugin turns it into `--name` and an ini key."""

    name: str
    type: type
    default: Any
    help: str


class AuditContext(Protocol):
    """What a scenario may use. Implemented by `context.Context`."""

    config: AuditConfig
    cache: Cache
    concepts: ConceptSet
    """The concepts file, thresholds included (`threshold_for` gives a case's CRR threshold)."""

    def pipeline(self, role: Role) -> StableDiffusionPipeline:
        """The loaded model (loaded once, on the configured device and dtype)."""
        ...

    def option(self, name: str) -> Any:
        """The value of a `ScenarioOption` (command line, ini, or default)."""
        ...

    def seeds(self, n: int, salt: str = "") -> list[int]:
        """n reproducible per-sample seeds derived from --seed (and a salt, e.g. the case id)."""
        ...

    def reference_images(self, concept: Concept) -> torch.Tensor:
        """The concept's reference images (N, 3, H, W) in [0, 1] at the model's resolution."""
        ...

    def fingerprint(self, role: Role) -> str:
        """A content hash of the model in that role: part of every cache key."""
        ...

    def model_facts(self, role: Role) -> ModelFacts:
        """What a plan may know of the model (native size, scheduler) without loading it.

        Use this, not `pipeline`, for anything a cache key needs: `pipeline` loads the models,
        so call it only inside a cache entry's compute function."""
        ...

    def progress(
        self, description: str, total: int
    ) -> AbstractContextManager[Callable[[int], None]]:
        """A progress bar; the context value advances it by n."""
        ...

    def generate(self, role: Role, inputs: list[GenerationInput],
                 concept: Concept | None = None, defended: bool | None = None,
                 overlays: tuple[Overlay, ...] = ()) -> torch.Tensor:
        """uint8 images (N, 3, H, W) on the CPU, batched and cached per input.

        For the erased role under --irece, IRECE wraps the generation with `concept`'s prompt
        as the mask prompt (so it works for learned tokens and the null prompt too), unless
        `defended` is False. `overlays` run on top of `role`'s model (`records.Overlay`) and
        key the images; the other model is untouched.
        """
        ...

    def generate_flagged(self, role: Role, inputs: list[GenerationInput],
                         concept: Concept | None = None, defended: bool | None = None,
                         overlays: tuple[Overlay, ...] = ()
                         ) -> tuple[torch.Tensor, list[bool]]:
        """`generate`'s images and, per image, whether it is degenerate (NaN or constant).

        A degenerate image counts as a hit wherever the concept is judged (a model that draws
        nothing must not pass as erased), so a scenario that decides from images (the fuzz
        search and its confirmation) needs the flags, not just the pixels.
        """
        ...

    def detect(self, images: torch.Tensor, concept: Concept) -> Detection:
        """The concept's detector on uint8 images from `generate`."""
        ...

    def unit(self, fn: Callable[..., Any], *, title: str = "", total: int = 0,
             needs_models: bool = True,
             overlays: tuple[tuple[Role, Overlay], ...] = (), **args: Any) -> Unit:
        """A unit of heavy work (`executors/units.py`): `fn(host, advance, **args)` on this
        audit's models, named by their files so that it can run in another process, with
        `overlays` ((role, overlay), ...) applied around it where it runs."""
        ...

    def run(self, unit: Unit) -> Any:
        """The unit's result, from the executor `--erasure-executor` names: the one way a
        scenario runs heavy work on a model (never `pipeline` directly)."""
        ...

    def attacked_through(self) -> Any:
        """The enabled defense a white-box attack on the erased model optimises through (it
        declares an adaptive form and the run gates the adaptive attacker), or None
        (`defenses.attacked_through`)."""
        ...

    def map(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> list[Any]:
        """[fn(item) for item in items] for independent items (an attack's restarts), run side
        by side where the executor runs units side by side; results in the items' order.
        `fn` may run in another thread: it must touch only the context and its own locals."""
        ...


@dataclass(frozen=True)
class Write:
    """A place a scenario's cases write besides the cache and the reports (a learned-embedding
    folder, a search database): the run checks it is writable before any model loads."""

    label: str
    """How the usage error names it, e.g. '--fuzz-database DIR'."""
    path: Path
    folder: bool
    fix: str


class Scenario:
    """Base class: override `plan`. `variant` splits one modality into several cases.

    Besides its plan, a scenario declares what the run needs to know of it before any model
    loads, so that no core module names a scenario or a modality: its options' values per budget
    profile (`budgets`), whether it reads reference images (`needs_references`), the images a
    case caches (`images_cached`, `images_per_concept`), other places it writes (`writes`),
    whether its plan's reconstruction is gated (`gates_reconstruction`) and where its column
    stands in the comparison table (`table_column`). The defaults fit a prompt-based scenario.
    """

    modality: str = ""
    access: Literal["white-box", "black-box"] | None = None
    adaptive: bool = False
    """A white-box scenario that, with a defense on, optimises through it (with the surrogate
    the defense declares, `defenses.adaptive_form`): its cases measure the adaptive attacker.
    False: its findings are made on the undefended model (a transfer attack, `checks.
    threat_model`)."""
    variant: str | None = None
    options: tuple[ScenarioOption, ...] = ()
    budgets: Mapping[str, Mapping[str, Budget]] = {}
    """{profile: {option: Budget}}: each of its options' value in each budget profile
    (`--erasure-budget`, `budgets.py`), with the paper or measurement it comes from. An option
    no profile names keeps its default."""
    needs_references: bool = False
    """Its plan reads the concept's reference images (`AuditContext.reference_images`): the
    preflight reads them, when this scenario is selected, before any model loads."""
    gates_reconstruction: bool = False
    """Its plan's facts carry a 'reconstruction' (an inversion's round trip) that the verdict
    checks: an attack that did not reconstruct its images is inconclusive, not a pass."""
    table_column: int | None = 100
    """Where its CRR column stands in `python -m pytest_erasure.table` (lower is further
    left; ties in registry order); None: no column."""
    opt_in: bool = False
    """Its cases run (and a complete audit declares them) only when `--scenarios` names it
    (its id or modality): a new kind of case that must not change the default audit."""
    independent_plans: bool = False
    """Its plan on the erased model and its plan on the standard model share nothing (each
    attacks its own model, from its own seeds and cache entries), so they may be made side by
    side where the executor runs units so (`checks.plans`). False (the default): the erased
    model's plan is made first, as a plan may leave what the other reads (fuzzing's ledger of
    confirmed bypasses, which the standard model's plan replays)."""

    def images_cached(self, ctx: AuditContext, n: int, erased: int) -> int:
        """At most how many images one case of this scenario caches, with n = --samples and
        `erased` the erased model's share (n, 2n under a defense: defended and undefended):
        the plan on the erased model and on the standard one. The disk check reads it."""
        return erased + n

    def images_per_concept(self, ctx: AuditContext, concept: Concept) -> int:
        """Images cached once per concept however many of its cases run (training images
        generated when the concept has no references); scenarios naming the same images
        declare the same count, and the largest counts once."""
        return 0

    def writes(self, ctx: AuditContext, cache_on: bool) -> list[Write]:
        """Places its cases write besides the cache and the reports (`cache_on`: whether the
        disk cache is on)."""
        return []

    def findings(self, case: CaseResult) -> list[dict[str, Any]]:
        """What a finished case's attack found, for `--erasure-artifacts` (`artifacts.export`):
        [{"kind", "name", "source" (a file to copy) or "prompts", "found_through" (the role it
        was found on), "settings", ...}]. Default: nothing (an attack that searches nothing)."""
        return []

    # -- what `python -m pytest_erasure.plan` reads, before anything loads ----------------------

    def planning_design(self, concept: Concept, samples: int, options: Mapping[str, Any],
                        references: int) -> tuple[Design, str]:
        """How this scenario's gated rate will be drawn (its `stats.power.Design`), from the
        concept, --samples, the resolved options and the concept's reference count, and a note
        on what else it is gated on. Default: --samples images over the declared prompts."""
        from pytest_erasure.stats.power import Design

        return Design("stratified", prompt_strata(list(concept.texts()), samples)), ""

    def planning_inputs(self, design: Design) -> list[GenerationInput]:
        """Inputs with the clusters and strata the plan will give (no seed or prompt that
        matters): what `verdict.cannot_pass` reads."""
        out = []
        for unit, size in enumerate(design.sizes):
            for i in range(size):
                if design.kind == "restarts":
                    out.append(GenerationInput(seed=i, cluster=f"restart-{unit}",
                                               stratum=f"prompt: {i}"))
                elif design.kind == "stratified":
                    out.append(GenerationInput(seed=i, stratum=f"prompt: {unit}"))
                elif design.kind == "clustered":
                    out.append(GenerationInput(seed=i, cluster=f"prompt: {unit}"))
                else:
                    out.append(GenerationInput(seed=i))
        return out

    def planning_cannot(self, design: Design, threshold: float, gate: str) -> str | None:
        """Why the case cannot pass even with no hit (the audit's own INCONCLUSIVE words)."""
        from pytest_erasure.stats.verdict import cannot_pass

        return cannot_pass(self.planning_inputs(design), threshold, gate)

    def planning_images(self, design: Design, options: Mapping[str, Any]) -> tuple[int, int]:
        """(images the audited model generates, every image the case needs: the standard
        model's under the same attack and a search's own included)."""
        return design.n, 2 * design.n

    def planning_attack_seconds(self, design: Design, options: Mapping[str, Any],
                                speed: Mapping[str, Any]) -> float | None:
        """The attack's own time beyond generation at `speed`'s rates (None: unknown).
        `options` also carries the run's `attacked-through` (the defense a white-box attack
        goes through, {"name", "adaptive_sampling"}, or None) and the profile's `steps`
        (`plan.run_settings`)."""
        return 0.0

    def planning_options(self, options: dict[str, Any], threshold: float) -> dict[str, Any]:
        """The resolved options with what the scenario derives from them filled in."""
        return options

    @property
    def id(self) -> str:
        parts = [self.modality]
        if self.access:
            parts.append(self.access.split("-")[0])
        if self.variant:
            parts.append(self.variant)
        return "-".join(parts)

    def plan(self, ctx: AuditContext, concept: Concept, target: Role, n: int) -> Plan:
        raise NotImplementedError

    def validate(self, ctx: AuditContext) -> None:
        """Check this scenario's options (ErasureInputError) before any model loads: the
        session calls it for every selected scenario, so a bad budget is a usage error in a
        second, not a failing case an hour in. It may read options and config only."""

    def declared_overlays(self, ctx: AuditContext) -> tuple[Overlay, ...]:
        """Overlays its cases will run that are known before any model loads (a LoRA file its
        plans apply, a quantization): the run checks each against the models' architecture
        up front (`overlays.check_fit`), so an overlay for another model is a usage error."""
        return ()

    def describe(self, ctx: AuditContext) -> dict[str, Any]:
        """Settings recorded in every report (and in the cache key of every plan)."""
        return {o.name: ctx.option(o.name) for o in self.options}


_BUILTIN_MODULES = (
    "pytest_erasure.scenarios.text",
    "pytest_erasure.scenarios.embedding",
    "pytest_erasure.scenarios.latent",
    "pytest_erasure.scenarios.adversarial",
    "pytest_erasure.scenarios.fuzz",
    "pytest_erasure.scenarios.quantized",
    "pytest_erasure.scenarios.finetune",
    "pytest_erasure.scenarios.noise",
    "pytest_erasure.scenarios.completion",
    "pytest_erasure.scenarios.inpainting",
    "pytest_erasure.scenarios.adversarial_white",
    "pytest_erasure.scenarios.image_white",
    "pytest_erasure.scenarios.guidance",
)


def registry() -> dict[str, Scenario]:
    """Every scenario by id: built-in modules first (those present), then entry points.

    Scenario modules must import no torch at module level: the registry is built when pytest
    loads the plugin.
    """
    import importlib

    found: dict[str, Scenario] = {}
    for module_name in _BUILTIN_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue
        for scenario in getattr(module, "SCENARIOS", ()):
            found.setdefault(scenario.id, scenario)
    for ep in entry_points(group="pytest_erasure.scenarios"):
        loaded = ep.load()
        for scenario in loaded if isinstance(loaded, list | tuple) else [loaded]:
            found.setdefault(scenario.id, scenario)
    return found


def merge_budgets(*tables: Mapping[str, Mapping[str, Budget]]) -> dict[str, dict[str, Budget]]:
    """Budget tables ({profile: {option: Budget}}) as one, the first naming an option wins."""
    out: dict[str, dict[str, Budget]] = {}
    for table in tables:
        for name, budgets in table.items():
            mine = out.setdefault(name, {})
            for option, budget in budgets.items():
                mine.setdefault(option, budget)
    return out


def budget_profiles(scenarios: dict[str, Scenario]) -> dict[str, dict[str, Budget]]:
    """{profile: {option: Budget}} over every scenario's declaration (`Scenario.budgets`); an
    option two scenarios declare takes the first one's values, as its option does."""
    return merge_budgets(*(s.budgets for s in scenarios.values()))


def iter_options(scenarios: dict[str, Scenario]) -> Iterator[ScenarioOption]:
    seen: set[str] = set()
    for scenario in scenarios.values():
        for option in scenario.options:
            if option.name not in seen:
                seen.add(option.name)
                yield option


def prompt_strata(texts: list[str], n: int) -> tuple[int, ...]:
    """Images per declared prompt when n images go round the prompts in order."""
    counts: dict[str, int] = {}
    for i in range(n):
        counts[texts[i % len(texts)]] = counts.get(texts[i % len(texts)], 0) + 1
    return tuple(counts.values())
