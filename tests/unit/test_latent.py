"""DDIM inversion, perturbations and the latent scenarios, on real tiny SD-architecture pipelines
(and, when it has been built, on the shapes world)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_erasure.errors import ErasureInputError

torch = pytest.importorskip("torch")

REPO = Path(__file__).resolve().parents[2]
SHAPES = REPO / "fixtures" / "shapes"


def squares(n: int = 3) -> torch.Tensor:
    images = torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 0.2
    images[:, :, 8:24, 8:24] = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
    return images


def smooth_pipeline(damping: float):
    """A tiny pipeline whose UNet is a plausible denoiser for inversion purposes.

    A random UNet's noise prediction jumps between neighbouring latents, which no DDIM
    inversion survives (it assumes eps(x_t) ~ eps(x_t-1)); damping its output layer makes the
    prediction vary slowly, as a trained model's does. The VAE's scaling factor is set so the
    latents have unit variance, as SD's are."""
    from pytest_erasure.attacks.inversion import encode
    from pytest_erasure.testing import tiny_pipeline

    pipe = tiny_pipeline()
    with torch.no_grad():
        pipe.unet.conv_out.weight.mul_(damping)
        pipe.unet.conv_out.bias.mul_(damping)
    std = float(encode(pipe, squares()).std()) / pipe.vae.config.scaling_factor
    pipe.vae.register_to_config(scaling_factor=1.0 / std)
    return pipe


def relative_error(pipe, latents, images, steps):
    from pytest_erasure.attacks.inversion import denoise, encode

    target = encode(pipe, images)
    return float(((denoise(pipe, latents, steps=steps) - target) ** 2).mean() / target.var())


def test_ddim_inversion_round_trip():
    from pytest_erasure.attacks.inversion import ddim_invert, reconstruction_error

    images = squares(2)
    # With a constant noise prediction the round trip is exact only if the inverse scheduler's
    # timesteps pair with the sampler's: this checks the loop, not the model.
    exact = smooth_pipeline(0.0)
    assert relative_error(exact, ddim_invert(exact, images, steps=8), images, 8) < 1e-8

    pipe = smooth_pipeline(0.1)
    timesteps = pipe.scheduler.timesteps.clone()
    ticks: list[int] = []
    latents = ddim_invert(pipe, images, steps=8, batch_size=1, progress=ticks.append)
    assert latents.shape == (2, 4, 16, 16) and sum(ticks) == 16
    report = reconstruction_error(pipe, latents, images, "", 8, 1.0)
    assert report["latent_mse"] < 0.02 * report["latent_variance"]
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(0))
    assert relative_error(pipe, noise, images, 8) > 1.0
    assert len(report["per_image_mse"]) == 2
    assert {"mse", "psnr", "vae_psnr", "inversion_psnr", "sampler"} <= set(report)
    assert torch.equal(pipe.scheduler.timesteps, timesteps)  # the shared scheduler: untouched


def test_inversion_steps_are_validated():
    from pytest_erasure.attacks.inversion import ddim_invert
    from pytest_erasure.testing import tiny_pipeline

    pipe = tiny_pipeline()
    for steps in (0, 1001):
        with pytest.raises(ErasureInputError, match="--inversion-steps"):
            ddim_invert(pipe, squares(1), steps=steps)


def test_perturbations():
    from pytest_erasure.attacks.inversion import parse_perturbations, perturb

    assert parse_perturbations("noise:0.05, blur:1,jpeg:50,resize:0.5") == [
        "noise:0.05", "blur:1", "jpeg:50", "resize:0.5"]
    assert parse_perturbations("jpeg") == ["jpeg:50"]  # a bare name takes its default
    assert parse_perturbations("none") == parse_perturbations("") == []
    for bad in ("sharpen:1", "jpeg:0", "noise:x", "resize:2"):
        with pytest.raises(ErasureInputError, match="--latent-perturbations"):
            parse_perturbations(bad)
    images = squares()
    for item in ("noise:0.05", "blur:1", "jpeg:30", "resize:0.5"):
        out = perturb(images, [item], seed=3)
        assert out.shape == images.shape and out.min() >= 0 and out.max() <= 1
        assert (out - images).abs().mean() > 1e-3, item
        assert torch.equal(out, perturb(images, [item], seed=3)), item
    assert not torch.equal(perturb(images, ["noise:0.05"], 3), perturb(images, ["noise:0.05"], 4))
    assert torch.equal(perturb(images, [], 0), images)


def test_scenario_ids_and_options():
    from pytest_erasure.scenarios.base import registry

    scenarios = registry()
    ids = ["latent-white-null", "latent-white-prompt", "latent-black-null", "latent-black-prompt"]
    assert set(ids) <= set(scenarios)
    names = {o.name: o for o in scenarios["latent-black-null"].options}
    assert set(names) >= {"inversion-steps", "inversion-guidance", "inversion-prompt",
                          "latent-perturbations"}
    assert names["inversion-guidance"].default == 1.0
    assert names["inversion-prompt"].default == "null"


# -- the scenarios through an audit session ------------------------------------------------------

def context(world: dict[str, Path], cache: Path | None, **options):
    from pytest_erasure.session import context_for_pipelines
    from pytest_erasure.testing import _shift_output, tiny_pipeline

    return context_for_pipelines(_shift_output(tiny_pipeline(0), 0.6),
                                 _shift_output(tiny_pipeline(0), -0.6), world["concepts"], cache,
                                 steps=4, samples=6, batch_size=8, scenario_options=options)


@pytest.fixture()
def counted(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    import pytest_erasure.attacks.inversion as inversion

    calls: list[str] = []
    for name in ("ddim_invert", "reconstruction_error"):
        real = getattr(inversion, name)

        def spy(*args, _real=real, _name=name, **kwargs):
            calls.append(_name)
            return _real(*args, **kwargs)

        monkeypatch.setattr(inversion, name, spy)
    return calls


def test_latent_plans(tiny_world: dict[str, Path], tmp_path: Path, counted: list[str]):
    from pytest_erasure.attacks.inversion import regenerate
    from pytest_erasure.scenarios.base import registry

    scenarios = registry()
    ctx = context(tiny_world, tmp_path / "cache")
    circle = ctx.concepts.concepts["circle"]  # 4 reference images
    null = scenarios["latent-white-null"].plan(ctx, circle, "erased", 6)
    # 4 references: 4 samples, not 6 — a repeated reference would repeat its image.
    assert len(null.inputs) == 4 and len({i.seed for i in null.inputs}) == 4
    first = null.inputs[0]
    assert first.prompt == "" and first.guidance == 1.0 and first.latents.shape == (4, 16, 16)
    assert not torch.equal(null.inputs[1].latents, first.latents)
    facts = null.facts
    assert facts["unique_references"] == 4 and facts["inverted_through"] == "erased"
    assert facts["inversion"] == {"prompt": "", "steps": 4, "guidance": 1.0}
    assert facts["perturbations"] == [] and facts["reference_images"]["source"] == "references"
    assert {"mse", "psnr", "vae_psnr"} <= set(facts["reconstruction"])
    # The inversion, and no denoising of the checks' own: both are measured on the case's
    # images (white-box, null prompt: the inversion's round trip is the case's trajectory).
    assert counted == ["ddim_invert"]
    assert ctx.generated == 4 and facts["reconstruction"] == facts["case_reconstruction"]
    assert facts["inversion_exact"]["exact"] is True  # the tiny world samples with DDIM

    # The case finds its images (generated once), and they are the plain DDIM regeneration.
    images = ctx.generate("erased", null.inputs[:2], circle).float() / 255
    assert ctx.generated == 4
    ours = regenerate(ctx.pipeline("erased"), torch.stack([i.latents for i in null.inputs[:2]]),
                      prompt="", steps=4, guidance=1.0)
    assert (images - ours).abs().max() < 2 / 255

    prompt = scenarios["latent-white-prompt"].plan(ctx, circle, "erased", 6)
    assert prompt.inputs[0].prompt == "a circle" and prompt.inputs[0].guidance == 1.0
    assert torch.equal(prompt.inputs[0].latents, first.latents)  # one inversion serves both
    assert counted.count("ddim_invert") == 1

    black = scenarios["latent-black-null"].plan(ctx, circle, "erased", 3)
    assert black.facts["inverted_through"] == "standard"
    assert black.facts["perturbations"] == ["noise:0.05", "blur:0.5", "jpeg:75", "resize:0.75"]
    assert black.facts["unique_references"] == 3
    assert black.facts["case_reconstruction"] != black.facts["reconstruction"]

    # A concept without references is inverted from the standard model's own images.
    square = scenarios["latent-white-null"].plan(ctx, ctx.concepts.concepts["square"],
                                                 "erased", 2)
    assert square.facts["reference_images"]["source"].startswith("generated by the standard")


def test_rerun_computes_nothing_and_reproduces(tiny_world: dict[str, Path], tmp_path: Path,
                                               counted: list[str]):
    from pytest_erasure.scenarios.base import registry

    scenario = registry()["latent-black-prompt"]
    first = context(tiny_world, tmp_path / "cache")
    plan = scenario.plan(first, first.concepts.concepts["circle"], "erased", 2)
    computed = len(counted)
    rerun = context(tiny_world, tmp_path / "cache")
    again = scenario.plan(rerun, rerun.concepts.concepts["circle"], "erased", 2)
    assert len(counted) == computed and rerun.cache.misses == 0
    assert again.facts == plan.facts
    assert all(torch.equal(a.latents, b.latents) for a, b in zip(plan.inputs, again.inputs,
                                                                  strict=True))
    uncached = context(tiny_world, None)
    fresh = scenario.plan(uncached, uncached.concepts.concepts["circle"], "erased", 2)
    assert torch.equal(fresh.inputs[0].latents, plan.inputs[0].latents)
    # Other perturbations are another attack: computed anew.
    other = context(tiny_world, tmp_path / "cache", **{"latent-perturbations": "jpeg:20"})
    scenario.plan(other, other.concepts.concepts["circle"], "erased", 2)
    assert other.cache.misses > 0


def test_bad_latent_options(tiny_world: dict[str, Path], counted: list[str]):
    from pytest_erasure.scenarios.base import registry

    scenarios = registry()
    for options, scenario, match in (
            ({"inversion-steps": 5000}, "latent-white-null", "--inversion-steps"),
            ({"latent-perturbations": "sharpen:2"}, "latent-black-null", "--latent-perturb"),
            ({"inversion-guidance": -1.0}, "latent-white-prompt", "--inversion-guidance")):
        ctx = context(tiny_world, None, **options)
        with pytest.raises(ErasureInputError, match=match):
            scenarios[scenario].plan(ctx, ctx.concepts.concepts["circle"], "erased", 2)
    assert counted == []


# -- the shapes world: does the inversion itself work on a trained model? ------------------------

def test_shapes_inversion_reconstructs_circles_on_the_standard_model(tmp_path: Path):
    """latent-white-null on the *standard* model must give circles back: a sanity check of the
    inversion (a failed one would pass any erased model), not of erasure."""
    needed = [SHAPES / "standard" / "model_index.json",
              SHAPES / "detector" / "model.safetensors", SHAPES / "references" / "circle"]
    missing = [str(p.relative_to(REPO)) for p in needed if not p.exists()]
    if missing:
        pytest.fail(f"shapes world missing ({', '.join(missing)}; it is tracked in git; "
                    "rebuild: python fixtures/shapes/build.py)")
    from diffusers import StableDiffusionPipeline

    from pytest_erasure.scenarios.base import registry
    from pytest_erasure.session import context_for_pipelines

    standard = StableDiffusionPipeline.from_pretrained(
        SHAPES / "standard", torch_dtype=torch.float32, local_files_only=True,
        safety_checker=None, requires_safety_checker=False)
    ctx = context_for_pipelines(standard, standard, REPO / "audits" / "shapes.toml",
                                tmp_path / "cache", steps=25, samples=16, batch_size=16)
    circle = ctx.concepts.concepts["circle"]
    plan = registry()["latent-white-null"].plan(ctx, circle, "standard", 16)
    detection = ctx.detect(ctx.generate("standard", plan.inputs, circle), circle)
    reconstruction = plan.facts["reconstruction"]
    assert sum(detection.present) >= 14, (detection.score, reconstruction)
    assert reconstruction["psnr"] > reconstruction["vae_psnr"] - 6, reconstruction
