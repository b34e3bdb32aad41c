"""IRECE: the inference-time defense that re-noises where the standard model sees the concept.

At intervention step t* of the erased model's denoising, the *standard* UNet runs once on the
current latent x_t with the concept prompt; its cross-attention to the concept's tokens
(heads and tokens averaged, every attn2 layer upsampled to latent resolution and averaged,
min-max normalised per image, thresholded at tau) gives a mask M; the latent becomes
x*_t = (1 - M) * x_t + M * xi_t. Where the erased model was drawing the concept, it starts
again from noise (docs/methods.md, IRECE).

`IRECE` is a diffusers `callback_on_step_end`: it plugs into any StableDiffusionPipeline without
subclassing and costs one conditional standard-UNet forward (batch B, no CFG doubling) per
intervention step, never a second denoising loop.

Choices the paper leaves open, made here:

* **Which latent.** `callback_on_step_end(pipe, i, t_i, ...)` runs after the pipeline's i-th
  model evaluation and returns the latent evaluation i+1 denoises at `timesteps[i+1]`.
  Intervention step k acts in that callback for the evaluation whose input is the trajectory's
  k-th state, and gives the standard UNet that evaluation's timestep: the timestep of the
  latent it sees. Step 0's input (the initial noise) cannot be intervened on; a fractional
  t* is clamped into [1, N - n_steps], a step index out of that range is an error.
* **What a step is.** One noise level of the N the sampler was asked for (`--steps`), whatever
  the number of timesteps it runs (`samplers.trajectory_points`, read from the pipeline's own
  scheduler after `set_timesteps`). For most samplers the two coincide. PNDM as SD v1.4 ships
  it (PLMS, `skip_prk_steps`) runs N + 1 timesteps for N steps: evaluations 0 and 1 are the
  predictor and corrector of its first step (1 sees a throwaway prediction, at the timestep
  that evaluation 2 repeats with the real latent), so its step k >= 1 is evaluation k + 1. Step
  k is thus the same noise level under every sampler.
* **The solver's history.** A multistep solver (PLMS, LMS, DPM++ 2M, UniPC) extrapolates from
  the slopes of earlier steps, which belong to the trajectory x*_t was taken off. IRECE clears
  them at every intervention (`samplers.reset_history`): the next step is the solver's own
  first-order step from x*_t, as if sampling had started there, and the order builds up again.
* **t\\* as a fraction** counts from the first (noisiest) step: 0.2 at 25 steps is step 5.
* **What N(0, I) means at step k.** In SD's variance-preserving frame (DDIM, DDPM, PNDM,
  DPM++ 2M, UniPC: `init_noise_sigma` = 1) x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps has unit
  variance at every t, and xi_t ~ N(0, I) is exactly the paper's noise. Sigma-parameterised
  schedulers (Euler, Euler ancestral, LMS: `init_noise_sigma` > 1) carry x_t = x_0 +
  sigma_t eps instead; the same noise in their frame is sqrt(sigma_t^2 + 1) * N(0, I), which
  is 1 / the factor `scheduler.scale_model_input` applies at t. We scale xi by that, read from
  the scheduler itself, not by `init_noise_sigma` (the scale at t = T only, far too loud at
  later steps). For the variance-preserving samplers the scale is exactly 1.
* **Noise seeding.** xi is drawn on the CPU in float32 from generators seeded by (seed, step),
  then moved to the latents' device and dtype: identical on CPU and CUDA. `seed` may be one int
  (one generator for the batch) or one int per image (each image's noise independent of its
  batch mates, so batching does not change an image).
* **Replacement.** For a binary mask the formula equals `torch.where(M, xi, x)`, which we use:
  entries outside the mask are bit-identical to the undefended latent.

Longer than most modules: the defense, the mask, the step resolution and the registry entry
that declares its options belong to one decision (what IRECE does) and are read together.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from pytest_erasure.defenses import option_value
from pytest_erasure.defenses.attention import CrossAttentionCapture
from pytest_erasure.errors import ErasureInputError
from pytest_erasure.samplers import reset_history, settle_history, trajectory_points
from pytest_erasure.scenarios.base import ScenarioOption

if TYPE_CHECKING:
    import torch
    from diffusers import StableDiffusionPipeline

    from pytest_erasure.concepts import Concept
    from pytest_erasure.config import AuditConfig
    from pytest_erasure.records import GenerationInput, Role
    from pytest_erasure.scenarios.base import AuditContext

FLAT_RELATIVE = 1e-5
"""A map whose max - min is below this fraction of its magnitude has no contrast: no mask.
Upsampling and averaging a constant map leave float32 rounding of a few ulps (~1e-7)."""


def concept_conditioning(
    standard_pipe: StableDiffusionPipeline, prompt: str, term: str
) -> tuple[torch.Tensor, list[int]]:
    """The mask prompt's (1, 77, D) embeddings from the standard text encoder, and the
    positions of the concept term's tokens in it (every occurrence)."""
    import torch

    tokenizer = standard_pipe.tokenizer
    prompt_ids = tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length,
                           truncation=True).input_ids
    term_ids = tokenizer(term, add_special_tokens=False).input_ids
    if not term_ids:
        raise ErasureInputError("IRECE concept term", f"'{term}' has no tokens",
                                "give the concept's word or phrase as it appears in its prompt")
    n = len(term_ids)
    indices = [i + j for i in range(len(prompt_ids) - n + 1)
               if prompt_ids[i:i + n] == term_ids for j in range(n)]
    if not indices:
        raise ErasureInputError(
            f"IRECE mask prompt '{prompt}'",
            f"does not contain the concept term '{term}' (within its first "
            f"{tokenizer.model_max_length} tokens)",
            f"use a prompt that names the concept, e.g. 'a photo of a {term}'",
        )
    with torch.no_grad():
        embeds, _ = standard_pipe.encode_prompt(
            prompt, standard_pipe._execution_device, 1, do_classifier_free_guidance=False
        )
    return embeds, indices


def irece_mask(maps: list[torch.Tensor], latent_hw: tuple[int, int], tau: float) -> torch.Tensor:
    """(B, 1, H, W) binary float mask from per-layer attention maps (B, h, w).

    Each map is bilinearly upsampled to the latent's (H, W), the layers are averaged, each image
    is min-max normalised and thresholded `>= tau`. An image whose averaged map has no contrast
    (all zero, constant) gets an empty mask whatever tau is: there is nowhere to point at.
    """
    import torch
    import torch.nn.functional as F

    if not maps:
        raise ValueError("irece_mask needs at least one attention map")
    height, width = int(latent_hw[0]), int(latent_hw[1])
    total = None
    for layer_map in maps:
        if layer_map.ndim != 3:
            raise ValueError(f"attention maps are (B, h, w); got shape {tuple(layer_map.shape)}")
        up = F.interpolate(layer_map.float()[:, None], size=(height, width), mode="bilinear",
                           align_corners=False)
        total = up if total is None else total + up
    assert total is not None
    mean = total / len(maps)
    flat = mean.flatten(1)
    low = flat.min(dim=1).values.view(-1, 1, 1, 1)
    high = flat.max(dim=1).values.view(-1, 1, 1, 1)
    span = high - low
    # Flat also when the spread is below the smallest normal float: a map of subnormal values is
    # zero attention whose interpolation rounded unevenly, not a place to point at.
    contrast = ((span > FLAT_RELATIVE * torch.maximum(high.abs(), low.abs()))
                & (span >= torch.finfo(span.dtype).tiny))
    normalised = (mean - low) / torch.where(contrast, span, torch.ones_like(span))
    return ((normalised >= tau) & contrast).float()


def resolve_steps(t_star: float | int, n_steps: int, num_inference_steps: int) -> list[int]:
    """Indices of the denoising steps whose input latent IRECE replaces (see module docstring)."""
    if num_inference_steps < 2:
        raise ErasureInputError("--steps", f"is {num_inference_steps}",
                                "IRECE acts between steps: give at least 2 denoising steps")
    if n_steps < 1:
        raise ErasureInputError("--irece-steps", f"is {n_steps}", "give a whole number >= 1")
    last_start = num_inference_steps - n_steps
    if last_start < 1:
        raise ErasureInputError(
            "--irece-steps", f"{n_steps} intervention steps do not fit in {num_inference_steps} "
            "denoising steps (the first step's input cannot be replaced)",
            f"give at most {num_inference_steps - 1}")
    if t_star < 0:
        raise ErasureInputError("--irece-t-star", f"is {t_star}",
                                "give a fraction in [0, 1) or a step index >= 1")
    if t_star < 1:
        start = min(max(round(t_star * num_inference_steps), 1), last_start)
    else:
        if t_star != int(t_star):
            raise ErasureInputError("--irece-t-star", f"is {t_star}",
                                    "give a fraction below 1 or a whole step index")
        start = int(t_star)
        if start > last_start:
            raise ErasureInputError(
                "--irece-t-star",
                f"step {start} (+{n_steps - 1} more) is past the last step of "
                f"{num_inference_steps}",
                f"give a step index between 1 and {last_start} or a fraction")
    return list(range(start, start + n_steps))


class IRECE:
    """IRECE as a diffusers `callback_on_step_end`.

    >>> irece = IRECE(standard.unet, *concept_conditioning(standard, "a circle", "circle"),
    ...               num_inference_steps=25)
    >>> erased(prompt, num_inference_steps=25, callback_on_step_end=irece,
    ...        callback_on_step_end_tensor_inputs=irece.tensor_inputs)

    The standard UNet may be the erased pipeline's own UNet object (one model, for benchmarks):
    capture processors are swapped in only around IRECE's own forward. `masks` collects the
    (B, 1, H, W) masks applied, on the CPU, in call order; `reset()` clears it.
    """

    tensor_inputs = ["latents"]

    def __init__(
        self,
        standard_unet: Any,
        concept_embeds: torch.Tensor,
        token_indices: Sequence[int],
        *,
        num_inference_steps: int,
        t_star: float | int = 0.2,
        tau: float = 0.4,
        n_steps: int = 1,
        resolutions: tuple[int, ...] | None = None,
        seed: int | Sequence[int] = 0,
        reset_history: bool = True,
    ) -> None:
        if not 0 <= tau <= 1:
            raise ErasureInputError("--irece-tau", f"is {tau}", "give a number between 0 and 1")
        if concept_embeds.ndim != 3 or concept_embeds.shape[0] != 1:
            raise ValueError(
                f"concept_embeds must be (1, 77, D); got {tuple(concept_embeds.shape)}")
        if not token_indices:
            raise ValueError("token_indices is empty: IRECE needs the concept's token positions")
        self.standard_unet = standard_unet
        self.concept_embeds = concept_embeds
        self.token_indices = [int(i) for i in token_indices]
        self.num_inference_steps = num_inference_steps
        self.t_star = t_star
        self.tau = tau
        self.n_steps = n_steps
        self.resolutions = None if resolutions is None else tuple(int(r) for r in resolutions)
        self.seed = seed
        self.reset_history = reset_history
        """Clear a multistep solver's history at each intervention (module docstring); False
        only to measure what the reset changes."""
        self._settle_after: int | None = None
        self.steps = resolve_steps(t_star, n_steps, num_inference_steps)
        self.masks: list[torch.Tensor] = []
        self.layers: dict[str, tuple[int, int]] = {}
        """The attn2 layers the last mask was built from, with their map sizes."""

    @classmethod
    def for_concept(cls, standard_pipe: StableDiffusionPipeline, prompt: str, term: str,
                    **settings: Any) -> IRECE:
        """IRECE with the standard pipeline's UNet and the mask prompt's conditioning, e.g.
        `IRECE.for_concept(standard, concept.texts()[0], concept.term, num_inference_steps=25)`."""
        embeds, indices = concept_conditioning(standard_pipe, prompt, term)
        return cls(standard_pipe.unet, embeds, indices, **settings)

    def describe(self) -> dict[str, Any]:
        """JSON-able settings for reports."""
        return {
            "t_star": self.t_star,
            "intervention_steps": list(self.steps),
            "num_inference_steps": self.num_inference_steps,
            "tau": self.tau,
            "n_steps": self.n_steps,
            "resolutions": list(self.resolutions) if self.resolutions is not None else "all",
            "token_indices": list(self.token_indices),
            "seed": self.seed if isinstance(self.seed, int) else list(self.seed),
            "noise": "N(0, I) in the model-input frame (1 / scale_model_input factor at t)",
            "solver_history": "reset at each intervention" if self.reset_history else "kept",
        }

    def reset(self) -> None:
        self.masks = []
        self.layers = {}
        self._settle_after = None

    def __call__(
        self, pipe: Any, step_index: int, timestep: Any, callback_kwargs: dict[str, Any]
    ) -> dict[str, Any]:
        scheduler = pipe.scheduler
        if self._settle_after == step_index:
            settle_history(scheduler)
            self._settle_after = None
        following = step_index + 1  # the evaluation whose input this callback returns
        points = trajectory_points(scheduler)
        if len(points) != self.num_inference_steps:
            raise ValueError(
                f"IRECE was built for {self.num_inference_steps} steps but the pipeline runs "
                f"{len(scheduler.timesteps)} timesteps ({len(points)} steps): pass the same "
                "num_inference_steps to both"
            )
        if following not in points or points.index(following) not in self.steps:
            return callback_kwargs
        step = points.index(following)
        latents = callback_kwargs["latents"]
        callback_kwargs["latents"] = self.intervene(scheduler, latents,
                                                    scheduler.timesteps[following], step)
        if self.reset_history and reset_history(scheduler):
            self._settle_after = following
        return callback_kwargs

    def intervene(self, scheduler: Any, latents: torch.Tensor, timestep: Any,
                  step: int) -> torch.Tensor:
        """x*_t for the latents (B, C, H, W) that are about to be denoised at `timestep`."""
        import torch

        batch, _, height, width = latents.shape
        unet = self.standard_unet
        model_input = scheduler.scale_model_input(latents, timestep)
        embeds = self.concept_embeds.to(device=unet.device, dtype=unet.dtype)
        capture = CrossAttentionCapture(unet, self.token_indices, (height, width),
                                        resolutions=self.resolutions)
        with torch.no_grad(), capture:
            unet(model_input.to(device=unet.device, dtype=unet.dtype), timestep,
                 encoder_hidden_states=embeds.expand(batch, -1, -1), return_dict=False)
        if not capture.maps:
            raise ErasureInputError(
                "--irece-resolutions", f"{list(self.resolutions or ())} match no attn2 layer",
                "choose among the map sizes of this model at this resolution "
                "(64, 32, 16, 8 for SD v1.4 at 512x512) or leave it unset")
        self.layers = {name: tuple(m.shape[1:]) for name, m in capture.maps.items()}
        mask = irece_mask(list(capture.maps.values()), (height, width), self.tau)
        self.masks.append(mask.cpu())
        noise = self._noise(latents.shape, step) * _noise_scale(scheduler, timestep,
                                                                latents.device)
        noise = noise.to(device=latents.device, dtype=latents.dtype)
        return torch.where(mask.to(latents.device).bool(), noise, latents)

    def _noise(self, shape: torch.Size, step: int) -> torch.Tensor:
        import torch

        def draw(seed: int, size: tuple[int, ...]) -> torch.Tensor:
            # Distinct stream per (seed, step); deterministic across processes and devices.
            generator = torch.Generator("cpu").manual_seed((seed * 1_000_003 + step) % 2**63)
            return torch.randn(size, generator=generator, dtype=torch.float32)

        if isinstance(self.seed, int):
            return draw(self.seed, tuple(shape))
        seeds = list(self.seed)
        if len(seeds) != shape[0]:
            raise ValueError(f"IRECE has {len(seeds)} per-image seeds for a batch of {shape[0]}")
        return torch.stack([draw(s, tuple(shape[1:])) for s in seeds])


def _noise_scale(scheduler: Any, timestep: Any, device: Any = "cpu") -> float:
    """1 / the input scaling the scheduler applies at `timestep`: 1 for DDIM, sqrt(sigma^2+1)
    for Euler/LMS. scale_model_input is linear, so feeding it a one reads the factor off (on
    the latents' device: the scheduler's sigmas live there)."""
    import torch

    one = torch.ones(1, dtype=torch.float32, device=device)
    factor = float(scheduler.scale_model_input(one, timestep).reshape(-1)[0])
    return 1.0 / factor


# -- the adaptive form: IRECE inside textual inversion's objective -------------------------------

ADAPTIVE_SHARE = 0.5
"""The share of each training batch drawn at IRECE's intervention timesteps and defended there;
the rest keeps the ordinary uniform timesteps (what the sampler does before and after t*)."""

ADAPTIVE_VERSION = 1
"""Bumped when what an adaptive run learns changes: part of its cache key."""


def intervention_timesteps(scheduler: Any, num_inference_steps: int, t_star: float | int,
                           n_steps: int) -> list[int]:
    """The timesteps whose input latent IRECE replaces, under the sampler generation uses: a
    copy of `scheduler` (the pipeline's own, left alone) set to `num_inference_steps`, read
    exactly as `IRECE.__call__` reads it (`trajectory_points`, `resolve_steps`)."""
    import copy

    sampler = copy.deepcopy(scheduler)
    sampler.set_timesteps(num_inference_steps)
    points = trajectory_points(sampler)
    steps = resolve_steps(t_star, n_steps, num_inference_steps)
    return [int(round(float(sampler.timesteps[points[k]]))) for k in steps]


class IreceSurrogate:
    """IRECE inside textual inversion's loss: the adaptive attacker's objective
    (`attacks.textual_inversion.DefenseSurrogate`).

    What the defended sampler does to the learned token's trajectory at an intervention step:
    the standard UNet looks at x_t with the concept prompt, the mask M it draws is replaced by
    fresh noise, and the erased model must bring the concept back from
    x*_t = where(M, xi, x_t). So a share (`ADAPTIVE_SHARE`) of each batch is drawn at the
    intervention timestep(s) instead of a uniform one, its mask computed by the standard UNet
    on that training latent exactly as IRECE computes it (same conditioning, token positions,
    layers, tau), its masked entries replaced by xi ~ N(0, I), and the model asked for the
    noise consistent with the *clean* latent x0 there: eps* = (x*_t - sqrt(a_t) x0) /
    sqrt(1 - a_t) (equal to the drawn noise outside M, taken from it bit for bit). Lowering the
    loss on those samples means: from IRECE's re-noised latent, denoise towards the concept.

    How the gradient is approximated, and what is assumed:

    * **The mask.** IRECE's mask is computed by the *standard* model on the concept prompt,
      so it depends on the attacker's token only through x_t. In the training objective x_t is
      drawn from the forward process q(x_t | x0), not sampled through the token, so the mask
      is a function of the training sample alone: a constant with respect to the token, and
      the thresholding's zero gradient is never needed (the straight-through estimate of a
      mask that does not depend on the parameters is the mask). What is approximated is the
      distribution of x_t at t*: the forward process's, not the defended sampler's steps
      before t* under the token (a token that already draws the concept there makes both
      agree; unrolling the sampler would cost a UNet pass per step per sample).
    * **The re-noise.** Expectation over IRECE's randomness: a fresh xi per sample and per
      training step, from the surrogate's own generator (seeded from the attack's seed), so
      the token is trained against the distribution of re-noise draws, not against the one
      seed the audit's generation will use.
    * **After t*.** The erased model's denoising after the intervention is the ordinary
      reverse process from x*_t: the other samples of each batch (uniform timesteps) keep the
      plain loss, which is the objective for every later step once x*_t is denoised towards
      the concept. We do not unroll the sampler from t* to 0 through the token (the exact
      objective, at the cost of N - k UNet passes per sample): the denoising loss at each
      later timestep is its one-step surrogate, as in textual inversion itself. That holds
      while enough steps remain after t* to regrow the masked region: at a late t* (0.8 of
      25 steps on the shapes world, README "Adaptive attacks through IRECE") the one step the
      loss looks at cannot recover the clean latent from the re-noised mask, those samples
      pull the token off, and the adaptive token does worse than the transfer one (t* = 0.6:
      47% vs 75%). Measured (`benchmarks/irece_surrogate_targets.py`, UCE, the circle
      references): the target eps* inside the mask has a mean square of 1.09 at t* = 0.2
      (timestep 761, a_t = 0.05), 2.70 at 0.6 and 8.85 at 0.8 (timestep 161, a_t = 0.81),
      against 1.02 for an ordinary noise target; the model's loss on the defended samples is
      0.022 / 0.35 / 2.44 against 0.014 / 0.032 / 0.053 on plain samples at the same
      timestep, so at t* = 0.8 the defended half of each batch carries 98% of its loss: the
      token is trained almost only on a one-step jump from pure noise to x0 that no
      conditioning makes, not on what lets the remaining steps regrow the concept. An attack
      there must unroll the steps after t* (as the adaptive DDIM inversion does,
      `IreceSampling`); that is not built for textual inversion. Meanwhile the embedding
      case gates the adaptive and the transfer restarts together (`EmbeddingScenario.plan`),
      so a weak surrogate cannot make a case pass that the transfer attack fails.
    * **Solver history.** IRECE resets a multistep solver at each intervention; the training
      loss has no solver, so nothing to model.

    Costs one standard-UNet forward (no gradient) on the defended share of each batch.
    """

    def __init__(self, standard_unet: Any, concept_embeds: torch.Tensor,
                 token_indices: Sequence[int], timesteps: Sequence[int],
                 alphas_cumprod: torch.Tensor, *, tau: float,
                 resolutions: tuple[int, ...] | None, seed: int,
                 share: float = ADAPTIVE_SHARE,
                 schedule: tuple[int, float | int, int] | None = None) -> None:
        if not timesteps:
            raise ValueError("IreceSurrogate needs IRECE's intervention timesteps")
        self.standard_unet = standard_unet
        self.concept_embeds = concept_embeds
        self.token_indices = [int(i) for i in token_indices]
        self.timesteps = [int(t) for t in timesteps]
        self.alphas_cumprod = alphas_cumprod
        """The attacked model's training schedule (the one the loss noises with)."""
        self.tau = tau
        self.resolutions = resolutions
        self.seed = seed
        self.share = share
        self.schedule = schedule
        """(num_inference_steps, t*, intervention steps) as generation runs IRECE: what
        `sampling` needs to place the intervention in an unrolled sampler."""
        self.defended = 0
        """Samples defended so far (for the run's facts)."""
        self.reset()

    def reset(self) -> None:
        import torch

        # Its own stream, apart from the attack's: the attack's draws are unchanged by it.
        self.generator = torch.Generator().manual_seed((self.seed * 1_000_003 + 25) % 2**63)
        self.defended = 0

    def redraw(self, draw: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        import torch

        n = len(draw["t"])
        defended = torch.rand(n, generator=self.generator) < self.share
        which = torch.randint(len(self.timesteps), (n,), generator=self.generator)
        xi = torch.randn(draw["latents"].shape, generator=self.generator)
        at = torch.tensor(self.timesteps, dtype=draw["t"].dtype)[which]
        self.defended += int(defended.sum())
        return {**draw, "t": torch.where(defended, at, draw["t"]), "defended": defended,
                "xi": xi}

    def mask(self, noisy: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """IRECE's (B, 1, H, W) mask for training latents `noisy` (the model-input frame, what
        `scale_model_input` gives IRECE) at timesteps `t`, as `IRECE.intervene` builds it."""
        import torch

        unet = self.standard_unet
        batch, _, height, width = noisy.shape
        embeds = self.concept_embeds.to(device=unet.device, dtype=unet.dtype)
        capture = CrossAttentionCapture(unet, self.token_indices, (height, width),
                                        resolutions=self.resolutions)
        with torch.no_grad(), capture:
            unet(noisy.detach().to(device=unet.device, dtype=unet.dtype), t.to(unet.device),
                 encoder_hidden_states=embeds.expand(batch, -1, -1), return_dict=False)
        if not capture.maps:
            raise ErasureInputError(
                "--irece-resolutions", f"{list(self.resolutions or ())} match no attn2 layer",
                "choose among the map sizes of this model at this resolution or leave it unset")
        return irece_mask(list(capture.maps.values()), (height, width), self.tau)

    def __call__(self, noisy: torch.Tensor, latents: torch.Tensor, noise: torch.Tensor,
                 t: torch.Tensor, draw: dict[str, torch.Tensor]
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        rows = draw["defended"].to(noisy.device)
        if not bool(rows.any()):
            return noisy, noise
        index = rows.nonzero().flatten()
        mask = torch.zeros((noisy.shape[0], 1, *noisy.shape[2:]), dtype=torch.bool,
                           device=noisy.device)
        mask[index] = self.mask(noisy[index], t[index]).to(noisy.device).bool()
        xi = draw["xi"].to(device=latents.device, dtype=torch.float32)
        a = self.alphas(t, latents.device)
        consistent = (xi - a.sqrt() * latents.float()) / (1 - a).sqrt()
        return (torch.where(mask, xi.to(noisy.dtype), noisy),
                torch.where(mask, consistent.to(noise.dtype), noise))

    def alphas(self, t: torch.Tensor, device: Any) -> torch.Tensor:
        return self.alphas_cumprod.to(device)[t.to(device)].view(-1, 1, 1, 1).float()

    def describe(self) -> dict[str, Any]:
        return {"timesteps": list(self.timesteps), "share": self.share, "tau": self.tau,
                "defended_samples": self.defended}

    def sampling(self) -> IreceSampling:
        """IRECE inside an unrolled, differentiable sampler (`attacks.inversion.
        SamplingDefense`): the adaptive DDIM inversion's defense. Needs `schedule`."""
        if self.schedule is None:
            raise ValueError("IreceSurrogate.sampling needs the generation's schedule "
                             "(num_inference_steps, t*, steps)")
        steps, t_star, n_steps = self.schedule
        return IreceSampling(self, steps, t_star, n_steps)


class IreceSampling:
    """IRECE as the defended sampler runs it, inside an unrolled denoising loop that carries
    gradients (`attacks.inversion.defended_denoise`): the adaptive DDIM inversion optimises
    the initial latent through it.

    Forward, it *is* the generation's IRECE: an `IRECE` callback built per denoising run with
    the same conditioning, token positions, layers, tau, t*, steps and noise scaling, called
    after each sampler step exactly as the pipeline calls it (solver history included). What
    the gradient assumes:

    * **The mask is held constant in the backward pass.** It is recomputed in every forward
      from the attacker's current latent (the standard UNet's attention at t*, thresholded),
      so where it falls follows the latent from one optimisation step to the next, but no
      gradient flows through the threshold or the standard UNet: d x*_t / d x_t = 1 - M. The
      threshold's true derivative is zero almost everywhere, so this is the exact gradient
      wherever the mask does not change under a small step; a straight-through estimate
      (passing the gradient through the threshold as if it were the identity on the
      normalised map) would also steer *where* the mask falls, at the price of a backward
      pass through the standard UNet's attention, and is not built.
    * **Expectation over the re-noise.** Each optimisation step draws IRECE's noise anew
      (`draw` seeds it, apart from the audit's generation seeds, which the attacker is not
      assumed to know): the latent is optimised against the distribution of re-noise draws.
    * **Nothing else is approximated.** The denoising before and after t* is unrolled step by
      step through the erased UNet (the sampler's own update), not a one-step surrogate.
    """

    def __init__(self, surrogate: IreceSurrogate, num_inference_steps: int,
                 t_star: float | int, n_steps: int) -> None:
        self.surrogate = surrogate
        self.num_inference_steps = num_inference_steps
        self.t_star = t_star
        self.n_steps = n_steps
        self._run: tuple[int, IRECE] | None = None

    def callback(self, draw: int) -> IRECE:
        s = self.surrogate
        seed = (s.seed * 1_000_003 + 7 * draw + 11) % 2**62
        return IRECE(s.standard_unet, s.concept_embeds, s.token_indices,
                     num_inference_steps=self.num_inference_steps, t_star=self.t_star,
                     tau=s.tau, n_steps=self.n_steps, resolutions=s.resolutions, seed=seed)

    def __call__(self, scheduler: Any, step_index: int, timestep: Any, latents: torch.Tensor,
                 draw: int) -> torch.Tensor:
        from types import SimpleNamespace

        if step_index == 0 or self._run is None or self._run[0] != draw:
            self._run = (draw, self.callback(draw))  # a fresh callback per denoising run
        irece = self._run[1]
        out = irece(SimpleNamespace(scheduler=scheduler), step_index, timestep,
                    {"latents": latents})
        return out["latents"]  # type: ignore[no-any-return]


# -- the registry entry ----------------------------------------------------------------------------

class IreceDefense:
    """IRECE as a registered `Defense`: `--irece`, its four options, their checks, and the
    callback the context hands each generated batch (the mask from the standard model's
    attention to the audited concept's prompt)."""

    name = "irece"
    help = "wrap the erased model with the IRECE defense"
    adaptive: str | None = (
        "textual inversion trained through IRECE (IreceSurrogate): half of each batch at "
        "IRECE's intervention timesteps, the standard model's mask on the training latent "
        "re-noised with a fresh N(0, I) draw per sample and step (expectation over the "
        "re-noise), the target the noise consistent with the clean latent; the mask depends "
        "on the training latent only, so it is constant in the token (no gradient through "
        "its threshold); later timesteps keep the plain loss. DDIM inversion refined through "
        "IRECE in an unrolled, differentiable sampler (IreceSampling): the generation's IRECE "
        "forward, a fresh re-noise draw per optimisation step, its mask recomputed from the "
        "attacker's latent every forward and held constant in the backward pass")
    """How a white-box attack optimises through IRECE (`defenses.adaptive_form`), for reports;
    `surrogate` builds it."""
    adaptive_sampling = True
    """Its surrogate also runs inside an unrolled sampler (`IreceSurrogate.sampling`): the
    adaptive DDIM inversion (`scenarios.latent`) can attack it."""
    options: tuple[ScenarioOption, ...] = (
        ScenarioOption("irece-t-star", float, 0.2,
                       "IRECE intervention step: a fraction of the steps (<1) or a step index (>=1)"),
        ScenarioOption("irece-tau", float, 0.4, "IRECE mask threshold on normalised attention"),
        ScenarioOption("irece-steps", int, 1, "number of consecutive IRECE intervention steps"),
        ScenarioOption("irece-resolutions", str, None,
                       "comma-separated attention map sizes IRECE uses (default: all)"),
    )

    def __init__(self) -> None:
        self._conditioning: weakref.WeakKeyDictionary[Any, dict[str, Any]] = (
            weakref.WeakKeyDictionary())
        """Per context (its standard model), each mask prompt's encoded conditioning."""

    def _value(self, config: AuditConfig, name: str) -> Any:
        option = next(o for o in self.options if o.name == name)
        return option_value(config, option)

    def settings(self, config: AuditConfig) -> tuple[float | int, float, int, tuple[int, ...] | None]:
        """(t*, tau, intervention steps, resolutions) as IRECE takes them: a t* of 1 or more
        is a step index."""
        t_star = float(self._value(config, "irece-t-star"))
        return (t_star if t_star < 1 else int(t_star), float(self._value(config, "irece-tau")),
                int(self._value(config, "irece-steps")), self.resolutions(config))

    def resolutions(self, config: AuditConfig) -> tuple[int, ...] | None:
        raw = self._value(config, "irece-resolutions")
        if raw is None or isinstance(raw, tuple | list):
            return tuple(int(s) for s in raw) if raw is not None else None
        try:
            return tuple(int(s) for s in str(raw).split(",") if s.strip())
        except ValueError:
            raise ErasureInputError("--irece-resolutions", f"'{raw}' is not a list of sizes",
                                    "give comma-separated map sizes, e.g. 16,32") from None

    def validate(self, config: AuditConfig) -> None:
        """The checks `AuditConfig.validate` made before defenses were a registry, in its order,
        then (only when enabled) that t* and its steps fit in --steps and that a chosen map
        size exists in the model at the configured image size."""
        from pytest_erasure.models.geometry import model_geometry

        t_star, tau = self._value(config, "irece-t-star"), self._value(config, "irece-tau")
        steps = self._value(config, "irece-steps")
        if steps < 1:
            raise ErasureInputError("--irece-steps", f"is {steps}", "give a whole number >= 1")
        if not 0 <= tau <= 1:
            raise ErasureInputError("--irece-tau", f"is {tau}", "give a number between 0 and 1")
        resolutions = self.resolutions(config)
        if resolutions is not None and (not resolutions or min(resolutions) < 1):
            raise ErasureInputError("--irece-resolutions", f"is {resolutions}",
                                    "give comma-separated positive map sizes, e.g. 16,32")
        if t_star < 0:
            raise ErasureInputError("--irece-t-star", f"is {t_star}",
                                    "give a fraction in [0, 1) or a step index >= 1")
        if config.defense != self.name:
            return
        geometry = model_geometry(config.standard_model)
        if resolutions and geometry.native_size:
            height = config.height or geometry.native_size
            width = config.width or geometry.native_size
            sizes = geometry.attention_sizes(height, width)
            if sizes and not set(resolutions) & set(sizes):
                raise ErasureInputError(
                    "--irece-resolutions",
                    f"{','.join(map(str, resolutions))} match no cross-attention map "
                    f"of this model at {height}x{width}",
                    f"choose among {','.join(map(str, sizes))} or leave it unset")
        # t* and its intervention steps fit in --steps (a step index must be whole)
        resolve_steps(t_star, steps, config.steps)

    def describe(self, config: AuditConfig, ctx: AuditContext | None = None,
                 concept: Concept | None = None) -> dict[str, Any]:
        """The four settings as given (t* as a number, resolutions a list or None); with a
        context, also the mask prompt, the standard model whose UNet builds the mask, and how
        the solver's history is treated: what a defended image depends on."""
        resolutions = self.resolutions(config)
        out: dict[str, Any] = {
            "t_star": float(self._value(config, "irece-t-star")),
            "tau": float(self._value(config, "irece-tau")),
            "steps": int(self._value(config, "irece-steps")),
            "resolutions": list(resolutions) if resolutions else None}
        if ctx is not None:
            out.update({"mask_prompt": concept.texts()[0] if concept else None,
                        "standard": ctx.fingerprint("standard"), "solver_history": "reset"})
        return out

    def adaptive_key(self, config: AuditConfig, ctx: AuditContext, concept: Concept
                     ) -> dict[str, Any]:
        """What an adaptive attack's result depends on beyond the undefended attack's key: the
        defense's settings, mask prompt and standard model, the steps and sampler that place
        the intervention timesteps, and the surrogate's own constants."""
        return {"defense": self.name, **self.describe(config, ctx, concept),
                "num_inference_steps": config.steps,
                "sampler": ctx.model_facts("erased").scheduler_key(),
                "surrogate": {"version": ADAPTIVE_VERSION, "share": ADAPTIVE_SHARE}}

    def surrogate(self, site: Any, mask_concept: Concept, role: Role, seed: int
                  ) -> IreceSurrogate:
        """IRECE inside an attack's objective on `role`'s model (`IreceSurrogate`), built where
        the attack runs (`site`: a context or a host's `DefenseSite`, its config and
        pipelines): the mask from the standard pipeline and the mask concept's prompt, as the
        generation's callback builds it; the intervention timesteps under the sampler
        generation uses; the schedule the attacked model trains with."""
        standard = site.pipeline("standard")
        embeds, indices = concept_conditioning(standard, mask_concept.texts()[0],
                                               mask_concept.term)
        t_star, tau, n_steps, resolutions = self.settings(site.config)
        attacked = site.pipeline(role)
        timesteps = intervention_timesteps(attacked.scheduler, site.config.steps, t_star,
                                           n_steps)
        return IreceSurrogate(standard.unet, embeds, indices, timesteps,
                              attacked.scheduler.alphas_cumprod, tau=tau,
                              resolutions=resolutions, seed=seed,
                              schedule=(site.config.steps, t_star, n_steps))

    def callback_factory(self, ctx: AuditContext, mask_concept: Concept
                         ) -> Callable[[list[GenerationInput]], Any]:
        """An IRECE per batch, seeded per image (an image's noise does not depend on its
        batch); the mask prompt's conditioning is encoded once per concept and context."""
        memo = self._conditioning.setdefault(ctx, {})
        standard = ctx.pipeline("standard")
        if mask_concept.name not in memo:
            memo[mask_concept.name] = concept_conditioning(
                standard, mask_concept.texts()[0], mask_concept.term)
        embeds, indices = memo[mask_concept.name]
        t_star, tau, n_steps, resolutions = self.settings(ctx.config)
        steps = ctx.config.steps

        def factory(batch: list[GenerationInput]) -> IRECE:
            return IRECE(standard.unet, embeds, indices, num_inference_steps=steps,
                         t_star=t_star, tau=tau, n_steps=n_steps, resolutions=resolutions,
                         seed=[b.seed for b in batch])

        return factory


DEFENSES = (IreceDefense(),)
