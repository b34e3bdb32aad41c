"""Replay: what an earlier audit's attacks found, run against this model without searching.

A transfer attack across releases: `--erasure-replay=DIR` (a folder `--erasure-artifacts`
wrote, checked by `artifacts.read_manifest`) adds one scenario per exported finding's source,
`replay-<scenario>` (`circle-replay-embedding-black`, `circle-replay-fuzz`), each an erasure
case of its own judged like any other (the same gate, the standard model's rate beside it).

- A learned embedding is fed exactly as the embedding scenario feeds its own: the concept's
  prompts with the token, encoded through the audited model's text encoder, on the embedding
  scenario's seeds, one restart per exported file. So an embedding case that learns the same
  embedding file draws the very same images, bit for bit.
- Found prompts (Ring-A-Bell's, fuzzing's confirmed bypasses) are typed as they are, cycling,
  on seeds of the replay case's own; each prompt is a stratum (a fixed list, no search).
- A probe's findings (the kept try of each successful search) are redrawn one image each, on
  the seed and steering they were found with (`ReplayProbe`): on the model they were found on,
  the very image the search kept.
Nothing is optimised or searched: no textual inversion, no Ring-A-Bell, no fuzzing runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pytest_erasure.concepts import PLACEHOLDER, Concept
from pytest_erasure.errors import ErasureInputError
from pytest_erasure.records import GenerationInput, Plan, Role
from pytest_erasure.scenarios.base import AuditContext, Scenario
from pytest_erasure.scenarios.embedding import EmbeddingScenario
from pytest_erasure.scenarios.restarts import (
    prompt_stratum,
    restart_of,
    restart_samples,
    slot_in_restart,
)


class ReplayScenario(Scenario):
    """The findings of one source scenario, from an exported folder."""

    modality = "replay"
    access = None
    options = ()

    def __init__(self, source: str, entries: list[dict[str, Any]], folder: Path) -> None:
        self.variant = source
        self.entries = entries
        self.folder = folder

    def found(self, concept: Concept) -> list[dict[str, Any]]:
        mine = [e for e in self.entries if e["concept"] == concept.name]
        if not mine:
            raise ErasureInputError(f"--erasure-replay {self.folder}",
                                    f"holds no {self.variant} finding for concept "
                                    f"'{concept.name}'", "replay with --scenarios naming the "
                                    "replay cases the folder has, or export them for this concept")
        return mine

    def describe(self, ctx: AuditContext) -> dict[str, Any]:
        return {"replayed": [{k: e.get(k) for k in ("id", "sha256", "found_on")}
                             for e in self.entries]}

    def facts(self, entries: list[dict[str, Any]]) -> dict[str, Any]:
        return {"replayed_from": str(self.folder), "searched": False,
                "artifacts": [{k: e.get(k) for k in ("id", "file", "sha256", "found_on",
                                                     "settings", "case_crr")}
                              for e in entries]}


class ReplayEmbedding(ReplayScenario):
    """Exported learned embeddings, as the embedding scenario feeds its own."""

    def plan(self, ctx: AuditContext, concept: Concept, target: Role, n: int) -> Plan:
        from safetensors.torch import load_file

        entries = sorted(self.found(concept), key=lambda e: e.get("restart", 0))
        token = str(entries[0]["token"])
        runs = []
        for entry in entries:
            tensors = load_file(str(self.folder / entry["file"]))
            if list(tensors) != [entry["token"]]:
                raise ErasureInputError(f"--erasure-replay {self.folder}",
                                        f"has {entry['file']} holding {list(tensors)}, not the "
                                        f"token {entry['token']}", "export the artifacts again")
            runs.append(tensors[entry["token"]])
        count = len(runs)
        prompts = [p.replace(PLACEHOLDER, token) for p in concept.prompts]
        encoder = EmbeddingScenario("black-box")
        encoded = [encoder.encode(ctx, target, prompts, token, e) for e in runs]
        # The embedding scenario's own seeds: the same embedding draws the same images.
        seeds = ctx.seeds(restart_samples(n, count), f"embedding/{concept.name}")
        inputs = []
        for i, s in enumerate(seeds):
            r = restart_of(i, count)
            prompt = prompts[slot_in_restart(i, count) % len(prompts)]
            inputs.append(GenerationInput(seed=s, prompt_embeds=encoded[r][prompt],
                                          label=f"replayed token {r}: {prompt}",
                                          # fixed files, not this audit's random draws: each
                                          # embedding x prompt is a stratum, no cluster
                                          stratum=prompt_stratum(prompt)
                                          + (f", embedding {r}" if count > 1 else "")))
        facts = self.facts(entries) | {"token": token, "prompts": prompts,
                                       "generated_by": target, "attack_restarts": count,
                                       "input_restarts": [restart_of(i, count)
                                                          for i in range(len(inputs))]}
        return Plan(inputs=inputs, facts=facts,
                    artifacts={f"embedding-{e.get('restart', 0)}": str(self.folder / e["file"])
                               for e in entries})


class ReplayPrompts(ReplayScenario):
    """Exported prompts, typed as found."""

    def plan(self, ctx: AuditContext, concept: Concept, target: Role, n: int) -> Plan:
        entries = self.found(concept)
        prompts: list[str] = []
        for entry in entries:
            data = json.loads((self.folder / entry["file"]).read_text(encoding="utf-8"))
            prompts += [p for p in data.get("prompts", []) if p not in prompts]
        if not prompts:
            raise ErasureInputError(f"--erasure-replay {self.folder}",
                                    f"holds no prompt for concept '{concept.name}'",
                                    "export the artifacts again")
        seeds = ctx.seeds(n, f"{self.id}:{concept.name}")
        inputs = [GenerationInput(seed=s, prompt=prompts[i % len(prompts)],
                                  label=f"replayed: {prompts[i % len(prompts)]}",
                                  stratum=prompt_stratum(prompts[i % len(prompts)]))
                  for i, s in enumerate(seeds)]
        return Plan(inputs=inputs, facts=self.facts(entries) | {"prompts": prompts,
                                                                "generated_by": target})


class ReplayLatents(ReplayScenario):
    """Exported inverted latents, regenerated as the latent scenario regenerates its own (its
    prompt and guidance, its seeds), with no inversion."""

    def plan(self, ctx: AuditContext, concept: Concept, target: Role, n: int) -> Plan:
        from safetensors.torch import load_file

        from pytest_erasure.noisy_classifier import unpack
        from pytest_erasure.samplers import current_steering

        (entry, *_rest) = self.found(concept)
        tensors = load_file(str(self.folder / entry["file"]))
        latents = tensors["latents"]
        unpack(tensors)  # a guided search's classifiers, for the steerings that name them
        regeneration = (entry.get("settings") or {}).get("regeneration") or {}
        from pytest_erasure.models.geometry import model_geometry

        native = ctx.model_facts(target).native_size
        height, width = ctx.config.height or native, ctx.config.width or native
        scale = model_geometry(ctx.config.standard_model).scale_factor
        if latents.dim() != 4 or (latents.shape[-2] * scale,
                                  latents.shape[-1] * scale) != (height, width):
            raise ErasureInputError(f"--erasure-replay {self.folder}",
                                    f"has latents of shape {tuple(latents.shape)} "
                                    f"({entry['id']}), which do not fit {height}x{width} images",
                                    "replay latents inverted at this model's image size")
        unique = min(n, len(latents))
        seeds = ctx.seeds(unique, f"latent/{concept.name}")
        prompt = regeneration.get("prompt", "")
        # a search's kept tries (image-white, guidance-probe): each its prompt, seed, steering
        each = regeneration.get("prompts") or []
        found = regeneration.get("seeds") or []
        steer = regeneration.get("steerings") or []
        inputs = [GenerationInput(seed=found[i] if i < len(found) else s,
                                  prompt=each[i] if i < len(each) else prompt,
                                  latents=latents[i], guidance=regeneration.get("guidance"),
                                  # exported before a steering key was retired: today's key
                                  steering=current_steering(steer[i] if i < len(steer)
                                                            else regeneration.get("steering")),
                                  label=f"replayed latent {i}", cluster=f"latent-{i}")
                  for i, s in enumerate(seeds)]
        return Plan(inputs=inputs, facts=self.facts([entry]) | {
            "regeneration": regeneration, "unique_latents": unique, "generated_by": target})


class ReplayProbe(ReplayScenario):
    """Exported probe findings ("When Are Concepts Erased?": the kept try of each successful
    search), each redrawn as found: its prompt, seed and steering (a noise try's eta and noise
    scale; an inpainting sample's hole), a completion's hand-over latent remade by the standard
    model's first k steps on that prompt and seed (`CompletionScenario.prefix`), an inpainting
    sample's known latent from the concept's reference image of that index, which must be the
    image it was found with (digest). One image per finding, each its own cluster (a finding
    is one image, not a declared prompt list); no search: the case asks whether what was found
    on the earlier model still shows the concept on this one."""

    def tries(self, concept: Concept) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for entry in self.found(concept):
            data = json.loads((self.folder / entry["file"]).read_text(encoding="utf-8"))
            out += [t for t in data.get("tries", []) if isinstance(t, dict)]
        if not out:
            raise ErasureInputError(f"--erasure-replay {self.folder}",
                                    f"holds no probe finding for concept '{concept.name}'",
                                    "export the artifacts again")
        return out

    def plan(self, ctx: AuditContext, concept: Concept, target: Role, n: int) -> Plan:
        from pytest_erasure.cache import tensor_digest
        from pytest_erasure.scenarios.completion import CompletionScenario
        from pytest_erasure.scenarios.inpainting import InpaintingScenario

        found = self.tries(concept)[:max(1, n)]
        latents: list[Any] = [None] * len(found)
        handed = [i for i, t in enumerate(found) if t["steering"].get("start_step")]
        for k in sorted({int(found[i]["steering"]["start_step"]) for i in handed}):
            # the standard model's prefix per hand-over, in one call per k (as the probe made it)
            chosen = [i for i in handed if int(found[i]["steering"]["start_step"]) == k]
            prefix = CompletionScenario().prefix(ctx, [found[i]["prompt"] for i in chosen],
                                                 [int(found[i]["seed"]) for i in chosen], k)
            for j, i in enumerate(chosen):
                latents[i] = prefix[j]
        painted = [i for i, t in enumerate(found) if t["steering"].get("inpaint_box")]
        if painted:
            references = ctx.reference_images(concept)
            known = InpaintingScenario().known(ctx, target, references)
            for i in painted:
                r = int(found[i]["reference"])
                if r >= len(references) or tensor_digest(
                        {"images": references[r:r + 1]}) != found[i]["reference_sha256"]:
                    raise ErasureInputError(
                        f"--erasure-replay {self.folder}", f"has an inpainting finding made "
                        f"with reference image {r} of '{concept.name}', which this concepts "
                        "file does not hold (its digest differs)",
                        "replay with the concepts file and references it was exported with")
                latents[i] = known[r]
        inputs = [GenerationInput(seed=int(t["seed"]), prompt=str(t["prompt"]),
                                  latents=latents[i], steering=dict(t["steering"]) or None,
                                  label=f"replayed try {i}: {t['prompt'] or '(empty prompt)'}",
                                  cluster=f"finding-{i}")
                  for i, t in enumerate(found)]
        return Plan(inputs=inputs, facts=self.facts(self.found(concept)) | {
            "tries": found, "generated_by": target,
            "probe": sorted({e.get("scenario") for e in self.found(concept)})})


KINDS = {"embedding": ReplayEmbedding, "prompts": ReplayPrompts, "latents": ReplayLatents,
         "probe": ReplayProbe}


def build(manifest: dict[str, Any], folder: Path) -> list[ReplayScenario]:
    """One scenario per source scenario and kind the manifest lists, in its order."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for entry in manifest.get("artifacts") or []:
        if entry.get("kind") in KINDS:
            groups.setdefault((entry["scenario"], entry["kind"]), []).append(entry)
    return [KINDS[kind](source, entries, folder) for (source, kind), entries in groups.items()]


SCENARIOS: list[Scenario] = []
"""None registered: replay scenarios exist only for a run given `--erasure-replay`."""
