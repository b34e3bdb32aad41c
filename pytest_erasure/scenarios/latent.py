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
was inverted with, with the inversion prompt): a failed inversion is not a successful erasure;
and the case's (`case_reconstruction`: the audited model's undefended images, the very images
the case generates, so the check costs no generation of its own).

Only DDIM retraces a DDIM inversion: the other samplers integrate the same ODE with other
formulas (close, not exact) and Euler ancestral adds fresh noise at every step. Every plan says
which in `facts["inversion_exact"]` (`samplers.INVERSION_EXACT`); benchmarks/results/samplers.json
has the reconstruction each sampler reaches on the shapes world.

Under a defense (`--irece`) and the default `--erasure-threat=adaptive`, the white-box cases
are the **adaptive** attacker's (`checks.threat_model`: "white-box adaptive"): the references
are DDIM-inverted through the erased model as before, and the inverted latents then refined
through the *defended* sampler (`inversion.adaptive_invert`, `--inversion-adaptive-steps`
Adam steps): the erased model's denoising unrolled step by step with gradients, the defense
applied after each step as generation applies it, the loss the distance of the final latent to
the reference's VAE latent, averaged over the defense's randomness (a fresh re-noise draw per
step). IRECE's mask is a function of the attacker's latent; it is recomputed in every forward
and held constant in the backward pass (`defenses.irece.IreceSampling` says why and what that
gives up). Per reference the attacker keeps whichever of the inverted (transfer) and the
refined latent reaches the lower objective on held-out re-noise draws, so the case is never
weaker than the transfer attack by the attacker's own measure; `facts["adaptive"]` says which
was kept for each, and the transfer attacker's CRR on the same references (the inverted
latents generated through the defense and judged: `transfer_hits` / `transfer_n`), so the case
reports both threat models. The gate is on the adaptive attacker's latents: it is the
stronger attacker by its own objective, and the two attacks' images of one reference are not
independent samples to pool. The reconstruction the case is gated on (`facts["reconstruction"]`) is the
inversion's own, of the inverted latents (a failed inversion is still not a pass); the refined
latents' undefended round trip is `facts["case_reconstruction"]`. Under
`--erasure-threat=transfer`, or with a defense that declares no adaptive form, the latents are
only inverted (a transfer attack, which can FAIL but never PASS under the adaptive threat).
The black-box cases never see the audited model and are never refined.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pytest_erasure.budgets import MOFC, MOFC_REPO, Budget
from pytest_erasure.concepts import PLACEHOLDER, Concept
from pytest_erasure.errors import ErasureInputError
from pytest_erasure.records import GenerationInput, Plan, Role
from pytest_erasure.scenarios.base import AuditContext, Scenario, ScenarioOption
from pytest_erasure.scenarios.embedding import concept_images, images_digest, numerics
from pytest_erasure.scenarios.restarts import prompt_stratum

if TYPE_CHECKING:
    import torch

    from pytest_erasure.records import CaseResult
    from pytest_erasure.stats.power import Design

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
    ScenarioOption(
        "inversion-adaptive-steps", int, 20,
        "with a defense on and --erasure-threat=adaptive: optimisation steps that refine the "
        "white-box inverted latents through the defended sampler (0: none, the transfer "
        "attack, which cannot pass under the adaptive threat)"),
    ScenarioOption(
        "inversion-adaptive-lr", float, 0.05,
        "Adam learning rate of the adaptive inversion's refinement (latent units)"),
)

LATENT_CACHE_VERSION = 1
ADAPTIVE_EVALUATIONS = 4
"""Held-out re-noise draws on which the adaptive attacker compares its refined latent with the
inverted one (`inversion.adaptive_invert`)."""
REPORTED = ("mse", "psnr", "vae_psnr", "inversion_psnr", "latent_mse", "latent_variance")
"""Reconstruction facts in every report (see `inversion.reconstruction_error`)."""


def reference_draws(source: dict[str, Any], count: int) -> list[dict[str, str]]:
    """The cluster and stratum (`design`) of each of the first `count` images the case inverts
    (one sample each).

    Declared references: a sample of the concept's images, each its own cluster (a reference is
    used once, so the case's images are as independent as its references; a folder holding
    near-duplicates is the user's to know). Generated in their place (`concept_images`): image i
    was drawn for the declared prompt i mod len(prompts), its stratum."""
    prompts = source.get("prompts") if source.get("source") != "references" else None
    if prompts:
        return [{"cluster": "", "stratum": prompt_stratum(prompts[i % len(prompts)])}
                for i in range(count)]
    return [{"cluster": f"reference-{i}", "stratum": ""} for i in range(count)]


def _round(value: float) -> float:
    return float(f"{value:.5g}")


BUDGETS: dict[str, dict[str, Budget]] = {
    "shapes": {
        "inversion-steps": Budget(0, "ours", "0 = the same as --steps (25 in the shapes "
                                  "world): an exact DDIM round trip needs equal step counts"),
        "inversion-prompt": Budget("null", "ours", "the empty prompt"),
        "inversion-guidance": Budget(1.0, "ours", "plain DDIM inversion, no guidance"),
        "latent-prompt-guidance": Budget(1.0, "ours", "guidance 1 keeps the round trip exact"),
        "latent-perturbations": Budget("noise:0.05,blur:0.5,jpeg:75,resize:0.75", "ours",
                                       "M-ErasureBench published no perturbations"),
        "inversion-adaptive-steps": Budget(20, "ours", "enough for the refinement's objective "
                                           "to level off on the shapes world"),
        "inversion-adaptive-lr": Budget(0.05, "ours", "a step of 5% of the latent's unit scale"),
    },
    "sd14": {
        "inversion-steps": Budget(50, MOFC, f"{MOFC_REPO}: DDIM, 50 steps (regenerate with "
                                  "--steps 50 for an exact round trip)"),
        "inversion-prompt": Budget("concept", MOFC, f"{MOFC_REPO}: the image's concept prompt"),
        "inversion-guidance": Budget(1.0, "ours", "plain DDIM inversion; MoFC then refines "
                                     "with Null-Text Inversion or ReNoise, which we do not run"),
        "latent-prompt-guidance": Budget(1.0, MOFC, f"{MOFC_REPO}: reconstruct at guidance 1"),
        "latent-perturbations": Budget("noise:0.05,blur:0.5,jpeg:75,resize:0.75", "ours",
                                       "M-ErasureBench published no perturbations"),
        "inversion-adaptive-steps": Budget(20, "ours", "no published adaptive attack on an "
                                           "inference-time erasure defense to take it from"),
        "inversion-adaptive-lr": Budget(0.05, "ours", "as on the shapes world"),
    },
}
"""What each budget profile (`--erasure-budget`, `budgets.py`) sets this scenario's options to,
and where each value comes from."""


class LatentScenario(Scenario):
    modality = "latent"
    options = LATENT_OPTIONS
    budgets = BUDGETS
    needs_references = True
    gates_reconstruction = True
    table_column = 4



    def findings(self, case: CaseResult) -> list[dict[str, Any]]:
        """The inverted latents, `{"latents": (N, 4, h, w)}`."""
        facts = case.facts or {}
        if not case.artifacts.get("latents"):
            return []
        return [{"kind": "latents", "name": "latents", "source": case.artifacts["latents"],
                 "found_through": facts.get("inverted_through"),
                 "settings": {"inversion": facts.get("inversion"),
                              "regeneration": facts.get("regeneration"),
                              "perturbations": facts.get("perturbations"),
                              "reference_images": facts.get("reference_images")}}]

    def planning_design(self, concept: Concept, samples: int, options: Mapping[str, Any],
                        references: int) -> tuple[Design, str]:
        from pytest_erasure.scenarios.base import prompt_strata
        from pytest_erasure.stats.power import Design

        if references:
            return Design("binomial", (min(samples, references),)), \
                f"{references} references: n = min(--samples, references)"
        return Design("stratified", prompt_strata(list(concept.texts()), samples)), \
            "no references: generated"

    def planning_inputs(self, design: Design) -> list[GenerationInput]:
        if design.kind != "binomial":
            return super().planning_inputs(design)
        return [GenerationInput(seed=i, cluster=f"reference-{i}") for i in range(design.n)]

    def planning_attack_seconds(self, design: Design, options: Mapping[str, Any],
                                speed: Mapping[str, Any]) -> float | None:
        """One inversion per reference, and, where the adaptive attacker refines them through
        the defense (`through`), the refinement (`planning_refinement_seconds`)."""
        return design.n * float(speed["inversion_seconds"]) + self.planning_refinement_seconds(
            design, options, speed)

    def planning_refinement_seconds(self, design: Design, options: Mapping[str, Any],
                                    speed: Mapping[str, Any]) -> float:
        """The adaptive DDIM inversion's refinement of the erased model's n latents, when it
        will run (`through`: white-box, a defense on whose surrogate runs inside a sampler, the
        adaptive threat, --inversion-adaptive-steps > 0), counted as benchmarks/
        adaptive_cost.py --inversion counts it: per latent, each step one unrolled denoising of
        --steps with gradient, checkpointed (4 UNet forwards a step), plus 2 x evaluations
        held-out denoisings without gradient, at the plan's inversion rate (`inversion_seconds`
        for one --steps inversion: one UNet forward a step). The standard model is never
        defended: nothing there."""
        through = options.get("attacked-through")  # the plan's `run_settings`
        if not self.adaptive or not through or not through.get("adaptive_sampling"):
            return 0.0
        iterations = int(options["inversion-adaptive-steps"])
        steps = int(options.get("steps") or 0)
        if iterations <= 0 or steps <= 0:
            return 0.0
        forwards = iterations * steps * 4 + 2 * ADAPTIVE_EVALUATIONS * steps + iterations
        return design.n * forwards / steps * float(speed["inversion_seconds"])

    def images_cached(self, ctx: AuditContext, n: int, erased: int) -> int:
        """The plan on both models and 4n reconstructions (each target's, of n images)."""
        return erased + n + 4 * n

    def images_per_concept(self, ctx: AuditContext, concept: Concept) -> int:
        """The n images the standard model draws in place of absent references."""
        return int(ctx.config.samples) if concept.references is None else 0

    def __init__(self, access: Literal["white-box", "black-box"],
                 variant: Literal["null", "prompt"]) -> None:
        self.access = access
        self.variant = variant
        self.adaptive = access == "white-box"
        """The white-box inversion is refined through an enabled defense (`through`)."""

    def through(self, ctx: AuditContext, role: Role) -> Any:
        """The defense the white-box latents are refined through on `role`'s model, or None:
        only the erased model's (the defended one), when the defense has an adaptive form and
        the run gates the adaptive attacker (`AuditContext.attacked_through`)."""
        if not self.adaptive or role != "erased" or ctx.config.defense is None:
            return None
        defense = ctx.attacked_through()
        # Its surrogate must run inside a sampler (`sampling()`), which a defense declares; and
        # no refinement (--inversion-adaptive-steps 0) is the transfer attack, labelled so.
        if not getattr(defense, "adaptive_sampling", False):
            return None
        return defense if self.adaptive_budget(ctx)["iterations"] > 0 else None

    def adaptive_budget(self, ctx: AuditContext) -> dict[str, Any]:
        iterations = int(ctx.option("inversion-adaptive-steps"))
        lr = float(ctx.option("inversion-adaptive-lr"))
        if iterations < 0:
            raise ErasureInputError("--inversion-adaptive-steps", f"is {iterations}",
                                    "give a number of optimisation steps >= 0")
        if not lr > 0:
            raise ErasureInputError("--inversion-adaptive-lr", f"is {lr}",
                                    "give a positive learning rate")
        return {"iterations": iterations, "lr": lr, "evaluations": ADAPTIVE_EVALUATIONS}

    def refine(self, ctx: AuditContext, concept: Concept, role: Role, defense: Any,
               latents: torch.Tensor, images: torch.Tensor, regeneration: dict[str, Any]
               ) -> tuple[torch.Tensor, dict[str, Any]]:
        """The adaptive attacker's latents: the inverted ones refined through `defense`
        (`units.refine_latents`), cached by the inverted latents, the references, the
        regeneration, the budget and the defense's adaptive key."""
        from pytest_erasure.attacks.inversion import ADAPTIVE_INVERSION_VERSION
        from pytest_erasure.executors.units import refine_latents

        budget = self.adaptive_budget(ctx)
        seed = ctx.seeds(1, f"adaptive-inversion/{concept.name}")[0]
        key = {"version": LATENT_CACHE_VERSION, "adaptive_version": ADAPTIVE_INVERSION_VERSION,
               "model": ctx.fingerprint(role), "latents": images_digest(latents),
               "images": images_digest(images), "regeneration": regeneration,
               "budget": budget, "seed": seed,
               "scheduler": ctx.model_facts(role).scheduler_key(),
               "adaptive": defense.adaptive_key(ctx.config, ctx, concept), **numerics(ctx.config)}
        batch = ctx.config.batch_size

        def compute() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
            return ctx.run(ctx.unit(  # type: ignore[no-any-return]
                refine_latents, title=f"adaptive inversion {concept.name} ({role} model "
                f"through {defense.name})", total=budget["iterations"] * math.ceil(
                    len(latents) / batch), role=role, latents=latents, images=images,
                regeneration=regeneration, budget=budget, batch_size=batch, seed=seed,
                defense=defense.name, concept=concept, config=ctx.config))

        tensors, stored = ctx.cache.tensors("adaptive-inversion", key, compute)
        facts = {"defense": defense.name, "surrogate": defense.adaptive, **budget, "seed": seed,
                 "kept": stored["kept"], "refined": stored["kept"].count("refined"),
                 "objective_inverted": stored["objective_inverted"],
                 "objective_kept": stored["objective_kept"]}
        return tensors["latents"], facts

    # -- settings ------------------------------------------------------------------------------

    def validate(self, ctx: AuditContext) -> None:
        steps, _ = self._inversion_numbers(ctx)
        from pytest_erasure.attacks.inversion import check_steps
        from pytest_erasure.models.geometry import train_timesteps

        limit = train_timesteps(ctx.config.standard_model)
        if limit is not None:  # before any model loads: from the scheduler's config file
            check_steps(limit, steps)
            check_steps(limit, int(ctx.config.steps), "--steps")
        if self.variant == "prompt":
            self._prompt_guidance(ctx)
        self.perturbations(ctx)
        if self.adaptive:
            self.adaptive_budget(ctx)

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
        from pytest_erasure.attacks.inversion import parse_perturbations

        if self.access == "white-box":
            return []
        return parse_perturbations(str(ctx.option("latent-perturbations")))

    # -- computation (cached) ------------------------------------------------------------------

    def invert_key(self, ctx: AuditContext, role: Role, images: torch.Tensor,
                   settings: dict[str, Any]) -> dict[str, Any]:
        return {"version": LATENT_CACHE_VERSION, "model": ctx.fingerprint(role),
                "images": images_digest(images), "settings": settings,
                "scheduler": ctx.model_facts(role).scheduler_key(), **numerics(ctx.config)}

    def invert(self, ctx: AuditContext, role: Role, images: torch.Tensor,
               settings: dict[str, Any], label: str) -> torch.Tensor:
        from pytest_erasure.attacks.inversion import check_steps
        from pytest_erasure.executors.units import invert_latents

        facts = ctx.model_facts(role)
        check_steps(facts.num_train_timesteps, settings["steps"])
        key = self.invert_key(ctx, role, images, settings)
        batch = ctx.config.batch_size

        def compute() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
            total = settings["steps"] * math.ceil(len(images) / batch)
            latents = ctx.run(ctx.unit(
                invert_latents, title=f"DDIM inversion {label} ({role} model)", total=total,
                role=role, images=images, settings=settings, batch_size=batch))
            return {"latents": latents}, {}

        tensors, _ = ctx.cache.tensors("ddim-inversion", key, compute)
        return tensors["latents"]

    def reconstruction_key(self, ctx: AuditContext, role: Role, latents: torch.Tensor,
                           images: torch.Tensor, settings: dict[str, Any]) -> dict[str, Any]:
        return {"version": LATENT_CACHE_VERSION, "model": ctx.fingerprint(role),
                "latents": images_digest(latents), "images": images_digest(images),
                "settings": settings, "scheduler": ctx.model_facts(role).scheduler_key(),
                **numerics(ctx.config)}

    def reconstruction(self, ctx: AuditContext, role: Role, latents: torch.Tensor,
                       images: torch.Tensor, settings: dict[str, Any], label: str
                       ) -> dict[str, Any]:
        """`reconstruction_error` on `role`'s model, cached; per-image errors stay in the cache.
        The unit seeds torch's global generator for the call (`units.reconstruct`): `denoise`
        passes no generator, and a stochastic sampler (Euler ancestral) would draw from whatever
        state the run left it in."""
        import torch

        from pytest_erasure.attacks.inversion import check_steps
        from pytest_erasure.executors.units import reconstruct

        model = ctx.model_facts(role)
        check_steps(model.num_train_timesteps, settings["steps"], "--steps")
        key = self.reconstruction_key(ctx, role, latents, images, settings)
        batch = ctx.config.batch_size

        def compute() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
            total = settings["steps"] * math.ceil(len(latents) / batch)
            result = ctx.run(ctx.unit(
                reconstruct, title=f"inversion check {label} ({role} model)", total=total,
                role=role, latents=latents, images=images, settings=settings, batch_size=batch,
                seed=ctx.seeds(1, f"inversion-check/{label}")[0]))
            per_image = torch.tensor(result.pop("per_image_mse"))
            return {"per_image_mse": per_image}, result

        tensors, facts = ctx.cache.tensors("inversion-reconstruction", key, compute)
        worst = tensors["per_image_mse"]
        summary = {k: _round(facts[k]) for k in REPORTED}
        summary["worst_image_mse"] = _round(float(worst.max())) if len(worst) else None
        summary["sampler"] = facts["sampler"]
        return summary

    def check_key(self, ctx: AuditContext, role: Role, regenerated: torch.Tensor,
                  images: torch.Tensor) -> dict[str, Any]:
        """The images are uint8 and part of the key, but the VAE round trip the check measures
        against runs on the device in the dtype: both are in the key too."""
        from pytest_erasure.cache import tensor_digest

        return {"version": LATENT_CACHE_VERSION, "model": ctx.fingerprint(role),
                "regenerated": tensor_digest({"images": regenerated}),
                "images": images_digest(images), **numerics(ctx.config)}

    def check(self, ctx: AuditContext, role: Role, inputs: list[GenerationInput],
              images: torch.Tensor, concept: Concept) -> dict[str, Any]:
        """The reconstruction error of `inputs` regenerated on `role`'s model (undefended)
        against `images`, measured on the very images the context generates for them: a
        case's check costs no denoising of its own, and the case finds its images in the
        memo or the cache. Against the VAE's round trip as in `reconstruction_error`; no
        latent-space error (uint8 images carry no final latents). Cached by the images."""
        from pytest_erasure.attacks.inversion import psnr
        from pytest_erasure.executors.units import vae_round_trip

        regenerated = ctx.generate(role, inputs, concept, defended=False)
        key = self.check_key(ctx, role, regenerated, images)
        facts = ctx.cache.read_json("inversion-check", key)
        if facts is None:
            target = images.float().cpu()
            ours = regenerated.float() / 255.0
            per_image = ((ours - target) ** 2).flatten(1).mean(1)
            round_trip = ctx.run(ctx.unit(vae_round_trip, role=role, images=target,
                                          batch_size=ctx.config.batch_size))
            vae_mse = float(((round_trip - target) ** 2).mean())
            inversion_mse = float(((ours - round_trip) ** 2).mean())
            mse = float(per_image.mean())
            facts = {"mse": mse, "psnr": psnr(mse), "vae_mse": vae_mse, "vae_psnr": psnr(vae_mse),
                     "inversion_mse": inversion_mse, "inversion_psnr": psnr(inversion_mse),
                     "worst_image_mse": float(per_image.max()) if len(per_image) else None}
            ctx.cache.write_json("inversion-check", key, facts)
        summary = {k: (_round(v) if isinstance(v, float) else v) for k, v in facts.items()}
        summary["prompt"] = inputs[0].prompt if inputs else None
        summary["guidance"] = inputs[0].guidance if inputs else None
        summary["sampler"] = ctx.model_facts(role).scheduler_class
        summary["measured_on"] = f"the {role} model's undefended images of these latents"
        return summary

    # -- the plan ------------------------------------------------------------------------------

    def plan(self, ctx: AuditContext, concept: Concept, target: Role, n: int) -> Plan:
        from pytest_erasure.attacks.inversion import perturb
        from pytest_erasure.samplers import inversion_exactness

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
        inverted = latents = self.invert(ctx, role, inverted_from, inversion, concept.name)
        defense = self.through(ctx, role)
        adaptive: dict[str, Any] | None = None
        if defense is not None:
            latents, adaptive = self.refine(ctx, concept, role, defense, inverted, references,
                                            self.regeneration(ctx, concept))
        seeds = ctx.seeds(unique, f"latent/{concept.name}")
        draws = reference_draws(source, unique)
        inputs = [GenerationInput(seed=s, prompt=regeneration["prompt"],
                                  latents=latents[i], guidance=regeneration["guidance"],
                                  label=f"inverted ref {i}", **draws[i])
                  for i, s in enumerate(seeds)]
        # The case's check is measured on the images the case is judged on (generated once).
        case = self.check(ctx, target, inputs, references, concept)
        if inversion["steps"] == int(ctx.config.steps):
            # The inversion's own round trip: through the model it was inverted with, with
            # its prompt. When that is the case's own trajectory (white-box, same prompt and
            # guidance) it is the same images; otherwise the context's memo and cache still
            # share it with whichever plan generates it (the standard plan, black-box).
            own_inputs = [GenerationInput(seed=s, prompt=inversion["prompt"], latents=inverted[i],
                                          guidance=inversion["guidance"], **draws[i])
                          for i, s in enumerate(seeds)]
            same = (role == target and not transforms and adaptive is None
                    and inversion["prompt"] == regeneration["prompt"]
                    and inversion["guidance"] == regeneration["guidance"])
            own = case if same else self.check(ctx, role, own_inputs, inverted_from, concept)
        else:  # another step count than the case generates with: denoised here
            own = self.reconstruction(ctx, role, inverted, inverted_from, inversion,
                                      concept.name)
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
            "inversion_exact": inversion_exactness(ctx.model_facts(target).scheduler_class),
        }
        if adaptive is not None:
            # Both threat models in the case: the transfer attacker's latents (the inverted
            # ones) generated through the defense and judged beside the adaptive ones.
            transfer = [GenerationInput(seed=s, prompt=regeneration["prompt"],
                                        latents=inverted[i], guidance=regeneration["guidance"],
                                        label=f"inverted ref {i} (transfer)", **draws[i])
                        for i, s in enumerate(seeds)]
            found = ctx.detect(ctx.generate(target, transfer, concept), concept).present
            hits = sum(bool(p) for p in found)
            facts["adaptive"] = {**adaptive, "transfer_hits": hits, "transfer_n": len(found),
                                 "transfer_crr": hits / len(found) if found else None}
        if inversion["steps"] != regeneration["steps"]:
            facts["warning"] = (f"inverted with {inversion['steps']} DDIM steps but regenerated "
                                f"with {regeneration['steps']}: the round trip is not exact")
            facts["inversion_exact"]["exact"] = False
        return Plan(inputs=inputs, facts=facts,
                    artifacts={"latents": str(self.save_latents(ctx, latents))})

    @staticmethod
    def save_latents(ctx: AuditContext, latents: torch.Tensor,
                     extra: dict[str, torch.Tensor] | None = None) -> Path:
        """The inverted latents as a file (`{"latents": (N, 4, h, w)}` safetensors), for
        `--erasure-artifacts` and to reproduce the case by hand; named by their content.
        `extra` tensors travel in the same file (what a replay needs beside the latents: the
        guidance probe's classifier weights)."""
        import tempfile

        from safetensors.torch import save

        from pytest_erasure.cache import atomic_write_bytes, tensor_digest

        digest = images_digest(latents)
        if extra:
            digest = tensor_digest({"latents": latents.detach().float().cpu(), **extra})
        file = ctx.cache.path("inverted-latents-file", {"latents": digest}, suffix=".safetensors")
        if file is None:  # caching off: a fixed path per content, overwritten not accumulated
            file = Path(tempfile.gettempdir()) / "pytest-erasure-latents" / f"{digest}.safetensors"
        if not file.is_file():  # written whole or not at all: two workers may write at once
            atomic_write_bytes(file, save({"latents": latents.detach().float().cpu()
                                           .contiguous(),
                                           **{k: v.contiguous() for k, v in (extra or {}).items()}}))
        return file


SCENARIOS = [LatentScenario(access, variant)
             for access in ("white-box", "black-box") for variant in ("null", "prompt")]
