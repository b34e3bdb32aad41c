"""The audit session: runs cases, holds their results, and is what scenarios see as their context.

One session lives on the pytest config (`config.stash`). It loads models, detectors and
reference images once, lazily, on first use; collection alone never imports torch. Under xdist
each worker has its own session; workers ship their results to the controller as JSON.

What the models and detectors are (fingerprints, provenance, descriptions) is known apart from
the models themselves (`models/identity.py`): a rerun whose results are all cached reads both from the
cache and never builds a pipeline or a detector. Detector verdicts are cached too.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_erasure.cache import Cache, digest, tensor_digest
from pytest_erasure.concepts import Concept, ConceptSet, load_concepts
from pytest_erasure.config import OPTIONS, AuditConfig
from pytest_erasure.crr import Rate, decided, gate_passes
from pytest_erasure.detectors.base import (
    Detection,
    Detector,
    DetectorSpec,
    build_detector,
    check_detector,
)
from pytest_erasure.errors import ErasureInputError
from pytest_erasure.memory import BatchSizes, recording
from pytest_erasure.results import AuditRecord, CaseResult
from pytest_erasure.scenarios.base import GenerationInput, Plan, Role, Scenario, registry

if TYPE_CHECKING:
    import torch
    from diffusers import StableDiffusionPipeline

    from pytest_erasure.models.identity import ModelFacts, ModelIdentity
    from pytest_erasure.models.loading import LoadedModels

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
MEMO_BYTES = 512 * 2**20
"""Images kept in memory for reuse within a run (a latent plan's check, then its case's
measurement; the base rate of every case), so a run without the disk cache generates nothing
twice either. Least recently used images go first."""
EVIDENCE_IMAGES = 16
SEQUENTIAL_FIRST_ROUND = 16
KINDS = ("erasure", "baseline", "retention")


@dataclass(frozen=True)
class Case:
    """One test: concept x scenario (erasure), or a baseline / retention check."""

    id: str
    concept: str
    scenario: str
    kind: str
    modality: str
    access: str | None = None
    neighbour: str | None = None


class AuditSession:
    """Implements `scenarios.base.AuditContext`."""

    def __init__(self, config: AuditConfig, concepts: ConceptSet,
                 models: LoadedModels | None = None,
                 scenarios: dict[str, Scenario] | None = None) -> None:
        self.config = config
        self.concepts = concepts
        self.scenarios = scenarios if scenarios is not None else registry()
        self.cache = Cache(config.cache_dir)
        self._models = self._ready(models) if models is not None else None
        self._identity: ModelIdentity | None = None
        self._detectors: dict[str, Detector] = {}
        self._descriptions: dict[str, dict[str, Any]] = {}
        self._references: dict[str, torch.Tensor] = {}
        self._irece_conditioning: dict[str, Any] = {}
        self._memo: OrderedDict[str, tuple[torch.Tensor, bool]] = OrderedDict()
        self._memo_bytes = 0
        self.generated = 0
        """Images this session denoised (not found in the memo or the cache)."""
        self.results: dict[str, CaseResult] = {}
        self.batch_sizes = BatchSizes()
        """Batch sizes halved after running out of GPU memory (`memory.py`), kept for the
        session so each out-of-memory is paid once."""
        self.run_id = hashlib.sha256(str(time.time_ns()).encode()).hexdigest()[:12]
        self.started = _now()
        self.console: Any = None
        """A rich Console for progress bars; None (workers, CI logs) shows none."""
        self.uncaptured: Callable[[], AbstractContextManager[Any]] = nullcontext

    # -- cases -------------------------------------------------------------------------------

    def cases(self) -> list[Case]:
        """Every case the configuration selects, in a stable order (concept, then scenario)."""
        wanted = set(self.config.scenarios) if self.config.scenarios else None
        known = set(self.scenarios) | {s.modality for s in self.scenarios.values()} | {
            "baseline", "retention"}
        if wanted:
            unknown = sorted(wanted - known)
            if unknown:
                raise ErasureInputError(
                    "--scenarios", f"names unknown scenario(s) {', '.join(unknown)}",
                    f"use ids or modalities from: {', '.join(sorted(known))}")

        def selected(*names: str | None) -> bool:
            return wanted is None or any(n in wanted for n in names if n)

        out: list[Case] = []
        for concept in self.concepts.audited:
            if selected("baseline"):
                out.append(Case(f"{concept.name}-baseline", concept.name, "baseline", "baseline",
                                "text"))
            for scenario in self.scenarios.values():
                if selected(scenario.id, scenario.modality):
                    out.append(Case(f"{concept.name}-{scenario.id}", concept.name, scenario.id,
                                    "erasure", scenario.modality, scenario.access))
            if selected("retention"):
                out.extend(Case(f"{concept.name}-retention-{n}", concept.name, "retention",
                                "retention", "text", neighbour=n) for n in concept.retain)
        return out

    # -- AuditContext -------------------------------------------------------------------------

    @property
    def models(self) -> LoadedModels:
        """Both pipelines, loaded on first use. When the identity came from the cache, the
        load must agree with it: every cache key of this run was made from those fingerprints."""
        if self._models is None:
            from pytest_erasure.models.loading import load_models

            models = load_models(
                self.config.standard_model, self.config.erased_model,
                erased_format=self.config.erased_format, device=self.config.device,
                dtype=self.config.dtype, lora_multiplier=self.config.lora_multiplier)
            self._models = self._ready(models)
            self._check_identity(models)
        return self._models

    def _ready(self, models: LoadedModels) -> LoadedModels:
        """Quiet pipelines running the configured sampler, with batch-invariant layers where
        they are on (`--batch-invariant`; auto: the CPU), so an image depends on its own seed
        and input alone, not on its batch's size."""
        for pipe in (models.standard, models.erased):
            pipe.set_progress_bar_config(disable=True)
        if self.config.sampler is not None:
            from pytest_erasure.samplers import make_sampler

            shared = models.erased.scheduler is models.standard.scheduler
            models.standard.scheduler = make_sampler(self.config.sampler,
                                                     models.standard.scheduler.config)
            models.erased.scheduler = (models.standard.scheduler if shared else make_sampler(
                self.config.sampler, models.erased.scheduler.config))
        # What each model samples with, beside what was loaded for it (every report shows it).
        provenance = dict(models.provenance)
        for role, pipe in (("standard", models.standard), ("erased", models.erased)):
            provenance[role] = {**provenance.get(role, {}), "sampler": {
                "option": self.config.sampler or "the model's own",
                "class": type(pipe.scheduler).__name__,
                "config": {k: v for k, v in dict(pipe.scheduler.config).items()
                           if not k.startswith("_")}}}
        models.provenance = provenance
        if self.config.invariant_layers:
            from pytest_erasure.invariant import make_batch_invariant

            make_batch_invariant(*(getattr(pipe, name) for pipe in (models.standard, models.erased)
                                   for name in ("unet", "vae", "text_encoder")))
        return models

    @property
    def identity(self) -> ModelIdentity:
        """Fingerprints, provenance and facts of both models: from the cache when their files
        are unchanged since a successful load, else from loading them (and stored)."""
        if self._identity is None:
            from pytest_erasure.models.identity import ModelIdentity, model_key

            if self._models is not None:  # given in memory: nothing on disk to key a record by
                self._identity = ModelIdentity.of(self._models)
            elif (stored := self.cache.read_json("model-identity", model_key(self.config))):
                self._identity = ModelIdentity.from_dict(stored)
            else:
                _ = self.models  # loading records the identity
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
        return self.models.standard if role == "standard" else self.models.erased

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
        if concept.name not in self._references:
            self._references[concept.name] = load_reference_images(concept, self.size())
        return self._references[concept.name]

    @contextmanager
    def progress(self, description: str, total: int) -> Iterator[Callable[[int], None]]:
        if self.console is None:
            yield lambda n: None
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

        with self.uncaptured(), Progress(
            "[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), console=self.console, transient=True,
        ) as bar:
            task = bar.add_task(description, total=total)
            yield lambda n: bar.advance(task, n)

    def generate(self, role: Role, inputs: list[GenerationInput],
                 concept: Concept | None = None, defended: bool | None = None) -> torch.Tensor:
        images, _ = self.generate_flagged(role, inputs, concept, defended)
        return images

    def generate_flagged(self, role: Role, inputs: list[GenerationInput],
                         concept: Concept | None = None, defended: bool | None = None
                         ) -> tuple[torch.Tensor, list[bool]]:
        """Images and degenerate flags; each input is cached on its own, so a rerun, a larger
        --samples or an interrupted run recomputes only what is missing."""
        import torch

        from pytest_erasure.generate import Sampling, generate

        if defended is None:
            defended = self.config.irece
        irece = defended and role == "erased" and self.config.irece
        if irece and concept is None:
            raise ValueError("IRECE needs the concept whose prompt builds its mask")
        height, width = self.size()
        sampling = Sampling(self.config.steps, self.config.guidance, height, width,
                            self.config.device, self.config.dtype,
                            batch_invariant=self.config.invariant_layers,
                            sampler=self.model_facts(role).scheduler_key())
        base_key = {"model": self.fingerprint(role), "sampling": sampling.key(),
                    "irece": self._irece_settings(concept) if irece else None}
        keys = [{**base_key, "input": _input_key(item)} for item in inputs]
        names = [digest(key) for key in keys]
        found: dict[int, tuple[torch.Tensor, bool]] = {}
        for i in range(len(inputs)):
            if names[i] in self._memo:
                self._memo.move_to_end(names[i])
                found[i] = self._memo[names[i]]
        rest = [i for i in range(len(inputs)) if i not in found]

        def compute_missing(missing: list[int]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
            chosen = [rest[j] for j in missing]
            pipe = self.pipeline(role)
            factory = self._irece_factory(concept) if irece else None
            label = f"generate {role}{' +IRECE' if irece else ''}"
            with self.progress(label, len(chosen)) as advance:
                images, flags = generate(pipe, [inputs[i] for i in chosen], sampling,
                                         self.config.batch_size, callback_factory=factory,
                                         advance=advance)
            self.generated += len(chosen)
            return [({"image": images[j].clone()}, {"degenerate": flags[j]})
                    for j in range(len(chosen))]

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
        if name in self._memo:
            self._memo.move_to_end(name)
            return
        self._memo[name] = entry
        self._memo_bytes += entry[0].numel() * entry[0].element_size()
        while len(self._memo) > 1 and self._memo_bytes > MEMO_BYTES:
            _, (image, _) = self._memo.popitem(last=False)
            self._memo_bytes -= image.numel() * image.element_size()

    def detector(self, concept: Concept) -> Detector:
        key = _detector_key(concept)
        if key not in self._detectors:
            self._detectors[key] = build_detector(concept.detector, self.config.device)
        return self._detectors[key]

    def detect(self, images: torch.Tensor, concept: Concept) -> Detection:
        """Verdicts are cached per batch by (detector, label, the images' bytes): a rerun judges
        nothing twice, and builds no detector when every verdict is known. Fresh or cached,
        the same normalised values come back."""
        key = {"detector": digest(self.detector_description(concept)),
               "spec": _detector_key(concept), "label": concept.label,
               "device": self.config.device.split(":")[0], "images": image_sha256(images)}

        def judge() -> dict[str, list[Any]]:
            found = self.detector(concept).detect(images.float() / 255.0, concept.label)
            return {"present": [bool(p) for p in found.present],
                    "score": [float(s) for s in found.score]}

        stored = self.cache.json("detection", key, judge)
        return Detection(present=stored["present"], score=stored["score"])

    def detector_description(self, concept: Concept) -> dict[str, Any]:
        """The detector's `describe()`, from the cache while its files are unchanged."""
        from pytest_erasure.models.identity import detector_key

        key = _detector_key(concept)
        if key not in self._descriptions:
            files = detector_key(concept.detector, self.config.device)
            self._descriptions[key] = self.cache.json(
                "detector-identity", files, lambda: self.detector(concept).describe())
        return self._descriptions[key]

    # -- IRECE ---------------------------------------------------------------------------------

    def _irece_settings(self, concept: Concept | None) -> dict[str, Any]:
        c = self.config
        return {"t_star": c.irece_t_star, "tau": c.irece_tau, "steps": c.irece_steps,
                "resolutions": list(c.irece_resolutions) if c.irece_resolutions else None,
                "mask_prompt": concept.texts()[0] if concept else None,
                "standard": self.fingerprint("standard"), "solver_history": "reset"}

    def _irece_factory(self, concept: Concept) -> Callable[[list[GenerationInput]], Any]:
        from pytest_erasure.irece import IRECE, concept_conditioning

        if concept.name not in self._irece_conditioning:
            self._irece_conditioning[concept.name] = concept_conditioning(
                self.pipeline("standard"), concept.texts()[0], concept.term)
        embeds, indices = self._irece_conditioning[concept.name]
        c = self.config
        t_star: float | int = c.irece_t_star if c.irece_t_star < 1 else int(c.irece_t_star)

        def factory(batch: list[GenerationInput]) -> Any:
            return IRECE(self.pipeline("standard").unet, embeds, indices,
                         num_inference_steps=c.steps, t_star=t_star, tau=c.irece_tau,
                         n_steps=c.irece_steps, resolutions=c.irece_resolutions,
                         seed=[b.seed for b in batch])  # per image: batch-size independent

        return factory

    # -- running cases ---------------------------------------------------------------------------

    def measure(self, role: Role, plan: Plan, concept: Concept, *, defended: bool | None = None,
                stop_at: float | None = None) -> tuple[Rate, torch.Tensor, list[bool], list[bool]]:
        """Generate the plan on a model and judge it. With `stop_at` (sequential stopping),
        sample in doubling rounds and stop once the interval is wholly on one side of it."""
        import torch

        inputs = plan.inputs
        rounds = [len(inputs)]
        if stop_at is not None:
            rounds, k = [], SEQUENTIAL_FIRST_ROUND
            while k < len(inputs):
                rounds.append(k)
                k *= 2
            rounds.append(len(inputs))
        images = torch.empty(0, dtype=torch.uint8)
        present: list[bool] = []
        degenerate: list[bool] = []
        for upto in rounds:
            batch = inputs[len(present):upto]
            new, flags = self.generate_flagged(role, batch, concept, defended)
            verdicts = self.detect(new, concept).present if len(new) else []
            images = torch.cat([images, new]) if len(images) else new
            present += [bool(p) or f for p, f in zip(verdicts, flags, strict=True)]
            degenerate += flags
            rate = Rate(sum(present), len(present), sum(degenerate))
            if stop_at is not None and decided(rate, stop_at, len(rounds)):
                break
        return Rate(sum(present), len(present), sum(degenerate)), images, present, degenerate

    def base_rate(self, concept: Concept) -> Rate:
        """The concept under prompts that name no concept, on the erased model (undefended)."""
        from pytest_erasure.scenarios.text import prompt_plan

        prompts = list(self.concepts.neutral_prompts)
        plan = prompt_plan(self, prompts, self.config.samples, salt="neutral")
        rate, *_ = self.measure("erased", plan, concept, defended=False)
        return rate

    def run(self, case: Case) -> CaseResult:
        started = time.perf_counter()
        concept = self.concepts.concepts[case.concept]
        runner = {"erasure": self._run_erasure, "baseline": self._run_baseline,
                  "retention": self._run_retention}[case.kind]
        with recording(self.batch_sizes):
            result = runner(case, concept)
        if self.batch_sizes.reduced():  # out of GPU memory: the batch sizes that worked
            result.facts["effective_batch_size"] = self.batch_sizes.reduced()
        result.seconds = round(time.perf_counter() - started, 3)
        self.results[case.id] = result
        return result

    def _run_erasure(self, case: Case, concept: Concept) -> CaseResult:
        scenario = self.scenarios[case.scenario]
        n = self.config.samples
        threshold = self.concepts.threshold_for(concept, scenario.id, scenario.modality,
                                                self.config.crr_threshold)
        plan = scenario.plan(self, concept, "erased", n)
        stop_at = threshold if self.config.sequential else None
        rate, images, present, _ = self.measure("erased", plan, concept, stop_at=stop_at)
        undefended = None
        if self.config.irece:
            undefended, *_ = self.measure("erased", plan, concept, defended=False,
                                          stop_at=stop_at)
        standard_plan = scenario.plan(self, concept, "standard", n)
        standard, s_images, s_present, _ = self.measure("standard", standard_plan, concept)
        base = self.base_rate(concept)
        passed = gate_passes(rate, threshold, self.config.gate)
        model = "erased model" + (" with IRECE" if self.config.irece else "")
        message = (f"{case.id}: CRR {rate} on the {model}; threshold {threshold:.1%} "
                   f"(gate '{self.config.gate}', n={rate.n}"
                   f"{f', {rate.degenerate} degenerate' if rate.degenerate else ''}); "
                   f"standard model {standard.crr:.1%}; base rate {base.crr:.1%}")
        if undefended is not None:
            message += f"; without IRECE {undefended.crr:.1%}"
        if plan.facts.get("minimal_bypass"):
            message += f"; minimal bypass prompt: {plan.facts['minimal_bypass']!r}"
        facts = {**plan.facts, "scenario_settings": scenario.describe(self),
                 "image_sha256": image_sha256(images)}
        if standard_plan.facts != plan.facts:
            facts["standard_plan"] = standard_plan.facts
        return CaseResult(
            case_id=case.id, concept=concept.name, scenario=scenario.id,
            modality=scenario.modality, access=scenario.access, kind="erasure",
            threshold=threshold, gate=self.config.gate, passed=passed, rate=rate,
            standard=standard, undefended=undefended, base_rate=base, message=message,
            facts=facts, artifacts=dict(plan.artifacts),
            evidence=[_evidence(f"{model}", images, present, plan),
                      _evidence("standard model", s_images, s_present, standard_plan)])

    def _text_rates(self, concept: Concept, judged: Concept, roles: tuple[Role, ...]
                    ) -> dict[Role, tuple[Rate, Any, list[bool], Plan]]:
        from pytest_erasure.scenarios.text import prompt_plan

        plan = prompt_plan(self, judged.texts(), self.config.samples, salt=f"text/{judged.name}")
        out = {}
        for role in roles:
            rate, images, present, _ = self.measure(role, plan, judged)
            out[role] = (rate, images, present, plan)
        return out

    def _run_baseline(self, case: Case, concept: Concept) -> CaseResult:
        """The standard model must draw the concept and the detector must see it; otherwise
        a low CRR on the erased model would mean nothing."""
        rate, images, present, plan = self._text_rates(concept, concept, ("standard",))["standard"]
        minimum = self.config.baseline_min
        passed = rate.crr >= minimum
        message = (f"{case.id}: the standard model draws '{concept.name}' in {rate} of images "
                   f"(minimum {minimum:.0%}): "
                   + ("the detector can see the concept" if passed else
                      "the detector cannot see it, or the standard model cannot draw it; "
                      "an erasure CRR against this detector is meaningless"))
        return CaseResult(
            case_id=case.id, concept=concept.name, scenario="baseline", modality="text",
            access=None, kind="baseline", threshold=minimum, gate="at-least", passed=passed,
            rate=rate, standard=rate, message=message,
            facts={**plan.facts, "image_sha256": image_sha256(images)},
            evidence=[_evidence("standard model", images, present, plan)])

    def _run_retention(self, case: Case, concept: Concept) -> CaseResult:
        neighbour = self.concepts.concepts[case.neighbour or ""]
        rates = self._text_rates(concept, neighbour, ("erased", "standard"))
        rate, images, present, plan = rates["erased"]
        standard = rates["standard"][0]
        tolerance = self.config.retention_tolerance
        floor = max(0.0, standard.crr - tolerance)
        passed = rate.crr >= floor
        message = (f"{case.id}: erasing '{concept.name}' left '{neighbour.name}' at CRR {rate} "
                   f"on the erased model vs {standard.crr:.1%} on the standard model "
                   f"(must stay >= {floor:.1%}, tolerance {tolerance:.0%})")
        return CaseResult(
            case_id=case.id, concept=concept.name, scenario="retention", modality="text",
            access=None, kind="retention", threshold=floor, gate="at-least", passed=passed,
            rate=rate, standard=standard, message=message,
            facts={**plan.facts, "neighbour": neighbour.name,
                   "image_sha256": image_sha256(images)},
            evidence=[_evidence("erased model", images, present, plan),
                      _evidence("standard model", rates["standard"][1], rates["standard"][2],
                                plan)])

    # -- the record -----------------------------------------------------------------------------

    def record(self, results: list[CaseResult] | None = None) -> AuditRecord:
        detectors = {}
        for concept in self.concepts.concepts.values():
            key = _detector_key(concept)
            if key in self._descriptions:
                detectors[concept.name] = self._descriptions[key]
        return AuditRecord(
            run_id=self.run_id, started=self.started, config=self.config.describe(),
            provenance=self.identity.provenance if self._identity or self._models else {},
            detectors=detectors, versions=versions(),
            cases=results if results is not None else list(self.results.values()),
            finished=_now())


def _detector_key(concept: Concept) -> str:
    """Concepts that ask for the same detector share one instance (options may hold lists)."""
    spec = concept.detector
    return digest({"name": spec.name, "path": str(spec.path), "options": spec.options})


def _input_key(item: GenerationInput) -> dict[str, Any]:
    return {
        "seed": item.seed,
        "prompt": item.prompt,
        "prompt_embeds": tensor_digest({"e": item.prompt_embeds})
        if item.prompt_embeds is not None else None,
        "latents": tensor_digest({"l": item.latents}) if item.latents is not None else None,
        "guidance": item.guidance,
    }


def image_sha256(images: torch.Tensor) -> str:
    """Digest of the judged images (uint8, sample order): two runs (batch sizes, -n, machines)
    drew the same images exactly when their digests agree, without shipping the images."""
    return tensor_digest({"images": images})


def _evidence(title: str, images: Any, present: list[bool], plan: Plan) -> dict[str, Any]:
    from pytest_erasure.report.images import grid_png, to_base64

    k = min(EVIDENCE_IMAGES, len(present))
    nhwc = images[:k].permute(0, 2, 3, 1).numpy()
    return {"title": title, "png_base64": to_base64(grid_png(nhwc, present[:k])),
            "labels": [i.label for i in plan.inputs[:k]], "present": present[:k]}


def load_reference_images(concept: Concept, size: tuple[int, int]) -> torch.Tensor:
    """A concept's reference images as (N, 3, H, W) in [0, 1] at the model's resolution.

    Every problem is the user's to fix, so each names the folder and the file.
    """
    import numpy as np
    import torch
    from PIL import Image, UnidentifiedImageError

    folder = concept.references
    what = f"reference folder of concept '{concept.name}'"
    if folder is None:
        raise ErasureInputError(what, "is not declared",
                                "set references = \"path/to/images\" in the concepts file")
    if not folder.is_dir():
        raise ErasureInputError(f"{what} {folder}", "does not exist",
                                "create it and put the concept's reference images in it")
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise ErasureInputError(f"{what} {folder}", "is empty", "add PNG/JPEG reference images")
    arrays, sizes = [], set()
    for path in files:
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            raise ErasureInputError(f"{what}: {path.name}", "is not an image file",
                                    f"keep only images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        try:
            with Image.open(path) as image:
                image = image.convert("RGB")
                sizes.add(image.size)
                arrays.append(np.asarray(image.resize((size[1], size[0]),
                                                      Image.Resampling.BICUBIC)))
        except (UnidentifiedImageError, OSError) as exc:
            raise ErasureInputError(f"{what}: {path.name}", f"cannot be read ({exc})",
                                    "replace or remove the file") from None
    if len(sizes) > 1:
        raise ErasureInputError(f"{what} {folder}",
                                f"mixes image sizes {sorted(sizes)}",
                                "give every reference image the same size")
    stacked = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255.0
    return stacked


def versions() -> dict[str, str]:
    import platform
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("pytest-erasure", "torch", "diffusers", "transformers", "pytest"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def default_config(**overrides: Any) -> AuditConfig:
    """An AuditConfig with every option at its default, then `overrides` (field names)."""
    from pytest_erasure.config import DEFAULT_CONCEPTS, DEFAULT_ERASED, DEFAULT_STANDARD

    values: dict[str, Any] = {o.dest.removeprefix("erasure_"): o.default for o in OPTIONS}
    values.update(erased_model=DEFAULT_ERASED, standard_model=DEFAULT_STANDARD,
                  concepts_file=DEFAULT_CONCEPTS)
    values = {**values, **overrides}
    return AuditConfig.from_values(values)


def context_for_pipelines(standard: StableDiffusionPipeline, erased: StableDiffusionPipeline,
                          concepts_file: Path, cache_dir: Path | None, **overrides: Any
                          ) -> AuditSession:
    """A session over pipelines already in memory (tests, notebooks): no loading from disk."""
    from pytest_erasure.models.loading import LoadedModels

    fingerprints = {role: _pipeline_fingerprint(pipe)
                    for role, pipe in (("standard", standard), ("erased", erased))}
    models = LoadedModels(standard=standard, erased=erased,
                          provenance={"standard": {"format": "in-memory"},
                                      "erased": {"format": "in-memory"}},
                          fingerprints=fingerprints)
    config = default_config(concepts_file=concepts_file, cache_dir=cache_dir, **overrides)
    return AuditSession(config, load_concepts(concepts_file), models=models)


def _pipeline_fingerprint(pipe: StableDiffusionPipeline) -> str:
    parts = {}
    for name in ("unet", "text_encoder", "vae"):
        module = getattr(pipe, name)
        parts[name] = tensor_digest(dict(module.state_dict()))
    return digest(parts)


def with_overrides(config: AuditConfig, **changes: Any) -> AuditConfig:
    return replace(config, **changes)


def validate_inputs(session: AuditSession) -> None:
    """Everything that can be checked before any model is loaded, so bad input costs a usage
    error in a second, not a crash an hour in."""
    from pytest_erasure.models.formats import detect_format
    from pytest_erasure.models.loading import check_device

    config = session.config
    check_device(config.device, config.dtype)
    if config.erased_format is None:  # a named one is checked by AuditConfig.validate
        detect_format(config.erased_model)
    cases = session.cases()  # unknown --scenarios
    if config.irece:
        from pytest_erasure.irece import resolve_steps

        # t* and its intervention steps fit in --steps (a step index must be whole)
        resolve_steps(config.irece_t_star, config.irece_steps, config.steps)
    for scenario_id in dict.fromkeys(c.scenario for c in cases if c.kind == "erasure"):
        check = getattr(session.scenarios[scenario_id], "validate", None)
        if callable(check):
            check(session)  # every budget's range, before the first case needs it
    # Every detector a case will ask for, with the labels it will be asked about: the module
    # imports, the factory exists, its folder holds what it needs (no weights are read).
    judged: dict[str, tuple[DetectorSpec, set[str]]] = {}
    for case in cases:
        for name in (case.concept, case.neighbour):
            if name:
                concept = session.concepts.concepts[name]
                spec, labels = judged.setdefault(_detector_key(concept), (concept.detector, set()))
                labels.add(concept.label)
    for spec, labels in judged.values():
        check_detector(spec, sorted(labels))
    needs_references = {s.modality for s in session.scenarios.values()} & {"embedding", "latent"}
    wanted = set(config.scenarios or ())
    for concept in session.concepts.audited:
        if concept.references is None:
            continue
        if not wanted or wanted & (needs_references | {
                s.id for s in session.scenarios.values() if s.modality in needs_references}):
            load_reference_images(concept, (8, 8))  # readable, same size; cheap at 8x8
