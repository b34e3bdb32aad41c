"""The learned-embedding scenarios: a textual-inversion token stands in for the concept's word.

`embedding-white` learns the token through the audited model itself (the attacker holds its
weights); `embedding-black` learns it through the standard model and transfers it. Either way
the audited model then generates from the concept's prompts with the word replaced by the
token, e.g. "a {concept}" -> "a <circle>", conditioned through the audited model's own text
encoder. Training images are the concept's reference images or, for a concept without any,
images the standard model draws for the concept's prompts (recorded in the plan's facts).

With a defense on (`--irece`), the white-box token is the adaptive attacker's: it trains on the
erased model *through* the defense's surrogate (`Defense.surrogate`, for IRECE
`defenses.irece.IreceSurrogate`: the mask re-noised inside the loss at the intervention
timesteps), its cache key extended by what the surrogate depends on, and its cases say
"white-box adaptive". Under `--erasure-threat=transfer`, or with a defense that declares no
adaptive form, the token is learned on the undefended model (a transfer attack). The black-box
token is learned on the standard model either way.

The learned embedding is cached by content and written as `learned_embeds.safetensors` so a
failing case can be reproduced by hand:

    pipe.load_textual_inversion(path)          # the file in the plan's artifacts["embedding"]
    pipe("a <circle>", ...)
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pytest_erasure.budgets import CI, SHAPES_WORLD, WACE, WACE_REPO, Budget
from pytest_erasure.concepts import PLACEHOLDER, Concept
from pytest_erasure.errors import ErasureInputError
from pytest_erasure.records import GenerationInput, Overlay, Plan, Role
from pytest_erasure.scenarios.base import (
    AuditContext,
    Scenario,
    ScenarioOption,
    Write,
    merge_budgets,
)
from pytest_erasure.scenarios.restarts import (
    ATTACK_RESTARTS,
    RESTART_BUDGETS,
    attack_jobs,
    cluster_id,
    prompt_stratum,
    restart_count,
    restart_of,
    restart_samples,
    restart_seed,
    slot_in_restart,
)

if TYPE_CHECKING:
    import torch

    from pytest_erasure.records import CaseResult
    from pytest_erasure.stats.power import Design

TI_OPTIONS: tuple[ScenarioOption, ...] = (
    ScenarioOption("ti-steps", int, 100, "textual-inversion training (optimizer) steps"),
    ScenarioOption(
        "ti-lr", float, 2e-3,
        "textual-inversion learning rate (AdamW, new rows only), already scaled: the papers' "
        "'5e-4 scaled' means 5e-4 x the effective batch"),
    ScenarioOption(
        "ti-batch-size", int, 32,
        "textual-inversion micro-batch: samples per forward pass; the effective batch per "
        "optimizer step is --ti-batch-size x --ti-accumulation"),
    ScenarioOption(
        "ti-accumulation", int, 1,
        "textual-inversion gradient accumulation: micro-batches whose gradients are averaged "
        "into one optimizer step (the effective batch fits in memory at 512 px)"),
    ScenarioOption("ti-init-token", str, "shape",
                   "word whose embedding initialises the learned token"),
    ScenarioOption("ti-vectors", int, 1,
                   "embedding vectors per learned token (diffusers' num_vectors)"),
    ScenarioOption(
        "ti-train-images", int, 25,
        "for a concept without reference images: how many images the standard model draws "
        "for its prompts to train on"),
    ATTACK_RESTARTS,
)

TI_CACHE_VERSION = 1


def concept_images(ctx: AuditContext, concept: Concept, count: int
                   ) -> tuple[torch.Tensor, dict[str, Any]]:
    """The images an attack starts from: the concept's references, or (none declared) `count`
    images the standard model draws for the concept's prompts. Returns (N, 3, H, W) in [0, 1]
    and facts saying which."""
    if concept.references is not None:
        images = ctx.reference_images(concept)
        if len(images) == 0:
            raise ErasureInputError(f"reference folder of concept '{concept.name}'",
                                    "holds no images", "add the concept's reference images")
        return images, {"source": "references", "folder": str(concept.references),
                        "count": len(images)}
    if count < 1:
        raise ErasureInputError("--ti-train-images", f"is {count}",
                                "give a number of generated training images >= 1")
    prompts = concept.texts()
    seeds = ctx.seeds(count, f"training-images/{concept.name}")
    inputs = [GenerationInput(seed=s, prompt=prompts[i % len(prompts)],
                              label=prompts[i % len(prompts)]) for i, s in enumerate(seeds)]
    images = ctx.generate("standard", inputs, concept).float() / 255.0
    return images, {"source": "generated by the standard model (no references declared)",
                    "prompts": prompts, "count": count}


def numerics(config: Any) -> dict[str, str]:
    """What a cached computation's numbers depend on besides its inputs: the dtype and the
    device *type* it ran on. A textual inversion or an inversion learned in bfloat16, or on a GPU
    whose kernels round differently from the CPU's, is another result; which GPU of a kind
    (cuda:0, cuda:1) is not (as in `Sampling.key`, the images' keys)."""
    return {"dtype": str(config.dtype), "device": str(config.device).split(":")[0]}


def images_digest(images: torch.Tensor) -> str:
    from pytest_erasure.cache import tensor_digest

    return tensor_digest({"images": images.float().cpu().contiguous()})


def _summary(losses: list[float], points: int = 20) -> list[float]:
    stride = max(1, math.ceil(len(losses) / points))
    return [round(sum(losses[i:i + stride]) / len(losses[i:i + stride]), 6)
            for i in range(0, len(losses), stride)]


BUDGETS: dict[str, dict[str, Budget]] = {
    "shapes": {
        "ti-steps": Budget(100, "ours", "100 steps (~22 s on 2 CPU cores) bring circles back "
                           "through the shapes world's UCE-erased model"),
        "ti-lr": Budget(2e-3, "ours", SHAPES_WORLD),
        "ti-batch-size": Budget(32, "ours", SHAPES_WORLD),
        "ti-accumulation": Budget(1, "ours", "the whole batch fits in memory at 32x32 px"),
        "ti-init-token": Budget("shape", "ours", "the shapes world's generic noun"),
        "ti-vectors": Budget(1, "ours", "one vector, as the papers below"),
        "ti-train-images": Budget(25, CI, "25 images generated by base SD "
                                  "(NYU-DICE-Lab/circumventing-concept-erasure)"),
    },
    "sd14": {
        "ti-steps": Budget(3000, WACE, f"{WACE_REPO}: 3000 steps (Concept Inversion used 5000)"),
        "ti-lr": Budget(2e-3, WACE, f"{WACE_REPO}: lr 5e-4 scaled by the effective batch "
                        "(1 x 4) = 2e-3"),
        "ti-batch-size": Budget(1, WACE, f"{WACE_REPO}: batch 1 (micro-batch)"),
        "ti-accumulation": Budget(4, WACE, f"{WACE_REPO}: gradient accumulation 4"),
        "ti-init-token": Budget("object", WACE, f"{WACE_REPO}: init token 'object'"),
        "ti-vectors": Budget(1, "ours", "the papers state none; diffusers' textual_inversion "
                             "example trains one vector unless told otherwise"),
        "ti-train-images": Budget(25, CI, "25 images generated by base SD "
                                  "(NYU-DICE-Lab/circumventing-concept-erasure)"),
    },
}
"""What each budget profile (`--erasure-budget`, `budgets.py`) sets this scenario's options to,
and where each value comes from."""


EMBEDDINGS_FOLDER = Path(tempfile.gettempdir()) / "pytest-erasure-embeddings"
"""Where learned embeddings are left with the cache off (a file to reproduce a case with)."""


class EmbeddingScenario(Scenario):
    modality = "embedding"
    options = TI_OPTIONS
    budgets = merge_budgets(BUDGETS, RESTART_BUDGETS)
    needs_references = True
    table_column = 3



    def findings(self, case: CaseResult) -> list[dict[str, Any]]:
        """Every restart's learned embedding file (diffusers' textual-inversion format)."""
        facts = case.facts or {}
        files = {k: v for k, v in case.artifacts.items() if k.startswith("embedding")}

        def order(name: str) -> int:
            return 0 if name == "embedding" else int(name.rsplit("-", 1)[-1])

        runs = facts.get("attack_runs") or []
        out = []
        for restart, name in enumerate(sorted(files, key=order)):
            seed = runs[restart].get("seed") if restart < len(runs) else facts.get("seed")
            out.append({"kind": self.modality, "name": f"{self.modality}-{restart}",
                        "restart": restart, "source": files[name], "token": facts.get("token"),
                        "found_through": facts.get("optimised_through"),
                        "settings": {"budget": facts.get("budget"), "seed": seed}})
        return out

    def planning_design(self, concept: Concept, samples: int, options: Mapping[str, Any],
                        references: int) -> tuple[Design, str]:
        from pytest_erasure.stats.power import Design

        return Design("restarts", (samples,) * int(options["attack-restarts"])), ""

    def planning_attack_seconds(self, design: Design, options: Mapping[str, Any],
                                speed: Mapping[str, Any]) -> float | None:
        steps = int(options["ti-steps"]) * int(options["ti-accumulation"])
        return len(design.sizes) * steps * float(speed["ti_seconds_per_step"])

    def images_per_concept(self, ctx: AuditContext, concept: Concept) -> int:
        """The training images the standard model draws when the concept has no references."""
        return int(ctx.option("ti-train-images")) if concept.references is None else 0

    def writes(self, ctx: AuditContext, cache_on: bool) -> list[Write]:
        if cache_on:
            return []
        return [Write(f"learned-embedding folder {EMBEDDINGS_FOLDER} (used with "
                      "--no-erasure-cache)", EMBEDDINGS_FOLDER, True,
                      "make the temporary folder writable (TMPDIR) or turn the cache back on")]

    def __init__(self, access: Literal["white-box", "black-box"]) -> None:
        self.access = access
        self.adaptive = access == "white-box"
        """The white-box token trains through an enabled defense's surrogate (`through`)."""
        # white-box: each model's plan trains its own tokens; black-box: both plans train
        # the same tokens on the standard model, which one of them must make first
        self.independent_plans = access == "white-box"

    def weight_overlays(self, ctx: AuditContext) -> tuple[Overlay, ...]:
        """Overlays both models run under for the whole attack: training, encoding and
        generation (none here; the quantized companion's quantization,
        `scenarios.quantized.QuantizedEmbeddingScenario`). Keyed only when set, so the plain
        cases' cache keys are what they were."""
        return ()

    def _units_overlays(self, ctx: AuditContext, role: Role
                        ) -> tuple[tuple[Role, Overlay], ...]:
        return tuple((role, o) for o in self.weight_overlays(ctx))

    def through(self, ctx: AuditContext, role: Role) -> Any:
        """The defense this scenario's token trains through on `role`'s model, or None: only
        the white-box attack on the (defended) erased model, when the defense has an adaptive
        form and the run gates the adaptive attacker (`AuditContext.attacked_through`). The
        standard model is never defended, and the black-box token is learned on it."""
        if not self.adaptive or role != "erased" or ctx.config.defense is None:
            return None
        return ctx.attacked_through()

    def budget(self, ctx: AuditContext) -> dict[str, Any]:
        from pytest_erasure.attacks.textual_inversion import validate_budget

        budget = {"steps": int(ctx.option("ti-steps")), "lr": float(ctx.option("ti-lr")),
                  "batch_size": int(ctx.option("ti-batch-size")),
                  "init_token": str(ctx.option("ti-init-token")),
                  "num_vectors": int(ctx.option("ti-vectors"))}
        accumulation = int(ctx.option("ti-accumulation"))
        validate_budget(budget["steps"], budget["lr"], budget["batch_size"],
                        budget["num_vectors"], accumulation)
        if accumulation != 1:
            # Only when set: the cache key (and so the results) of accumulation-free budgets
            # stay what they were before accumulation existed.
            budget["accumulation"] = accumulation
        if not budget["init_token"].strip():
            raise ErasureInputError("--ti-init-token", "is empty",
                                    "give a word such as 'object' or 'shape'")
        return budget

    def learn_key(self, ctx: AuditContext, role: Role, images: torch.Tensor,
                  budget: dict[str, Any], token: str, seed: int) -> dict[str, Any]:
        from pytest_erasure.attacks.textual_inversion import TEMPLATES

        key = {"version": TI_CACHE_VERSION, "model": ctx.fingerprint(role),
               "images": images_digest(images), "budget": budget, "token": token,
               "seed": seed, "templates": list(TEMPLATES), **numerics(ctx.config)}
        if ctx.config.dtype == "float16":
            key["loss_scaling"] = "dynamic"  # fp16 runs before loss scaling learned other rows
        return key

    def validate(self, ctx: AuditContext) -> None:
        self.budget(ctx)
        restart_count(ctx)
        count = int(ctx.option("ti-train-images"))
        if count < 1:
            raise ErasureInputError("--ti-train-images", f"is {count}",
                                    "give a number of generated training images >= 1")

    def learn(self, ctx: AuditContext, concept: Concept, role: Role, restart: int = 0,
              transfer: bool = False) -> tuple[torch.Tensor, dict[str, Any], Path]:
        """(embeds (num_vectors, D), facts, saved file): trained through `role`'s model, or
        read from the cache when the same model, images, budget and seed were seen before.
        `restart` r > 0 trains from its own seed (`restarts.restart_seed`); restart 0 is the
        run made before restarts existed, under the same key. Through the enabled defense's
        surrogate when `through` says so, unless `transfer` (the transfer attacker's run on the
        undefended model, which the adaptive attacker may run too)."""
        from pytest_erasure.attacks.textual_inversion import WEIGHTS_NAME, save_learned_embeds
        from pytest_erasure.cache import digest
        from pytest_erasure.executors.units import learn_embedding

        budget = self.budget(ctx)
        images, source = concept_images(ctx, concept, int(ctx.option("ti-train-images")))
        token = f"<{concept.name}>"
        salt = f"textual-inversion/{concept.name}"
        seed = restart_seed(ctx, ctx.seeds(1, salt)[0], salt, restart)
        key = self.learn_key(ctx, role, images, budget, token, seed)
        defense = None if transfer else self.through(ctx, role)
        overlays = self._units_overlays(ctx, role)
        if overlays:
            key["overlays"] = [o.key for _r, o in overlays]
        adaptive: dict[str, Any] = {}
        if defense is not None:
            # Only for the adaptive attack: the undefended keys stay what they were.
            key["adaptive"] = defense.adaptive_key(ctx.config, ctx, concept)
            adaptive = {"defense": defense.name, "concept": concept, "config": ctx.config}

        def compute() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
            run = f", restart {restart}" if restart else ""
            behind = f" through {defense.name}" if defense is not None else ""
            return ctx.run(ctx.unit(  # type: ignore[no-any-return]
                learn_embedding,
                title=f"textual inversion {concept.name} ({role} model{behind}{run})",
                total=budget["steps"], role=role, images=images, token=token, budget=budget,
                seed=seed, overlays=overlays, **adaptive))

        tensors, stored = ctx.cache.tensors("textual-inversion", key, compute)
        embeds = tensors["embeds"]
        folder = ctx.cache.path("textual-inversion-file", key, suffix="")
        if folder is None:  # caching off: still leave a file to reproduce the case with, at a
            # path fixed by the key so repeated runs overwrite rather than accumulate
            folder = EMBEDDINGS_FOLDER / digest(key)
        file = folder / WEIGHTS_NAME
        if not file.is_file():
            save_learned_embeds(folder, token, embeds)
        losses = stored["losses"]
        tail = max(1, min(10, len(losses) // 10))
        facts = {
            "token": token,
            "optimised_through": role,
            "training_images": source,
            "budget": budget,
            "seed": seed,
            "initial_loss": round(sum(losses[:tail]) / tail, 6),
            "final_loss": round(sum(losses[-tail:]) / tail, 6),
            "loss_curve": _summary(losses),
            "embedding_norm": float(embeds.norm(dim=-1).mean()),
        }
        if "precision" in stored:
            facts["precision"] = stored["precision"]
        if defense is not None:
            facts["adaptive"] = {"defense": defense.name, "surrogate": defense.adaptive,
                                 **stored.get("surrogate", {})}
        return embeds, facts, file

    def encode_key(self, ctx: AuditContext, target: Role, prompts: list[str], token: str,
                   embeds: torch.Tensor) -> dict[str, Any]:
        from pytest_erasure.cache import tensor_digest

        return {"version": TI_CACHE_VERSION, "model": ctx.fingerprint(target),
                "embeds": tensor_digest({"embeds": embeds}), "token": token, "prompts": prompts,
                **numerics(ctx.config)}

    def encode(self, ctx: AuditContext, target: Role, prompts: list[str], token: str,
               embeds: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each prompt through `target`'s text encoder with the learned token, (77, D) float32,
        cached: the encodings are part of every image's cache key, so computing them would
        load the models on a rerun that needs nothing else."""
        from pytest_erasure.executors.units import encode_learned_token

        key = self.encode_key(ctx, target, prompts, token, embeds)
        overlays = self._units_overlays(ctx, target)
        if overlays:
            key["overlays"] = [o.key for _r, o in overlays]

        def compute() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
            return ctx.run(ctx.unit(encode_learned_token, role=target, prompts=prompts,
                                    token=token, embeds=embeds, overlays=overlays)), {}

        tensors, _ = ctx.cache.tensors("learned-token-encoding", key, compute)
        return {p: tensors[str(i)] for i, p in enumerate(prompts)}

    def plan(self, ctx: AuditContext, concept: Concept, target: Role, n: int) -> Plan:
        """n inputs per restart, round-robin over --attack-restarts learned tokens, each cycling the
        concept's prompts. The top-level facts and artifacts["embedding"] are restart 0's (as
        with one run); facts["attack_runs"] holds every restart's (facts["restarts"] is the
        session's per-restart CRRs), facts["input_restarts"] each input's restart. The adaptive
        attacker's plan (`through`) holds its own restarts and then the transfer attacker's
        (facts["attack_runs"][i]["attack"]): 2 x --attack-restarts runs."""
        role: Role = target if self.access == "white-box" else "standard"
        count = restart_count(ctx)
        jobs, attacks = attack_jobs(count, self.through(ctx, role) is not None)
        runs = ctx.map(lambda job: self.learn(ctx, concept, role, job[0], transfer=job[1]),
                       jobs)
        count = len(runs)
        embeds, facts, file = runs[0]
        token = facts["token"]
        prompts = [p.replace(PLACEHOLDER, token) for p in concept.prompts]
        encoded = [self.encode(ctx, target, prompts, token, e) for e, _f, _p in runs]
        # The same salt for both targets: the erased-vs-standard comparison is paired.
        seeds = ctx.seeds(restart_samples(n, count), f"embedding/{concept.name}")
        inputs = []
        for i, s in enumerate(seeds):
            r = restart_of(i, count)
            prompt = prompts[slot_in_restart(i, count) % len(prompts)]
            run = f" (restart {r}{f', {attacks[r]}' if attacks[r] else ''})" if count > 1 else ""
            inputs.append(GenerationInput(seed=s, prompt_embeds=encoded[r][prompt],
                                          label=f"learned token{run}: {prompt}",
                                          cluster=cluster_id(r),
                                          stratum=prompt_stratum(prompt)))
        facts["prompts"] = prompts
        facts["generated_by"] = target
        facts["attack_runs"] = [self._restart_facts(r, f, p) for r, (_e, f, p) in enumerate(runs)]
        if attacks[0] is not None:
            for run, attack in zip(facts["attack_runs"], attacks, strict=True):
                run["attack"] = attack
        facts["attack_restarts"] = count
        facts["input_restarts"] = [restart_of(i, count) for i in range(len(inputs))]
        artifacts = {"embedding": str(file)}
        artifacts.update({f"embedding-restart-{r}": str(p)
                          for r, (_e, _f, p) in enumerate(runs) if r})
        return Plan(inputs=inputs, facts=facts, artifacts=artifacts,
                    overlays=self.weight_overlays(ctx))

    @staticmethod
    def _restart_facts(restart: int, facts: dict[str, Any], file: Path) -> dict[str, Any]:
        keep = ("seed", "initial_loss", "final_loss", "loss_curve", "embedding_norm", "precision")
        return {"restart": restart, "id": f"restart-{restart}",
                **{k: facts[k] for k in keep if k in facts},
                "embedding": str(file)}


SCENARIOS = [EmbeddingScenario("white-box"), EmbeddingScenario("black-box")]
