"""IRECE: the mask maths (property tests), the callback on a tiny pipeline, and (slow) the
full-size SD v1.4 UNet architecture."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from pytest_erasure.defenses.irece import IRECE, concept_conditioning, irece_mask, resolve_steps
from pytest_erasure.errors import ErasureInputError
from pytest_erasure.testing import tiny_pipeline

STEPS = 6


# ---------------------------------------------------------------- mask maths (pure function)

LATENTS = st.sampled_from([(8, 8), (16, 16), (12, 20), (16, 8)])


@st.composite
def attention_maps(draw, batch: int | None = None):
    """(maps, latent_hw): 1-3 layers at the latent's size or halvings of it, values in [0, 1]."""
    height, width = draw(LATENTS)
    b = batch or draw(st.integers(1, 3))
    maps = []
    for _ in range(draw(st.integers(1, 3))):
        level = draw(st.integers(0, 2))
        shape = (b, -(-height // 2**level), -(-width // 2**level))
        values = draw(arrays(np.float32, shape, elements=st.floats(0, 1, width=32)))
        maps.append(torch.from_numpy(values))
    return maps, (height, width)


TAU = st.floats(0, 1)


@settings(max_examples=60, deadline=None)
@given(attention_maps(), TAU)
def test_mask_is_binary_with_the_latent_shape(maps_hw, tau):
    maps, (h, w) = maps_hw
    mask = irece_mask(maps, (h, w), tau)
    assert mask.shape == (maps[0].shape[0], 1, h, w)
    assert mask.dtype == torch.float32
    assert set(mask.unique().tolist()) <= {0.0, 1.0}


@settings(max_examples=60, deadline=None)
@given(attention_maps(), TAU, TAU)
def test_higher_tau_gives_a_subset(maps_hw, tau_a, tau_b):
    maps, hw = maps_hw
    low, high = sorted((tau_a, tau_b))
    assert bool((irece_mask(maps, hw, high) <= irece_mask(maps, hw, low)).all())


@settings(max_examples=40, deadline=None)
@given(attention_maps(), TAU)
def test_each_image_is_normalised_on_its_own(maps_hw, tau):
    maps, hw = maps_hw
    whole = irece_mask(maps, hw, tau)
    for i in range(whole.shape[0]):
        alone = irece_mask([m[i:i + 1] for m in maps], hw, tau)
        assert torch.equal(whole[i:i + 1], alone)


@settings(max_examples=40, deadline=None)
@given(attention_maps(), TAU)
def test_non_flat_maps_give_a_mask_that_is_neither_empty_nor_everything(maps_hw, tau):
    maps, hw = maps_hw
    mask = irece_mask(maps, hw, tau)
    reference = irece_mask(maps, hw, 1.0)  # exactly the per-image maxima
    for i in range(mask.shape[0]):
        if reference[i].sum() == 0:
            continue  # this image's averaged map had no contrast
        assert mask[i].sum() >= 1  # the maximum always passes tau <= 1
        if tau > 1e-6:  # (a tinier tau rounds to 0 in float32)
            assert mask[i].sum() < mask[i].numel()  # the minimum never does


@settings(max_examples=60, deadline=None)
@given(LATENTS, st.lists(st.floats(0, 1, width=32), min_size=1, max_size=3),
       st.lists(st.integers(0, 2), min_size=3, max_size=3), TAU)
def test_constant_attention_gives_an_empty_mask(hw, constants, levels, tau):
    h, w = hw
    maps = [torch.full((2, -(-h // 2**lv), -(-w // 2**lv)), c)
            for c, lv in zip(constants, levels, strict=False)]
    assert irece_mask(maps, hw, tau).sum() == 0


def test_subnormal_constant_attention_gives_an_empty_mask():
    """Found by hypothesis: a constant map of the smallest subnormal float interpolates to a mix of
    it and 0 (0.25 x it rounds to 0), which looked like contrast and masked everything."""
    tiny = torch.full((2, 2, 2), 1.401298464324817e-45)
    assert irece_mask([tiny], (8, 8), 0.0).sum() == 0


def test_all_zero_attention_gives_an_empty_mask():
    assert irece_mask([torch.zeros(3, 8, 8), torch.zeros(3, 4, 4)], (16, 16), 0.0).sum() == 0


@settings(max_examples=60, deadline=None)
@given(st.sampled_from([1, 2, 4, 8]), st.data(), st.floats(0.01, 1), st.floats(0.1, 1))
def test_a_single_hot_spot_is_covered(factor, data, tau, value):
    """A hot cell on a zero map: the mask lies within one cell of it, meets it for every tau,
    and covers it whole for tau <= 0.25 (bilinear upsampling by up to 8x keeps >= 0.31)."""
    size = 8
    y, x = data.draw(st.integers(0, size - 1)), data.draw(st.integers(0, size - 1))
    hot = torch.zeros(1, size, size)
    hot[0, y, x] = value
    latent = size * factor
    mask = irece_mask([hot], (latent, latent), tau)[0, 0]
    cell = mask[y * factor:(y + 1) * factor, x * factor:(x + 1) * factor]
    assert cell.sum() >= 1
    if tau <= 0.25:
        assert bool(cell.all())
    near = torch.zeros_like(mask)
    near[max(0, (y - 1) * factor):(y + 2) * factor, max(0, (x - 1) * factor):(x + 2) * factor] = 1
    assert bool((mask <= near).all())


def test_tau_zero_on_a_non_flat_map_is_everything():
    maps = [torch.rand(2, 4, 4, generator=torch.Generator().manual_seed(0))]
    assert irece_mask(maps, (8, 8), 0.0).sum() == 2 * 64


def test_mask_rejects_bad_maps():
    with pytest.raises(ValueError):
        irece_mask([], (8, 8), 0.4)
    with pytest.raises(ValueError):
        irece_mask([torch.zeros(1, 1, 4, 4)], (8, 8), 0.4)


# ---------------------------------------------------------------- step resolution


def test_t_star_fraction_and_index():
    assert resolve_steps(0.2, 1, 25) == [5]
    assert resolve_steps(0.2, 3, 25) == [5, 6, 7]
    assert resolve_steps(0.0, 1, 25) == [1]  # the first input (initial noise) is not reachable
    assert resolve_steps(0.99, 2, 25) == [23, 24]  # clamped so every step fits
    assert resolve_steps(7, 1, 25) == [7]
    assert resolve_steps(24.0, 1, 25) == [24]


@pytest.mark.parametrize(("t_star", "n_steps", "steps", "flag"), [
    (25, 1, 25, "--irece-t-star"), (23, 3, 25, "--irece-t-star"), (2.5, 1, 25, "--irece-t-star"),
    (-0.1, 1, 25, "--irece-t-star"), (0.2, 25, 25, "--irece-steps"), (0.2, 0, 25, "--irece-steps"),
    (0.2, 1, 1, "--steps"),
])
def test_t_star_out_of_range_is_a_usage_error(t_star, n_steps, steps, flag):
    with pytest.raises(ErasureInputError, match=flag):
        resolve_steps(t_star, n_steps, steps)


# ---------------------------------------------------------------- the callback on a pipeline


@pytest.fixture(scope="module")
def erased():
    return tiny_pipeline(seed=0)


@pytest.fixture(scope="module")
def standard():
    return tiny_pipeline(seed=1)


class Recorder:
    """A step-end callback that keeps every latent the pipeline carries on."""

    tensor_inputs = ["latents"]

    def __init__(self, inner=None):
        self.inner = inner
        self.latents: list[torch.Tensor] = []

    def __call__(self, pipe, i, t, kwargs):
        if self.inner is not None:
            kwargs = self.inner(pipe, i, t, kwargs)
        self.latents.append(kwargs["latents"].clone())
        return kwargs


def generate(pipe, callback=None, seed=0, **kwargs):
    recorder = Recorder(callback)
    kwargs.setdefault("prompt", ["a red circle", "a blue square"])
    images = pipe(num_inference_steps=STEPS, generator=torch.Generator().manual_seed(seed),
                  output_type="pt", callback_on_step_end=recorder,
                  callback_on_step_end_tensor_inputs=recorder.tensor_inputs, **kwargs).images
    return images, recorder.latents


def make_irece(standard, **kwargs):
    kwargs.setdefault("num_inference_steps", STEPS)
    kwargs.setdefault("t_star", 2)
    return IRECE.for_concept(standard, "a red circle", "circle", **kwargs)


def test_concept_conditioning(standard):
    embeds, tokens = concept_conditioning(standard, "a red circle", "circle")
    assert tokens == [3]  # <start> a red circle
    expected = standard.encode_prompt("a red circle", "cpu", 1, False)[0]
    assert torch.equal(embeds, expected) and embeds.shape == (1, 77, 32)
    assert concept_conditioning(standard, "a red circle", "red circle")[1] == [2, 3]
    assert concept_conditioning(standard, "circle, a circle", "circle")[1] == [1, 4]
    with pytest.raises(ErasureInputError, match="does not contain the concept term 'square'"):
        concept_conditioning(standard, "a red circle", "square")


@pytest.fixture(scope="module")
def undefended(erased):
    return generate(erased)


def test_only_masked_entries_change_at_the_intervention_step(erased, standard, undefended):
    base_images, base = undefended
    irece = make_irece(standard, t_star=2)
    images, defended = generate(erased, irece)
    k = irece.steps[0]  # input of step k = output of the callback at step k - 1
    for i in range(k - 1):
        assert torch.equal(defended[i], base[i])  # nothing happens before t*
    mask = irece.masks[0].bool().expand_as(base[k - 1])
    assert mask.shape == (2, 4, 16, 16) and 0 < mask.float().mean() < 1
    assert torch.equal(defended[k - 1][~mask], base[k - 1][~mask])  # bit-identical outside
    assert bool((defended[k - 1][mask] != base[k - 1][mask]).all())  # replaced inside
    assert not torch.equal(images, base_images)  # and the image follows
    assert len(irece.masks) == 1 and irece.masks[0].device.type == "cpu"


def test_cost_is_one_standard_forward_per_intervention_and_no_second_loop(erased, standard):
    irece = make_irece(standard, t_star=2, n_steps=2)
    calls = {"standard": 0, "erased": 0}
    hooks = [standard.unet.register_forward_pre_hook(lambda *a: calls.__setitem__(
                 "standard", calls["standard"] + 1)),
             erased.unet.register_forward_pre_hook(lambda *a: calls.__setitem__(
                 "erased", calls["erased"] + 1))]
    before = dict(standard.unet.attn_processors)
    try:
        generate(erased, irece)
    finally:
        for h in hooks:
            h.remove()
    assert calls == {"standard": 2, "erased": STEPS}
    assert len(irece.masks) == 2 and irece.steps == [2, 3]
    assert standard.unet.attn_processors == before


def test_deterministic_for_a_seed_and_seed_matters(erased, standard):
    a_images, a = generate(erased, make_irece(standard, seed=5))
    b_images, b = generate(erased, make_irece(standard, seed=5))
    c_images, _ = generate(erased, make_irece(standard, seed=6))
    assert torch.equal(a_images, b_images) and all(map(torch.equal, a, b))
    assert not torch.equal(a_images, c_images)


def test_per_image_seeds_make_an_image_noise_independent_of_its_batch(standard):
    pair = make_irece(standard, seed=[11, 12])
    single = make_irece(standard, seed=[12])
    both, alone = pair._noise((2, 4, 16, 16), 2), single._noise((1, 4, 16, 16), 2)
    assert torch.equal(both[1:], alone) and not torch.equal(both[0], both[1])
    assert not torch.equal(single._noise((1, 4, 16, 16), 3), alone)  # fresh noise per step
    with pytest.raises(ValueError, match="2 per-image seeds for a batch of 3"):
        pair._noise((3, 4, 16, 16), 2)


def test_works_with_prompt_embeds_the_empty_prompt_and_no_cfg(erased, standard):
    embeds = erased.encode_prompt("a red circle", "cpu", 1, False)[0]
    for kwargs in ({"prompt": None, "prompt_embeds": embeds.repeat(2, 1, 1)},
                   {"prompt": ["", ""]},
                   {"prompt": ["", ""], "guidance_scale": 1.0}):
        irece = make_irece(standard)
        images, _ = generate(erased, irece, **kwargs)
        assert images.shape == (2, 3, 32, 32) and torch.isfinite(images).all()
        assert len(irece.masks) == 1 and irece.masks[0].shape == (2, 1, 16, 16)


def test_the_erased_unet_may_serve_as_standard(erased, undefended):
    embeds, tokens = concept_conditioning(erased, "a red circle", "circle")
    irece = IRECE(erased.unet, embeds, tokens, num_inference_steps=STEPS, t_star=3)
    before = dict(erased.unet.attn_processors)
    _, defended = generate(erased, irece)
    assert erased.unet.attn_processors == before
    assert all(torch.equal(d, b) for d, b in zip(defended[:2], undefended[1][:2], strict=True))
    assert not torch.equal(defended[2], undefended[1][2])


def test_step_count_mismatch_is_reported(erased, standard):
    irece = make_irece(standard, num_inference_steps=STEPS + 4, t_star=1)
    with pytest.raises(ValueError, match="built for 10 steps"):
        generate(erased, irece)


def test_describe_is_json_able(standard):
    import json

    irece = make_irece(standard, t_star=0.2, tau=0.5, resolutions=(8,))
    described = json.loads(json.dumps(irece.describe()))
    assert described["intervention_steps"] == [1] and described["tau"] == 0.5
    assert described["resolutions"] == [8]


def test_noise_scale_follows_the_scheduler(erased):
    from diffusers import DDIMScheduler, EulerDiscreteScheduler

    from pytest_erasure.defenses.irece import _noise_scale

    ddim = DDIMScheduler.from_config(erased.scheduler.config)
    ddim.set_timesteps(STEPS)
    assert _noise_scale(ddim, ddim.timesteps[2]) == 1.0
    euler = EulerDiscreteScheduler.from_config(erased.scheduler.config)
    euler.set_timesteps(STEPS)
    euler._step_index = 2  # where the pipeline's scheduler is after step 1
    sigma = float(euler.sigmas[2])
    assert _noise_scale(euler, euler.timesteps[2]) == pytest.approx((sigma**2 + 1) ** 0.5)


def test_sigma_scheduler_gets_noise_at_its_own_scale(erased, standard):
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    euler = EulerDiscreteScheduler.from_config(erased.scheduler.config)
    pipe = StableDiffusionPipeline(**{**erased.components, "scheduler": euler})
    irece = make_irece(standard, t_star=1)
    _, defended = generate(pipe, irece)
    mask = irece.masks[0].bool().expand_as(defended[0])
    sigma = float(euler.sigmas[1])
    replaced = defended[0][mask]
    assert replaced.numel() > 100
    assert float(replaced.std()) == pytest.approx((sigma**2 + 1) ** 0.5, rel=0.25)


# ---------------------------------------------------------------- full-size SD v1.4 UNet


@pytest.mark.slow
def test_full_size_sd14_unet_two_steps():
    """IRECE for two denoising steps on SD v1.4's UNet architecture with random weights."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    base = tiny_pipeline()
    torch.manual_seed(0)
    unet = UNet2DConditionModel(  # diffusers' defaults are SD v1.4's layout
        sample_size=64, cross_attention_dim=768, attention_head_dim=8).eval()
    assert sum(p.numel() for p in unet.parameters()) == 859_520_964
    text_encoder = CLIPTextModel(CLIPTextConfig(
        bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=768, intermediate_size=64,
        num_attention_heads=12, num_hidden_layers=1, vocab_size=len(base.tokenizer),
        max_position_embeddings=77)).eval()
    pipe = StableDiffusionPipeline(
        vae=base.vae, text_encoder=text_encoder, tokenizer=base.tokenizer, unet=unet,
        scheduler=base.scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    latent = 32  # the tiny VAE down-samples 2x: 64x64 images
    embeds, tokens = concept_conditioning(pipe, "a red circle", "circle")
    irece = IRECE(unet, embeds, tokens, num_inference_steps=2, t_star=1)

    def run(callback):
        recorder = Recorder(callback)
        pipe("a red circle", height=2 * latent, width=2 * latent, num_inference_steps=2,
             guidance_scale=1.0, generator=torch.Generator().manual_seed(0), output_type="latent",
             callback_on_step_end=recorder, callback_on_step_end_tensor_inputs=["latents"])
        return recorder.latents

    base_latents, defended = run(None), run(irece)
    assert irece.masks[0].shape == (1, 1, latent, latent)
    sizes = sorted(irece.layers.values())
    assert sizes == [(4, 4)] + [(8, 8)] * 5 + [(16, 16)] * 5 + [(32, 32)] * 5
    mask = irece.masks[0].bool().expand_as(base_latents[0])
    assert 0 < mask.float().mean() < 1
    assert torch.equal(defended[0][~mask], base_latents[0][~mask])
    assert bool((defended[0][mask] != base_latents[0][mask]).all())
