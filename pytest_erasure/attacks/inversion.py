"""DDIM inversion of real images into initial latents, its reconstruction check, and the
perturbations a black-box attacker's copy of an image went through.

`ddim_invert` runs our own loop with `DDIMInverseScheduler.from_config(pipe.scheduler.config)`:
the VAE posterior mean of each image, then the deterministic DDIM update run backwards from
t = 0 to t = T. Regenerating the result with the same prompt, guidance and number of DDIM steps
lands close to the image again. `reconstruction_error` measures how close, against the VAE's own
round trip as the floor: a failed inversion must never pass for a successful erasure.

Nothing here changes the pipeline: schedulers are fresh copies made from its config.

Precision: `ddim_invert` and `denoise` carry the latent in float32 whatever the model's dtype,
and run the scheduler step in float32; only the UNet's input is cast to the model's dtype (and
its output back). Fifty DDIM steps accumulated in a half-precision latent add fifty roundings
of the latent itself (bfloat16 keeps 8 bits of mantissa) on top of the UNet's own error; in
float32 only the UNet's error remains (tests/unit/test_latent.py measures both on a bf16 UNet).
For a float32 model nothing changes: the casts are no-ops.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from pytest_erasure.errors import ErasureInputError
from pytest_erasure.memory import chunked, describe

if TYPE_CHECKING:
    import torch
    from diffusers import StableDiffusionPipeline

PERTURBATIONS: dict[str, tuple[float, float, float, str]] = {
    # name: (default strength, lowest, highest, meaning of the strength)
    "noise": (0.05, 0.0, 1.0, "std of added Gaussian noise, images in [0, 1]"),
    "blur": (1.0, 0.0, 16.0, "Gaussian blur sigma in pixels"),
    "jpeg": (50.0, 1.0, 100.0, "JPEG quality (PIL), lower is stronger"),
    "resize": (0.5, 0.05, 1.0, "downscale factor before scaling back up"),
}
SYNTAX = "comma-separated name:strength, e.g. noise:0.05,blur:1,jpeg:50,resize:0.5 (or 'none')"


def validate_steps(pipe: StableDiffusionPipeline, steps: int, name: str = "--inversion-steps"
                   ) -> None:
    check_steps(pipe.scheduler.config.num_train_timesteps, steps, name)


def check_steps(limit: int, steps: int, name: str = "--inversion-steps") -> None:
    """`validate_steps` given the scheduler's num_train_timesteps, so a caller that knows it
    without a pipeline (a cached model identity) checks the same way."""
    if not 1 <= steps <= limit:
        raise ErasureInputError(name, f"is {steps}",
                                f"give a number of DDIM steps between 1 and the scheduler's "
                                f"num_train_timesteps ({limit})")


def _text(pipe: StableDiffusionPipeline, prompt: str | None, prompt_embeds: torch.Tensor | None,
          guidance: float) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(cond (1, 77, D), uncond or None when no guidance is applied)."""
    import torch

    device = pipe.unet.device
    with torch.no_grad():
        cond, uncond = pipe.encode_prompt(prompt, device, 1, guidance > 1.0,
                                          prompt_embeds=prompt_embeds)
    return cond.detach(), (uncond.detach() if uncond is not None else None)


def _eps(pipe: StableDiffusionPipeline, latents: torch.Tensor, t: torch.Tensor,
         cond: torch.Tensor, uncond: torch.Tensor | None, guidance: float) -> torch.Tensor:
    import torch

    n = len(latents)
    if uncond is None:
        return pipe.unet(latents, t, encoder_hidden_states=cond.expand(n, -1, -1)).sample
    both = torch.cat([uncond.expand(n, -1, -1), cond.expand(n, -1, -1)])
    e_u, e_c = pipe.unet(torch.cat([latents, latents]), t, encoder_hidden_states=both
                         ).sample.chunk(2)
    return e_u + guidance * (e_c - e_u)


def encode(pipe: StableDiffusionPipeline, images: torch.Tensor, batch_size: int = 16
           ) -> torch.Tensor:
    """Scaled VAE posterior means of images (N, 3, H, W) in [0, 1]: (N, 4, H/8, W/8)."""
    import torch

    vae, out = pipe.vae, []

    def run(i: int, stop: int) -> None:
        with torch.no_grad():
            x = images[i:stop].to(vae.device, vae.dtype) * 2 - 1
            out.append(vae.encode(x).latent_dist.mean)

    chunked("vae encode", len(images), batch_size, run, lambda: _describe(pipe, images, "encoding"))
    return torch.cat(out) * vae.config.scaling_factor


def decode(pipe: StableDiffusionPipeline, latents: torch.Tensor, batch_size: int = 16
           ) -> torch.Tensor:
    """Images in [0, 1], float32 on the CPU."""
    import torch

    vae, out = pipe.vae, []

    def run(i: int, stop: int) -> None:
        with torch.no_grad():
            z = latents[i:stop].to(vae.device, vae.dtype) / vae.config.scaling_factor
            out.append(((vae.decode(z).sample.float() + 1) / 2).clamp(0, 1).cpu())

    chunked("vae decode", len(latents), batch_size, run, lambda: _describe(pipe, latents, "decoding"))
    return torch.cat(out)


def ddim_invert(
    pipe: StableDiffusionPipeline,
    images: torch.Tensor,
    *,
    prompt: str = "",
    steps: int = 25,
    guidance: float = 1.0,
    batch_size: int = 16,
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Initial latents (N, 4, h, w), float32 on the CPU, that DDIM with `steps` steps turns
    back into `images` (N, 3, H, W) in [0, 1]. Guidance above 1 applies classifier-free guidance
    during inversion (usually worse: the trajectory no longer matches the sampler's).
    `progress` advances by one per UNet step of each batch."""
    import torch
    from diffusers import DDIMInverseScheduler

    validate_steps(pipe, steps)
    scheduler = DDIMInverseScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(steps)
    cond, uncond = _text(pipe, prompt, None, guidance)
    dtype = pipe.unet.dtype
    out = []

    def run(i: int, stop: int) -> None:
        # The latent accumulates in float32 (see the module docstring); only the UNet's input
        # is cast to the model's dtype.
        latents = encode(pipe, images[i:stop], batch_size).float()
        with torch.no_grad():
            for t in scheduler.timesteps:
                eps = _eps(pipe, latents.to(dtype), t.to(latents.device), cond.to(dtype),
                           None if uncond is None else uncond.to(dtype), guidance)
                latents = scheduler.step(eps.float(), t, latents).prev_sample
                if progress is not None:
                    progress(1)
        out.append(latents.float().cpu())

    chunked("ddim inversion", len(images), batch_size, run,
            lambda: _describe(pipe, images, "inverting"))
    return torch.cat(out)


def denoise(
    pipe: StableDiffusionPipeline,
    latents: torch.Tensor,
    *,
    prompt: str | None = "",
    prompt_embeds: torch.Tensor | None = None,
    steps: int = 25,
    guidance: float = 1.0,
    batch_size: int = 16,
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Denoise given initial latents as `StableDiffusionPipeline.__call__` does (the pipe's own
    sampler, a fresh copy of it; init_noise_sigma scaling; CFG only when guidance > 1): final
    latents, float32 on the CPU. Deterministic for deterministic samplers (DDIM, eta 0)."""
    import torch

    validate_steps(pipe, steps, "--steps")
    cond, uncond = _text(pipe, None if prompt_embeds is not None else prompt, prompt_embeds,
                         guidance)
    device, dtype = pipe.unet.device, pipe.unet.dtype
    cond = cond.to(dtype)
    uncond = None if uncond is None else uncond.to(dtype)
    out = []

    def run(i: int, stop: int) -> None:
        scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
        scheduler.set_timesteps(steps, device=device)
        x = latents[i:stop].to(device, torch.float32) * scheduler.init_noise_sigma
        with torch.no_grad():
            for t in scheduler.timesteps:
                eps = _eps(pipe, scheduler.scale_model_input(x, t).to(dtype), t, cond, uncond,
                           guidance)
                x = scheduler.step(eps.float(), t, x).prev_sample
                if progress is not None:
                    progress(1)
        out.append(x.float().cpu())

    chunked("denoise", len(latents), batch_size, run, lambda: _describe(pipe, latents, "denoising"))
    return torch.cat(out)


def _describe(pipe: StableDiffusionPipeline, batch: torch.Tensor, doing: str) -> str:
    h, w = batch.shape[-2:]
    if batch.shape[-3] == pipe.unet.config.in_channels:  # latents: the images are 8x larger
        h, w = h * pipe.vae_scale_factor, w * pipe.vae_scale_factor
    return describe(pipe, f"{doing} {h}x{w} images", pipe.unet.dtype)


def regenerate(pipe: StableDiffusionPipeline, latents: torch.Tensor, **kwargs: Any
               ) -> torch.Tensor:
    """`denoise` then decode: images in [0, 1], float32 on the CPU."""
    return decode(pipe, denoise(pipe, latents, **kwargs), kwargs.get("batch_size", 16))


def psnr(mse: float) -> float:
    """Peak signal-to-noise ratio in dB for images in [0, 1]."""
    return float("inf") if mse <= 0 else 10 * math.log10(1.0 / mse)


def reconstruction_error(
    pipe: StableDiffusionPipeline,
    latents: torch.Tensor,
    images: torch.Tensor,
    prompt: str = "",
    steps: int = 25,
    guidance: float = 1.0,
    *,
    batch_size: int = 16,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Regenerate `latents` with `prompt` and compare with `images` (the inversion's inputs).

    Returns mse / psnr of the regeneration against the images, per-image mse, the VAE's own
    round trip (encode-decode) as `vae_mse` / `vae_psnr` (the best any inversion can do through
    this VAE), and `inversion_mse` / `inversion_psnr`: the regeneration against that round trip,
    the error of the inversion alone; `latent_mse` is the same in latent space (beside
    `latent_variance`, the encoded latents' variance, for scale). An inversion whose psnr is
    far below vae_psnr did not reproduce its images, and what the detector sees in its
    regenerations says little about erasure.
    """
    images = images.float().cpu()
    final = denoise(pipe, latents, prompt=prompt, steps=steps, guidance=guidance,
                    batch_size=batch_size, progress=progress)
    regenerated = decode(pipe, final, batch_size)
    per_image = ((regenerated - images) ** 2).flatten(1).mean(1)
    encoded = encode(pipe, images, batch_size).float().cpu()
    vae_round_trip = decode(pipe, encoded, batch_size)
    vae_mse = float(((vae_round_trip - images) ** 2).mean())
    mse = float(per_image.mean())
    inversion_mse = float(((regenerated - vae_round_trip) ** 2).mean())
    return {
        "mse": mse,
        "psnr": psnr(mse),
        "per_image_mse": [float(v) for v in per_image],
        "vae_mse": vae_mse,
        "vae_psnr": psnr(vae_mse),
        "inversion_mse": inversion_mse,
        "inversion_psnr": psnr(inversion_mse),
        "latent_mse": float(((final - encoded) ** 2).mean()),
        "latent_variance": float(encoded.var()),
        "prompt": prompt,
        "steps": steps,
        "guidance": guidance,
        "sampler": type(pipe.scheduler).__name__,
    }


# ---- perturbations (black-box: the attacker holds a degraded copy of the image) ----------------

def parse_perturbations(spec: str | Sequence[str] | None) -> list[str]:
    """'noise:0.05,blur:1' -> ['noise:0.05', 'blur:1']: validated, normalised, in order.
    A bare name takes its default strength; '', 'none' and None mean no perturbation."""
    if spec is None:
        return []
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out = []
    for raw in items:
        item = raw.strip()
        if not item or item.lower() == "none":
            continue
        name, _, value = item.partition(":")
        name = name.strip().lower()
        if name not in PERTURBATIONS:
            raise ErasureInputError("--latent-perturbations", f"names unknown transform {name!r}",
                                    f"use {', '.join(PERTURBATIONS)} as {SYNTAX}")
        default, low, high, meaning = PERTURBATIONS[name]
        try:
            strength = float(value) if value.strip() else default
        except ValueError:
            raise ErasureInputError("--latent-perturbations", f"{item!r} has no number",
                                    f"write {SYNTAX}") from None
        if not low <= strength <= high:
            raise ErasureInputError("--latent-perturbations", f"{item!r} is out of range",
                                    f"{name} strength is the {meaning}, in [{low}, {high}]")
        out.append(f"{name}:{strength:g}")
    return out


def perturb(images: torch.Tensor, transforms: Sequence[str], seed: int = 0) -> torch.Tensor:
    """Apply transforms ('name:strength', in order) to images (N, 3, H, W) in [0, 1].

    Deterministic for a seed (only `noise` draws random numbers, from a CPU generator).
    """
    import torch
    from torch.nn import functional as F

    x = images.float().cpu().clamp(0, 1)
    generator = torch.Generator().manual_seed(seed)
    for item in parse_perturbations(transforms):
        name, _, value = item.partition(":")
        strength = float(value)
        if name == "noise":
            x = x + strength * torch.randn(x.shape, generator=generator)
        elif name == "blur" and strength > 0:
            radius = max(1, math.ceil(3 * strength))
            k = torch.arange(-radius, radius + 1, dtype=torch.float32)
            k = torch.exp(-(k ** 2) / (2 * strength ** 2))
            k = (k / k.sum()).view(1, 1, 1, -1).repeat(3, 1, 1, 1)
            pad = min(radius, x.shape[-1] - 1, x.shape[-2] - 1)
            x = F.pad(x, (pad, pad, pad, pad), mode="reflect")
            if pad < radius:
                x = F.pad(x, (radius - pad,) * 4, mode="replicate")
            x = F.conv2d(F.conv2d(x, k, groups=3), k.transpose(-1, -2), groups=3)
        elif name == "jpeg":
            x = _jpeg(x, int(round(strength)))
        elif name == "resize" and strength < 1:
            h, w = x.shape[-2:]
            small = (max(1, round(h * strength)), max(1, round(w * strength)))
            x = F.interpolate(x, size=small, mode="bilinear", antialias=True,
                              align_corners=False)
            x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
        x = x.clamp(0, 1)
    return x


def _jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    import numpy as np
    import torch
    from PIL import Image

    out = []
    for image in x:
        array = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="JPEG", quality=quality)
        buffer.seek(0)
        decoded = np.asarray(Image.open(buffer).convert("RGB"), dtype=np.float32) / 255
        out.append(torch.from_numpy(decoded).permute(2, 0, 1))
    return torch.stack(out)


# ---- the adaptive inversion: optimise the latent through the defended sampler -----------------

class SamplingDefense(Protocol):
    """A defense inside a differentiable denoising loop: what `adaptive_invert` optimises
    through (`defenses.irece.IreceSurrogate.sampling` builds IRECE's). Called after every
    sampler step, like a diffusers `callback_on_step_end`, with the step's latent (carrying
    gradient); returns the latent the next step denoises (the same object where the defense
    does nothing). `draw` picks the defense's randomness: a different draw per optimisation
    step is the expectation over it."""

    def __call__(self, scheduler: Any, step_index: int, timestep: Any, latents: torch.Tensor,
                 draw: int) -> torch.Tensor:
        ...


ADAPTIVE_INVERSION_VERSION = 1
"""Bumped when what `adaptive_invert` finds changes (its cache key)."""


def defended_denoise(pipe: StableDiffusionPipeline, latents: torch.Tensor, *,
                     cond: torch.Tensor, uncond: torch.Tensor | None, guidance: float,
                     steps: int, defense: SamplingDefense | None, draw: int,
                     checkpoint: bool = True) -> torch.Tensor:
    """`denoise`'s loop with gradients, the defense applied after each step as the pipeline's
    callback applies it: the final latent (float32) as a differentiable function of the
    initial one. `checkpoint` recomputes each step's UNet activations in the backward pass
    instead of keeping all `steps` of them (memory of one step, one extra forward per step:
    what makes SD v1.4's 50 steps fit). A stochastic sampler (Euler ancestral) draws its step
    noise from torch's global generator here, not from the generation's per-image generators:
    the attacker optimises against other noise than the audit then draws (DDIM, the default,
    draws none)."""
    from torch.utils.checkpoint import checkpoint as recompute

    scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
    scheduler.set_timesteps(steps, device=latents.device)
    dtype = pipe.unet.dtype
    x = latents.float() * scheduler.init_noise_sigma
    for i, t in enumerate(scheduler.timesteps):
        def step(x: torch.Tensor, t: torch.Tensor = t) -> torch.Tensor:
            model_input = scheduler.scale_model_input(x, t).to(dtype)
            return _eps(pipe, model_input, t, cond, uncond, guidance).float()

        eps = recompute(step, x, use_reentrant=False) if checkpoint and x.requires_grad \
            else step(x)
        x = scheduler.step(eps, t, x).prev_sample
        if defense is not None:
            x = defense(scheduler, i, t, x, draw)
    return x


def adaptive_invert(
    pipe: StableDiffusionPipeline,
    latents: torch.Tensor,
    targets: torch.Tensor,
    defense: SamplingDefense,
    *,
    prompt: str | None = "",
    prompt_embeds: torch.Tensor | None = None,
    steps: int = 25,
    guidance: float = 1.0,
    iterations: int = 20,
    lr: float = 0.05,
    evaluations: int = 4,
    seed: int = 0,
    batch_size: int = 16,
    checkpoint: bool | None = None,
    progress: Callable[[int], None] | None = None,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """DDIM-inverted `latents` (N, 4, h, w) refined so that the *defended* sampler (the
    pipeline's own, with `prompt` and `guidance`, `defense` after each step) lands on
    `targets` (the references' scaled VAE latents): the adaptive attacker's inversion. Returns
    (latents float32 on the CPU, facts).

    The objective: each image's mean squared error between the final latent of
    `defended_denoise` and its target, averaged over the defense's randomness (expectation
    over transformation: each optimisation step draws the defense anew, `draw` = the step's
    index offset by `seed`), minimised by Adam over the initial latent. Images are optimised
    in batches of `batch_size` with the sum of their losses: Adam is elementwise, so each image
    follows its own loss's gradient as if alone. The gradient is exact through every denoising
    step (unrolled; `checkpoint`ed, by default on CUDA only, where SD v1.4's 50 steps of
    activations would not fit) and through whatever the defense does differentiably; where it
    is not differentiable the defense says what it assumes (IRECE: `defenses.irece.
    IreceSampling`).

    Per image the attacker keeps the better of the inverted latent it started from (the
    transfer attacker's) and the refined one, by its own objective on `evaluations` fixed
    draws it never trained on; not by the audit's detector, which an attacker does not have.
    So the result is never worse than the transfer latent at what the attacker can measure;
    `facts["kept"]` says which won, per image.

    Deterministic for a seed (the defense's draws are seeded; Adam is deterministic on one
    device). Costs iterations x steps x (forward + backward, + a recomputed forward when
    checkpointed) UNet passes per batch, plus 2 x evaluations defended denoisings without
    gradient. `progress` advances by one per optimisation step of each batch."""
    import torch

    validate_steps(pipe, steps, "--steps")
    if iterations < 0:
        raise ErasureInputError("--inversion-adaptive-steps", f"is {iterations}",
                                "give a number of optimisation steps >= 0")
    device = pipe.unet.device
    if checkpoint is None:
        checkpoint = device.type == "cuda"
    cond, uncond = _text(pipe, None if prompt_embeds is not None else prompt, prompt_embeds,
                         guidance)
    dtype = pipe.unet.dtype
    cond = cond.to(dtype)
    uncond = None if uncond is None else uncond.to(dtype)
    held_out = [seed * 7919 + 1_000_000 + k for k in range(evaluations)]

    def run(x: torch.Tensor, draw: int, grad: bool) -> torch.Tensor:
        return defended_denoise(pipe, x, cond=cond, uncond=uncond, guidance=guidance,
                                steps=steps, defense=defense, draw=draw,
                                checkpoint=bool(checkpoint) and grad)

    def objective(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per image, the error averaged over the held-out draws."""
        with torch.no_grad():
            total = torch.zeros(len(x), device=x.device)
            for d in held_out:
                total += ((run(x, d, False) - target) ** 2).flatten(1).mean(1)
            return total / max(1, len(held_out))

    out, kept, losses, before, after = [], [], [], [], []
    for i in range(0, len(latents), batch_size):
        start = latents[i:i + batch_size].to(device, torch.float32)
        target = targets[i:i + batch_size].to(device, torch.float32)
        start_loss = objective(start, target)
        x = start.clone().requires_grad_(True)
        optimizer = torch.optim.Adam([x], lr=lr)
        curve = []
        for k in range(iterations):
            per_image = ((run(x, seed + k, True) - target) ** 2).flatten(1).mean(1)
            optimizer.zero_grad(set_to_none=True)
            per_image.sum().backward()
            optimizer.step()
            curve.append(float(per_image.detach().mean()))
            if progress is not None:
                progress(1)
        best, best_loss = start, start_loss
        refined = torch.zeros(len(start), dtype=torch.bool, device=start.device)
        if iterations:
            candidate = x.detach()
            candidate_loss = objective(candidate, target)
            refined = candidate_loss < start_loss
            best = torch.where(refined.view(-1, 1, 1, 1), candidate, start)
            best_loss = torch.where(refined, candidate_loss, start_loss)
        out.append(best.float().cpu())
        kept += ["refined" if r else "inverted" for r in refined.tolist()]
        before += [round(float(v), 6) for v in start_loss]
        after += [round(float(v), 6) for v in best_loss]
        losses.append([round(v, 6) for v in curve])
    facts = {"kept": kept, "objective_inverted": before, "objective_kept": after,
             "loss_curves": losses, "iterations": iterations, "lr": lr,
             "evaluations": evaluations, "seed": seed}
    return torch.cat(out), facts
