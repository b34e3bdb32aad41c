"""Who the models and detectors are, known without loading them.

Loading both pipelines costs seconds (importing diffusers and transformers, building every
component), and a rerun whose images are all cached needs none of it: only what loading
*reports* — the fingerprints every cache key holds, the provenance every report shows, and the
few facts plan code reads (native image size, scheduler config). So after a successful load
those are stored in the erasure cache under a key made of the stat identity of every input file
(real path, size, mtime_ns, ctime_ns, inode) and every setting loading depends on. A later run
whose files stat identically reuses them, and loads the pipelines only on a cache miss.

Why stat identity is enough: ctime changes on every write, chmod or rename, and a file replaced
by rename has a new inode, so edited or replaced weights never match an old record. The plugin's
own source files are part of the key too, because a changed loader may report differently; the
libraries' versions likewise. Detectors get the same treatment: their `describe()` (rule,
threshold, weight hashes) is stored under the stat identity of their folder and factory module,
so cached verdicts can be looked up without building the detector.

This module imports no torch: a warm run must not pay for what it does not use.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_erasure.cache import normalise
from pytest_erasure.models.formats.files import walk_files

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline

    from pytest_erasure.config import AuditConfig
    from pytest_erasure.detectors.base import DetectorSpec
    from pytest_erasure.models.loading import LoadedModels

IDENTITY_VERSION = 1
PACKAGE = Path(__file__).resolve().parents[1]  # the whole pytest_erasure package
LIBRARIES = ("torch", "diffusers", "transformers", "safetensors")


@dataclass(frozen=True)
class ModelFacts:
    """What plan code may know about a model before deciding it needs the model itself.

    The scheduler is the one the pipeline runs: `--sampler`'s when given (the context swaps
    it in before the facts are read, and the sampler is part of `model_key`)."""

    native_size: int
    scheduler_class: str
    scheduler_config: dict[str, Any]

    @property
    def num_train_timesteps(self) -> int:
        return int(self.scheduler_config["num_train_timesteps"])

    def scheduler_key(self) -> dict[str, Any]:
        """The sampler in use, as every image, inversion and reconstruction cache key names it."""
        return {"class": self.scheduler_class, "config": self.scheduler_config}

    @classmethod
    def of(cls, pipe: StableDiffusionPipeline) -> ModelFacts:
        from pytest_erasure.generate import native_size

        config = {k: v for k, v in dict(pipe.scheduler.config).items() if not k.startswith("_")}
        return cls(native_size(pipe), type(pipe.scheduler).__name__, normalise(config))


@dataclass(frozen=True)
class ModelIdentity:
    """What a successful load of both models reported, JSON-normalised so that a run that
    loaded and a run that read the record use identical values."""

    fingerprints: dict[str, str]
    provenance: dict[str, Any]
    facts: dict[str, ModelFacts]

    @classmethod
    def of(cls, models: LoadedModels) -> ModelIdentity:
        facts = {"standard": ModelFacts.of(models.standard),
                 "erased": ModelFacts.of(models.erased)}
        return cls(dict(models.fingerprints), normalise(models.provenance), facts)

    def to_dict(self) -> dict[str, Any]:
        return {"fingerprints": self.fingerprints, "provenance": self.provenance,
                "facts": {role: f.__dict__ for role, f in self.facts.items()}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelIdentity:
        return cls(data["fingerprints"], data["provenance"],
                   {role: ModelFacts(**f) for role, f in data["facts"].items()})


def pipeline_fingerprint(pipe: StableDiffusionPipeline) -> str:
    """A pipeline given in memory, fingerprinted by its weights (no files to hash)."""
    from pytest_erasure.cache import digest, tensor_digest

    parts = {}
    for name in ("unet", "text_encoder", "vae"):
        module = getattr(pipe, name)
        parts[name] = tensor_digest(dict(module.state_dict()))
    return digest(parts)


def stat_identity(paths: Iterable[Path]) -> list[list[Any]]:
    """[path, real path, size, mtime_ns, ctime_ns, inode] of every file under each path (a file
    stands for itself), sorted. A missing path is recorded as such, never skipped."""
    rows: list[list[Any]] = []
    for path in paths:
        for file in walk_files(Path(path)):
            real = os.path.realpath(file)
            try:
                st = os.stat(real)
            except OSError:
                rows.append([str(file), real, None])
                continue
            rows.append([str(file), real, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino])
    return sorted(rows, key=lambda r: r[0])


@functools.cache
def code_identity() -> dict[str, Any]:
    """The plugin's source files and the libraries' versions: what turns files into a load.
    Once per process: code that changed under a running audit is not what it runs."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return {"source": stat_identity(sorted(PACKAGE.rglob("*.py"))), "libraries": versions}


def model_key(config: AuditConfig) -> dict[str, Any]:
    """Everything `load_models` reads or is told, as a cache key. The paths as given are part
    of it as well as their files: the provenance records the path the user wrote."""
    return {
        "version": IDENTITY_VERSION,
        "standard": str(config.standard_model),
        "erased": str(config.erased_model),
        "files": stat_identity([config.standard_model, config.erased_model]),
        "erased_format": config.erased_format,
        "lora_multiplier": config.lora_multiplier,
        "sampler": config.sampler,
        "device": config.device,
        "dtype": config.dtype,
        "code": code_identity(),
    }


def detector_key(spec: DetectorSpec, device: str) -> dict[str, Any]:
    """A detector's spec, its folder's files and its factory module's source, as a cache key."""
    from pytest_erasure.detectors.base import available

    sources = _module_file(available().get(spec.name, spec.name))
    return {
        "version": IDENTITY_VERSION,
        "spec": {"name": spec.name, "path": str(spec.path), "options": spec.options},
        "files": stat_identity([spec.path] if spec.path is not None else []),
        "module": stat_identity(sources),
        "device": device,
        "code": code_identity(),
    }


def _module_file(target: str) -> list[Path]:
    """The source file of a `module:factory` target, found without importing the module (a
    target that cannot be found has none; building the detector reports it)."""
    if ":" not in target:
        return []
    try:
        module = find_spec(target.partition(":")[0])
    except (ImportError, ValueError):
        return []
    return [Path(module.origin)] if module is not None and module.origin else []
