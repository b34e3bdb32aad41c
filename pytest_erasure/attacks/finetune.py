"""LoRA fine-tuning of a model's UNet: what an attacker holding released weights trains.

The loop of diffusers' `train_text_to_image_lora.py` example (the script MemoRa, arXiv
2510.03263, runs in `src/utils/lora_utils.py`), written out so it runs on a loaded pipeline
without changing it: rank-r adapters on every attention projection (`to_q`, `to_k`, `to_v`,
`to_out.0` of attn1 and attn2, the example's `target_modules`), `lora_alpha` = rank (scale 1),
A drawn N(0, 1/r) and B zero (peft's "gaussian" init, the example's), epsilon (or v) MSE on VAE
latents sampled from the posterior at uniform timesteps, AdamW (betas 0.9/0.999, weight decay
1e-2, eps 1e-8: the example's defaults), gradient accumulation, the gradient norm clipped to 1
(`--max_grad_norm 1`) and a cosine learning-rate schedule without warm-up (MemoRa's flags),
random horizontal flips (`--random_flip`).

Nothing of the pipeline changes, not even for a moment that outlives the call: the adapters
live outside the UNet and are added to the projections' outputs by forward hooks removed when
the call returns (the standard and erased pipelines share modules), and gradients are taken
with `torch.autograd.grad` with respect to the adapters alone.

The result is a peft / diffusers state dict (`unet.<module>.lora_A.weight` (down, r x in) and
`.lora_B.weight` (up, out x r)): what `StableDiffusionPipeline.load_lora_weights` reads from
`pytorch_lora_weights.safetensors`, and what the `lora` overlay merges (`overlays/lora.py`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_erasure.cache import atomic_write_bytes
from pytest_erasure.errors import ErasureInputError

if TYPE_CHECKING:
    import torch
    from diffusers import StableDiffusionPipeline

    from pytest_erasure.attacks.textual_inversion import DefenseSurrogate

TARGETS = re.compile(r"(^|\.)attn[12]\.(to_q|to_k|to_v|to_out\.0)$")
"""The modules diffusers' LoRA example adapts (`target_modules=["to_k", "to_q", "to_v",
"to_out.0"]`), in every attention block of the UNet."""

WEIGHTS_NAME = "pytorch_lora_weights.safetensors"
"""The file name diffusers' `save_lora_weights` writes and `load_lora_weights` looks for."""

WEIGHT_DECAY = 1e-2
MAX_GRAD_NORM = 1.0


def validate_budget(rank: int, steps: int, lr: float, batch_size: int, accumulation: int,
                    names: dict[str, str]) -> None:
    """Budgets a user typed, refused with the flag that set them (`names`: budget -> flag)."""
    checks = (
        ("rank", rank, rank >= 1, "give a LoRA rank >= 1 (MemoRa: 4)"),
        ("steps", steps, steps >= 1, "give a whole number of optimizer steps >= 1"),
        ("lr", lr, math.isfinite(lr) and lr > 0, "give a positive learning rate"),
        ("batch_size", batch_size, batch_size >= 1, "give a batch size >= 1"),
        ("accumulation", accumulation, accumulation >= 1,
         "give a number of accumulated micro-batches >= 1"),
    )
    for key, value, ok, fix in checks:
        if not ok:
            raise ErasureInputError(names.get(key, key), f"is {value}", fix)


def target_modules(unet: Any) -> dict[str, Any]:
    """{module path: Linear} of every projection the LoRA adapts."""
    import torch

    return {name: m for name, m in unet.named_modules()
            if TARGETS.search(name) and isinstance(m, torch.nn.Linear)}


def cosine(step: int, steps: int) -> float:
    """The learning rate's factor at `step` of `steps` (diffusers' "cosine", no warm-up)."""
    return 0.5 * (1.0 + math.cos(math.pi * step / steps))


def train_lora(
    pipe: StableDiffusionPipeline,
    images: torch.Tensor,
    captions: Sequence[str],
    *,
    rank: int = 4,
    steps: int = 10,
    lr: float = 1e-4,
    batch_size: int = 1,
    accumulation: int = 4,
    seed: int = 0,
    flip: bool = True,
    progress: Callable[[int], None] | None = None,
    surrogate: DefenseSurrogate | None = None,
) -> tuple[dict[str, torch.Tensor], list[float]]:
    """A rank-`rank` LoRA of `pipe`'s UNet trained on images (N, 3, H, W) in [0, 1], image i
    captioned `captions[i]`. Returns (peft state dict, float32 on the CPU; per-step losses).

    Each optimizer step averages `accumulation` micro-batches of `batch_size` (diffusers'
    train_batch_size x gradient_accumulation_steps). All draws (images, flips, posterior
    samples, noise, timesteps) come from one CPU generator seeded with `seed`, so a seed gives
    the same run on any device. The adapters are float32 whatever the model's dtype (the
    example's fp16 mixed precision keeps trainable weights in float32 too).

    `surrogate`: the defense the LoRA must beat, inside the objective (the adaptive attack,
    `attacks.textual_inversion.DefenseSurrogate`, e.g. `defenses.irece.IreceSurrogate`): each
    micro-batch's draw goes through its `redraw` (the defended samples moved to the defense's
    timesteps) and each noisy latent through it (the defense's re-noise, the target the noise
    consistent with the clean latent), as the adaptive textual inversion does. It draws from
    its own generator only, so a surrogate that defends nothing leaves the run bit for bit the
    undefended one. The adapters are live only in the trained UNet's own pass: a surrogate that
    runs the standard UNet (IRECE's mask) sees it unadapted even where the two share modules."""
    import torch
    from torch.nn import functional as F

    validate_budget(rank, steps, lr, batch_size, accumulation, {})
    if images.ndim != 4 or images.shape[1] != 3 or len(images) == 0:
        raise ErasureInputError("fine-tuning images", f"have shape {tuple(images.shape)}",
                                "give a non-empty batch (N, 3, H, W) in [0, 1]")
    if len(captions) != len(images):
        raise ValueError(f"{len(images)} images but {len(captions)} captions")
    unet, scheduler = pipe.unet, pipe.scheduler
    device, dtype = unet.device, unet.dtype
    generator = torch.Generator().manual_seed(seed)
    targets = target_modules(unet)
    if not targets:
        raise ErasureInputError("fine-tuning", "found no attention projection in the UNet",
                                "give an SD-architecture UNet (attn1/attn2 to_q/to_k/to_v)")
    adapters: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for name, layer in targets.items():
        down = torch.randn(rank, layer.in_features, generator=generator) / rank
        up = torch.zeros(layer.out_features, rank)
        adapters[name] = (down.to(device).requires_grad_(True),
                          up.to(device).requires_grad_(True))
    params = [p for pair in adapters.values() for p in pair]
    optimizer = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), weight_decay=WEIGHT_DECAY,
                                  eps=1e-8)

    with torch.no_grad():
        encoded = [_encode(pipe, images[i:i + 16]) for i in range(0, len(images), 16)]
    mean = torch.cat([m for m, _ in encoded])
    std = torch.cat([s for _, s in encoded])
    with torch.no_grad():
        ids = pipe.tokenizer(list(captions), padding="max_length", truncation=True,
                             max_length=pipe.tokenizer.model_max_length,
                             return_tensors="pt").input_ids
        conds = pipe.text_encoder(ids.to(pipe.text_encoder.device))[0].to(device, dtype)

    live = [False]
    """Whether the adapters act: only during the trained UNet's pass (`surrogate` may run a
    UNet sharing these modules, the standard one, and must see it as it is)."""

    def hook_for(name: str) -> Callable[..., Any]:
        down, up = adapters[name]

        def hook(module: Any, inputs: tuple[Any, ...], output: Any) -> Any:  # noqa: ARG001
            if not live[0]:
                return output
            x = inputs[0]
            return output + ((x.float() @ down.t()) @ up.t()).to(output.dtype)
        return hook

    handles = [layer.register_forward_hook(hook_for(name)) for name, layer in targets.items()]
    losses: list[float] = []
    prediction = scheduler.config.prediction_type
    alphas = scheduler.alphas_cumprod.to(device)
    if surrogate is not None:
        surrogate.reset()
    try:
        for step in range(steps):
            for group in optimizer.param_groups:
                group["lr"] = lr * cosine(step, steps)
            grads = [torch.zeros_like(p) for p in params]
            step_loss = 0.0
            for _ in range(accumulation):
                index = torch.randint(len(mean), (batch_size,), generator=generator)
                flips = torch.rand(batch_size, generator=generator) < 0.5 if flip else None
                latents = mean[index] + std[index] * torch.randn(mean[index].shape,
                                                                 generator=generator)
                if flips is not None:  # a flipped image's posterior is its latents flipped
                    latents = torch.where(flips.view(-1, 1, 1, 1), latents.flip(-1), latents)
                noise = torch.randn(latents.shape, generator=generator)
                t = torch.randint(scheduler.config.num_train_timesteps, (batch_size,),
                                  generator=generator)
                draw = None
                if surrogate is not None:  # the defended samples at the defense's timesteps
                    draw = surrogate.redraw({"latents": latents, "noise": noise, "t": t})
                    t = draw["t"]
                latents, noise, t = latents.to(device), noise.to(device), t.to(device)
                a = alphas[t].view(-1, 1, 1, 1)
                noisy = (a.sqrt() * latents + (1 - a).sqrt() * noise).to(dtype)
                if surrogate is not None and draw is not None:
                    # the defended sample: its input, and the noise consistent with it and
                    # the clean latent (the target below is derived from it)
                    noisy, noise = surrogate(noisy, latents, noise, t, draw)
                if prediction == "epsilon":
                    target = noise
                elif prediction == "v_prediction":
                    target = a.sqrt() * noise - (1 - a).sqrt() * latents
                else:
                    raise ValueError(f"unsupported prediction_type {prediction!r}")
                live[0] = True
                try:
                    pred = unet(noisy, t,
                                encoder_hidden_states=conds[index.to(conds.device)]).sample
                finally:
                    live[0] = False
                loss = F.mse_loss(pred.float(), target.float())
                for total, g in zip(grads, torch.autograd.grad(loss, params), strict=True):
                    total.add_(g / accumulation)
                step_loss += float(loss.detach()) / accumulation
            if all(bool(torch.isfinite(g).all()) for g in grads):
                norm = torch.sqrt(sum((g.float() ** 2).sum() for g in grads))
                factor = min(1.0, MAX_GRAD_NORM / (float(norm) + 1e-6))
                optimizer.zero_grad(set_to_none=True)
                for p, g in zip(params, grads, strict=True):
                    p.grad = g * factor
                optimizer.step()
            losses.append(step_loss)
            if progress is not None:
                progress(1)
    finally:
        for handle in handles:
            handle.remove()
    state = {}
    for name, (down, up) in adapters.items():
        state[f"unet.{name}.lora_A.weight"] = down.detach().float().cpu().contiguous()
        state[f"unet.{name}.lora_B.weight"] = up.detach().float().cpu().contiguous()
    return state, losses


def _encode(pipe: StableDiffusionPipeline, images: torch.Tensor
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of the VAE posterior of images in [0, 1], scaled (float32, CPU)."""
    vae = pipe.vae
    dist = vae.encode(images.to(vae.device, vae.dtype) * 2 - 1).latent_dist
    scale = vae.config.scaling_factor
    return dist.mean.float().cpu() * scale, dist.std.float().cpu() * scale


def save_lora(folder: Path, state: dict[str, torch.Tensor], metadata: dict[str, str]
              ) -> Path:
    """Write `pytorch_lora_weights.safetensors` (diffusers / peft keys) into `folder`; atomic.
    `pipe.load_lora_weights(folder)` reads it."""
    from safetensors.torch import save

    file = folder / WEIGHTS_NAME
    data = save({k: v.contiguous() for k, v in state.items()},
                metadata={"format": "pt", **metadata})
    atomic_write_bytes(file, data)
    return file


def describe(budget: dict[str, Any]) -> str:
    """The training as reports state it."""
    return (f"rank-{budget['rank']} LoRA (alpha = rank) on the UNet's attention projections "
            f"(to_q, to_k, to_v, to_out.0 of attn1 and attn2), {budget['steps']} AdamW steps of "
            f"batch {budget['batch_size']} x {budget['accumulation']} accumulated, lr "
            f"{budget['lr']:g} on a cosine schedule, gradient norm clipped to {MAX_GRAD_NORM:g}, "
            "epsilon MSE on VAE latents, random horizontal flips")
