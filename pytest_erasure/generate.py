"""Batched, seeded generation.

Every sample has its own seed and its own initial latent, drawn on the CPU from that seed alone,
so an image does not depend on the batch size, the device order or which xdist worker made it.
Inputs are grouped by guidance scale (a batch shares one); every batch is conditioned through
`prompt_embeds`, so typed prompts, learned embeddings and inverted latents take one code path.
A stochastic sampler (Euler ancestral) draws its per-step noise from one CPU generator per
sample, seeded from the sample's seed, for the same reason.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from pytest_erasure.memory import chunked, describe
from pytest_erasure.records import GenerationInput
from pytest_erasure.samplers import blend, resume, steer

if TYPE_CHECKING:
    import torch
    from diffusers import StableDiffusionPipeline


@dataclass(frozen=True)
class Sampling:
    """What, beyond the input, decides an image: part of every image's cache key."""

    steps: int
    guidance: float
    height: int
    width: int
    device: str
    dtype: str
    batch_invariant: bool = True
    """Whether the pipeline's layers are the batch-invariant ones (`invariant.py`): the two
    kinds of kernel give images that differ in the last bits, so they never share a cache entry."""
    sampler: dict[str, Any] | None = None
    """The scheduler in use, class and config (`ModelFacts.scheduler_key`): another sampler
    draws another image from the same initial latent."""

    def key(self) -> dict[str, Any]:
        device_type = self.device.split(":")[0]
        return {"steps": self.steps, "guidance": self.guidance, "height": self.height,
                "width": self.width, "device": device_type, "dtype": self.dtype,
                "kernels": "batch-invariant" if self.batch_invariant else "native",
                "sampler": self.sampler}


def native_size(pipe: StableDiffusionPipeline) -> int:
    return int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)


def initial_latents(pipe: StableDiffusionPipeline, item: GenerationInput, sampling: Sampling
                    ) -> torch.Tensor:
    import torch

    if item.latents is not None:
        return item.latents.detach().float().cpu().reshape(1, *item.latents.shape[-3:])
    shape = (1, pipe.unet.config.in_channels, sampling.height // pipe.vae_scale_factor,
             sampling.width // pipe.vae_scale_factor)
    return torch.randn(shape, generator=torch.Generator("cpu").manual_seed(item.seed))


def step_generator(item: GenerationInput) -> torch.Generator:
    """The CPU generator a stochastic sampler draws this sample's step noise from: seeded from
    the sample's seed alone (so not its batch), on a stream apart from its initial latent's."""
    import torch

    return torch.Generator("cpu").manual_seed((item.seed * 2_654_435_761 + 97) % 2**63)


def encode(pipe: StableDiffusionPipeline, prompts: list[str]) -> torch.Tensor:
    """Conditional text embeddings (B, 77, D) through the pipeline's own text encoder."""
    import torch

    with torch.no_grad():
        embeds, _ = pipe.encode_prompt(prompts, pipe.device, 1, False)
    return embeds


def generate(
    pipe: StableDiffusionPipeline,
    inputs: list[GenerationInput],
    sampling: Sampling,
    batch_size: int,
    *,
    callback_factory: Callable[[list[GenerationInput]], Any] | None = None,
    advance: Callable[[int], None] | None = None,
) -> tuple[torch.Tensor, list[bool]]:
    """Images (N, 3, H, W) uint8 on the CPU in input order, and which of them are degenerate.

    `callback_factory(batch)` may return a `callback_on_step_end` (IRECE) for that batch.
    """
    import torch

    dtype = getattr(torch, sampling.dtype)
    out: list[torch.Tensor | None] = [None] * len(inputs)
    degenerate: list[bool] = [False] * len(inputs)
    groups: dict[tuple[float, str], list[int]] = {}
    for i, item in enumerate(inputs):
        g = sampling.guidance if item.guidance is None else item.guidance
        steering = json.dumps(item.steering, sort_keys=True) if item.steering else ""
        groups.setdefault((g, steering), []).append(i)
    uncond = encode(pipe, [""])
    for (guidance, steering), indices in groups.items():
        def run(start: int, stop: int, guidance: float = guidance, indices: list[int] = indices,
                steering: str = steering) -> None:
            chunk = indices[start:stop]
            batch = [inputs[i] for i in chunk]
            embeds = _conditioning(pipe, batch).to(pipe.device, dtype)
            spec = json.loads(steering) if steering else {}
            box = spec.get("inpaint_box")
            # Inpainting: the input's latents are the known image's; it starts from its noise.
            latents = torch.cat([initial_latents(pipe, replace(b, latents=None)
                                                 if box else b, sampling) for b in batch])
            kwargs: dict[str, Any] = {}
            callback = callback_factory(batch) if callback_factory else None
            entry = None
            if callback is not None and spec.get("start_step"):  # entered late: its offset
                callback = resume(callback, int(spec["start_step"]))
                entry = callback.enter
            if box:
                known = torch.cat([initial_latents(pipe, b, sampling) for b in batch])
                callback = blend(known.to(pipe.device, dtype), latents.to(pipe.device, dtype),
                                 box, callback)
            if callback is not None:
                kwargs["callback_on_step_end"] = callback
                kwargs["callback_on_step_end_tensor_inputs"] = list(
                    getattr(callback, "tensor_inputs", ["latents"]))
            # A probe's steering (samplers.steer): its scheduler for this call only.
            scheduler, steered = steer(pipe, spec or None)
            kwargs.update(steered)
            original, pipe.scheduler = pipe.scheduler, scheduler
            with torch.no_grad(), _restored(pipe, original):
                latents = latents.to(pipe.device, dtype)
                if entry is not None:  # the defense's call due on the entry latent
                    scheduler.set_timesteps(sampling.steps, device=pipe.device)
                    latents = entry(pipe, latents)
                images = pipe(
                    prompt_embeds=embeds,
                    negative_prompt_embeds=uncond.expand(len(batch), -1, -1).to(
                        pipe.device, dtype),
                    latents=latents,
                    generator=[step_generator(b) for b in batch],
                    num_inference_steps=sampling.steps,
                    guidance_scale=guidance,
                    height=sampling.height,
                    width=sampling.width,
                    output_type="pt",
                    return_dict=True,
                    **kwargs,
                ).images
            images = images.float().cpu()
            for j, i in enumerate(chunk):
                image = images[j]
                bad = bool(torch.isnan(image).any() or torch.isinf(image).any())
                image = torch.nan_to_num(image, nan=0.0).clamp(0, 1)
                as_uint8 = (image * 255).round().to(torch.uint8)
                # A constant image (blacked out by a safety checker, or a broken model) carries
                # no evidence either way: flagged, never scored as "concept absent".
                bad = bad or int(as_uint8.max()) - int(as_uint8.min()) <= 2
                out[i], degenerate[i] = as_uint8, bad
            if advance:
                advance(len(chunk))

        batch_size = chunked("generation", len(indices), batch_size, run, lambda: describe(
            pipe, f"generating {sampling.height}x{sampling.width} images", sampling.dtype))
    return torch.stack(out), degenerate  # type: ignore[arg-type]


def _conditioning(pipe: StableDiffusionPipeline, batch: list[GenerationInput]) -> torch.Tensor:
    """(B, 77, D) conditional embeddings. Each distinct prompt is encoded alone: an embedding must
    not depend on which prompts share its batch (elementwise kernels split a tensor among threads
    at sizes that depend on the batch, see invariant.py), and a prompt repeated over many seeds
    is encoded once."""
    import torch

    encoded = {p: encode(pipe, [p])[0] for p in dict.fromkeys(
        b.prompt or "" for b in batch if b.prompt_embeds is None)}
    rows = []
    for b in batch:
        if b.prompt_embeds is not None:
            rows.append(b.prompt_embeds.reshape(-1, b.prompt_embeds.shape[-1]).to(pipe.device))
        else:
            rows.append(encoded[b.prompt or ""])
    return torch.stack([r.to(rows[0].dtype) for r in rows])


@contextmanager
def _restored(pipe: StableDiffusionPipeline, scheduler: Any) -> Iterator[None]:
    """The pipeline's own scheduler back after a steered call, however it ends."""
    try:
        yield
    finally:
        pipe.scheduler = scheduler
