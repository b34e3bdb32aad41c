"""Executors: where a unit of heavy work runs (`--erasure-executor`), and their registry.

Every heavy step of an audit (generate a batch, judge a batch, train an embedding, invert,
reconstruct, search prompts, calibrate) is a `Unit` (`units.py`): a picklable description —
the models by their files (`models.handle.ModelHandle`), the inputs, the settings, the seed —
and the module-level function that runs it on a `Host`, the thing that holds loaded models and
detectors. The context (`context.py`) is the one place units are run from; an executor decides
where. The interface is `concurrent.futures`' smallest: run one unit, reporting progress.

Built-ins: `local` (in this process, on the context's own models: the behaviour before
executors existed), `process` (worker processes that load and hold their models, the proof
that units travel) and `ray` (actors on a Ray cluster, the optional extra). A third party adds
one (a cluster queue) as one file, registered under the entry-point group
`pytest_erasure.executors` as `name = "module:factory"`, where `factory(config, local_host)`
returns an `Executor`. A factory may carry `options` (`ScenarioOption`s: flags and ini twins the
plugin declares), a `check(config)` that preflight runs before any model loads, and a
`concurrency(config)`: how many units it runs side by side. Where that is more than one, the
context hands it independent units together (an attack's restarts, the two models' plans:
`Context.map`), each from its own driver thread, so `run` must then be safe to call from
several threads at once.

This module imports nothing heavy: the plugin reads the names when it declares its options.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline

    from pytest_erasure.concepts import Concept
    from pytest_erasure.config import AuditConfig
    from pytest_erasure.detectors.base import Detector, DetectorSpec
    from pytest_erasure.executors.units import Unit
    from pytest_erasure.models.loading import LoadedModels
    from pytest_erasure.records import Overlay, Role

GROUP = "pytest_erasure.executors"
DEFAULT = "local"
_BUILTIN: dict[str, str] = {
    "local": "pytest_erasure.executors.local:LocalExecutor",
    "process": "pytest_erasure.executors.process:ProcessExecutor",
    "ray": "pytest_erasure.executors.ray:RayExecutor",
}


class Host(Protocol):
    """What a unit's function may use where it runs: the models its unit names, loaded once."""

    @property
    def models(self) -> LoadedModels:
        ...

    def pipeline(self, role: Role) -> StableDiffusionPipeline:
        ...

    def detector_for(self, spec: DetectorSpec, device: str) -> Detector:
        """The detector `spec` names, built once per host."""
        ...

    def defense_callbacks(self, name: str, concept: Concept, config: AuditConfig
                          ) -> Callable[[list[Any]], Any]:
        """The enabled defense's per-batch `callback_on_step_end` factory, built on this
        host's pipelines (`Defense.callback_factory`)."""
        ...

    def defense_surrogate(self, name: str, concept: Concept, config: AuditConfig, role: Role,
                          seed: int) -> Any:
        """The enabled defense's differentiable stand-in for an adaptive attack on `role`'s
        model (`IreceDefense.surrogate`), built on this host's pipelines."""
        ...

    def overlaid(self, overlays: tuple[tuple[Role, Overlay], ...]
                 ) -> AbstractContextManager[None]:
        """Within: `pipeline(role)` is the role's model with its overlays applied (on copies of
        the touched components, so a model sharing them is unchanged), removed on exit
        (`overlays.Overlaid`)."""
        ...


class Executor(Protocol):
    """Runs units. `run` blocks until the unit's result is back, calling `advance(n)` as the
    unit reports progress; the batch sizes the unit had to halve to are noted in the active
    `memory.recording` of the caller, wherever the unit ran."""

    name: str

    def run(self, unit: Unit, advance: Callable[[int], None]) -> Any:
        ...

    def close(self) -> None:
        """Release workers (idempotent)."""
        ...


ExecutorFactory = Callable[["AuditConfig", Host], Executor]


def names() -> list[str]:
    """Every executor's name: built-ins first, then entry points (without importing them)."""
    found = dict(_BUILTIN)
    for ep in entry_points(group=GROUP):
        found.setdefault(ep.name, ep.value)
    return list(found)


def factory(name: str) -> ExecutorFactory:
    """The factory registered under `name` (imported now: executors may pull in libraries)."""
    import importlib

    targets = dict(_BUILTIN)
    for ep in entry_points(group=GROUP):
        targets.setdefault(ep.name, ep.value)
    if name not in targets:
        from pytest_erasure.errors import ErasureInputError

        raise ErasureInputError("--erasure-executor", f"'{name}' is not a registered executor",
                                f"use one of: {', '.join(targets)}")
    module, _, attribute = targets[name].partition(":")
    return getattr(importlib.import_module(module), attribute)  # type: ignore[no-any-return]


def options() -> list[Any]:
    """Every executor's own options (`factory.options`), declared as flags with ini twins. A
    factory that cannot be imported declares none (its use is refused by `factory`)."""
    out = []
    for name in names():
        try:
            out.extend(getattr(factory(name), "options", ()))
        except Exception:  # noqa: BLE001 - a broken third-party executor must not break pytest
            continue
    return out


def check(config: AuditConfig) -> None:
    """The chosen executor's own check of the run (its extra installed, its cluster reachable
    and able to hold the work): an `ErasureInputError` before any model loads."""
    run_check = getattr(factory(getattr(config, "executor", DEFAULT)), "check", None)
    if callable(run_check):
        run_check(config)


def devices_elsewhere(config: AuditConfig) -> bool:
    """Whether the chosen executor runs its units on devices of other machines (`factory.
    devices_elsewhere`), which its own `check` verifies: the driver then needs no GPU."""
    return bool(getattr(factory(getattr(config, "executor", DEFAULT)), "devices_elsewhere",
                        False))


def concurrency(config: AuditConfig) -> int:
    """How many units the chosen executor runs at once (`factory.concurrency(config)`, 1 when
    it declares none): `local` and `process` run one at a time (one set of models), `ray` one
    per actor."""
    width = getattr(factory(getattr(config, "executor", DEFAULT)), "concurrency", None)
    return max(1, int(width(config))) if callable(width) else 1


def make(name: str, config: AuditConfig, local: Host) -> Executor:
    """The executor `name`, for an audit of `config`; `local` is the driver's own host (the
    context), which an in-process executor runs on."""
    return factory(name)(config, local)
