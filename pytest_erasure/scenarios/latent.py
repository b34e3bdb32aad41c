"""The latent-inversion scenarios: a real image of the concept, DDIM-inverted into the initial
latent the audited model then denoises.

`latent-white-*` inverts the concept's reference images through the audited model itself;
`latent-black-*` inverts *perturbed* copies (noise, blur, JPEG, resize: `--latent-perturbations`)
through the standard model and transfers the latents. Each is regenerated on the audited model
in two cases:

- `-null`: the empty prompt at guidance 1.0, the paper's worst case. Only the unconditional
  path runs, which a text-side erasure does not touch.
- `-prompt`: the concept's first prompt, by default also at guidance 1.0
  (`--latent-prompt-guidance`). Guidance 1 keeps the DDIM round trip exact, so the two cases
  differ only in the conditioning, and what the erased prompt does to an image that is already
  there is measured on its own. With classifier-free guidance (7.5) the trajectory leaves the
  inverted path (the reason Null-Text Inversion exists) and the case would mostly measure a
  broken inversion.

A concept without references is inverted from n images the standard model draws for its prompts
(recorded in `facts["reference_images"]`).

Samples: the first min(n, #references) references are inverted once each, one sample each.
They are not cycled to fill n: DDIM with eta 0 is deterministic, so a repeated reference would
repeat its image, and counting it twice would make the CRR interval narrower than the evidence.
The case's n is the number of distinct references (ship at least --samples of them).

Every plan reports the inversion's own reconstruction error (regenerated through the model it
was inverted with, with the inversion prompt): a failed inversion is not a successful erasure.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Literal

from pytest_erasure.concepts import PLACEHOLDER, Concept
from pytest_erasure.errors import ErasureInputError
from pytest_erasure.scenarios.base import (
    AuditContext,
    GenerationInput,
    Plan,
    Role,
    Scenario,
    ScenarioOption,
)
from pytest_erasure.scenarios.embedding import concept_images, images_digest

if TYPE_CHECKING:
    import torch

DEFAULT_PERTURBATIONS = "noise:0.05,blur:0.5,jpeg:75,resize:0.75"

LATENT_OPTIONS: tuple[ScenarioOption, ...] = (
    ScenarioOption(
        "inversion-steps", int, 0,
        "DDIM inversion steps; 0 means the same as --steps, which an exact round trip needs "
        "(shapes world: 25; SD v1.4: 50, as in Memories of Forgotten Concepts)"),
    ScenarioOption(
        "inversion-guidance", float, 1.0,
        "guidance scale during inversion (1.0: no classifier-free guidance, the standard "
        "choice for plain DDIM inversion)"),
    ScenarioOption(
        "inversion-prompt", str, "null",
        "prompt the references are inverted with: 'null' (the empty prompt; shapes world), "
        "'concept' (the concept's first prompt, as in Memories of Forgotten Concepts for "
        "SD v1.4) or any text ({concept} is replaced by the concept's term)"),
    ScenarioOption(
        "latent-prompt-guidance", float, 1.0,
        "guidance scale when the *-prompt latent cases regenerate with the concept prompt "
        "(1.0 keeps the inversion exact; the *-null cases always use 1.0)"),
    ScenarioOption(
        "latent-perturbations", str, DEFAULT_PERTURBATIONS,
        "what the black-box attacker's copies of the references went through, applied in "
        "order: comma-separated name:strength with noise:<std>, blur:<sigma px>, "
        "jpeg:<quality>, resize:<factor>; 'none' for clean copies"),
)

LATENT_CACHE_VERSION = 1
REPORTED = ("mse", "psnr", "vae_psnr", "inversion_psnr", "latent_mse", "latent_variance")
"""Reconstruction facts in every report (see `inversion.reconstruction_error`)."""


def _round(value: float) -> float:
    return float(f"{value:.5g}")


class LatentScenario(Scenario):
    modality = "latent"
    options = LATENT_OPTIONS

    def __init__(self, access: Literal["white-box", "black-box"],
                 variant: Literal["null", "prompt"]) -> None:
        self.access = access
        self.variant = variant

    # -- settings ------------------------------------------------------------------------------

    def validate(self, ctx: AuditContext) -> None:
        self._inversion_numbers(ctx)
        if self.variant == "prompt":
            self._prompt_guidance(ctx)
        self.perturbations(ctx)

    def _inversion_numbers(self, ctx: AuditContext) -> tuple[int, float]:
        steps = int(ctx.option("inversion-steps")) or int(ctx.config.steps)
        if steps < 0:
            raise ErasureInputError("--inversion-steps", f"is {steps}",
                                    "give a number of steps >= 1, or 0 for --steps")
        guidance = float(ctx.option("inversion-guidance"))
        if guidance < 0:
            raise ErasureInputError("--inversion-guidance", f"is {guidance}",
                                    "give a number >= 0 (1.0: no guidance)")
        return steps, guidance

    def inversion_settings(self, ctx: AuditContext, concept: Concept) -> dict[str, Any]:
        steps, guidance = self._inversion_numbers(ctx)
        raw = str(ctx.option("inversion-prompt"))
        if raw.strip().lower() in ("null", "none", ""):
            prompt = ""
        elif raw.strip().lower() == "concept":
            prompt = concept.texts()[0]
        else:
            prompt = raw.replace(PLACEHOLDER, concept.term)
        return {"prompt": prompt, "steps": steps, "guidance": guidance}

    def regeneration(self, ctx: AuditContext, concept: Concept) -> dict[str, Any]:
        if self.variant == "null":
            return {"prompt": "", "guidance": 1.0, "steps": int(ctx.config.steps)}
        return {"prompt": concept.texts()[0], "guidance": self._prompt_guidance(ctx),
                "steps": int(ctx.config.steps)}

    def _prompt_guidance(self, ctx: AuditContext) -> float:
        guidance = float(ctx.option("latent-prompt-guidance"))
        if guidance < 0:
            raise ErasureInputError("--latent-prompt-guidance", f"is {guidance}",
                                    "give a number >= 0 (1.0: no guidance)")
        return guidance

    def perturbations(self, ctx: AuditContext) -> list[str]:
        from pytest_erasure.inversion import parse_perturbations

        if self.access == "white-box":
            return []
        return parse_perturbations(str(ctx.option("latent-perturbations")))

    # -- computation (cached) ------------------------------------------------------------------

    def invert(self, ctx: AuditContext, role: Role, images: torch.Tensor,
               settings: dict[str, Any], label: str) -> torch.Tensor:
        from pytest_erasure.inversion import check_steps, ddim_invert

        facts = ctx.model_facts(role)
        check_steps(facts.num_train_timesteps, settings["steps"])
        key = {"version": LATENT_CACHE_VERSION, "model": ctx.fingerprint(role),
               "images": images_digest(images), "settings": settings,
               "dtype": ctx.config.dtype, "scheduler": facts.scheduler_key()}
        batch = ctx.config.batch_size

        def compute() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
            total = settings["steps"] * math.ceil(len(images) / batch)
            with ctx.progress(f"DDIM inversion {label} ({role} model)", total) as advance:
                latents = ddim_invert(ctx.pipeline(role), images, prompt=settings["prompt"],
                                      steps=settings["steps"], guidance=settings["guidance"],
                                      batch_size=batch, progress=advance)
            return {"latents": latents}, {}

        tensors, _ = ctx.cache.tensors("ddim-inversion", key, compute)
        return tensors["latents"]

    def reconstruction(self, ctx: AuditContext, role: Role, latents: torch.Tensor,
                       images: torch.Tensor, settings: dict[str, Any], label: str
                       ) -> dict[str, Any]:
        """`reconstruction_error` on `role`'s model, cached; per-image errors stay in the cache."""
        import torch

        from pytest_erasure.inversion import check_steps, reconstruction_error

        model = ctx.model_facts(role)
        check_steps(model.num_train_timesteps, settings["steps"], "--steps")
        key = {"version": LATENT_CACHE_VERSION, "model": ctx.fingerprint(role),
               "latents": images_digest(latents), "images": images_digest(images),
               "settings": settings, "dtype": ctx.config.dtype,
               "scheduler": model.scheduler_key()}
        batch = ctx.config.batch_size

        def compute() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
            total = settings["steps"] * math.ceil(len(latents) / batch)
            with ctx.progress(f"inversion check {label} ({role} model)", total) as advance:
                result = reconstruction_error(ctx.pipeline(role), latents, images, settings["prompt"],
                                              settings["steps"], settings["guidance"],
                                              batch_size=batch, progress=advance)
            per_image = torch.tensor(result.pop("per_image_mse"))
            return {"per_image_mse": per_image}, result

        tensors, facts = ctx.cache.tensors("inversion-reconstruction", key, compute)
        worst = tensors["per_image_mse"]
        summary = {k: _round(facts[k]) for k in REPORTED}
        summary["worst_image_mse"] = _round(float(worst.max())) if len(worst) else None
        summary["sampler"] = facts["sampler"]
        return summary

    # -- the plan ------------------------------------------------------------------------------

    def plan(self, ctx: AuditContext, concept: Concept, target: Role, n: int) -> Plan:
        from pytest_erasure.inversion import perturb

        inversion = self.inversion_settings(ctx, concept)
        regeneration = self.regeneration(ctx, concept)
        transforms = self.perturbations(ctx)
        role: Role = target if self.access == "white-box" else "standard"
        # Without references: n images the standard model draws for the concept's prompts.
        references, source = concept_images(ctx, concept, n)
        unique = min(n, len(references))
        references = references[:unique]
        perturbation_seed = ctx.seeds(1, f"perturbations/{concept.name}")[0]
        inverted_from = perturb(references, transforms, perturbation_seed) if transforms \
            else references
        latents = self.invert(ctx, role, inverted_from, inversion, concept.name)
        own = self.reconstruction(ctx, role, latents, inverted_from, inversion, concept.name)
        case = self.reconstruction(ctx, target, latents, references, regeneration,
                                   concept.name)
        seeds = ctx.seeds(unique, f"latent/{concept.name}")
        inputs = [GenerationInput(seed=s, prompt=regeneration["prompt"],
                                  latents=latents[i], guidance=regeneration["guidance"],
                                  label=f"inverted ref {i}")
                  for i, s in enumerate(seeds)]
        facts: dict[str, Any] = {
            "reference_images": source,
            "unique_references": unique,
            "samples": n,
            "inverted_through": role,
            "inversion": inversion,
            "regeneration": regeneration,
            "generated_by": target,
            "perturbations": transforms,
            "perturbation_seed": perturbation_seed if transforms else None,
            "reconstruction": own,
            "case_reconstruction": case,
        }
        if inversion["steps"] != regeneration["steps"]:
            facts["warning"] = (f"inverted with {inversion['steps']} DDIM steps but regenerated "
                                f"with {regeneration['steps']}: the round trip is not exact")
        return Plan(inputs=inputs, facts=facts)


SCENARIOS = [LatentScenario(access, variant)
             for access in ("white-box", "black-box") for variant in ("null", "prompt")]
