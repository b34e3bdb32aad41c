"""The heavy steps of an audit as units: a picklable description and the function that runs it.

A `Unit` names its function (module-level, so it pickles by reference; calibration's,
`detectors.calibration.judge_calibration`, lives with the calibration), its arguments (tensors,
seeds, settings: plain data), the models it runs on by their files (`ModelHandle`) and what its
progress bar says. Where it runs is the executor's business; the function gets the `Host` there
(the models and detectors loaded in that process) and an `advance(n)` for progress. Nothing here
reads the cache or the context: the context looks the result up first and stores what comes back,
so a unit is only ever sent for work that is missing. A unit may carry overlays (weights run on
top of its models, `records.Overlay`); `execute` applies them around the function on any host.

Seeds travel in the arguments, and a function that needs torch's global generator seeds it
itself (`reconstruct`): the state a driver's global generator is in does not exist elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from pytest_erasure.attacks.ring_a_bell import SearchSettings
    from pytest_erasure.concepts import Concept
    from pytest_erasure.config import AuditConfig
    from pytest_erasure.detectors.base import DetectorSpec
    from pytest_erasure.executors import Host
    from pytest_erasure.generate import Sampling
    from pytest_erasure.models.handle import ModelHandle
    from pytest_erasure.records import GenerationInput, Overlay, Role

Advance = Callable[[int], None]


@dataclass(frozen=True)
class Unit:
    """One heavy step: `fn(host, advance, **args)` on the models `models` names."""

    fn: Callable[..., Any]
    args: dict[str, Any] = field(default_factory=dict)
    models: ModelHandle | None = None
    """The models by their files; None for a unit that needs none (detection, calibration) or
    for models given in memory, which only an in-process executor can run on."""
    needs_models: bool = True
    overlays: tuple[tuple[Role, Overlay], ...] = ()
    """Weights run on top of the models for this unit ((role, overlay), in order): the host
    applies them before `fn` and removes them after (`execute`), wherever the unit runs."""
    title: str = ""
    """What the unit's progress bar says."""
    total: int = 0
    """Progress steps the unit reports in all (the bar's length)."""


def execute(unit: Unit, host: Host, advance: Advance) -> Any:
    """Run `unit` on `host`: what every executor calls where the unit lands, so overlays are
    applied and removed the same way in every one (`Host.overlaid`)."""
    if not unit.overlays:
        return unit.fn(host, advance, **unit.args)
    with host.overlaid(unit.overlays):
        return unit.fn(host, advance, **unit.args)


def generate_images(host: Host, advance: Advance, *, role: Role, inputs: list[GenerationInput],
                    sampling: Sampling, batch_size: int, defense: str | None,
                    concept: Concept | None, config: AuditConfig | None
                    ) -> tuple[torch.Tensor, list[bool]]:
    """`generate.generate` on `role`'s pipeline, under the enabled defense when one is named."""
    from pytest_erasure.generate import generate

    pipe = host.pipeline(role)
    factory = (host.defense_callbacks(defense, concept, config)
               if defense is not None and concept is not None and config is not None else None)
    return generate(pipe, inputs, sampling, batch_size, callback_factory=factory,
                    advance=advance)


def detect_images(host: Host, advance: Advance, *, spec: DetectorSpec, device: str,
                  images: torch.Tensor, label: str) -> dict[str, list[Any]]:
    """The detector's verdicts on uint8 images, as plain lists (what the cache stores)."""
    found = host.detector_for(spec, device).detect(images.float() / 255.0, label)
    advance(len(images))
    return {"present": [bool(p) for p in found.present],
            "score": [float(s) for s in found.score]}


def learn_embedding(host: Host, advance: Advance, *, role: Role, images: torch.Tensor,
                    token: str, budget: dict[str, Any], seed: int, defense: str | None = None,
                    concept: Concept | None = None, config: AuditConfig | None = None
                    ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Textual inversion through `role`'s model: ({"embeds"}, {"losses", "precision"}).

    With `defense` named (and the audit's `concept` and `config`), the adaptive attack: the
    token is trained through that defense's surrogate (`Defense.surrogate`), built here on this
    host's pipelines, and the facts say how many samples it defended."""
    from pytest_erasure.attacks.textual_inversion import LossScaler, train_textual_inversion

    pipe = host.pipeline(role)
    scaler = LossScaler.for_dtype(pipe.unet.dtype)
    surrogate = None
    if defense is not None:
        if concept is None or config is None:
            raise ValueError("an adaptive textual inversion needs the concept and the config")
        surrogate = host.defense_surrogate(defense, concept, config, role, seed)
    embeds, losses = train_textual_inversion(
        pipe, images, token=token, init_token=budget["init_token"],
        num_vectors=budget["num_vectors"], steps=budget["steps"], lr=budget["lr"],
        batch_size=budget["batch_size"], accumulation=budget.get("accumulation", 1), seed=seed,
        progress=advance, scaler=scaler, surrogate=surrogate)
    facts: dict[str, Any] = {"losses": losses, "precision": scaler.describe()}
    if surrogate is not None and hasattr(surrogate, "describe"):
        facts["surrogate"] = surrogate.describe()
    return {"embeds": embeds}, facts


def finetune_lora(host: Host, advance: Advance, *, role: Role, images: torch.Tensor,
                  captions: list[str], budget: dict[str, Any], seed: int,
                  defense: str | None = None, concept: Concept | None = None,
                  config: AuditConfig | None = None
                  ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A LoRA of `role`'s UNet trained on captioned images (`attacks.finetune.train_lora`):
    (its peft state dict, {"losses"}). The pipeline is the host's, overlays included: under a
    unit's overlays the LoRA is trained on top of them. With `defense` named (and the audit's
    `concept` and `config`), the adaptive attack: trained through that defense's surrogate,
    built here as `learn_embedding` builds it."""
    from pytest_erasure.attacks.finetune import train_lora

    surrogate = None
    if defense is not None:
        if concept is None or config is None:
            raise ValueError("an adaptive fine-tuning needs the concept and the config")
        surrogate = host.defense_surrogate(defense, concept, config, role, seed)
    state, losses = train_lora(
        host.pipeline(role), images, captions, rank=budget["rank"], steps=budget["steps"],
        lr=budget["lr"], batch_size=budget["batch_size"], accumulation=budget["accumulation"],
        seed=seed, progress=advance, surrogate=surrogate)
    facts: dict[str, Any] = {"losses": losses}
    if surrogate is not None and hasattr(surrogate, "describe"):
        facts["surrogate"] = surrogate.describe()
    return state, facts


def encode_learned_token(host: Host, advance: Advance, *, role: Role, prompts: list[str],
                         token: str, embeds: torch.Tensor) -> dict[str, torch.Tensor]:
    """{str(i): prompt i through `role`'s text encoder with the learned token, (77, D) float32}."""
    from pytest_erasure.attacks.textual_inversion import encode_with_embedding

    pipe = host.pipeline(role)
    return {str(i): encode_with_embedding(pipe, p, token, embeds)[0].float().cpu()
            for i, p in enumerate(prompts)}


def invert_latents(host: Host, advance: Advance, *, role: Role, images: torch.Tensor,
                   settings: dict[str, Any], batch_size: int) -> torch.Tensor:
    """DDIM inversion of `images` through `role`'s model."""
    from pytest_erasure.attacks.inversion import ddim_invert

    return ddim_invert(host.pipeline(role), images, prompt=settings["prompt"],
                       steps=settings["steps"], guidance=settings["guidance"],
                       batch_size=batch_size, progress=advance)


def refine_latents(host: Host, advance: Advance, *, role: Role, latents: torch.Tensor,
                   images: torch.Tensor, regeneration: dict[str, Any], budget: dict[str, Any],
                   batch_size: int, seed: int, defense: str, concept: Concept,
                   config: AuditConfig) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The adaptive DDIM inversion (`inversion.adaptive_invert`): inverted `latents` refined
    through the enabled defense's sampling surrogate (`Defense.surrogate(...).sampling()`,
    built on this host's pipelines) so that the defended regeneration lands on `images`'
    latents: ({"latents"}, facts)."""
    from pytest_erasure.attacks.inversion import adaptive_invert, encode

    pipe = host.pipeline(role)
    surrogate = host.defense_surrogate(defense, concept, config, role, seed)
    targets = encode(pipe, images, batch_size).float()
    refined, facts = adaptive_invert(
        pipe, latents, targets, surrogate.sampling(), prompt=regeneration["prompt"],
        steps=regeneration["steps"], guidance=regeneration["guidance"],
        iterations=budget["iterations"], lr=budget["lr"], evaluations=budget["evaluations"],
        seed=seed, batch_size=batch_size, progress=advance)
    return {"latents": refined}, facts


def reconstruct(host: Host, advance: Advance, *, role: Role, latents: torch.Tensor,
                images: torch.Tensor, settings: dict[str, Any], batch_size: int, seed: int
                ) -> dict[str, Any]:
    """`inversion.reconstruction_error` with torch's global generator seeded for the call:
    `denoise` passes no generator, and a stochastic sampler (Euler ancestral) would draw from
    whatever state the process left it in."""
    import torch

    from pytest_erasure.attacks.inversion import reconstruction_error

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return reconstruction_error(host.pipeline(role), latents, images, settings["prompt"],
                                    settings["steps"], settings["guidance"],
                                    batch_size=batch_size, progress=advance)


def vae_round_trip(host: Host, advance: Advance, *, role: Role, images: torch.Tensor,
                   batch_size: int) -> torch.Tensor:
    """`images` ([0, 1], CPU) encoded and decoded by `role`'s VAE: what a reconstruction is
    measured against."""
    import torch

    from pytest_erasure.attacks.inversion import decode, encode

    pipe = host.pipeline(role)
    with torch.no_grad():
        return decode(pipe, encode(pipe, images, batch_size).float(), batch_size)


def search_prompts(host: Host, advance: Advance, *, targets: list[str],
                   pairs: list[tuple[str, str]], settings: SearchSettings,
                   paired_generated: bool) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Ring-A-Bell on the standard model's text encoder, one search per target."""
    import torch

    from pytest_erasure.attacks.ring_a_bell import concept_vector, ring_a_bell, scale_note

    pipe = host.pipeline("standard")
    vector = concept_vector(pipe.text_encoder, pipe.tokenizer, pairs)
    results = [ring_a_bell(pipe.text_encoder, pipe.tokenizer, target, pairs, settings,
                           vector=vector, on_generation=lambda _g, _loss: advance(1))
               for target in targets]
    tensors = {"token_ids": torch.stack([r.token_ids for r in results]),
               "history": torch.tensor([r.history for r in results])}
    facts = {"searches": [r.describe() for r in results],
             "paired_prompts": [list(p) for p in pairs],
             "paired_prompts_generated": paired_generated,
             "budget": scale_note(settings)}
    return tensors, facts


def model_identity(host: Host, advance: Advance) -> dict[str, Any]:
    """What loading the models reports (`ModelIdentity.to_dict`), loaded where the unit runs:
    an executor whose workers hold the models tells the driver who they are without the
    driver loading them too."""
    from pytest_erasure.models.identity import ModelIdentity

    return ModelIdentity.of(host.models).to_dict()


SPLITS: dict[Callable[..., Any], str] = {generate_images: "inputs", detect_images: "images"}
"""Units whose work is independent per item, by the argument holding the items: each image has
its own seed and initial latent, and is judged alone, so parts of one can run on different
workers (with batch-invariant layers its bits do not depend on which) and be joined in order."""

MIN_PART = 4
"""Fewer items than this per worker are not worth a worker's round trip."""


def split(unit: Unit, workers: int) -> list[Unit] | None:
    """`unit` as up to `workers` units over consecutive slices of its items, or None when it
    cannot be split or is too small to gain from it."""
    from dataclasses import replace

    arg = SPLITS.get(unit.fn)
    if arg is None or workers < 2:
        return None
    items = unit.args[arg]
    parts = min(workers, len(items) // MIN_PART)
    if parts < 2:
        return None
    bounds = [len(items) * i // parts for i in range(parts + 1)]
    return [replace(unit, args={**unit.args, arg: items[a:b]},
                    total=unit.total * (b - a) // max(len(items), 1))
            for a, b in zip(bounds, bounds[1:], strict=False)]


def join(unit: Unit, results: list[Any]) -> Any:
    """The split unit's result from its parts' results, in order."""
    import torch

    if unit.fn is generate_images:
        return (torch.cat([images for images, _flags in results]),
                [flag for _images, flags in results for flag in flags])
    if unit.fn is detect_images:
        return {key: [v for part in results for v in part[key]] for key in results[0]}
    raise ValueError(f"{unit.fn.__name__} units are not split")
