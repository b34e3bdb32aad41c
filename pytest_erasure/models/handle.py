"""A model pair named by its files and the settings it is loaded with, not by the objects.

A unit of work (`executors/units.py`) must travel to another process or machine, where the
pipelines of the driver do not exist: what travels is this handle, and the worker loads (once)
what it names. The handle is everything `load_models` is told plus what the context changes
after loading (the sampler, the batch-invariant layers), so a worker's pipelines compute what the
driver's would, bit for bit. `prepare` is that change, shared by the context and the workers.

This module imports torch and diffusers only inside functions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pytest_erasure.config import AuditConfig
    from pytest_erasure.models.loading import LoadedModels


@dataclass(frozen=True)
class ModelHandle:
    """Both models as loaded: files, format, device, dtype, sampler and kernels."""

    standard: str
    erased: str
    erased_format: str | None
    device: str
    dtype: str
    lora_multiplier: float
    allow_hub: bool
    sampler: str | None
    invariant_layers: bool
    expected: tuple[tuple[str, str], ...] = field(default=(), compare=False)
    """The fingerprints the driver keys its cache by ((role, fingerprint), ...; empty when not
    known yet): a worker whose load disagrees refuses rather than fill the cache wrongly. Not
    part of the handle's identity, so a worker holds one load per handle either way."""

    @classmethod
    def of(cls, config: AuditConfig, fingerprints: dict[str, str] | None = None) -> ModelHandle:
        return cls(str(config.standard_model), str(config.erased_model), config.erased_format,
                   config.device, config.dtype, float(config.lora_multiplier),
                   bool(config.allow_hub), config.sampler, config.invariant_layers,
                   tuple(sorted((fingerprints or {}).items())))

    def load(self) -> LoadedModels:
        """Both pipelines, prepared as the driver prepares its own; checked against `expected`."""
        from pytest_erasure.models.loading import load_models

        models = prepare(load_models(
            Path(self.standard), Path(self.erased), erased_format=self.erased_format,
            device=self.device, dtype=self.dtype, lora_multiplier=self.lora_multiplier,
            allow_hub=self.allow_hub), self.sampler, self.invariant_layers)
        expected = dict(self.expected)
        if expected and any(models.fingerprints[role] != fp for role, fp in expected.items()):
            raise RuntimeError("the models' files changed since the driver read their identity "
                               "(a worker loaded other fingerprints): rerun")
        return models


def prepare(models: LoadedModels, sampler: str | None, invariant_layers: bool) -> LoadedModels:
    """Quiet pipelines running the configured sampler, with batch-invariant layers where they
    are on (`--batch-invariant`; auto: the CPU), so an image depends on its own seed and input
    alone, not on its batch's size (nor on the process that made it)."""
    for pipe in (models.standard, models.erased):
        pipe.set_progress_bar_config(disable=True)
    if sampler is not None:
        from pytest_erasure.samplers import make_sampler

        shared = models.erased.scheduler is models.standard.scheduler
        models.standard.scheduler = make_sampler(sampler, models.standard.scheduler.config)
        models.erased.scheduler = (models.standard.scheduler if shared else make_sampler(
            sampler, models.erased.scheduler.config))
    # What each model samples with, beside what was loaded for it (every report shows it).
    provenance: dict[str, Any] = dict(models.provenance)
    for role, pipe in (("standard", models.standard), ("erased", models.erased)):
        provenance[role] = {**provenance.get(role, {}), "sampler": {
            "option": sampler or "the model's own",
            "class": type(pipe.scheduler).__name__,
            "config": {k: v for k, v in dict(pipe.scheduler.config).items()
                       if not k.startswith("_")}}}
    models.provenance = provenance
    if invariant_layers:
        from pytest_erasure.invariant import make_batch_invariant

        make_batch_invariant(*(getattr(pipe, name) for pipe in (models.standard, models.erased)
                               for name in ("unet", "vae", "text_encoder")))
    return models
