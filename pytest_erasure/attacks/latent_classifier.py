"""The latent classifier of "When Are Concepts Erased?" (NeurIPS 2025) that the guidance probe
steers with: a small time-conditioned classifier of SD's *noisy* latents, trained per concept.

As kevinlu4588/WhenAreConceptsErased has it (classifier_guidance/create_latent_classifier.py,
`LatentClassifierT`, the same class in probe_notebooks/utils/classifier_guidance_utils.py):
the flattened latent through Linear(c*h*w, 1024), plus Linear(2, 1024) of (sqrt(a_t),
sqrt(1 - a_t)) from the scheduler's alphas_cumprod, then SiLU, Dropout 0.3, Linear(1024, 512),
SiLU, Dropout 0.3, Linear(512, 1): one logit of "the concept". Trained with AdamW (lr 1e-4,
weight decay 1e-3), BCE with pos_weight = negatives / positives, batches of 8 clean latents
each noised 7 times (`scheduler.add_noise`) at timesteps drawn u^(1/3) x 999 (biased towards
noisy latents: guidance acts most early), gradients clipped to norm 1, 90 / 10 train /
held-out split, the held-out logit averaged over 3 noise draws, the weights kept at the best
held-out loss (their checkpoint rule; they evaluate once per epoch, we at `EVALUATIONS` points).

What the audit has instead of their data (ImageNet's class images against 5,000 others): the
standard model's own generations, encoded by its VAE (`train_unit`; the caller chooses and
labels them, `scenarios.guidance`). Deviations, recorded by the scenario: posterior means, not
samples, of the VAE (`inversion.encode`); a step budget instead of 70 epochs; a split
stratified by class (small sets would otherwise leave a class out of the held-out part).

The trained weights are plain tensors: the scenario caches them content-addressed and leaves a
copy named by their sha256 in `noisy_classifier.FOLDER` (the network itself and what the
sampler needs of it live there, on the ground floor), which the sampler (`samplers.classifier_guide`) reads
wherever the generation unit runs, so the steering that names them stays JSON.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from pytest_erasure.noisy_classifier import LatentClassifierT

BATCH = 8
LR = 1e-4
WEIGHT_DECAY = 1e-3
NOISINGS = 7
"""k_timesteps: noised copies of every clean latent in a batch."""
TIMESTEP_POWER = 3.0
CLIP = 1.0
HELD_OUT = 0.1
HELD_OUT_DRAWS = 3
EVALUATIONS = 10
BANDS = (100, 300, 500, 700, 900)
"""Timesteps at which held-out accuracy is also read one noising each (ours): the power-law
draw is mostly t > 600, where even a perfect classifier of a weak concept says little, so the
averaged accuracy alone hides whether the low-noise end, where guidance settles detail, learnt."""
"""Held-out evaluations over a training run (their per-epoch evaluation, at a step budget)."""

PAPER = {"batch": BATCH, "lr": LR, "weight_decay": WEIGHT_DECAY, "noisings": NOISINGS,
         "timestep_power": TIMESTEP_POWER, "clip_grad_norm": CLIP, "held_out": HELD_OUT,
         "held_out_draws": HELD_OUT_DRAWS, "dropout": 0.3, "hidden": [1024, 512]}
"""The training settings fixed by the paper's code (every one in the cache key)."""

def sample_timesteps(count: int, train_steps: int, generator: torch.Generator) -> torch.Tensor:
    """Their power-law draw: u^(1/power) x (T - 1), biased towards noisier timesteps."""
    u = torch.rand(count, generator=generator)
    return ((u ** (1.0 / TIMESTEP_POWER)) * (train_steps - 1)).long().clamp(0, train_steps - 1)


def add_noise(alphas_cumprod: torch.Tensor, latents: torch.Tensor, noise: torch.Tensor,
              t: torch.Tensor) -> torch.Tensor:
    """`DDPMScheduler.add_noise` (the same for DDIM): sqrt(a_t) x0 + sqrt(1 - a_t) noise."""
    a = alphas_cumprod[t].view(-1, *([1] * (latents.dim() - 1)))
    return a.sqrt() * latents + (1 - a).sqrt() * noise


def split(labels: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train indices, held-out indices): each class shuffled with the seed, its last tenth
    (at least one when it has two or more) held out."""
    generator = torch.Generator().manual_seed(seed)
    train, held = [], []
    for value in (0.0, 1.0):
        idx = torch.nonzero(labels == value).flatten()
        idx = idx[torch.randperm(len(idx), generator=generator)]
        k = max(1, round(HELD_OUT * len(idx))) if len(idx) >= 2 else 0
        train.append(idx[:len(idx) - k])
        held.append(idx[len(idx) - k:])
    return torch.cat(train), torch.cat(held)


def evaluate(model: LatentClassifierT, latents: torch.Tensor, labels: torch.Tensor,
             criterion: nn.Module, generator: torch.Generator) -> dict[str, float]:
    """Held-out loss and accuracy, the logit averaged over `HELD_OUT_DRAWS` noisings as theirs;
    accuracy also balanced over the classes (a classifier that says one class always scores
    0.5), and at each of `BANDS`' timesteps."""
    model.eval()
    train_steps = len(model.t_embed.alphas_cumprod)
    with torch.no_grad():
        logits = torch.stack([
            model(add_noise(model.t_embed.alphas_cumprod, latents,
                            torch.randn(latents.shape, generator=generator),
                            t := sample_timesteps(len(latents), train_steps, generator)),
                  t).squeeze(-1)
            for _ in range(HELD_OUT_DRAWS)]).mean(0)
        loss = float(criterion(logits, labels))
        by_t = {}
        for fixed in BANDS:
            t = torch.full((len(latents),), min(fixed, train_steps - 1), dtype=torch.long)
            at = model(add_noise(model.t_embed.alphas_cumprod, latents,
                                 torch.randn(latents.shape, generator=generator), t), t)
            by_t[str(fixed)] = _balanced(at.squeeze(-1) > 0, labels)
    right = (logits > 0) == labels.bool()
    return {"loss": round(loss, 6), "accuracy": round(float(right.float().mean()), 6),
            "balanced_accuracy": _balanced(logits > 0, labels),
            "balanced_accuracy_at_t": by_t}


def _balanced(said: torch.Tensor, labels: torch.Tensor) -> float:
    right = said == labels.bool()
    per_class = [float(right[labels == v].float().mean()) for v in (0.0, 1.0)
                 if bool((labels == v).any())]
    return round(sum(per_class) / len(per_class), 6)


def train(latents: torch.Tensor, labels: torch.Tensor, alphas_cumprod: torch.Tensor, *,
          steps: int, seed: int, progress: Callable[[int], None] | None = None
          ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(the kept weights, facts: the training curve and the held-out scores) of the paper's
    classifier trained on clean `latents` (N, c, h, w) with 0/1 `labels`, noised under
    `alphas_cumprod` (the audited scheduler's). Deterministic in `seed` (dropout included)."""
    latents, labels = latents.detach().float().cpu(), labels.detach().float().cpu()
    train_idx, held_idx = split(labels, seed)
    positives = float(labels[train_idx].sum())
    negatives = float(len(train_idx) - positives)
    if positives < 1 or negatives < 1:
        raise ValueError(f"a classifier needs both classes: {positives:g} positives and "
                         f"{negatives:g} negatives to train on")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        model = LatentClassifierT(int(latents[0].numel()), alphas_cumprod)
        optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
        criterion = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(negatives / positives))
        train_steps = len(alphas_cumprod)
        every = max(1, math.ceil(steps / EVALUATIONS))
        losses: list[float] = []
        curve: list[dict[str, Any]] = []
        best: tuple[float, dict[str, torch.Tensor], dict[str, Any]] | None = None
        order = torch.empty(0, dtype=torch.long)
        for step in range(1, steps + 1):
            if len(order) < min(BATCH, len(train_idx)):  # a new epoch: reshuffled
                order = train_idx[torch.randperm(len(train_idx), generator=generator)]
            batch, order = order[:BATCH], order[BATCH:]
            clean, target = latents[batch], labels[batch]
            t = sample_timesteps(NOISINGS * len(batch), train_steps, generator)
            noise = torch.randn((NOISINGS * len(batch), *clean.shape[1:]), generator=generator)
            noisy = add_noise(model.t_embed.alphas_cumprod, clean.repeat(NOISINGS, 1, 1, 1),
                              noise, t)
            model.train()
            loss = criterion(model(noisy, t).squeeze(-1), target.repeat(NOISINGS))
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), CLIP)
            optimizer.step()
            losses.append(loss.item())
            if progress is not None:
                progress(1)
            if (step % every == 0 or step == steps) and len(held_idx):
                scores = evaluate(model, latents[held_idx], labels[held_idx], criterion,
                                  torch.Generator().manual_seed(seed + 1))
                curve.append({"step": step, "train_loss": round(
                    sum(losses[-every:]) / len(losses[-every:]), 6), **scores})
                if best is None or scores["loss"] < best[0]:
                    best = (scores["loss"], {k: v.detach().clone() for k, v in
                                             model.state_dict().items()}, {"step": step,
                                                                           **scores})
    state = best[1] if best is not None else {k: v.detach().clone()
                                              for k, v in model.state_dict().items()}
    facts: dict[str, Any] = {
        "train_images": {"positives": int(positives), "negatives": int(negatives)},
        "held_out_images": {"positives": int(labels[held_idx].sum()),
                            "negatives": int(len(held_idx) - labels[held_idx].sum())},
        "steps": steps, "pos_weight": round(negatives / positives, 6),
        "train_loss": _summary(losses), "held_out_curve": curve,
        "kept": best[2] if best is not None else {"step": steps, "why": "no held-out images"},
    }
    return state, facts


def _summary(losses: list[float], points: int = 20) -> list[float]:
    stride = max(1, math.ceil(len(losses) / points))
    return [round(sum(losses[i:i + stride]) / len(losses[i:i + stride]), 6)
            for i in range(0, len(losses), stride)]


def train_unit(host: Any, advance: Callable[[int], None], *, role: str, images: torch.Tensor,
               labels: list[int], steps: int, seed: int, batch_size: int
               ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The unit (`AuditContext.unit`): `images` (N, 3, H, W) in [0, 1] encoded by `role`'s
    VAE, the classifier trained on them under its scheduler's alphas_cumprod (a DDIM scheduler
    from its config, as the paper builds one): (weights, facts)."""
    from diffusers import DDIMScheduler

    from pytest_erasure.attacks.inversion import encode

    pipe = host.pipeline(role)
    with torch.no_grad():
        latents = encode(pipe, images, batch_size).float().cpu()
    advance(len(images))
    alphas = DDIMScheduler.from_config(pipe.scheduler.config).alphas_cumprod
    return train(latents, torch.tensor(labels, dtype=torch.float32), alphas, steps=steps,
                 seed=seed, progress=advance)


