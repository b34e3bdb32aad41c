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

    from pytest_erasure.concepts import ConceptSet
    from pytest_erasure.config import AuditConfig
    from pytest_erasure.detectors.base import DetectorSpec
    from pytest_erasure.models.loading import LoadedModels

IDENTITY_VERSION = 2
"""2: provenance carries `content` (`content_identity`), so identities cached before it
are loaded again."""
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


MODULES = ("unet", "text_encoder", "vae")
"""The weighted components, in the order their differences are counted."""


def content_identity(standard: StableDiffusionPipeline, erased: StableDiffusionPipeline,
                     standard_fingerprint: str) -> dict[str, Any]:
    """The erased model as what it computes, not as the files it came in.

    One edit is published as 14 UNet tensors, a full `.pt` state dict, a diffusers folder or a
    single file; each file fingerprint differs, yet all four load to the same pipeline. So
    this identity is made of the standard model (its fingerprint) and of every tensor of the
    loaded erased pipeline that differs from the standard one (its name and its bytes in the
    compute dtype), plus any component config, tokenizer or scheduler that differs. Cheap
    because loading shares every unchanged tensor with the standard model (`sharing`): a
    shared tensor is recognised by its storage, and only the others are compared and hashed.

    Returns {"fingerprint", "tensors_differing", "tensors_added", "tensors_total",
    "components": {component: {"differing", "added", "total"}}, "differs_in": [...]}: the
    counts every format's summary shows ("14 of 686 tensors differ from the standard model").
    """
    from pytest_erasure.cache import digest, tensor_digest

    parts: dict[str, Any] = {"standard": standard_fingerprint}
    counts: dict[str, dict[str, int]] = {}
    for name in MODULES:
        ours, theirs = getattr(standard, name), getattr(erased, name)
        mine = ours.state_dict()
        if theirs is ours:
            counts[name] = {"differing": 0, "added": 0, "total": len(mine)}
            continue
        other = theirs.state_dict()
        differing = {}
        for key, value in other.items():
            base = mine.get(key)
            if base is not None and _same_tensor(value, base):
                continue
            differing[key] = value
        removed = sorted(k for k in mine if k not in other)
        added = sum(1 for k in other if k not in mine)
        changed = len(differing) - added + len(removed)
        part: dict[str, Any] = {"tensors": {k: tensor_digest({k: v}) for k, v in differing.items()}}
        if removed:
            part["removed"] = removed
        config = _config_difference(ours, theirs)
        if config:
            part["config"] = config
        if differing or removed or config:
            parts[name] = part
        counts[name] = {"differing": changed, "added": added, "total": len(mine)}
    differs_in = []
    for name in ("tokenizer", "scheduler"):
        ours, theirs = getattr(standard, name), getattr(erased, name)
        if theirs is not ours:
            meaning = _meaning_of(name, theirs)
            if meaning != _meaning_of(name, ours):
                parts[name] = meaning
                differs_in.append(name)
    return {"fingerprint": digest(parts),
            "tensors_differing": sum(c["differing"] for c in counts.values()),
            "tensors_added": sum(c["added"] for c in counts.values()),
            "tensors_total": sum(c["total"] for c in counts.values()),
            "components": counts, "differs_in": differs_in}


def _same_tensor(value: Any, base: Any) -> bool:
    """The standard's own tensor (shared storage), or one equal to it in value and dtype."""
    import torch

    if value.shape != base.shape or value.dtype != base.dtype:
        return False
    if value.device == base.device and value.data_ptr() == base.data_ptr() \
            and value.stride() == base.stride():
        return True
    return bool(torch.equal(value, base.to(value.device)))


def _config_difference(ours: Any, theirs: Any) -> dict[str, Any]:
    """A module's class and config entries that differ from the standard one's (bookkeeping
    such as library versions aside): what the same tensors compute depends on them."""
    from pytest_erasure.models.formats.diffusers_folder import _meaning

    if type(ours) is not type(theirs):
        return {"class": type(theirs).__name__}
    if not hasattr(ours, "config"):
        return {}
    mine, other = _meaning(ours.config), _meaning(theirs.config)
    return {k: other.get(k) for k in sorted(mine.keys() | other.keys()) if mine.get(k) != other.get(k)}


def _meaning_of(name: str, component: Any) -> Any:
    from pytest_erasure.cache import normalise
    from pytest_erasure.models.formats.diffusers_folder import _meaning, tokenizer_meaning

    if name == "tokenizer":
        return normalise(tokenizer_meaning(component))
    return {"class": type(component).__name__, "config": _meaning(component.config)}


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


COMPARED_SETTINGS = ("sampler", "steps", "guidance", "height", "width", "samples", "seed",
                     "gate", "crr_threshold", "retention_tolerance", "baseline_min",
                     "attack_floor", "reconstruction_margin", "corrected", "sequential",
                     "exploratory", "inconclusive", "dtype", "invariant_layers", "defense")
"""The settings of `AuditConfig.describe()` a number depends on (where the reports go, the
cache, the device and the executor change no number's meaning: they are left out)."""


def comparability_key(config: AuditConfig, concepts: ConceptSet) -> dict[str, Any]:
    """What makes this audit's numbers comparable with another's (`report.compare` reads two of
    them): the protocol version, every concept's detector as a judge, the settings a number
    depends on, the budgets and the concepts' prompts. Known before any model or detector
    loads: the detectors' files are hashed, not loaded."""
    from pytest_erasure import PROTOCOL_VERSION
    from pytest_erasure.cache import normalise

    described = config.describe()
    settings = {name: described.get(name) for name in COMPARED_SETTINGS}
    settings["budget"] = {"profile": described["budget_profile"]["name"],
                          "options": described.get("scenario_options") or {}}
    return normalise({
        "protocol": PROTOCOL_VERSION,
        "detectors": {c.name: detector_identity(c.detector) for c in concepts.concepts.values()},
        "settings": settings,
        "concepts": {c.name: {"prompts": list(c.texts()), "label": c.label, "erased": c.erased,
                              "retain": list(c.retain), "threshold": c.threshold,
                              "thresholds": c.thresholds, "attack_floors": c.attack_floors}
                     for c in concepts.concepts.values()},
        "neutral_prompts": list(concepts.neutral_prompts),
    })


def detector_identity(spec: DetectorSpec) -> dict[str, Any]:
    """A detector as a judge: its name, options (thresholds included) and the sha256 of every
    file of its folder (by name inside it: where it lies does not matter) and, for a
    `module:factory` detector, of its factory's source."""
    from pytest_erasure.models.formats.files import sha256

    out: dict[str, Any] = {"name": spec.name, "options": spec.options}
    if spec.path is not None and Path(spec.path).exists():
        root = Path(spec.path)
        base = root if root.is_dir() else root.parent
        out["files"] = {str(f.relative_to(base)): sha256(f) for f in sorted(walk_files(root))
                        if f.is_file() and not any(p.startswith(".") for p in
                                                   f.relative_to(base).parts)}
    sources = _module_file(spec.name)
    if sources:
        out["source"] = sha256(sources[0])
    return out
