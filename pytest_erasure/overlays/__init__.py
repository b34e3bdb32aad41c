"""Model overlays: weights run on top of a loaded model for one unit, and their registry.

A `Plan` (or any unit) may name `records.Overlay`s: a LoRA merged into the UNet, a weight
transform (quantize-dequantize), an eraser module removed. The overlay's kind, looked up here,
applies it to a pipeline where the unit runs and the machinery here removes it after, so every
executor (local, process, a Ray actor) runs overlays the same way: its host holds an
`Overlaid` and answers `pipeline(role)` with the overlaid pipeline while a unit runs.

Why a fork and not the model itself: the erased pipeline shares every unchanged component
object, and every unchanged tensor, with the standard pipeline (`models/loading.py`). Merging a
LoRA into `erased.unet` in place would change the standard model too. So an overlay is applied
to a structural copy of each component it touches (`models.formats.sharing.clone_sharing`: new
module objects, the same tensors), and a kind replaces whole parameters or modules in that copy
through a `Patch`, which saves what it replaced and puts it back on removal: removal is exact
by construction (the saved objects return, nothing is subtracted), and no tensor of the loaded
models is ever written. The copies are kept per host, so a unit costs the weights it changes.

Built-ins: `lora` (`lora.py`) and `quantize` (`quantize.py`). A third party adds a kind as
`name = "module:attribute"` under the entry-point group `pytest_erasure.overlays`, or at run
time with `add(kind)`; a kind is an object with `name`, `components(overlay)`,
`apply(pipe, overlay, patch)`, `describe(overlay)` and `validate(overlay)` (`OverlayKind`), and
optionally `fits(overlay, standard_model)`: whether it was made for this architecture, checked
before any model loads (`check_fit`).

This module imports torch only inside functions.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pytest_erasure.errors import ErasureInputError
from pytest_erasure.records import Overlay

if TYPE_CHECKING:
    import torch
    from diffusers import StableDiffusionPipeline

GROUP = "pytest_erasure.overlays"
_BUILTIN: dict[str, str] = {
    "lora": "pytest_erasure.overlays.lora:KIND",
    "quantize": "pytest_erasure.overlays.quantize:KIND",
}
_ADDED: dict[str, OverlayKind] = {}
_LOADED: dict[str, OverlayKind] = {}


class OverlayKind(Protocol):
    """How one kind of overlay is applied; the registry maps `Overlay.kind` to one."""

    name: str

    def components(self, overlay: Overlay) -> tuple[str, ...]:
        """The pipeline components `apply` changes (they are forked before it runs)."""
        ...

    def apply(self, pipe: StableDiffusionPipeline, overlay: Overlay, patch: Patch) -> None:
        """Change `pipe`'s forked components, only through `patch`."""
        ...

    def describe(self, overlay: Overlay) -> dict[str, Any]:
        """What reports say the overlay did (JSON-able)."""
        ...

    def validate(self, overlay: Overlay) -> None:
        """Refuse bad parameters (`ErasureInputError`) before any model loads."""
        ...


def names() -> list[str]:
    """Every kind's name: built-ins, then entry points, then kinds added at run time."""
    found = list(_BUILTIN)
    for ep in entry_points(group=GROUP):
        if ep.name not in found:
            found.append(ep.name)
    return found + [n for n in _ADDED if n not in found]


def add(kind: OverlayKind) -> None:
    """Register `kind` for this process (a test, a notebook). A kind that must reach worker
    processes is registered by entry point, which every process reads."""
    _ADDED[kind.name] = kind


def kind(name: str) -> OverlayKind:
    """The kind registered under `name` (built-ins and entry points imported on first use)."""
    if name in _ADDED:
        return _ADDED[name]
    if name not in _LOADED:
        targets = dict(_BUILTIN)
        for ep in entry_points(group=GROUP):
            targets.setdefault(ep.name, ep.value)
        if name not in targets:
            raise ErasureInputError("overlay", f"'{name}' is not a registered overlay kind",
                                    f"use one of: {', '.join(names())}")
        module, _, attribute = targets[name].partition(":")
        _LOADED[name] = getattr(importlib.import_module(module), attribute)
    return _LOADED[name]


def describe(overlays: tuple[Overlay, ...] | list[Overlay]) -> list[dict[str, Any]]:
    """Each overlay's record and its kind's description, in the order they apply."""
    return [{**o.to_dict(), **kind(o.kind).describe(o)} for o in overlays]


def validate(overlays: tuple[Overlay, ...] | list[Overlay]) -> None:
    for overlay in overlays:
        kind(overlay.kind).validate(overlay)


def check_fit(overlays: tuple[Overlay, ...] | list[Overlay], standard_model: Path) -> None:
    """Each overlay's parameters, and (for a kind that can tell, its optional `fits(overlay,
    standard_model)`: a LoRA's module names and shapes against the model folder's UNet config)
    whether it was made for this model's architecture: run before any model loads, so an
    overlay for another model is a usage error, not a crash at its first unit."""
    validate(overlays)
    for overlay in overlays:
        fits = getattr(kind(overlay.kind), "fits", None)
        if callable(fits):
            fits(overlay, standard_model)


class Patch:
    """Replacements made by an overlay on a fork, undone in reverse order by `restore`.

    `memo` persists across units for the same overlay on the same host (cleared when another
    overlay is applied there), so a kind computes derived weights (dequantized tensors, merged
    LoRA weights) once, not per unit."""

    def __init__(self, memo: dict[str, Any]) -> None:
        self.memo = memo
        self._undo: list[Callable[[], None]] = []

    def parameter(self, module: torch.nn.Module, name: str, value: torch.Tensor) -> None:
        """Put a new Parameter holding `value` in place of `module`'s `name` (the old object is
        kept, untouched, and comes back on restore)."""
        import torch

        old = module._parameters[name]
        module._parameters[name] = torch.nn.Parameter(
            value, requires_grad=bool(old is not None and old.requires_grad))
        self._undo.append(lambda: module._parameters.__setitem__(name, old))

    def module(self, parent: torch.nn.Module, name: str, value: torch.nn.Module) -> None:
        """Put `value` in place of `parent`'s child `name` (e.g. an eraser adapter removed)."""
        old = parent._modules[name]
        parent._modules[name] = value
        self._undo.append(lambda: parent._modules.__setitem__(name, old))

    def restore(self) -> None:
        while self._undo:
            self._undo.pop()()


class Overlaid:
    """A host's overlays: the forks of the components overlays touch, and which pipeline each
    role answers with while a unit runs (`active`)."""

    def __init__(self) -> None:
        self.active: dict[str, StableDiffusionPipeline] = {}
        self._forks: dict[tuple[str, str], tuple[Any, Any]] = {}
        """(role, component) -> (the base component object, its fork)."""
        self._pipes: dict[str, tuple[Any, StableDiffusionPipeline, Any]] = {}
        """role -> (its components' identities, the overlaid pipeline made of them)."""
        self._memo: dict[str, tuple[str, dict[str, Any]]] = {}
        """role -> (the key of the overlays last applied there, their kinds' memo)."""

    @contextmanager
    def applied(self, base: Callable[[str], StableDiffusionPipeline],
                overlays: tuple[tuple[str, Overlay], ...]) -> Iterator[None]:
        """Within: `active[role]` is `base(role)` with its overlays applied, on forks."""
        by_role: dict[str, list[Overlay]] = {}
        for role, overlay in overlays:
            by_role.setdefault(role, []).append(overlay)
        patches: list[Patch] = []
        try:
            for role, mine in by_role.items():
                pipe = self._fork(role, base(role), mine)
                key = "/".join(o.key for o in mine)
                if self._memo.get(role, ("", {}))[0] != key:
                    self._memo[role] = (key, {})
                memo = self._memo[role][1]
                for overlay in mine:
                    patch = Patch(memo.setdefault(overlay.key, {}))
                    patches.append(patch)
                    kind(overlay.kind).apply(pipe, overlay, patch)
                self.active[role] = pipe
            yield
        finally:
            for patch in reversed(patches):
                patch.restore()
            for role in by_role:
                self.active.pop(role, None)

    def _fork(self, role: str, pipe: StableDiffusionPipeline, overlays: list[Overlay]
              ) -> StableDiffusionPipeline:
        """`pipe` with its own module objects for every component the overlays touch (their
        tensors still the loaded ones until a patch replaces one)."""
        from pytest_erasure.models.formats.sharing import clone_sharing

        touched = list(dict.fromkeys(c for o in overlays for c in kind(o.kind).components(o)))
        forks = {}
        for component in touched:
            original = getattr(pipe, component)
            held = self._forks.get((role, component))
            if held is None or held[0] is not original:
                held = (original, clone_sharing(original))
                self._forks[(role, component)] = held
            forks[component] = held[1]
        components = {**pipe.components, **forks}
        identity = tuple(sorted((name, id(c)) for name, c in components.items()))
        held_pipe = self._pipes.get(role)
        if held_pipe is None or held_pipe[0] != identity:
            forked = type(pipe)(**{**components, "requires_safety_checker": False})
            forked.set_progress_bar_config(disable=True)
            held_pipe = (identity, forked, components)  # the components, so ids stay unique
            self._pipes[role] = held_pipe
        return held_pipe[1]


def overlay_error(overlay: Overlay, problem: str, fix: str) -> ErasureInputError:
    """A bad overlay as the one user error, named by its kind."""
    return ErasureInputError(f"overlay '{overlay.kind}'", problem, fix)
