"""Every SD 1.x sampler (`--sampler`) in every scenario and under IRECE, on tiny pipelines that
carry SD v1.4's own scheduler config (PNDM, skip_prk_steps): IRECE's step resolution on PNDM's
N + 1 timesteps, the multistep history reset, the noise scale per sampler, the sampler in cache
keys and reports, and `--batch-invariant`'s modes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pytest_erasure.config import SAMPLERS
from pytest_erasure.errors import ErasureInputError

AUDIT = "def test_erasure(erasure_case, erasure_check):\n    erasure_check(erasure_case)\n"
SD14_SCHEDULER = {
    "_class_name": "PNDMScheduler", "beta_start": 0.00085, "beta_end": 0.012,
    "beta_schedule": "scaled_linear", "num_train_timesteps": 1000, "set_alpha_to_one": False,
    "skip_prk_steps": True, "steps_offset": 1, "clip_sample": False, "trained_betas": None,
}
"""SD v1.4's scheduler/scheduler_config.json."""
STEPS = 6
MULTISTEP = ("pndm", "lms", "dpm++2m", "unipc")


def sd14_scheduler():
    from diffusers import PNDMScheduler

    return PNDMScheduler.from_config(SD14_SCHEDULER)


def with_sampler(pipe, name: str | None):
    from diffusers import StableDiffusionPipeline

    from pytest_erasure.samplers import make_sampler

    scheduler = sd14_scheduler() if name is None else make_sampler(name, SD14_SCHEDULER)
    return StableDiffusionPipeline(**{**pipe.components, "scheduler": scheduler})


@pytest.fixture(scope="module")
def erased():
    from pytest_erasure.testing import tiny_pipeline

    return tiny_pipeline(seed=0)


@pytest.fixture(scope="module")
def standard():
    from pytest_erasure.testing import tiny_pipeline

    return tiny_pipeline(seed=1)


# ---------------------------------------------------------------- building samplers


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_each_sampler_is_built_from_the_model_config(name):
    from pytest_erasure.samplers import make_sampler

    scheduler = make_sampler(name, SD14_SCHEDULER)
    assert type(scheduler).__name__ == SAMPLERS[name]
    config = scheduler.config
    assert (config.beta_start, config.beta_end, config.beta_schedule) == (
        0.00085, 0.012, "scaled_linear")
    assert config.num_train_timesteps == 1000 and config.steps_offset == 1
    if name == "pndm":
        assert config.skip_prk_steps  # PLMS as SD v1.4 ships it, also from a DDIM config
        assert make_sampler("pndm", {"num_train_timesteps": 1000}).config.skip_prk_steps
    with pytest.raises(ErasureInputError, match="--sampler"):
        make_sampler("heun", SD14_SCHEDULER)


def test_pndm_runs_n_plus_one_timesteps_and_irece_counts_noise_levels():
    from pytest_erasure.samplers import trajectory_points

    scheduler = sd14_scheduler()
    scheduler.set_timesteps(10)
    timesteps = scheduler.timesteps.tolist()
    assert len(timesteps) == 11 and timesteps[1] == timesteps[2]  # predictor, corrector
    points = trajectory_points(scheduler)
    assert points == [0, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    ddim = __import__("diffusers").DDIMScheduler.from_config(SD14_SCHEDULER)
    ddim.set_timesteps(10)
    # Step k is one noise level under both samplers.
    assert [timesteps[p] for p in points] == ddim.timesteps.tolist()


def test_irece_on_sd14_pndm_config(erased, standard):
    """The crash of issue #16: `IRECE was built for 10 steps but the pipeline runs 11`."""
    from pytest_erasure.defenses.irece import IRECE

    pipe = with_sampler(erased, None)
    irece = IRECE.for_concept(standard, "a red circle", "circle", num_inference_steps=10,
                              t_star=0.2)
    seen = []
    hook = standard.unet.register_forward_pre_hook(lambda m, args: seen.append(int(args[1])))
    try:
        images = pipe(["a red circle", "a circle"], num_inference_steps=10, output_type="pt",
                      generator=torch.Generator().manual_seed(0), callback_on_step_end=irece,
                      callback_on_step_end_tensor_inputs=irece.tensor_inputs).images
    finally:
        hook.remove()
    assert images.shape == (2, 3, 32, 32) and torch.isfinite(images).all()
    assert irece.steps == [2] and len(irece.masks) == 1
    pipe.scheduler.set_timesteps(10)
    assert seen == [int(pipe.scheduler.timesteps[3])]  # step 2 = evaluation 3 under PNDM


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_noise_scale_is_the_samplers_own(name):
    from pytest_erasure.defenses.irece import _noise_scale
    from pytest_erasure.samplers import make_sampler

    scheduler = make_sampler(name, SD14_SCHEDULER)
    scheduler.set_timesteps(STEPS)
    if hasattr(scheduler, "_step_index"):
        scheduler._step_index = 2  # where the pipeline's scheduler is after step 1
    scale = _noise_scale(scheduler, scheduler.timesteps[2])
    if name in ("euler", "euler-ancestral", "lms"):  # x_t = x_0 + sigma eps
        sigma = float(scheduler.sigmas[2])
        assert scale == pytest.approx((sigma**2 + 1) ** 0.5) and scale > 1.5
    else:  # variance preserving: N(0, I) is already the right scale
        assert scale == 1.0


# ---------------------------------------------------------------- the history reset


class Trace:
    """Records the latents each callback returns, around an inner callback (IRECE)."""

    tensor_inputs = ["latents"]

    def __init__(self, inner):
        self.inner = inner
        self.latents: list[torch.Tensor] = []

    def __call__(self, pipe, i, t, kwargs):
        kwargs = self.inner(pipe, i, t, kwargs)
        self.latents.append(kwargs["latents"].clone())
        return kwargs


def run_traced(pipe, standard, reset: bool):
    """Guidance 1 (the UNet's output is the step's model output), IRECE at step 2."""
    from pytest_erasure.defenses.irece import IRECE

    irece = IRECE.for_concept(standard, "a red circle", "circle", num_inference_steps=STEPS,
                              t_star=2, reset_history=reset)
    trace = Trace(irece)
    outputs: list[torch.Tensor] = []
    hook = pipe.unet.register_forward_hook(lambda m, a, out: outputs.append(out[0].clone()))
    try:
        pipe(["a red circle", "a circle"], num_inference_steps=STEPS, guidance_scale=1.0,
             output_type="latent", generator=torch.Generator().manual_seed(0),
             callback_on_step_end=trace, callback_on_step_end_tensor_inputs=["latents"])
    finally:
        hook.remove()
    return trace.latents, outputs


def fresh_first_step(name: str, evaluation: int, eps: torch.Tensor, x: torch.Tensor):
    """The step a solver takes when sampling starts at x at that evaluation's timestep."""
    from pytest_erasure.samplers import make_sampler

    fresh = make_sampler(name, SD14_SCHEDULER)
    fresh.set_timesteps(STEPS)
    if hasattr(fresh, "_step_index"):
        fresh._step_index = evaluation
    kwargs = {"order": 1} if name == "lms" else {}  # LMS's first step is its order-1 step
    return fresh.step(eps, fresh.timesteps[evaluation], x, **kwargs).prev_sample


@pytest.mark.parametrize("name", [*MULTISTEP, "ddim", "euler"])
def test_the_step_after_an_intervention_is_a_fresh_solvers_first_step(name, erased, standard):
    from pytest_erasure.samplers import trajectory_points

    pipe = with_sampler(erased, name)
    latents, outputs = run_traced(pipe, standard, reset=True)
    pipe.scheduler.set_timesteps(STEPS)
    evaluation = trajectory_points(pipe.scheduler)[2]
    replaced = latents[evaluation - 1]  # x*_t: what the evaluation denoises
    expected = fresh_first_step(name, evaluation, outputs[evaluation], replaced)
    assert torch.allclose(latents[evaluation], expected, atol=1e-5), name
    if name in MULTISTEP:  # with the old history kept, the step would be another one
        kept, kept_outputs = run_traced(pipe, standard, reset=False)
        assert torch.equal(kept[evaluation - 1], replaced)  # the same x*_t ...
        other = fresh_first_step(name, evaluation, kept_outputs[evaluation], replaced)
        assert (kept[evaluation] - other).abs().max() > 1e-3  # ... stepped otherwise


# ---------------------------------------------------------------- options


def test_batch_invariant_modes():
    from pytest_erasure.session import default_config

    assert default_config().invariant_layers  # auto on the CPU
    assert not default_config(device="cuda").invariant_layers
    assert not default_config(device="mps").invariant_layers
    assert default_config(device="cuda:1", batch_invariant="on").invariant_layers
    assert not default_config(batch_invariant="off").invariant_layers
    assert not default_config(native_kernels=True).invariant_layers  # --no-batch-invariant
    for values, flag in (({"batch_invariant": "sometimes"}, "--batch-invariant"),
                         ({"batch_invariant": "on", "native_kernels": True}, "--no-batch-inv"),
                         ({"sampler": "heun"}, "--sampler")):
        with pytest.raises(ErasureInputError, match=flag):
            default_config(**values).validate()


def test_help_shows_the_options(pytester: pytest.Pytester):
    result = pytester.runpytest_inprocess("--help")
    text = result.stdout.str()
    assert "--sampler=ERASURE_SAMPLER" in text and "euler-ancestral" in text
    assert "--batch-invariant" in text and "erasure_sampler" in text


def test_unknown_sampler_is_one_usage_error_line(pytester: pytest.Pytester, tiny_world):
    pytester.makepyfile(test_audit=AUDIT)
    result = pytester.runpytest_inprocess(
        f"--standard-model={tiny_world['standard']}", f"--erased-model={tiny_world['erased']}",
        f"--concepts={tiny_world['concepts']}", "--sampler=heun")
    assert result.ret == 4
    errors = [line for line in result.stderr.str().splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("ERROR: --sampler"), errors
    assert "dpm++2m" in errors[0] and "Traceback" not in result.stdout.str()


def test_the_sampler_keys_every_image_and_is_in_the_facts(tiny_world, tmp_path):
    from pytest_erasure.records import GenerationInput
    from pytest_erasure.session import context_for_pipelines
    from pytest_erasure.testing import _shift_output, tiny_pipeline

    def session(sampler):
        return context_for_pipelines(_shift_output(tiny_pipeline(0), 0.6),
                                     _shift_output(tiny_pipeline(0), -0.6),
                                     tiny_world["concepts"], tmp_path / "cache", steps=3,
                                     sampler=sampler)

    inputs = [GenerationInput(seed=1, prompt="a circle")]
    ddim = session(None)
    first = ddim.generate("standard", inputs)
    euler = session("euler")
    assert euler.model_facts("standard").scheduler_class == "EulerDiscreteScheduler"
    assert type(euler.pipeline("erased").scheduler).__name__ == "EulerDiscreteScheduler"
    other = euler.generate("standard", inputs)
    assert euler.cache.misses == 1 and not torch.equal(first, other)
    again = session("euler")
    assert torch.equal(again.generate("standard", inputs), other) and again.cache.misses == 0
    assert again.identity.provenance["erased"]["sampler"]["class"] == "EulerDiscreteScheduler"


# ---------------------------------------------------------------- every sampler, every scenario


BUDGETS = [
    "--samples=2", "--steps=4", "--batch-size=4", "--irece", "-p", "no:randomly",
    "--ti-steps=1", "--ti-batch-size=1", "--ti-train-images=1",
    "--rab-population=4", "--rab-generations=1", "--rab-keep=1", "--rab-tokens=3",
    "--fuzz-examples=1", "--fuzz-seeds-per-prompt=1", "--fuzz-max-prompts=2",
    "--erasure-exploratory",
]


@pytest.fixture(scope="module")
def sd14_world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny world, every model carrying SD v1.4's scheduler config (PNDM)."""
    from pytest_erasure.testing import save_tiny_world

    world = save_tiny_world(tmp_path_factory.mktemp("sd14-scheduler-world"))
    for role in ("standard", "erased", "leaky"):
        (world[role] / "scheduler" / "scheduler_config.json").write_text(
            json.dumps(SD14_SCHEDULER))
        index = world[role] / "model_index.json"
        pipeline = json.loads(index.read_text())
        pipeline["scheduler"] = ["diffusers", "PNDMScheduler"]
        index.write_text(json.dumps(pipeline))
    return world


@pytest.mark.parametrize("name", [None, *(s for s in SAMPLERS if s != "pndm")],
                         ids=lambda n: n or "own-pndm")
def test_every_scenario_under_irece_with_every_sampler(name, sd14_world, pytester):
    """One audit per sampler over every scenario, with IRECE: a verdict for every case (exit
    0 or 1), never an error; the sampler used is in the report. (A fresh cache per audit, not
    --no-erasure-cache: fuzz's in-memory example database is a module global that a second
    in-process run finds stale.) `None` is the model's own
    scheduler, SD v1.4's PNDM (what `--sampler pndm` builds from this config, too)."""
    pytester.makepyfile(test_audit=AUDIT)
    report = pytester.path / "report"
    args = [f"--standard-model={sd14_world['standard']}", f"--erased-model={sd14_world['leaky']}",
            f"--concepts={sd14_world['concepts']}", f"--erasure-report={report}",
            f"--erasure-cache={pytester.path / 'cache'}", *BUDGETS, *([f"--sampler={name}"] if name else [])]
    result = pytester.runpytest_inprocess(*args)
    output = result.stdout.str() + result.stderr.str()
    assert result.ret in (0, 1), output[-4000:]
    assert "Traceback" not in output and "usage error" not in output
    outcomes = result.parseoutcomes()
    assert "error" not in outcomes and "errors" not in outcomes, outcomes
    data = json.loads((report / "report.json").read_text())
    cases = {c["case_id"]: c for c in data["cases"]}
    assert len(cases) == 11 and not [c for c in cases.values() if c.get("error")], cases.keys()
    expected = SAMPLERS[name or "pndm"]
    assert data["config"]["sampler"] == name
    assert {data["provenance"][role]["sampler"]["class"] for role in ("standard", "erased")
            } == {expected}
    latent = cases["circle-latent-white-null"]["facts"]
    assert latent["inversion_exact"]["sampler"] == expected
    assert latent["inversion_exact"]["exact"] == (expected == "DDIMScheduler")
    assert cases["circle-text"]["undefended"] is not None  # IRECE ran
