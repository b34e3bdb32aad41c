"""The adaptive DDIM inversion's machinery (issue 25) on the tiny pipeline: its unrolled loop
is the generation's sampler, its IRECE is the generation's IRECE, gradients reach the latent
outside the mask only, and refining never keeps a latent that is worse by the attacker's own
measure."""

from __future__ import annotations

from pathlib import Path

import torch

from pytest_erasure.attacks.inversion import (
    _text,
    adaptive_invert,
    ddim_invert,
    defended_denoise,
    denoise,
    encode,
)
from pytest_erasure.defenses.irece import (
    IreceSurrogate,
    concept_conditioning,
    intervention_timesteps,
)
from pytest_erasure.testing import tiny_pipeline

STEPS = 4


def sampling(pipe, standard, *, t_star: float = 0.5, tau: float = 0.4, seed: int = 3):
    embeds, indices = concept_conditioning(standard, "a circle", "circle")
    timesteps = intervention_timesteps(pipe.scheduler, STEPS, t_star, 1)
    return IreceSurrogate(standard.unet, embeds, indices, timesteps,
                          pipe.scheduler.alphas_cumprod, tau=tau, resolutions=None, seed=seed,
                          schedule=(STEPS, t_star, 1)).sampling()


def start(n: int = 2) -> torch.Tensor:
    return torch.randn(n, 4, 16, 16, generator=torch.Generator().manual_seed(0))


def test_the_unrolled_loop_without_a_defense_is_the_sampler_bit_for_bit():
    """The adaptive inversion differentiates the very sampler generation runs: with no defense
    its loop gives `denoise`'s final latents exactly."""
    pipe = tiny_pipeline(0)
    latents = start()
    cond, _ = _text(pipe, "", None, 1.0)
    with torch.no_grad():
        ours = defended_denoise(pipe, latents, cond=cond, uncond=None, guidance=1.0,
                                steps=STEPS, defense=None, draw=0)
    assert torch.equal(ours, denoise(pipe, latents, prompt="", steps=STEPS))


def test_its_irece_is_the_generation_callback_and_gradients_skip_the_mask():
    """Forward, the sampling surrogate is IRECE as the pipeline runs it (same mask, same
    noise); backward, the re-noised entries carry no gradient to the initial latent and the
    rest do (the mask held constant: `IreceSampling`)."""
    pipe, standard = tiny_pipeline(0), tiny_pipeline(1)
    defense = sampling(pipe, standard)
    latents = start(1)
    irece = defense.callback(draw=5)
    reference = pipe(prompt="", latents=latents.clone(), num_inference_steps=STEPS,
                     guidance_scale=1.0, output_type="latent", callback_on_step_end=irece,
                     callback_on_step_end_tensor_inputs=irece.tensor_inputs).images
    cond, _ = _text(pipe, "", None, 1.0)
    x = latents.clone().requires_grad_(True)
    ours = defended_denoise(pipe, x, cond=cond, uncond=None, guidance=1.0, steps=STEPS,
                            defense=defense, draw=5)
    assert torch.allclose(ours, reference, atol=1e-5)
    mask = defense._run[1].masks[0].bool()
    assert 0 < int(mask.sum()) < mask.numel()
    # The gradient of the intervened latent itself: zero exactly inside the mask.
    scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
    scheduler.set_timesteps(STEPS)
    step = defense.callback(draw=5).steps[0]
    probe = torch.randn(1, 4, 16, 16, requires_grad=True)
    defense._run = None  # a fresh run, called where the pipeline's callback intervenes
    out = defense(scheduler, step - 1, scheduler.timesteps[step - 1], probe, draw=9)
    (grad,) = torch.autograd.grad(out.sum(), probe)
    inside = defense._run[1].masks[-1].bool().expand_as(grad)
    assert torch.all(grad[inside] == 0) and torch.all(grad[~inside] == 1)


def test_refining_keeps_the_inverted_latent_unless_the_attacker_measures_better():
    """Zero steps return the inversion bit for bit; with steps, every image keeps the inverted
    latent or a refined one with a lower held-out objective, and the choice is recorded."""
    pipe, standard = tiny_pipeline(0), tiny_pipeline(1)
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    inverted = ddim_invert(pipe, images, steps=STEPS)
    targets = encode(pipe, images).float()
    defense = sampling(pipe, standard)
    same, facts = adaptive_invert(pipe, inverted, targets, defense, steps=STEPS, iterations=0)
    assert torch.equal(same, inverted) and facts["kept"] == ["inverted"] * 3
    refined, facts = adaptive_invert(pipe, inverted, targets, defense, steps=STEPS,
                                     iterations=4, lr=0.1, evaluations=2, batch_size=2)
    assert len(facts["kept"]) == 3 and len(facts["loss_curves"]) == 2
    for i, kept in enumerate(facts["kept"]):
        if kept == "inverted":
            assert torch.equal(refined[i], inverted[i])
        else:
            assert facts["objective_kept"][i] < facts["objective_inverted"][i]
            assert not torch.equal(refined[i], inverted[i])
    again, _ = adaptive_invert(pipe, inverted, targets, defense, steps=STEPS, iterations=4,
                               lr=0.1, evaluations=2, batch_size=2)
    assert torch.equal(again, refined)  # deterministic for a seed


# -- the planted leak: IRECE holds the transfer latents back, the adaptive ones get through -----

REPO = Path(__file__).resolve().parents[2]
SHAPES = REPO / "fixtures" / "shapes"
SAMPLES = 8


def test_planted_leak_the_adaptive_inversion_finds_what_the_transfer_one_misses(tmp_path):
    """The shapes world's UCE model behind IRECE (defaults: t* = 0.2, tau = 0.4) is the
    planted leak: its DDIM-inverted circles, regenerated undefended, are circles (UCE erases
    the prompt, not the latent), and IRECE re-noises them away as a transfer attack (README:
    31% of 32). The adaptive inversion, refined through IRECE, must bring more of them back
    than the transfer inversion does on the same references, judged by the shapes detector
    on the defended images the audit generates."""
    from diffusers import StableDiffusionPipeline

    from pytest_erasure.scenarios.base import registry
    from pytest_erasure.session import context_for_pipelines

    def load(path: Path) -> StableDiffusionPipeline:
        return StableDiffusionPipeline.from_pretrained(
            path, torch_dtype=torch.float32, local_files_only=True, safety_checker=None,
            requires_safety_checker=False)

    standard, erased = load(SHAPES / "standard"), load(SHAPES / "erased" / "uce-circle")
    case = registry()["latent-white-null"]
    hits = {}
    for threat in ("transfer", "adaptive"):
        # 10 steps (IRECE at step 2) and 10 refinement steps, to be affordable here: 3 vs 4
        # circles of 8 (20 refinement steps gave the same 3 vs 4 at twice the cost). At the
        # shapes budget (25 steps, 20 refinement steps) the contrast is 5 vs 14 of 16 (README).
        ctx = context_for_pipelines(standard, erased, REPO / "audits" / "shapes.toml",
                                    tmp_path / "cache", steps=10, samples=SAMPLES,
                                    batch_size=SAMPLES, defense="irece", threat=threat,
                                    scenario_options={"inversion-adaptive-steps": 10})
        circle = ctx.concepts.concepts["circle"]
        plan = case.plan(ctx, circle, "erased", SAMPLES)
        assert ("adaptive" in plan.facts) == (threat == "adaptive")
        found = ctx.detect(ctx.generate("erased", plan.inputs, circle), circle)
        hits[threat] = sum(found.present)
        if threat == "adaptive":  # the case's own report of the transfer attacker, beside
            assert plan.facts["adaptive"]["transfer_hits"] == hits["transfer"]
    print(f"planted leak, circles of {SAMPLES} behind IRECE: {hits}")
    assert hits["adaptive"] > hits["transfer"], hits
