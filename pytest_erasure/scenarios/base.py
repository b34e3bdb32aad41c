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

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Literal, Protocol

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


class Scenario:
    """Base class: override `plan`. `variant` splits one modality into several cases."""

    modality: str = ""
    access: Literal["white-box", "black-box"] | None = None
    variant: str | None = None
    options: tuple[ScenarioOption, ...] = ()

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

    def describe(self, ctx: AuditContext) -> dict[str, Any]:
        """Settings recorded in every report (and in the cache key of every plan)."""
        return {o.name: ctx.option(o.name) for o in self.options}


_BUILTIN_MODULES = (
    "pytest_erasure.scenarios.text",
    "pytest_erasure.scenarios.embedding",
    "pytest_erasure.scenarios.latent",
    "pytest_erasure.scenarios.adversarial",
    "pytest_erasure.scenarios.fuzz",
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


def iter_options(scenarios: dict[str, Scenario]) -> Iterator[ScenarioOption]:
    seen: set[str] = set()
    for scenario in scenarios.values():
        for option in scenario.options:
            if option.name not in seen:
                seen.add(option.name)
                yield option
