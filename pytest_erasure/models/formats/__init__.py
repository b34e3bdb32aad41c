"""Erased-model formats: what a format must provide (`Format`), which formats exist (the
registry), and which one an erased model is in (`detect_format`).

A format is one object (`FORMAT = UnetFormat()` in its module). The built-ins come first, then
every entry point of the group `pytest_erasure.formats` (name: the `--erased-format` value;
value: `module:attribute` naming the instance), so a third party adds a format without touching
this package. An entry point that reuses a built-in's name is ignored: the built-in stays what
`--erased-format unet` means for everyone.

Format modules import torch; the registry imports none of them until a format is used, because
the plugin needs only the names (for `--erased-format`'s help and validation) and must load
without torch.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from pytest_erasure.errors import ErasureInputError

GROUP = "pytest_erasure.formats"
# In the order the README documents them; a detection tie goes to the earlier one.
BUILTIN = {
    "diffusers": "pytest_erasure.models.formats.diffusers_folder:FORMAT",
    "single-file": "pytest_erasure.models.formats.single_file:FORMAT",
    "unet": "pytest_erasure.models.formats.unet:FORMAT",
    "receler": "pytest_erasure.models.formats.receler:FORMAT",
    "text-encoder": "pytest_erasure.models.formats.text_encoder:FORMAT",
    "lora": "pytest_erasure.models.formats.lora:FORMAT",
}


@runtime_checkable
class Format(Protocol):
    """One form erased models are published in.

    `detect` returns a confidence in [0, 1] (0: not this format) and the most confident format
    wins. The built-ins' levels encode the precedence published models need: 1.0 a folder that
    declares a whole pipeline (model_index.json); 0.9 a mark only one method writes (Receler's
    eraser config, kohya's `lora_` keys); 0.8 adapter-shaped keys; 0.7 a full CompVis checkpoint;
    0.6 a UNet or CLIP config or key names; 0.5 a folder judged by its one weight file. A format
    whose input the built-ins cannot read at all (their detection raised) wins with any
    confidence above 0. Detection reads content, never trusts a file name, and may raise
    `ErasureInputError` for an unreadable file.

    `load` returns the components that replace the standard pipeline's (`{"unet": module}`) and
    details for the report, which must hold `files` ({path: sha256} of every file read): the
    fingerprint that keys the cache is made from those hashes. `applies_to_standard` says the
    result depends on the standard model (an override): its fingerprint then includes the
    standard's. `options` names the loading settings `load` reads (today `lora_multiplier`);
    their values reach `load` in `options`, and are part of the fingerprint and the report.
    `describe(details)` is what the report shows of the load (details less `files`).
    """

    name: str
    applies_to_standard: bool
    options: tuple[str, ...]

    def detect(self, path: Path) -> float: ...

    def load(self, standard: Any, standard_path: Path, path: Path, options: Mapping[str, Any]
             ) -> tuple[dict[str, Any], dict[str, Any]]: ...

    def describe(self, details: dict[str, Any]) -> dict[str, Any]: ...


class BuiltinFormat:
    """What the built-in formats share: loading is their module's `load(standard,
    standard_path, path)`, named by `loader`, and the report shows what loading recorded. Each
    subclass holds its own name, detection and options (a third party may implement `Format`
    from scratch)."""

    name = ""
    applies_to_standard = True
    separable = ""
    """Non-empty for a plug-in eraser (the erased model is the standard model plus this
    separable module): what the module is, for the reports' eraser-removal statement."""
    options: tuple[str, ...] = ()
    loader: Any = None
    """staticmethod(the module's load function)."""

    def load(self, standard: Any, standard_path: Path, path: Path, options: Mapping[str, Any]
             ) -> tuple[dict[str, Any], dict[str, Any]]:
        return self.loader(standard, standard_path, path)

    def describe(self, details: dict[str, Any]) -> dict[str, Any]:
        return details


@functools.cache
def _sources() -> dict[str, str]:
    from importlib.metadata import entry_points

    found = dict(BUILTIN)
    for entry in entry_points(group=GROUP):
        found.setdefault(entry.name, entry.value)
    return found


def separable(name: Any) -> str:
    """What a plug-in eraser's format adds to the standard model (`Format.separable`, optional
    for third-party formats); empty for a format that changes weights in place, or unknown."""
    try:
        return str(getattr(get(str(name)), "separable", "") or "")
    except ErasureInputError:
        return ""


def names() -> tuple[str, ...]:
    """Every registered `--erased-format` value, without importing any format module."""
    return tuple(_sources())


def get(name: str) -> Format:
    """The registered format `name` (its module imported now), or ErasureInputError."""
    sources = _sources()
    if name not in sources:
        raise ErasureInputError("--erased-format", f"'{name}' is not a known format",
                                f"use one of: {', '.join(sources)}")
    return _load(name, sources[name])


@functools.cache
def _load(name: str, source: str) -> Format:
    module, _, attribute = source.partition(":")
    found = getattr(importlib.import_module(module), attribute)
    if not isinstance(found, Format) or found.name != name:
        raise TypeError(f"{GROUP} entry point '{name}' ({source}) is not a Format named "
                        f"'{name}' (see pytest_erasure.models.formats.Format)")
    return found


def detect_format(path: Path) -> str:
    """The erased model's format, decided by content (JSON configs, tensor key names)."""
    from pytest_erasure.models.formats.files import require_readable

    path = Path(path)
    require_readable(path, "--erased-model")
    best, confidence, refused = None, 0.0, None
    for name in names():
        try:
            found = get(name).detect(path)
        except ErasureInputError as error:  # unreadable as this format: maybe another's
            refused = refused or error
            continue
        if found > confidence:
            best, confidence = name, found
    if best is not None:
        return best
    if refused is not None:
        raise refused
    raise _undetected(path)


def _undetected(path: Path) -> ErasureInputError:
    from pytest_erasure.models.formats.files import lone_weight_file, tensor_keys

    if path.is_dir():
        lone = lone_weight_file(path)
        if lone is not None:
            detect_format(lone)  # a folder of one unknown weight file: that file's error
        return ErasureInputError(
            f"--erased-model {path}", "is a folder of no known erased-model format (no "
            "model_index.json, eraser_config.json, or UNet/CLIP config.json)",
            "give the model's own file or folder, or name its format with --erased-format")
    keys = tensor_keys(path)
    return ErasureInputError(
        f"--erased-model {path}", "holds tensors of no known erased-model format "
        f"(e.g. keys {', '.join(keys[:3])})",
        "give UNet, text-encoder, LoRA, Receler or full-checkpoint weights, or name the "
        "format with --erased-format")
