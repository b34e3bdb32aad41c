"""RECALL's image-side attack (Liu et al., "Image Can Bring Your Memory Back", ICLR 2026): momentum
PGD on the latent an img2img generation starts from.

Read from the authors' public code (attack.py `pgd_attack_with_momentum`, `loss_adv`; models.py
`SDAModel`), not the paper's prose:

- the attacked latent starts as `blend` x the reference image's VAE latent + (1 - blend) x
  N(0, I) (blend 0.25);
- timesteps t = range(T // n // 2, T, T // n)[:n] for n = 50 of T = 1000 (10, 30, ..., 990),
  visited in that (ascending) order; at each, `iterations` (20) steps of:
  loss = MSE(eps(x_ref_t), eps(x_adv_t)), both noised to t with the *same* fresh noise, eps the
  attacked model's UNet on the CFG pair (unconditional and prompt embeddings, no guidance
  combination: the MSE runs over both halves); the gradient divided by its mean absolute value,
  velocity = 0.9 velocity + gradient, x_adv = x_adv + step x sign(velocity) (the published step
  *adds*: it ascends the loss);
- after every `interval` (5) timesteps x_adv += 0.05 x the reference latent;
- after every timestep the current x_adv is judged: img2img at strength 0.8 (noised to the
  first of the last 80% of the sampler's steps with fresh noise, then denoised with the prompt),
  and the attack stops at the first success; before the attack the plain img2img of the
  reference itself is judged (a success there counts, as in their `main`).

This module is the optimisation only (`recall_start`, `recall_round`: units, so that a search
runs wherever the executor runs units); the judging goes through the audit's own cached,
defended generation (`scenarios/image_white.py`). With a defense's surrogate (the adaptive
attacker, `attacks.textual_inversion.DefenseSurrogate`: IRECE's `IreceSurrogate`) the
adversarial branch of the loss is what the defended model sees: a share of the iterations at
the defense's intervention timestep, its mask re-noised with a fresh draw per iteration
(expectation over the re-noise), the reference branch at the same timestep and noise.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

MOMENTUM = 0.9
"""attack.py: `momentum = 0.9`."""
INTERVAL = 5
"""attack.py `--interval 5`: every 5 timesteps the reference latent is added back..."""
REFERENCE_PULL = 0.05
"""...times 0.05 (`adv_latent.data += latents*0.05`)."""
TRAIN_TIMESTEPS = 1000


def sampled_timesteps(count: int, train: int = TRAIN_TIMESTEPS) -> list[int]:
    """models.py `sampled_t` for `n_samples = count`: evenly spaced, mid-interval, ascending."""
    count = max(1, min(int(count), train))
    stride = train // count
    return list(range(stride // 2, train, stride))[:count]


def _noise(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    import torch

    return torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed % 2**63))


def _img2img_start(pipe: Any, latents: torch.Tensor, seeds: list[int], *, steps: int,
                   start_step: int) -> torch.Tensor:
    """`latents` noised, each with its seed's noise, to the level the DDIM schedule of `steps`
    steps has at index `start_step` (diffusers' img2img: `add_noise` at timesteps[t_start])."""
    import torch
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(steps)
    t = scheduler.timesteps[start_step:start_step + 1]
    noise = torch.cat([_noise((1, *latents.shape[1:]), s) for s in seeds])
    return scheduler.add_noise(latents.float().cpu(), noise, t.repeat(len(latents)))


def recall_start(host: Any, advance: Callable[[int], None], *, role: str,
                 references: torch.Tensor, seeds: list[int], blend: float, steps: int,
                 start_step: int) -> dict[str, torch.Tensor]:
    """{"adv": blend x ref + (1 - blend) x noise (the attack's start), "velocity": zeros,
    "judge": the references' own img2img starting latents (the attack's try 0)}; each search's
    noise from its own seed."""
    import torch

    pipe = host.pipeline(role)
    refs = references.float().cpu()
    noise = torch.cat([_noise((1, *refs.shape[1:]), s * 7 + 1) for s in seeds])
    adv = refs * blend + noise * (1 - blend)
    judge = _img2img_start(pipe, refs, [s * 7 + 2 for s in seeds], steps=steps,
                           start_step=start_step)
    advance(len(seeds))
    return {"adv": adv, "velocity": torch.zeros_like(adv), "judge": judge}


def recall_round(host: Any, advance: Callable[[int], None], *, role: str,
                 references: torch.Tensor, adv: torch.Tensor, velocity: torch.Tensor,
                 prompts: list[str], seeds: list[int], timestep: int, index: int,
                 iterations: int, step_size: float, steps: int, start_step: int,
                 batch_size: int, defense: str | None = None, concept: Any = None,
                 config: Any = None) -> dict[str, torch.Tensor]:
    """One timestep of RECALL for a batch of searches: `iterations` momentum-sign steps at
    `timestep` (the round `index` of the schedule), then the pull towards the reference every
    `INTERVAL` rounds, and the new latents' img2img starting points for the judge.

    Returns {"adv", "velocity", "judge"} (float32, CPU). `defense` (with the audit's `concept`
    and `config`): the adaptive attacker, through the defense's surrogate built on this host."""
    import torch

    pipe = host.pipeline(role)
    unet = pipe.unet
    device, dtype = unet.device, unet.dtype
    alphas = pipe.scheduler.alphas_cumprod.to(device=device, dtype=torch.float32)
    surrogate = None
    if defense is not None:
        surrogate = host.defense_surrogate(defense, concept, config, role,
                                           seeds[0] * 1009 + index if seeds else index)
    with torch.no_grad():
        uncond, _ = pipe.encode_prompt([""], device, 1, False)
        conds = {p: pipe.encode_prompt([p], device, 1, False)[0] for p in dict.fromkeys(prompts)}
    out_adv, out_velocity = [], []
    for start in range(0, len(seeds), max(1, batch_size)):
        rows = range(start, min(len(seeds), start + max(1, batch_size)))
        ref = references[list(rows)].to(device, torch.float32)
        x = adv[list(rows)].to(device, torch.float32).clone()
        v = velocity[list(rows)].to(device, torch.float32).clone()
        n = len(rows)
        text = torch.cat([uncond.expand(n, -1, -1),
                          torch.cat([conds[prompts[i]] for i in rows])]).to(dtype)
        for it in range(iterations):
            noise = torch.cat([_noise((1, *x.shape[1:]), (seeds[i] * 1_000_003 + index * 1009
                                                          + it) * 31 + 5)
                               for i in rows]).to(device)
            t = torch.full((n,), int(timestep), dtype=torch.long, device=device)
            draw: dict[str, torch.Tensor] = {}
            if surrogate is not None:
                draw = surrogate.redraw({"t": t.cpu(), "latents": x.detach().cpu()})
                t = draw["t"].to(device)
            a = alphas[t].view(-1, 1, 1, 1)
            x.requires_grad_(True)
            with torch.enable_grad():
                noisy_ref = a.sqrt() * ref + (1 - a).sqrt() * noise
                noisy_adv = a.sqrt() * x + (1 - a).sqrt() * noise
                if surrogate is not None:
                    noisy_adv, _ = surrogate(noisy_adv, x, noise, t, draw)
                with torch.no_grad():
                    eps_ref = unet(torch.cat([noisy_ref, noisy_ref]).to(dtype), torch.cat([t, t]),
                                   encoder_hidden_states=text).sample.float()
                eps_adv = unet(torch.cat([noisy_adv, noisy_adv]).to(dtype), torch.cat([t, t]),
                               encoder_hidden_states=text).sample.float()
                # per search: the published loss is one search's MSE; summing keeps the
                # searches of a batch independent (the gradient is normalised per search)
                loss = ((eps_ref - eps_adv) ** 2).flatten(1).mean(1).sum()
                grad = torch.autograd.grad(loss, x)[0]
            grad = grad / (grad.abs().flatten(1).mean(1).view(-1, 1, 1, 1) + 1e-8)
            v = MOMENTUM * v + grad
            x = (x.detach() + step_size * v.sign()).detach()
        if (index + 1) % INTERVAL == 0:
            x = x + ref * REFERENCE_PULL
        out_adv.append(x.float().cpu())
        out_velocity.append(v.float().cpu())
        advance(n)
    new_adv = torch.cat(out_adv)
    judge = _img2img_start(pipe, new_adv, [s * 7 + 3 + 11 * (index + 1) for s in seeds],
                           steps=steps, start_step=start_step)
    return {"adv": new_adv, "velocity": torch.cat(out_velocity), "judge": judge}
