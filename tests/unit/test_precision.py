"""Half precision: textual inversion (fp32 master rows, dynamic loss scaling, accumulation), DDIM
inversion (float32 latents) and the attention maps IRECE thresholds (float32 q/k)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

REPO = Path(__file__).resolve().parents[2]
SHAPES = REPO / "fixtures" / "shapes"


def squares(n: int = 4) -> torch.Tensor:
    images = torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 0.2
    images[:, :, 8:24, 8:24] = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
    return images


def half(dtype: torch.dtype):
    from pytest_erasure.testing import tiny_pipeline

    return tiny_pipeline().to(dtype)


# -- the loss scaler --------------------------------------------------------------------------

def test_loss_scaler_skips_an_overflowing_step_and_backs_off():
    from pytest_erasure.attacks.textual_inversion import LossScaler

    scaler = LossScaler(scale=1024.0, growth_interval=2)
    assert scaler.unscale(torch.tensor([1.0, float("inf")])) is None
    assert (scaler.scale, scaler.skipped) == (512.0, 1)
    assert scaler.unscale(torch.tensor([float("nan")], dtype=torch.float16)) is None
    assert (scaler.scale, scaler.skipped) == (256.0, 2)
    grad = scaler.unscale(torch.tensor([512.0], dtype=torch.float16))
    assert grad is not None and grad.dtype == torch.float32 and float(grad) == 2.0
    assert scaler.scale == 256.0
    scaler.unscale(torch.tensor([1.0]))
    assert scaler.scale == 512.0  # growth_interval good steps in a row: the scale grows
    assert scaler.describe() == {"loss_scaling": "dynamic", "final_scale": 512.0,
                                 "skipped_steps": 2}
    # float32 and bfloat16 need no scaling; a non-finite step is still skipped.
    for dtype in (torch.float32, torch.bfloat16):
        plain = LossScaler.for_dtype(dtype)
        assert not plain.enabled and plain.scale == 1.0
        assert plain.unscale(torch.tensor([float("nan")])) is None and plain.scale == 1.0
    assert LossScaler.for_dtype(torch.float16).enabled


def test_overflowing_fp16_steps_are_skipped_and_leave_the_rows_alone():
    """A scale far beyond fp16's range overflows the backward for real: no step is taken."""
    from pytest_erasure.attacks.textual_inversion import LossScaler, initial_vectors, train_textual_inversion

    pipe = half(torch.float16)
    scaler = LossScaler(scale=2.0**40)
    embeds, losses = train_textual_inversion(pipe, squares(), token="<sq>", init_token="shape",
                                             steps=3, lr=5e-2, batch_size=2, seed=0,
                                             scaler=scaler)
    assert scaler.skipped == 3 and scaler.scale == 2.0**37 and len(losses) == 3
    assert torch.equal(embeds, initial_vectors(pipe, "shape", 1))
    assert all(loss == loss and loss < 10 for loss in losses)  # the unscaled losses are real


# -- accumulation -----------------------------------------------------------------------------

def test_accumulation_averages_micro_batch_gradients():
    """batch 2 x accumulation 2 is one AdamW step on the mean gradient of two consecutive
    micro-batches drawn from the same generator: computed here by hand."""
    from pytest_erasure.attacks.textual_inversion import (
        TEMPLATES,
        _loss,
        _Splice,
        encode_images,
        initial_vectors,
        train_textual_inversion,
    )
    from pytest_erasure.testing import tiny_pipeline

    pipe, images = tiny_pipeline(), squares()
    embeds, losses = train_textual_inversion(pipe, images, token="<sq>", init_token="shape",
                                             steps=1, lr=5e-2, batch_size=2, accumulation=2,
                                             seed=0)
    splice = _Splice(pipe, "<sq>", 1)
    mean, std = encode_images(pipe, images)
    vectors = initial_vectors(pipe, "shape", 1).requires_grad_(True)
    generator = torch.Generator().manual_seed(0)
    parts = [_loss(pipe, splice, vectors, mean, std, generator, 2, TEMPLATES) for _ in range(2)]
    grads = [torch.autograd.grad(p, [vectors])[0] for p in parts]
    optimizer = torch.optim.AdamW([vectors], lr=5e-2, weight_decay=0.0)
    vectors.grad = (grads[0] + grads[1]) / 2
    optimizer.step()
    assert torch.allclose(embeds, vectors.detach(), atol=1e-7)
    assert losses[0] == pytest.approx(float((parts[0] + parts[1]).detach()) / 2)
    one = train_textual_inversion(pipe, images, token="<sq>", init_token="shape", steps=1,
                                  lr=5e-2, batch_size=2, seed=0)[0]
    assert not torch.equal(one, embeds)  # the second micro-batch counted


# -- textual inversion learns in half precision -----------------------------------------------

@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_textual_inversion_learns_in_half_precision(dtype: torch.dtype):
    from pytest_erasure.attacks.textual_inversion import (
        LossScaler,
        evaluation_loss,
        initial_vectors,
        train_textual_inversion,
    )
    from pytest_erasure.testing import tiny_pipeline

    full, images = tiny_pipeline(), squares()
    init = initial_vectors(full, "shape", 1)
    kwargs = dict(token="<sq>", init_token="shape", steps=10, lr=5e-2, batch_size=4, seed=0)
    reference, _ = train_textual_inversion(full, images, **kwargs)
    pipe = half(dtype)
    scaler = LossScaler.for_dtype(dtype)
    embeds, losses = train_textual_inversion(pipe, images, scaler=scaler, **kwargs)
    assert embeds.dtype == torch.float32 and scaler.skipped == 0  # fp32 master rows
    assert scaler.enabled == (dtype == torch.float16)
    # Judged on the float32 model: the half-precision token lowers the loss as the float32
    # one does (the fixed evaluation draw, not the noisy per-step losses).
    before = evaluation_loss(full, images, "<sq>", init, samples=32)
    learned = evaluation_loss(full, images, "<sq>", embeds, samples=32)
    target = evaluation_loss(full, images, "<sq>", reference, samples=32)
    assert before - target > 5e-3
    assert learned < before - 0.8 * (before - target), (before, learned, target)
    assert (embeds - reference).norm() < 0.1 * (reference - init).norm()
    # ... and on the half-precision model itself.
    assert evaluation_loss(pipe, images, "<sq>", embeds, samples=32) < \
        evaluation_loss(pipe, images, "<sq>", init, samples=32)


@pytest.mark.slow
def test_bf16_textual_inversion_brings_circles_back_on_the_shapes_world(tmp_path: Path):
    """The shapes world's attack, in bfloat16: a token learned through the UCE-erased model
    draws circles again where the word does not."""
    needed = [SHAPES / "standard" / "model_index.json", SHAPES / "erased" / "uce-circle",
              SHAPES / "detector" / "model.safetensors"]
    if not all(p.exists() for p in needed):
        pytest.fail("shapes world missing (it is tracked in git; rebuild: python "
                    "fixtures/shapes/build.py)")
    from diffusers import StableDiffusionPipeline

    from pytest_erasure.scenarios.base import registry
    from pytest_erasure.session import context_for_pipelines

    def load(path: Path) -> StableDiffusionPipeline:
        return StableDiffusionPipeline.from_pretrained(
            path, torch_dtype=torch.bfloat16, local_files_only=True, safety_checker=None,
            requires_safety_checker=False)

    ctx = context_for_pipelines(load(SHAPES / "standard"), load(SHAPES / "erased" / "uce-circle"),
                                REPO / "audits" / "shapes.toml", tmp_path / "cache",
                                steps=25, samples=16, batch_size=16, dtype="bfloat16",
                                scenario_options={"attack-restarts": 1})  # one TI run
    circle = ctx.concepts.concepts["circle"]
    scenarios = registry()
    text = scenarios["text"].plan(ctx, circle, "erased", 16)
    words = sum(ctx.detect(ctx.generate("erased", text.inputs, circle), circle).present)
    plan = scenarios["embedding-white"].plan(ctx, circle, "erased", 16)
    tokens = sum(ctx.detect(ctx.generate("erased", plan.inputs, circle), circle).present)
    facts = plan.facts
    assert facts["precision"]["loss_scaling"] == "none"  # bf16: float32's exponent range
    assert tokens >= 12 and tokens >= words + 6, (words, tokens, facts)
    # The per-step losses are too noisy to fall visibly in 100 steps (fp32 too: 0.033 -> 0.036);
    # on a fixed draw the learned token's loss is lower (fp32: 0.0428 -> 0.0343).
    from pytest_erasure.attacks.textual_inversion import evaluation_loss, initial_vectors
    from pytest_erasure.scenarios.embedding import concept_images

    erased = ctx.pipeline("erased")
    images, _ = concept_images(ctx, circle, 25)
    embeds, _, _ = scenarios["embedding-white"].learn(ctx, circle, "erased")
    init = initial_vectors(erased, "shape", 1)
    before = evaluation_loss(erased, images, "<circle>", init, samples=64)
    after = evaluation_loss(erased, images, "<circle>", embeds, samples=64)
    assert after < 0.9 * before, (before, after)


# -- DDIM inversion ---------------------------------------------------------------------------

def _half_latent_round_trip(pipe, images: torch.Tensor, steps: int) -> torch.Tensor:
    """The loop before float32 latents: inversion and denoising accumulate in the model dtype."""
    from diffusers import DDIMInverseScheduler

    from pytest_erasure.attacks.inversion import _eps, encode

    cond, _ = pipe.encode_prompt("", "cpu", 1, False)
    inverse = DDIMInverseScheduler.from_config(pipe.scheduler.config)
    inverse.set_timesteps(steps)
    sampler = type(pipe.scheduler).from_config(pipe.scheduler.config)
    sampler.set_timesteps(steps)
    x = encode(pipe, images)
    with torch.no_grad():
        for t in inverse.timesteps:
            x = inverse.step(_eps(pipe, x, t, cond, None, 1.0), t, x).prev_sample
        x = x * sampler.init_noise_sigma
        for t in sampler.timesteps:
            x = sampler.step(_eps(pipe, sampler.scale_model_input(x, t), t, cond, None, 1.0),
                             t, x).prev_sample
    return x.float()


def test_bf16_inversion_accumulates_in_float32():
    sys.path.insert(0, str(Path(__file__).parent))  # test_latent: a neighbour in tests/unit
    from test_latent import smooth_pipeline

    from pytest_erasure.attacks.inversion import ddim_invert, denoise, encode

    images, steps = squares(3), 50
    full = smooth_pipeline(0.1)
    bf16 = smooth_pipeline(0.1).to(torch.bfloat16)
    target = encode(full, images).float()

    def error(final: torch.Tensor) -> float:
        return float(((final - target) ** 2).mean() / target.var())

    latents = ddim_invert(bf16, images, steps=steps)
    assert latents.dtype == torch.float32
    float32 = error(denoise(full, ddim_invert(full, images, steps=steps), steps=steps))
    ours = error(denoise(bf16, latents, steps=steps))
    accumulated_in_bf16 = error(_half_latent_round_trip(bf16, images, steps))
    # Measured: float32 6.0e-4, ours 8.8e-4, accumulated in bf16 1.8e-3 (relative MSE).
    assert ours < 2 * float32, (float32, ours)
    assert ours < 0.6 * accumulated_in_bf16, (ours, accumulated_in_bf16)
    # A float32 model is untouched by the change: its round trip stays tight.
    assert float32 < 2e-3


# -- attention maps ---------------------------------------------------------------------------

def _maps(unet, dtype: torch.dtype, latents, context, tokens=(1, 2)):
    from pytest_erasure.defenses.attention import CrossAttentionCapture

    with torch.no_grad(), CrossAttentionCapture(unet, list(tokens), latents.shape[-2:]) as capture:
        unet(latents.to(dtype), torch.tensor(500), encoder_hidden_states=context.to(dtype))
    return capture.maps


def test_attention_scores_are_float32_whatever_the_layer_dtype():
    """One attn2 layer, the same (bf16) inputs: the bf16 layer's probabilities equal those of
    its float32 copy to float32 rounding, where bf16 projections would be off by ~1e-3."""
    from pytest_erasure.defenses.attention import _query_key
    from pytest_erasure.testing import tiny_pipeline

    unet = tiny_pipeline(seed=3).unet.to(torch.bfloat16)
    name = next(n for n, _ in unet.named_modules() if n.endswith("attn2"))
    layer = dict(unet.named_modules())[name]
    twin = tiny_pipeline(seed=3).unet.to(torch.bfloat16).float()
    twin_layer = dict(twin.named_modules())[name]
    g = torch.Generator().manual_seed(0)
    hidden = (torch.randn(2, 64, layer.to_q.in_features, generator=g) * 3).bfloat16()
    context = (torch.randn(2, 77, layer.to_k.in_features, generator=g) * 3).bfloat16()

    def probs(attn, h, c):
        q, k, _ = _query_key(attn, h, c, None, None)
        assert q.dtype == k.dtype == torch.float32
        return torch.softmax(q @ k.transpose(-1, -2) * attn.scale, dim=-1)

    ours = probs(layer, hidden, context)
    exact = probs(twin_layer, hidden.float(), context.float())
    assert (ours - exact).abs().max() < 1e-6
    # What the maps were before: q/k projected in bf16.
    q = layer.to_q(hidden).float().view(2, 64, layer.heads, -1).transpose(1, 2)
    k = layer.to_k(context).float().view(2, 77, layer.heads, -1).transpose(1, 2)
    before = torch.softmax(q @ k.transpose(-1, -2) * layer.scale, dim=-1)
    assert (before - exact).abs().max() > 100 * (ours - exact).abs().max()


def test_bf16_unet_maps_and_masks_match_the_float32_unet():
    from pytest_erasure.defenses.irece import irece_mask
    from pytest_erasure.testing import tiny_pipeline

    g = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 16, 16, generator=g)
    context = torch.randn(2, 77, 32, generator=g) * 3  # peaked attention: maps with contrast
    full = _maps(tiny_pipeline(seed=3).unet, torch.float32, latents, context)
    bf16 = _maps(tiny_pipeline(seed=3).unet.to(torch.bfloat16), torch.bfloat16, latents, context)
    assert full.keys() == bf16.keys()
    peak = max(float(m.max()) for m in full.values())
    worst = max(float((full[n] - bf16[n]).abs().max()) for n in full)
    assert worst < 0.02 * peak, (worst, peak)
    masks = [irece_mask(list(m.values()), (16, 16), 0.4) for m in (full, bf16)]
    assert 0 < int(masks[0].sum()) < masks[0].numel()  # a mask with both sides
    assert int((masks[0] != masks[1]).sum()) <= 0.02 * masks[0].numel()
