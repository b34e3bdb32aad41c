"""A host for units away from the driver: models loaded from a handle, detectors from specs.

A worker process (`process.py`, or a Ray actor) keeps one `HandleHost` per model handle it was
sent and so loads each model pair once, however many units it runs on them; detectors likewise,
once per spec and device.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from pytest_erasure.overlays import Overlaid

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline

    from pytest_erasure.concepts import Concept
    from pytest_erasure.config import AuditConfig
    from pytest_erasure.detectors.base import Detector, DetectorSpec
    from pytest_erasure.models.handle import ModelHandle
    from pytest_erasure.models.loading import LoadedModels
    from pytest_erasure.records import Overlay, Role


class HandleHost:
    """Models loaded on first use from `handle` (None: a host for detectors only)."""

    def __init__(self, handle: ModelHandle | None) -> None:
        self.handle = handle
        self._models: LoadedModels | None = None
        self._detectors: dict[str, Detector] = {}
        self._sites: dict[str, DefenseSite] = {}
        self._overlaid = Overlaid()

    @property
    def models(self) -> LoadedModels:
        if self._models is None:
            if self.handle is None:
                raise RuntimeError("this unit needs models, but its host was given no handle")
            self._models = self.handle.load()
        return self._models

    def pipeline(self, role: Role) -> StableDiffusionPipeline:
        if role in self._overlaid.active:
            return self._overlaid.active[role]
        return self.models.standard if role == "standard" else self.models.erased

    def overlaid(self, overlays: tuple[tuple[Role, Overlay], ...]
                 ) -> AbstractContextManager[None]:
        return self._overlaid.applied(
            lambda role: self.models.standard if role == "standard" else self.models.erased,
            overlays)

    def detector_for(self, spec: DetectorSpec, device: str) -> Detector:
        from pytest_erasure.detectors.base import build_detector

        key = json.dumps([spec.name, str(spec.path), spec.options, device], sort_keys=True,
                         default=str)
        if key not in self._detectors:
            self._detectors[key] = build_detector(spec, device)
        return self._detectors[key]

    def defense_callbacks(self, name: str, concept: Concept, config: AuditConfig
                          ) -> Callable[[list[Any]], Any]:
        from pytest_erasure.defenses import registry

        return registry()[name].callback_factory(  # type: ignore[arg-type]
            self._site(config), concept)

    def defense_surrogate(self, name: str, concept: Concept, config: AuditConfig, role: Role,
                          seed: int) -> Any:
        from pytest_erasure.defenses import registry

        return registry()[name].surrogate(  # type: ignore[attr-defined]
            self._site(config), concept, role, seed)

    def _site(self, config: AuditConfig) -> DefenseSite:
        """One site per audit configuration: a defense may memoise per context (IRECE encodes
        each concept's mask conditioning once per context)."""
        key = json.dumps(config.describe(), sort_keys=True, default=str)
        return self._sites.setdefault(key, DefenseSite(self, config))


class DefenseSite:
    """What a defense's `callback_factory` reads of a context (the config and the pipelines),
    on a host that is not the driver's context."""

    def __init__(self, host: HandleHost, config: AuditConfig) -> None:
        self.host = host
        self.config = config

    def pipeline(self, role: Role) -> StableDiffusionPipeline:
        return self.host.pipeline(role)
