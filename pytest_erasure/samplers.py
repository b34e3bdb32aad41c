"""The SD 1.x samplers: building them, where their trajectories are, and resetting their history.

`--sampler NAME` replaces both pipelines' scheduler by `Cls.from_config(model's scheduler
config)`, so beta schedule, timestep spacing and offset stay the model's own and only the
integrator changes. `pndm` is PLMS as SD v1.4 ships it (`skip_prk_steps=True`): without it
PNDM spends its first steps on four-evaluation Runge-Kutta warm-up steps, which no SD 1.x
release uses.

IRECE replaces the latent between two steps. Two facts about a sampler decide how:

* **Which timesteps are states of the trajectory** (`trajectory_points`). Most samplers run one
  model evaluation per step: `len(timesteps) == N` and the input of every step is x_t. PNDM
  with `skip_prk_steps` runs N + 1: its first step is a predictor-corrector pair (index 0
  predicts x'_{t1} by a first-order step, index 1 evaluates the model there and redoes the step
  from x_{t0} with the averaged slope, the pseudo-improved Euler that starts PLMS), so the input
  of index 1 is a throwaway prediction, and index 2 repeats index 1's timestep with the real
  x_{t1}. Its points are therefore indices 0, 2, 3, ..., N: again N of them, one per noise level.
* **What history a multistep solver keeps** (`reset_history`): PNDM `ets` (+ `counter`,
  `cur_sample`), LMS `derivatives`, DPM++ 2M `model_outputs` / `lower_order_nums`, UniPC
  `model_outputs` / `timestep_list` / `last_sample` / `lower_order_nums`. After IRECE replaces
  x_t by x*_t those slopes belong to a trajectory the latent is no longer on: extrapolating
  them would carry the replaced region's old direction into x*_t (UniPC's corrector would even
  rebuild x_t from the pre-intervention `last_sample`, undoing most of the replacement). So the
  history is cleared, and the step from x*_t is the solver's own first-order step, the step a
  fresh solver would take had sampling started at x*_t at that noise level; the order then
  builds up again as it does at the start of sampling. DDIM, Euler and Euler ancestral keep no
  history. (`tests/e2e/test_samplers.py` checks, per sampler, that the step after an intervention
  equals a fresh solver's first step from x*_t, and that without the reset it would not.)

This module imports torch and diffusers only inside functions.
"""

from __future__ import annotations

import functools
import json
from typing import Any

from pytest_erasure.errors import ErasureInputError

SAMPLERS: dict[str, str] = {
    "pndm": "PNDMScheduler",
    "ddim": "DDIMScheduler",
    "lms": "LMSDiscreteScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler-ancestral": "EulerAncestralDiscreteScheduler",
    "dpm++2m": "DPMSolverMultistepScheduler",
    "unipc": "UniPCMultistepScheduler",
}
"""`--sampler` names and the diffusers scheduler class each stands for (the SD 1.x samplers;
`make_sampler` builds them from the model's own scheduler config). The options table reads them
from here."""

INVERSION_EXACT: dict[str, tuple[bool, str]] = {
    "DDIMScheduler": (True, "DDIM with eta 0 retraces the DDIM inversion's steps backwards: "
                            "the round trip is exact up to the inversion's own linearisation"),
    "PNDMScheduler": (False, "PLMS integrates the same probability-flow ODE with a multistep "
                             "formula, not the DDIM steps the inversion reversed: close, not exact"),
    "LMSDiscreteScheduler": (False, "LMS integrates the same ODE in sigma space with a "
                                    "4th-order multistep formula: close, not exact"),
    "EulerDiscreteScheduler": (False, "Euler's step in sigma space is DDIM's step only in the "
                                      "limit of small steps: close, not exact"),
    "EulerAncestralDiscreteScheduler": (False, "Euler ancestral adds fresh noise at every step: "
                                               "the inverted latent only seeds a stochastic "
                                               "trajectory"),
    "DPMSolverMultistepScheduler": (False, "DPM-Solver++(2M) integrates the same ODE at second "
                                           "order (its first-order step is DDIM's): close, not "
                                           "exact"),
    "UniPCMultistepScheduler": (False, "UniPC integrates the same ODE with a predictor-corrector "
                                       "of order 2: close, not exact"),
}


def make_sampler(name: str, config: Any) -> Any:
    """The scheduler `--sampler name` stands for, from a model's scheduler config."""
    import diffusers

    if name not in SAMPLERS:
        raise ErasureInputError("--sampler", f"'{name}' is not a known sampler",
                                f"use one of: {', '.join(SAMPLERS)}")
    cls = getattr(diffusers, SAMPLERS[name])
    overrides: dict[str, Any] = {"skip_prk_steps": True} if name == "pndm" else {}
    return cls.from_config(dict(config), **overrides)


def inversion_exactness(scheduler_class: str) -> dict[str, Any]:
    """Whether regenerating with this sampler retraces a DDIM inversion, and why (for plans)."""
    exact, reason = INVERSION_EXACT.get(
        scheduler_class, (False, f"{scheduler_class} is not DDIM: the round trip is not exact"))
    return {"exact": exact, "sampler": scheduler_class, "reason": reason}


def _is_pndm(scheduler: Any) -> bool:
    from diffusers import PNDMScheduler

    return isinstance(scheduler, PNDMScheduler)


def trajectory_points(scheduler: Any) -> list[int]:
    """Indices into `scheduler.timesteps` (after `set_timesteps`) whose input latent is the
    state x_t of the trajectory, one per noise level (see the module docstring)."""
    n = len(scheduler.timesteps)
    if _is_pndm(scheduler):
        if not scheduler.config.skip_prk_steps:
            raise ErasureInputError(
                "IRECE with PNDMScheduler(skip_prk_steps=False)",
                "cannot tell which of its Runge-Kutta warm-up evaluations are states of the "
                "trajectory", "use --sampler pndm (PLMS, as SD v1.4 ships it) or another sampler")
        return [0, *range(2, n)]
    if int(getattr(scheduler, "order", 1)) != 1:
        raise ErasureInputError(
            f"IRECE with {type(scheduler).__name__}",
            "evaluates the model several times per step", f"use --sampler {' / '.join(SAMPLERS)}")
    return list(range(n))


def reset_history(scheduler: Any) -> bool:
    """Forget the multistep history so the next step is a first-order step from the current
    latent. Returns whether the scheduler needs `settle_history` after that step."""
    name = type(scheduler).__name__
    if _is_pndm(scheduler):
        # counter 0 is PLMS's first-order step (it also stores cur_sample for a corrector that
        # `settle_history` then skips: the schedule has no repeated timestep for it here).
        scheduler.ets = []
        scheduler.counter = 0
        scheduler.cur_sample = None
        return True
    if hasattr(scheduler, "derivatives"):  # LMS
        scheduler.derivatives = []
        _bound_lms_order(scheduler)
        return False
    if hasattr(scheduler, "model_outputs") and hasattr(scheduler, "lower_order_nums"):
        order = len(scheduler.model_outputs)
        scheduler.model_outputs = [None] * order
        scheduler.lower_order_nums = 0
        if hasattr(scheduler, "timestep_list"):  # UniPC
            scheduler.timestep_list = [None] * order
            scheduler.last_sample = None  # else its corrector rebuilds x_t from the old state
        return False
    if isinstance(scheduler, _noisy_ddim()):  # a probe's DDIM (`steer`): no history either
        return False
    if name not in {"DDIMScheduler", "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler",
                    "DDPMScheduler"}:
        raise ErasureInputError(f"IRECE with {name}", "keeps a history IRECE cannot reset",
                                f"use --sampler {' / '.join(SAMPLERS)}")
    return False


def settle_history(scheduler: Any) -> None:
    """After the first step that followed `reset_history`: PNDM's counter says 'corrector
    next' (1); move it past, so PLMS continues with its second-order step on the real x_t."""
    if _is_pndm(scheduler) and scheduler.counter == 1:
        scheduler.counter = 2
        scheduler.cur_sample = None


def _bound_lms_order(scheduler: Any) -> None:
    """LMS takes its order from the step index (`min(step_index + 1, 4)`), not from the
    derivatives it holds: after a reset it would weigh one derivative with a 4th-order
    coefficient. Bound the order by the history held (+1, the step's own). In a run without a
    reset the bound equals LMS's own order at every step, so leaving it on the instance changes
    nothing else."""
    step = scheduler.step
    if getattr(step, "erasure_bounded", False):
        return

    @functools.wraps(step)
    def bounded(model_output: Any, timestep: Any, sample: Any, order: int = 4,
                **kwargs: Any) -> Any:
        return step(model_output, timestep, sample,
                    order=min(order, len(scheduler.derivatives) + 1), **kwargs)

    bounded.erasure_bounded = True  # type: ignore[attr-defined]
    scheduler.step = bounded


STEERING_KEYS = {"eta": "DDIM's eta (1: DDPM's step noise; above 1: more, as the noise probe of "
                        "'When Are Concepts Erased?' runs it)",
                 "noise_scale": "a factor on the noise DDIM adds at every step",
                 "start_step": "DDIM steps already run on the input's latents (by another "
                               "model: a completion; or skipped: an img2img at strength s of n "
                               "steps starts at n - int(n s)): the schedule starts after them, "
                               "a defense's callback sees the full schedule's step numbers "
                               "(`resume`)",
                 "classifier_scale": "classifier guidance: the step's noise prediction moved by "
                                     "-sqrt(1 - a_t) x scale x the gradient of the "
                                     "classifier's log-probability of the concept "
                                     "(`classifier_guide`)",
                 "classifier": "the classifier guidance's detector: {name, path, options, "
                               "label} of a detector with a differentiable `log_probability`",
                 "classifier_id": "what identifies the classifier's weights (the images' key)",
                 "inpaint_box": "[top, left, bottom, right] in latent cells: the input's latents "
                                "are the known image's, pasted back (noised to the step's level) "
                                "outside the box after every step (`blend`)"}
SCHEDULER_KEYS = ("eta", "noise_scale", "start_step", "classifier_scale")
"""The steering keys that call for `steer`'s DDIM; the others keep the model's sampler."""
"""What a `GenerationInput.steering` may set (`steer`)."""


@functools.cache
def _noisy_ddim() -> type:
    """DDIMScheduler whose step noise is scaled by `noise_scale` and which accepts eta > 1.

    As kevinlu4588/WhenAreConceptsErased's eta_ddim_scheduler.py: with eta > 1 the DDIM
    variance sigma_t^2 can exceed 1 - alpha_{t-1}, and the direction term's square root takes
    its absolute value instead of going NaN; the noise added is sigma_t * z * noise_scale."""
    from diffusers import DDIMScheduler
    from diffusers.schedulers.scheduling_ddim import DDIMSchedulerOutput
    from diffusers.utils.torch_utils import randn_tensor

    class NoisyDDIMScheduler(DDIMScheduler):
        noise_scale: float = 1.0
        start_step: int = 0
        guide: Any = None
        """`classifier_guide`'s function of (scheduler, eps, t, x_t), or None."""

        def set_timesteps(self, *args: Any, **kwargs: Any) -> None:
            # The full schedule's spacing (its step size decides each step's t-1), entered
            # after `start_step` of its steps: where a completion takes over, where an
            # img2img starts.
            super().set_timesteps(*args, **kwargs)
            self.full_timesteps = self.timesteps
            if self.start_step:
                self.timesteps = self.timesteps[self.start_step:]

        def step(self, model_output: Any, timestep: Any, sample: Any, eta: float = 0.0,
                 use_clipped_model_output: bool = False, generator: Any = None,
                 variance_noise: Any = None, return_dict: bool = True) -> Any:
            if self.guide is not None:  # classifier guidance: on the (CFG) noise prediction
                model_output = self.guide(self, model_output, timestep, sample)
            step = self.config.num_train_timesteps // self.num_inference_steps
            prev = timestep - step
            alpha_t = self.alphas_cumprod[timestep]
            alpha_prev = self.alphas_cumprod[prev] if prev >= 0 else self.final_alpha_cumprod
            beta_t = 1 - alpha_t
            if self.config.prediction_type == "epsilon":
                x0 = (sample - beta_t ** 0.5 * model_output) / alpha_t ** 0.5
                eps = model_output
            elif self.config.prediction_type == "v_prediction":
                x0 = alpha_t ** 0.5 * sample - beta_t ** 0.5 * model_output
                eps = alpha_t ** 0.5 * model_output + beta_t ** 0.5 * sample
            else:
                x0 = model_output
                eps = (sample - alpha_t ** 0.5 * x0) / beta_t ** 0.5
            if self.config.clip_sample:
                x0 = x0.clamp(-self.config.clip_sample_range, self.config.clip_sample_range)
            std = eta * self._get_variance(timestep, prev) ** 0.5
            direction = abs(1 - alpha_prev - std ** 2) ** 0.5 * eps
            prev_sample = alpha_prev ** 0.5 * x0 + direction
            if eta > 0:
                if variance_noise is None:
                    variance_noise = randn_tensor(model_output.shape, generator=generator,
                                                  device=model_output.device,
                                                  dtype=model_output.dtype)
                prev_sample = prev_sample + std * variance_noise * self.noise_scale
            if not return_dict:
                return (prev_sample, x0)
            return DDIMSchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)

    return NoisyDDIMScheduler


def steer(pipe: Any, steering: dict[str, Any] | None) -> tuple[Any, dict[str, Any]]:
    """(the scheduler to run a steered batch with, extra pipeline call arguments).

    The hook through which a probe changes a sample's denoising without a pipeline of its own:
    with `eta`, `noise_scale` or `start_step` set, a DDIM scheduler built from the model's own scheduler
    config (so betas, spacing and offset stay the model's), eta passed to the call. None: the
    pipeline's scheduler as it is, no extra argument. The caller swaps the scheduler in and
    restores the original after the call."""
    if not steering:
        return pipe.scheduler, {}
    unknown = sorted(set(steering) - set(STEERING_KEYS))
    if unknown:
        raise ValueError(f"unknown steering {unknown}: known are {sorted(STEERING_KEYS)}")
    if not any(k in steering for k in SCHEDULER_KEYS):
        return pipe.scheduler, {}
    scheduler = _noisy_ddim().from_config(pipe.scheduler.config)
    scheduler.noise_scale = float(steering.get("noise_scale", 1.0))
    scheduler.start_step = int(steering.get("start_step", 0))
    scheduler.guide = classifier_guide(pipe, steering)
    return scheduler, {"eta": float(steering.get("eta", 0.0))}


RETIRED_STEERING = {"hold_steps": "start_step"}
"""Steering keys of findings exported by earlier releases, and the key that now draws the same
images. `hold_steps` k ran image-white's judge as the full schedule with its first k DDIM steps
leaving the latent as it was: bit for bit the images `start_step` k draws (the held steps'
UNet outputs were discarded; measured on the tiny world, max abs difference 0), which now also
gives a defense its step numbers (`resume`)."""


def current_steering(steering: dict[str, Any] | None) -> dict[str, Any] | None:
    """An exported steering in today's keys (`RETIRED_STEERING`), so that a finding exported
    before a key was retired still replays as it was judged. Steps held after a hand-over
    add to it (the old scheduler held the first k steps of the schedule it entered)."""
    if not steering or not any(k in steering for k in RETIRED_STEERING):
        return steering
    out = {k: v for k, v in steering.items() if k not in RETIRED_STEERING}
    held = int(steering.get("hold_steps") or 0)
    start = int(out.get("start_step") or 0) + held
    if start:
        out["start_step"] = start
    return out


def resume(inner: Any, start: int) -> Any:
    """A defense's `callback_on_step_end` on a schedule entered late (`start_step`: the first
    `start` steps were run by another model, a completion's hand-over, or skipped, an img2img's
    strength): the defense sees the full schedule and its own
    step numbers, so it intervenes at the timestep it was built for (IRECE's t*), not `start`
    steps later, and checks its step count against the full schedule. An intervention among
    the steps another model already ran never comes: the defense guards only the model it
    wraps. The one at the entry does: a callback at the end of step i returns the input of
    step i + 1, so the end of step `start - 1` returns the entry latent, which the wrapped
    model denoises; the pipeline has no call before its first step, so `enter` (the
    returned callback's attribute) makes that call on the entry latent before the run. Without
    it IRECE at t* = 0.2 of 25 steps never acted on an img2img at strength 0.8 (entered at step
    5, t*'s own step) where the deployed defense would."""
    def on_full(pipe: Any, step: int, t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        """`inner` at the full schedule's `step`, the scheduler showing the full schedule."""
        scheduler = pipe.scheduler
        entered, scheduler.timesteps = scheduler.timesteps, scheduler.full_timesteps
        try:
            return inner(pipe, step, t, kwargs)
        finally:
            scheduler.timesteps = entered

    def late(pipe: Any) -> bool:
        return bool(start) and getattr(pipe.scheduler, "full_timesteps", None) is not None

    def callback(pipe: Any, i: int, t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        return on_full(pipe, i + start, t, kwargs) if late(pipe) else inner(pipe, i, t, kwargs)

    def enter(pipe: Any, latents: Any) -> Any:
        """The entry latent after the defense's call at the end of step `start - 1` (the
        scheduler's timesteps set for this run)."""
        if not late(pipe):
            return latents
        t = pipe.scheduler.full_timesteps[start - 1]
        return on_full(pipe, start - 1, t, {"latents": latents})["latents"]

    callback.tensor_inputs = list(getattr(inner, "tensor_inputs", ["latents"]))
    callback.enter = enter
    return callback


def blend(known: Any, noise: Any, box: list[int], inner: Any = None) -> Any:
    """A `callback_on_step_end` that inpaints by latent blending, as diffusers'
    StableDiffusionInpaintPipeline does for a 4-channel UNet (SD v1.4's): after every step the
    latent outside `box` ([top, left, bottom, right], latent cells) is replaced by the known
    image's latent `known` noised with the sample's own initial `noise` to the next step's
    level (the known latent itself after the last step), so the model only fills the box.
    `inner` (a defense's callback) runs after the blend, on the blended latent."""
    import torch

    top, left, bottom, right = box
    fill = torch.zeros_like(known[:, :1])
    fill[..., top:bottom, left:right] = 1

    def callback(pipe: Any, i: int, t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        latents = kwargs["latents"]
        steps = pipe.scheduler.timesteps
        proper = (pipe.scheduler.add_noise(known, noise, steps[i + 1:i + 2])
                  if i < len(steps) - 1 else known)
        kwargs["latents"] = (1 - fill) * proper.to(latents.dtype) + fill * latents
        return inner(pipe, i, t, kwargs) if inner is not None else kwargs

    callback.tensor_inputs = sorted({"latents", *getattr(inner, "tensor_inputs", ["latents"])})
    return callback


@functools.lru_cache(maxsize=8)
def _guide_detector(spec: str, device: str) -> Any:
    """The classifier guidance's detector, built once per spec and device in this process."""
    from pathlib import Path

    from pytest_erasure.detectors.base import DetectorSpec, build_detector

    given = json.loads(spec)
    detector = build_detector(DetectorSpec(given["name"], Path(given["path"]) if given.get(
        "path") else None, dict(given.get("options") or {})), device)
    if not callable(getattr(detector, "log_probability", None)):
        raise ErasureInputError(
            "classifier guidance", f"detector '{given['name']}' has no differentiable "
            "log_probability(images, label)", "judge the concept with a detector that has one "
            "(shapes; the tiny world's brightness) or leave the probe that guides out")
    return detector


def classifier_guide(pipe: Any, steering: dict[str, Any]) -> Any:
    """The classifier guidance of "When Are Concepts Erased?" (probe_notebooks/utils/
    classifier_guidance_utils.py `guided_generation_latent_noise_based`) as a function of
    (scheduler, eps, t, x_t): eps - sqrt(1 - a_t) x scale x g, g the gradient of
    log p(concept | x_t). With a classifier of kind "latent-classifier" (the paper's,
    `attacks.latent_classifier`, named by its weights' sha256), g is that classifier's gradient on x_t
    itself, as theirs: no VAE decode, no UNet differentiated. Otherwise (the detector form) g
    is the gradient of the case's detector's `log_probability` of the concept on the predicted
    clean image (x0 = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t), decoded by the VAE), taken with
    respect to x0 and carried to x_t as 1 / sqrt(a_t) (eps held fixed). None without a
    classifier or a scale."""
    spec = steering.get("classifier")
    scale = float(steering.get("classifier_scale", 0.0))
    if spec is None or scale == 0.0:
        return None
    import torch

    if spec.get("kind") == "latent-classifier":
        from pytest_erasure import noisy_classifier

        classifier = noisy_classifier.load(str(spec["sha256"]), str(pipe.device))

        def latent_guide(scheduler: Any, eps: Any, t: Any, x: Any) -> Any:
            a = scheduler.alphas_cumprod[int(t)].to(device=x.device, dtype=torch.float32)
            grad = noisy_classifier.log_probability_gradient(classifier, x, t)
            return (eps.float() - (1 - a).sqrt() * scale * grad).to(eps.dtype)

        return latent_guide

    detector = _guide_detector(json.dumps(spec, sort_keys=True), str(pipe.device))
    label, vae = str(spec["label"]), pipe.vae

    def guide(scheduler: Any, eps: Any, t: Any, x: Any) -> Any:
        a = scheduler.alphas_cumprod[int(t)].to(device=x.device, dtype=torch.float32)
        with torch.enable_grad():
            x0 = ((x.float() - (1 - a).sqrt() * eps.float()) / a.sqrt()).detach()
            x0.requires_grad_(True)
            decoded = vae.decode((x0 / vae.config.scaling_factor).to(vae.dtype)).sample
            images = (decoded.float() + 1) / 2
            log_p = detector.log_probability(images, label).sum()
            grad = torch.autograd.grad(log_p, x0)[0]
        return (eps.float() - (1 - a).sqrt() * scale * grad / a.sqrt()).to(eps.dtype)

    return guide
