"""The detector protocol and registry.

A detector decides, per image, whether a concept is present. CRR is only as good as the detector,
so every detector describes its own rule and threshold, and that description goes into reports.
Third parties register detectors under the entry-point group `pytest_erasure.detectors`.
A detector's module may also define `check(spec, labels)`: a cheap check (configs and file
listings, never weights) that the audit runs before any model loads (`check_detector`). A
factory's return annotation names the class it builds (`built_class`): what a scenario may know
of a detector's abilities (a differentiable `log_probability`) without building it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pytest_erasure.errors import ErasureInputError

if TYPE_CHECKING:
    import torch


@dataclass
class Detection:
    """Per-image verdicts: `present[i]` is whether the concept is in image i; `score[i]` why."""

    present: list[bool]
    score: list[float]


@dataclass(frozen=True)
class DetectorSpec:
    """How a concepts file asks for a detector: a registered name, a local path, options."""

    name: str
    path: Path | None = None
    options: dict[str, Any] = field(default_factory=dict)


class Detector(Protocol):
    name: str

    def detect(self, images: torch.Tensor, label: str) -> Detection:
        """Judge images (N, 3, H, W, float in [0, 1], any device) for `label`."""
        ...

    def describe(self) -> dict[str, Any]:
        """Rule, threshold, weight files and their sha256: recorded in every report."""
        ...


DetectorFactory = Callable[[DetectorSpec, str], Detector]
"""Builds a detector from its spec on a device ("cpu", "cuda", ...)."""

_BUILTIN: dict[str, str] = {
    "shapes": "pytest_erasure.detectors.shapes:build",
    "clip": "pytest_erasure.detectors.clip:build",
    "grounding-dino": "pytest_erasure.detectors.grounding_dino:build",
    "imagenet": "pytest_erasure.detectors.imagenet:build",
    "nudenet": "pytest_erasure.detectors.nudenet:build",
}


def available() -> dict[str, str]:
    """Every detector name, built-in first, then those other packages register."""
    found = dict(_BUILTIN)
    for ep in entry_points(group="pytest_erasure.detectors"):
        found.setdefault(ep.name, ep.value)
    return found


def _factory(spec: DetectorSpec) -> tuple[Any, DetectorFactory]:
    """The detector's module and factory, imported: a name no registry knows, a module that does
    not import (missing package, error at import) or a missing attribute is the user's to fix."""
    import importlib

    names = available()
    target = names.get(spec.name, spec.name if ":" in spec.name else None)
    if target is None:
        raise ErasureInputError(
            f"detector '{spec.name}'", "is not a known detector",
            f"use one of: {', '.join(sorted(names))}, or module:factory",
        )
    module_name, _, attr = target.partition(":")
    fix = "check the module:factory path and that its package is installed"
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or anything the module raises while importing
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ErasureInputError(f"detector '{spec.name}'",
                                f"cannot be imported ({type(exc).__name__}: {first})", fix
                                ) from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ErasureInputError(f"detector '{spec.name}'",
                                f"module {module_name} has no factory '{attr}'", fix)
    return module, factory


def check_detector(spec: DetectorSpec, labels: Sequence[str] = ()) -> None:
    """Everything about a concepts file's detector that can be known without building it: the
    name resolves, the module imports, the factory exists, and, when the module defines
    `check(spec, labels)`, its folder holds what the detector needs and its options and labels
    are valid. Called before any model loads; `check` must be cheap (read configs, list files,
    never load weights)."""
    module, _ = _factory(spec)
    check = getattr(module, "check", None)
    if callable(check):
        check(spec, tuple(labels))


def built_class(spec: DetectorSpec) -> type | None:
    """The class the detector's factory says it builds (its return annotation, or the factory
    itself when it is a class), known without building it: a scenario that needs more than
    `detect` (the guidance probe's gradient) refuses a detector that lacks it before any model
    loads. None when the factory does not say (no annotation, one that does not resolve, a
    protocol such as `Detector`): then only the built detector can tell."""
    import typing

    _, factory = _factory(spec)
    if isinstance(factory, type):
        built: Any = factory
    else:
        try:
            built = typing.get_type_hints(factory).get("return")
        except Exception:  # an annotation naming what only type checkers import
            return None
    if not isinstance(built, type) or getattr(built, "_is_protocol", False):
        return None
    return built


def build_detector(spec: DetectorSpec, device: str) -> Detector:
    """Import the detector's module only now: detectors pull in heavy libraries.

    `spec.name` is a registered name, or `package.module:factory` for a detector of one's own.
    """
    _, factory = _factory(spec)
    return factory(spec, device)
