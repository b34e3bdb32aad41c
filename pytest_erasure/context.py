"""What a scenario may ask for: models, seeds, references, images, verdicts (`AuditContext`).

`Context` implements `scenarios.base.AuditContext`. It loads models, detectors and reference
images once, lazily, on first use (collection alone never imports torch), and serves every image
and every detector verdict through the content-addressed cache: images by (model fingerprint,
sampling settings, defense settings, input), verdicts by (detector description, label, the
images' bytes). `Cache.get_or_compute_many` takes per-key file locks, so two audits sharing one
cache never compute an entry twice at once; an in-memory memo serves repeats within a run even
with the cache off.

What the models and detectors are (fingerprints, provenance, descriptions) is known apart from
the models themselves (`models/identity.py`): a rerun whose results are all cached reads both
from the cache and never builds a pipeline or a detector.

Every heavy step (generating, judging, and the attacks' training, inversion and search) is a
unit (`executors/units.py`) that the context hands to the executor `--erasure-executor` names
(`run`): in this process on the context's own models (`local`, the context is then the units'
host), or where the executor's workers hold models of their own. Caching stays here: a unit is
only sent for what the cache does not hold.

The context runs no case and holds no result: `checks.py` runs cases on it, `session.py` holds
their results.
"""

from __future__ import annotations

import contextvars
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TypeVar

from pytest_erasure.cache import Cache, digest, tensor_digest
from pytest_erasure.concepts import Concept, ConceptSet
from pytest_erasure.config import AuditConfig
from pytest_erasure.detectors.base import Detection, Detector, DetectorSpec, build_detector
from pytest_erasure.executors import DEFAULT, Executor, concurrency, make
from pytest_erasure.executors.units import Unit, detect_images, generate_images, model_identity
from pytest_erasure.memory import BatchSizes
from pytest_erasure.overlays import Overlaid
from pytest_erasure.records import GenerationInput, Overlay, Role
from pytest_erasure.references import load_reference_images
from pytest_erasure.scenarios.base import Scenario, registry

if TYPE_CHECKING:
    import torch
    from diffusers import StableDiffusionPipeline

    from pytest_erasure.defenses import Defense
    from pytest_erasure.models.handle import ModelHandle
    from pytest_erasure.models.identity import ModelFacts, ModelIdentity
    from pytest_erasure.models.loading import LoadedModels

T = TypeVar("T")
R = TypeVar("R")

MEMO_BYTES = 512 * 2**20
"""Images kept in memory for reuse within a run (a latent plan's check, then its case's
measurement; the base rate of every case), so a run without the disk cache generates nothing
twice either. Least recently used images go first."""


class Context:
    """Implements `scenarios.base.AuditContext` over two models (loaded lazily, or given)."""

    def __init__(self, config: AuditConfig, concepts: ConceptSet,
                 models: LoadedModels | None = None,
                 scenarios: dict[str, Scenario] | None = None) -> None:
        self.config = config
        self.concepts = concepts
        self.scenarios = scenarios if scenarios is not None else registry()
        self.cache = Cache(config.cache_dir)
        self._given = models is not None
        """Models given in memory (tests, notebooks) have no files a unit could name them by."""
        self._models = self._ready(models) if models is not None else None
        self._executor: Executor | None = None
        self._identity: ModelIdentity | None = None
        self._detectors: dict[str, Detector] = {}
        self._descriptions: dict[str, dict[str, Any]] = {}
        self._references: dict[str, torch.Tensor] = {}
        self._defense: Defense | None = None
        self._memo: OrderedDict[str, tuple[torch.Tensor, bool]] = OrderedDict()
        self._memo_bytes = 0
        self.generated = 0
        """Images this context denoised (not found in the memo or the cache)."""
        self.batch_sizes = BatchSizes()
        """Batch sizes halved after running out of GPU memory (`memory.py`), kept for the
        run so each out-of-memory is paid once."""
        self.console: Any = None
        """A rich Console for progress bars; None (workers, CI logs) shows none."""
        self.uncaptured: Callable[[], AbstractContextManager[Any]] = nullcontext
        self._overlaid = Overlaid()
        """The overlays applied while a unit runs here (the local executor's host side)."""
        self._lock = threading.RLock()
        """Held while the models, their identity or the memo change: `map` runs scenario code
        from several threads when the executor runs units side by side."""
        self._bar: Any = None
        """The one progress display while `map` runs work side by side (rich allows one live
        display at a time): each unit's bar is a task on it."""

    def show_progress(self, config: Any) -> None:
        """Progress bars on stderr, drawn past pytest's output capture (`config`: pytest's)."""
        from rich.console import Console

        self.console = Console(stderr=True)
        capman = config.pluginmanager.getplugin("capturemanager")
        if capman is not None:
            self.uncaptured = capman.global_and_fixture_disabled

    @property
    def identity_known(self) -> bool:
        """Whether the models' identity is at hand without loading anything more."""
        return self._identity is not None or self._models is not None

    def detector_descriptions(self) -> dict[str, dict[str, Any]]:
        """{concept: its detector's description} for every detector this run described."""
        out = {}
        for concept in self.concepts.concepts.values():
            key = detector_share_key(concept)
            if key in self._descriptions:
                out[concept.name] = self._descriptions[key]
        return out

    @property
    def models(self) -> LoadedModels:
        """Both pipelines, loaded on first use. When the identity came from the cache, the
        load must agree with it: every cache key of this run was made from those fingerprints."""
        with self._lock:
            return self._load()

    def _load(self) -> LoadedModels:
        if self._models is None:
            from pytest_erasure.models.loading import load_models

            models = load_models(
                self.config.standard_model, self.config.erased_model,
                erased_format=self.config.erased_format, device=self.config.device,
                dtype=self.config.dtype, lora_multiplier=self.config.lora_multiplier,
                allow_hub=self.config.allow_hub)
            self._models = self._ready(models)
            self._check_identity(models)
        return self._models

    def _ready(self, models: LoadedModels) -> LoadedModels:
        """`models.handle.prepare`: the sampler and kernels the config asks for, as a worker
        prepares its own load."""
        from pytest_erasure.models.handle import prepare

        return prepare(models, self.config.sampler, self.config.invariant_layers)

    # -- units and where they run --------------------------------------------------------------

    @property
    def executor(self) -> Executor:
        """The executor `--erasure-executor` names, made on first use (workers start then)."""
        with self._lock:
            if self._executor is None:
                self._executor = make(getattr(self.config, "executor", DEFAULT), self.config,
                                      self)
            return self._executor

    def close(self) -> None:
        """Release the executor's workers (a later unit starts them again)."""
        if self._executor is not None:
            self._executor.close()
            self._executor = None

    @property
    def handle(self) -> ModelHandle | None:
        """The models by their files and loading settings (None when given in memory)."""
        if self._given:
            return None
        from pytest_erasure.models.handle import ModelHandle

        return ModelHandle.of(self.config, self._identity.fingerprints
                              if self._identity is not None else None)

    def unit(self, fn: Callable[..., Any], *, title: str = "", total: int = 0,
             needs_models: bool = True,
             overlays: tuple[tuple[Role, Overlay], ...] = (), **args: Any) -> Unit:
        """A unit of `fn` on this audit's models (by their files), with `args`; `overlays`
        ((role, overlay), ...) are run on top of those models for the unit."""
        if overlays:
            from pytest_erasure.overlays import validate

            validate([o for _, o in overlays])
        return Unit(fn=fn, args=args, models=self.handle if needs_models else None,
                    needs_models=needs_models, overlays=tuple(overlays), title=title,
                    total=total)

    def run(self, unit: Unit) -> Any:
        """The unit's result, from the executor; its progress on a bar when it has a length."""
        if not unit.total:
            return self.executor.run(unit, _ignore)
        with self.progress(unit.title, unit.total) as advance:
            return self.executor.run(unit, advance)

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
        """[fn(item) for item in items], run side by side when the executor runs units side by
        side (`executors.concurrency`: Ray's actors), in order otherwise.

        Why threads in the driver: the items are independent pieces of one case (an attack's
        restarts, each from its own seed and cache entry; the erased and the standard model's
        plans) whose heavy steps are units; a thread per item only waits for its units, which
        the executor runs on its own workers, while caching, seeds and facts stay in this
        process as with one item at a time. Results come back in the items' order, and the
        first failure is raised once every item has ended. Nothing is run side by side with
        `local` or `process` (their one set of models would be shared by two units)."""
        todo = list(items)
        width = min(len(todo), concurrency(self.config))
        if width <= 1:
            return [fn(item) for item in todo]
        with self._shared_bar(), ThreadPoolExecutor(width, "erasure-map") as pool:
            # each item in a copy of this context: the OOM recording (`memory.recording`)
            # is a context variable, and the copies share its one record
            futures = [pool.submit(contextvars.copy_context().run, fn, item) for item in todo]
            return [future.result() for future in futures]

    @contextmanager
    def _shared_bar(self) -> Iterator[None]:
        """The one live progress display, opened here unless one is open already."""
        if self.console is None or self._bar is not None:
            yield
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

        with self.uncaptured(), Progress(
            "[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), console=self.console, transient=True,
        ) as bar:
            self._bar = bar
            try:
                yield
            finally:
                self._bar = None

    def attacked_through(self) -> Defense | None:
        from pytest_erasure.defenses import attacked_through

        return attacked_through(self.config, self.defense)

    def defense_surrogate(self, name: str, concept: Concept, config: AuditConfig, role: Role,
                          seed: int) -> Any:
        """Host side of the local executor: the enabled defense's surrogate on this context."""
        defense = self.defense
        assert defense is not None and defense.name == name
        return defense.surrogate(self, concept, role, seed)  # type: ignore[attr-defined]

    def detector_for(self, spec: DetectorSpec, device: str) -> Detector:
        """Host side of the local executor: the run's one detector for `spec`."""
        key = _spec_key(spec)
        if key not in self._detectors:
            self._detectors[key] = build_detector(spec, device)
        return self._detectors[key]

    def defense_callbacks(self, name: str, concept: Concept, config: AuditConfig
                          ) -> Callable[[list[GenerationInput]], Any]:
        """Host side of the local executor: the enabled defense's factory on this context."""
        defense = self.defense
        assert defense is not None and defense.name == name
        return defense.callback_factory(self, concept)

    @property
    def identity(self) -> ModelIdentity:
        """Fingerprints, provenance and facts of both models: from the cache when their files
        are unchanged since a successful load, else from loading them (and stored)."""
        with self._lock:
            return self._identify()

    def _identify(self) -> ModelIdentity:
        if self._identity is None:
            from pytest_erasure.models.identity import ModelIdentity, model_key

            if self._models is not None:  # given in memory: nothing on disk to key a record by
                self._identity = ModelIdentity.of(self._models)
            elif (stored := self.cache.read_json("model-identity", model_key(self.config))):
                self._identity = ModelIdentity.from_dict(stored)
            elif getattr(self.config, "executor", DEFAULT) == DEFAULT:
                _ = self.models  # loading records the identity
            else:  # the executor's worker loads the models and says who they are
                loaded = ModelIdentity.from_dict(self.run(self.unit(model_identity)))
                self.cache.write_json("model-identity", model_key(self.config), loaded.to_dict())
                self._identity = loaded
        assert self._identity is not None
        return self._identity

    def _check_identity(self, models: LoadedModels) -> None:
        from pytest_erasure.models.identity import ModelIdentity, model_key

        loaded, recorded = ModelIdentity.of(models), self._identity
        self._identity = loaded
        if recorded is None or loaded.fingerprints != recorded.fingerprints:
            self.cache.write_json("model-identity", model_key(self.config), loaded.to_dict())
        if recorded is not None and loaded.fingerprints != recorded.fingerprints:
            # Files that stat the same but hash otherwise: the record is replaced, and the case
            # that found out fails rather than store results under the wrong fingerprint.
            raise RuntimeError("the models' files changed without changing their size, times "
                               "or inode; the cached identity record was replaced: rerun")

    def pipeline(self, role: Role) -> StableDiffusionPipeline:
        if role in self._overlaid.active:
            return self._overlaid.active[role]
        return self.models.standard if role == "standard" else self.models.erased

    def overlaid(self, overlays: tuple[tuple[Role, Overlay], ...]
                 ) -> AbstractContextManager[None]:
        """Host side of the local executor: `pipeline(role)` overlaid while a unit runs."""
        return self._overlaid.applied(
            lambda role: self.models.standard if role == "standard" else self.models.erased,
            overlays)

    def describe_overlays(self, overlays: tuple[Overlay, ...]) -> list[dict[str, Any]]:
        """What reports record of a plan's overlays (`overlays.describe`)."""
        from pytest_erasure.overlays import describe

        return describe(overlays)

    def fingerprint(self, role: Role) -> str:
        return self.identity.fingerprints[role]

    def model_facts(self, role: Role) -> ModelFacts:
        return self.identity.facts[role]

    def option(self, name: str) -> Any:
        if name in self.config.scenario_options:
            return self.config.scenario_options[name]
        for scenario in self.scenarios.values():
            for option in scenario.options:
                if option.name == name:
                    return option.default
        raise KeyError(f"no scenario declares the option '{name}'")

    def seeds(self, n: int, salt: str = "") -> list[int]:
        """Seeds from (--seed, salt, i) alone: the same sample gets the same seed on every
        worker, in every batch size, and on both models (paired comparisons)."""
        return [int(hashlib.sha256(f"{self.config.seed}/{salt}/{i}".encode()).hexdigest()[:8], 16)
                for i in range(n)]

    def size(self) -> tuple[int, int]:
        native = self.model_facts("standard").native_size
        return (self.config.height or native, self.config.width or native)

    def reference_images(self, concept: Concept) -> torch.Tensor:
        with self._lock:
            if concept.name not in self._references:
                self._references[concept.name] = load_reference_images(concept, self.size())
            return self._references[concept.name]

    @contextmanager
    def progress(self, description: str, total: int) -> Iterator[Callable[[int], None]]:
        """A bar row for `description` while within; rows of units side by side (`map`) or
        nested (a search's units) share one display."""
        if self.console is None:
            yield lambda n: None
            return
        with self._shared_bar():
            bar = self._bar
            task = bar.add_task(description, total=total)
            try:
                yield lambda n: bar.advance(task, n)
            finally:
                bar.remove_task(task)

    def generate(self, role: Role, inputs: list[GenerationInput],
                 concept: Concept | None = None, defended: bool | None = None,
                 overlays: tuple[Overlay, ...] = ()) -> torch.Tensor:
        images, _ = self.generate_flagged(role, inputs, concept, defended, overlays)
        return images

    def generate_flagged(self, role: Role, inputs: list[GenerationInput],
                         concept: Concept | None = None, defended: bool | None = None,
                         overlays: tuple[Overlay, ...] = ()
                         ) -> tuple[torch.Tensor, list[bool]]:
        """Images and degenerate flags; each input is cached on its own, so a rerun, a larger
        --samples or an interrupted run recomputes only what is missing. `overlays` run on
        top of `role`'s model and are part of every image's key (absent from the key when
        there are none, so the keys of plain images are what they always were)."""
        import torch

        from pytest_erasure.generate import Sampling

        if defended is None:
            defended = self.config.defense is not None
        defense = self.defense if defended and role == "erased" else None
        if defense is not None and concept is None:
            raise ValueError(f"the {defense.name} defense needs the concept the audit asks about")
        height, width = self.size()
        sampling = Sampling(self.config.steps, self.config.guidance, height, width,
                            self.config.device, self.config.dtype,
                            batch_invariant=self.config.invariant_layers,
                            sampler=self.model_facts(role).scheduler_key())
        base_key: dict[str, Any] = {
            "model": self.fingerprint(role), "sampling": sampling.key(),
            "defense": None if defense is None else {
                "name": defense.name, **defense.describe(self.config, self, concept)}}
        if overlays:
            base_key["overlays"] = [o.key for o in overlays]
        # A defended run entered late (`start_step`) gets the defense's call on its entry latent
        # (`samplers.resume`) since this key field; images cached before it lacked that call.
        keys = [{**base_key, "input": _input_key(item),
                 **({"entry": "defense called on the entry latent"}
                    if defense is not None and (item.steering or {}).get("start_step") else {})}
                for item in inputs]
        names = [digest(key) for key in keys]
        found: dict[int, tuple[torch.Tensor, bool]] = {}
        with self._lock:
            for i in range(len(inputs)):
                if names[i] in self._memo:
                    self._memo.move_to_end(names[i])
                    found[i] = self._memo[names[i]]
        rest = [i for i in range(len(inputs)) if i not in found]

        def compute_missing(missing: list[int]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
            chosen = [rest[j] for j in missing]
            label = f"generate {role}{f' +{defense.name}' if defense is not None else ''}"
            # One unit per set of per-input overlays (an attack run's LoRA): a unit runs under
            # one set of overlays. Without per-input overlays this is the one unit it was.
            groups: dict[tuple[Overlay, ...], list[int]] = {}
            for i in chosen:
                groups.setdefault(inputs[i].overlays, []).append(i)
            done: dict[int, tuple[torch.Tensor, bool]] = {}
            for own, members in groups.items():
                images, flags = self.run(self.unit(
                    generate_images, title=label, total=len(members), role=role,
                    overlays=tuple((role, o) for o in (*overlays, *own)),
                    inputs=[replace(inputs[i], overlays=()) if own else inputs[i]
                            for i in members], sampling=sampling,
                    batch_size=self.config.batch_size,
                    defense=defense.name if defense is not None else None, concept=concept,
                    config=self.config if defense is not None else None))
                done.update({i: (images[j], flags[j]) for j, i in enumerate(members)})
            with self._lock:
                self.generated += len(chosen)
            return [({"image": done[i][0].clone()}, {"degenerate": done[i][1]}) for i in chosen]

        if rest:
            computed = self.cache.get_or_compute_many("image", [keys[i] for i in rest],
                                                      compute_missing)
            for i, (entry, facts) in zip(rest, computed, strict=True):
                found[i] = (entry["image"], bool(facts["degenerate"]))
        for i in range(len(inputs)):
            self._remember(names[i], found[i])
        ordered = [found[i] for i in range(len(inputs))]
        return torch.stack([o[0] for o in ordered]), [o[1] for o in ordered]

    def _remember(self, name: str, entry: tuple[torch.Tensor, bool]) -> None:
        with self._lock:
            self._keep(name, entry)

    def _keep(self, name: str, entry: tuple[torch.Tensor, bool]) -> None:
        if name in self._memo:
            self._memo.move_to_end(name)
            return
        self._memo[name] = entry
        self._memo_bytes += entry[0].numel() * entry[0].element_size()
        while len(self._memo) > 1 and self._memo_bytes > MEMO_BYTES:
            _, (image, _) = self._memo.popitem(last=False)
            self._memo_bytes -= image.numel() * image.element_size()

    def detector(self, concept: Concept) -> Detector:
        return self.detector_for(concept.detector, self.config.device)

    def detect(self, images: torch.Tensor, concept: Concept) -> Detection:
        """Verdicts are cached per batch by (detector, label, the images' bytes): a rerun judges
        nothing twice, and builds no detector when every verdict is known. Fresh or cached,
        the same normalised values come back."""
        key = {"detector": digest(self.detector_description(concept)),
               "spec": detector_share_key(concept), "label": concept.label,
               "device": self.config.device.split(":")[0], "images": image_sha256(images)}

        def judge() -> dict[str, list[Any]]:
            return self.run(self.unit(detect_images, needs_models=False, spec=concept.detector,
                                      device=self.config.device, images=images,
                                      label=concept.label))

        stored = self.cache.json("detection", key, judge)
        return Detection(present=stored["present"], score=stored["score"])

    def detector_description(self, concept: Concept) -> dict[str, Any]:
        """The detector's `describe()`, from the cache while its files are unchanged."""
        from pytest_erasure.models.identity import detector_key

        key = detector_share_key(concept)
        if key not in self._descriptions:
            files = detector_key(concept.detector, self.config.device)
            self._descriptions[key] = self.cache.json(
                "detector-identity", files, lambda: self.detector(concept).describe())
        return self._descriptions[key]

    @property
    def defense(self) -> Defense | None:
        """The enabled defense (`--<name>`), from the defense registry; None when off."""
        if self.config.defense is None:
            return None
        from pytest_erasure.defenses import registry as defenses

        if self._defense is None:
            self._defense = defenses()[self.config.defense]
        return self._defense


def detector_share_key(concept: Concept) -> str:
    """Concepts that ask for the same detector share one instance (options may hold lists)."""
    return _spec_key(concept.detector)


def _spec_key(spec: DetectorSpec) -> str:
    return digest({"name": spec.name, "path": str(spec.path), "options": spec.options})


def _ignore(n: int) -> None:
    """Progress of a unit without a bar."""


def _input_key(item: GenerationInput) -> dict[str, Any]:
    key = {
        "seed": item.seed,
        "prompt": item.prompt,
        "prompt_embeds": tensor_digest({"e": item.prompt_embeds})
        if item.prompt_embeds is not None else None,
        "latents": tensor_digest({"l": item.latents}) if item.latents is not None else None,
        "guidance": item.guidance,
    }
    if item.overlays:  # only when set: every plain input's key is what it always was
        key["overlays"] = [o.key for o in item.overlays]
    if item.steering is not None:  # absent otherwise: plain images keep the keys they had
        key["steering"] = item.steering
    return key


def image_sha256(images: torch.Tensor) -> str:
    """Digest of the judged images (uint8, sample order): two runs (batch sizes, -n, machines)
    drew the same images exactly when their digests agree, without shipping the images."""
    return tensor_digest({"images": images})


