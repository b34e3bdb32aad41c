"""The machinery of the "When Are Concepts Erased?" probes that is more than a steered generation.

Diffusion completion hands a partly denoised latent from the standard model to the erased one.
`standard_prefix` is its unit (run through `ctx.run(ctx.unit(...))`): the standard model's
first k DDIM steps from each sample's own initial noise, stopped there (the pipeline's
`interrupt`, as the published probe's callback does). The erased model then completes each
latent as an ordinary cached generation (`GenerationInput.latents` + `steering={"start_step":
k}`, `samplers.steer`), so the case's images are judged and re-judged like any other.

The initial noise is drawn exactly as `generate.initial_latents` draws it (a CPU generator
seeded with the sample's seed alone; this room may not import `generate.py`), so k = 0 hands
over the very latent a plain generation of that seed starts from.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def standard_prefix(host: Any, advance: Callable[[int], None], *, prompts: list[str],
                    seeds: list[int], handover: int, steps: int, guidance: float, height: int,
                    width: int, batch_size: int) -> torch.Tensor:
    """(N, 4, h, w) float32 on the CPU: sample i's latent after the standard model's first
    `handover` of `steps` DDIM steps on prompts[i] from seeds[i]'s initial noise (0: the noise
    itself)."""
    import torch
    from diffusers import DDIMScheduler

    pipe = host.pipeline("standard")
    dtype = pipe.unet.dtype
    shape = (1, pipe.unet.config.in_channels, height // pipe.vae_scale_factor,
             width // pipe.vae_scale_factor)
    noise = [torch.randn(shape, generator=torch.Generator("cpu").manual_seed(s)) for s in seeds]
    if handover == 0:
        advance(len(seeds))
        return torch.cat(noise) if noise else torch.empty(0, *shape[1:])

    def stop(pipeline: Any, i: int, t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        if i == handover - 1:
            pipeline._interrupt = True  # the remaining steps are skipped; latents stay here
        return kwargs

    original = pipe.scheduler
    pipe.scheduler = DDIMScheduler.from_config(original.config)
    out: list[torch.Tensor] = []
    try:
        with torch.no_grad():
            uncond, _ = pipe.encode_prompt([""], pipe.device, 1, False)
            for start in range(0, len(seeds), batch_size):
                batch = range(start, min(len(seeds), start + batch_size))
                # each prompt encoded alone, as `generate` does (batch-invariant embeddings)
                embeds = torch.cat([pipe.encode_prompt([prompts[i]], pipe.device, 1, False)[0]
                                    for i in batch])
                latents = pipe(
                    prompt_embeds=embeds.to(dtype),
                    negative_prompt_embeds=uncond.expand(len(batch), -1, -1).to(dtype),
                    latents=torch.cat([noise[i] for i in batch]).to(pipe.device, dtype),
                    num_inference_steps=steps, guidance_scale=guidance, height=height,
                    width=width, output_type="latent", callback_on_step_end=stop,
                ).images
                out.append(latents.float().cpu())
                advance(len(batch))
    finally:
        pipe.scheduler = original
    return torch.cat(out)


def encode_images(host: Any, advance: Callable[[int], None], *, role: str,
                  images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Scaled VAE latents (N, 4, h, w) float32 on the CPU of images (N, 3, H, W) in [0, 1]
    through `role`'s VAE: the known part of an inpainting probe's image."""
    import torch

    from pytest_erasure.attacks.inversion import encode

    with torch.no_grad():
        latents = encode(host.pipeline(role), images, batch_size).float().cpu()
    advance(len(images))
    return latents
