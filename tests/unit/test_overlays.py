"""Model overlays: weights run on top of a loaded model for one unit, keyed by their content.

On the tiny world as the plugin loads it, the erased pipeline shares its UNet and text encoder
with the standard one (`models/loading.py`): an overlay on the erased model must change its
images and leave the standard model's bit-identical, during and after, with the local executor
and in a worker process; removal must give the erased model's own images back, bit for bit.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import pytest
import torch

from pytest_erasure.context import Context
from pytest_erasure.errors import ErasureInputError
from pytest_erasure.overlays import kind, names
from pytest_erasure.overlays.lora import lora
from pytest_erasure.overlays.quantize import quantize, round_to_nearest
from pytest_erasure.records import GenerationInput, Overlay
from pytest_erasure.session import default_config

INPUTS = [GenerationInput(seed=s, prompt=p) for s, p in ((1, "a circle"), (2, "a red circle"))]


def planted_lora(unet: torch.nn.Module, rank: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    """A peft-style LoRA (lora_A / lora_B) on every attention projection of `unet`, large
    enough to move the images."""
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for name, module in unet.named_modules():
        if name.endswith(("attn1.to_q", "attn2.to_k", "attn2.to_v", "attn1.to_out.0")):
            out[f"unet.{name}.lora_A.weight"] = torch.randn(
                rank, module.in_features, generator=generator)
            out[f"unet.{name}.lora_B.weight"] = torch.randn(
                module.out_features, rank, generator=generator)
    return out


def _context(world: dict[str, Path], executor: str, cache: Path | None = None) -> Context:
    from pytest_erasure.concepts import load_concepts

    config = default_config(standard_model=world["standard"], erased_model=world["erased"],
                            concepts_file=world["concepts"], cache_dir=cache,
                            no_cache=cache is None, executor=executor, steps=3, batch_size=2)
    return Context(config, load_concepts(world["concepts"]))


def _state(pipe: Any) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in pipe.unet.state_dict().items()}


def test_registry_names_the_built_ins_and_refuses_an_unknown_kind() -> None:
    assert names()[:2] == ["lora", "quantize"]
    with pytest.raises(ErasureInputError, match="not a registered overlay kind"):
        kind("nonesuch")


def test_an_overlay_is_keyed_by_its_content_and_travels() -> None:
    weights = {"down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight":
               torch.ones(2, 16),
               "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_B.weight":
               torch.ones(16, 2)}
    first = lora(weights)
    again = lora({k: v.clone() for k, v in weights.items()})
    assert first.key == again.key and first == again
    assert lora(weights, scale=0.5).key != first.key
    changed = {**weights, next(iter(weights)): torch.full((2, 16), 2.0)}
    assert lora(changed).key != first.key
    copy = pickle.loads(pickle.dumps(first))
    assert copy.key == first.key and torch.equal(copy.tensors[next(iter(weights))],
                                                 weights[next(iter(weights))])
    assert quantize(8).key != quantize(4).key != quantize(4, group_size=32).key
    assert quantize(8).to_dict()["params"] == {"bits": 8, "components": ["unet"],
                                               "scheme": "per-channel"}


@pytest.mark.parametrize(("bits", "group"), [(8, 64), (4, 8)])
def test_round_to_nearest_is_within_half_a_step_on_its_grid(bits: int, group: int) -> None:
    weight = torch.randn(6, 20, generator=torch.Generator().manual_seed(1))
    out = round_to_nearest(weight, bits, group)
    assert out.shape == weight.shape and not torch.equal(out, weight)
    if bits == 8:
        step = weight.abs().amax(dim=1, keepdim=True) / 127
        assert bool(((out - weight).abs() <= step / 2 + 1e-7).all())
        assert bool((torch.round(out / step) * step - out).abs().max() < 1e-6)
    else:
        for start in range(0, 20, group):  # 20 = 8 + 8 + a short last group of 4
            block, original = out[:, start:start + group], weight[:, start:start + group]
            step = original.abs().amax(dim=1, keepdim=True) / 7
            assert bool(((block - original).abs() <= step / 2 + 1e-6).all())
            levels = torch.round(block / step)
            assert bool((levels >= -8).all() and (levels <= 7).all())
            assert bool((levels * step - block).abs().max() < 1e-6)


@pytest.mark.parametrize("bad", [dict(bits=3), dict(bits=4, group_size=0),
                                 dict(components=("unet", "safety_checker"))])
def test_bad_quantization_settings_are_one_usage_error(bad: dict[str, Any]) -> None:
    with pytest.raises(ErasureInputError, match="overlay 'quantize'"):
        quantize(**bad)


def test_lora_on_the_erased_model_leaves_the_shared_standard_model_bit_identical(
        tiny_world: dict[str, Path], tmp_path: Path) -> None:
    ctx = _context(tiny_world, "local", tmp_path / "cache")
    models = ctx.models
    assert models.erased.unet is models.standard.unet, "the tiny world shares the UNet"
    before = _state(models.standard)
    params = {id(p) for p in models.standard.unet.parameters()}
    standard = ctx.generate("standard", INPUTS)
    erased = ctx.generate("erased", INPUTS)
    overlay = lora(planted_lora(models.erased.unet))
    overlaid = ctx.generate("erased", INPUTS, overlays=(overlay,))
    assert not torch.equal(overlaid, erased), "the LoRA changed nothing"
    # What the models are after the overlay: the same tensor objects, the same bits.
    assert {id(p) for p in models.standard.unet.parameters()} == params
    after = _state(models.standard)
    assert all(torch.equal(before[k], after[k]) for k in before)
    fresh = _context(tiny_world, "local")  # nothing cached: computed again
    assert torch.equal(fresh.generate("standard", INPUTS), standard)
    assert torch.equal(fresh.generate("erased", INPUTS), erased)
    # In the same context after the overlay, through the memo's back: a new seed each.
    again = [GenerationInput(seed=9, prompt="a circle")]
    assert torch.equal(ctx.generate("standard", again), fresh.generate("standard", again))
    assert torch.equal(ctx.generate("erased", again), fresh.generate("erased", again))
    # The overlay keys its images: two entries per input in the cache, the overlay's distinct.
    entries = sorted(p.name for p in (tmp_path / "cache").rglob("*") if p.is_file())
    assert len(entries) >= 3 * len(INPUTS)
    assert torch.equal(fresh.generate("erased", INPUTS, overlays=(overlay,)), overlaid)


def both_models(host: Any, advance: Any, *, inputs: list[GenerationInput], sampling: Any
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """A unit that draws on both models while the erased one is overlaid (as a white-box
    attack comparing the two would)."""
    from pytest_erasure.generate import generate

    return (generate(host.pipeline("standard"), inputs, sampling, 2)[0],
            generate(host.pipeline("erased"), inputs, sampling, 2)[0])


@pytest.mark.parametrize("executor", ["local", "process"])
def test_while_the_erased_model_is_overlaid_the_standard_model_is_not(
        tiny_world: dict[str, Path], executor: str) -> None:
    from pytest_erasure.generate import Sampling

    ctx = _context(tiny_world, executor)
    try:
        sampling = Sampling(3, ctx.config.guidance, 32, 32, "cpu", "float32",
                            batch_invariant=ctx.config.invariant_layers,
                            sampler=ctx.model_facts("standard").scheduler_key())
        overlay = lora(planted_lora(_unet(tiny_world)))
        standard, erased = ctx.run(ctx.unit(both_models, overlays=(("erased", overlay),),
                                            inputs=INPUTS, sampling=sampling))
        plain_standard, plain_erased = ctx.run(ctx.unit(both_models, inputs=INPUTS,
                                                        sampling=sampling))
        assert torch.equal(standard, plain_standard)
        assert not torch.equal(erased, plain_erased)
    finally:
        ctx.close()


def _unet(world: dict[str, Path]) -> torch.nn.Module:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(world["standard"] / "unet")


def test_an_overlay_runs_the_same_in_a_worker_process(tiny_world: dict[str, Path]) -> None:
    local = _context(tiny_world, "local")
    process = _context(tiny_world, "process")
    try:
        overlay = lora(planted_lora(local.models.erased.unet, seed=3), scale=0.5)
        int4 = quantize(4, group_size=8)
        for overlays in ((overlay,), (int4,), (overlay, int4)):
            want = local.generate("erased", INPUTS, overlays=overlays)
            got = process.generate("erased", INPUTS, overlays=overlays)
            assert torch.equal(got, want), overlays
        assert torch.equal(process.generate("standard", INPUTS),
                           local.generate("standard", INPUTS))
        assert torch.equal(process.generate("erased", INPUTS), local.generate("erased", INPUTS))
        assert process._models is None
    finally:
        process.close()


def test_quantization_changes_the_images_and_is_removed(tiny_world: dict[str, Path]) -> None:
    ctx = _context(tiny_world, "local")
    plain = ctx.generate("erased", INPUTS)
    int8 = ctx.generate("erased", INPUTS, overlays=(quantize(8),))
    int4 = ctx.generate("erased", INPUTS, overlays=(quantize(4, group_size=8),))
    assert not torch.equal(int4, plain)
    assert not torch.equal(int4, int8)
    # The 8-bit grid moves the weights too (not necessarily a pixel at 3 steps): check them.
    weight = ctx.models.erased.unet.conv_in.weight
    assert not torch.equal(round_to_nearest(weight, 8, 64), weight.float())
    fresh = _context(tiny_world, "local")
    assert torch.equal(fresh.generate("erased", INPUTS), plain)
    assert torch.equal(fresh.generate("standard", INPUTS), ctx.generate("standard", INPUTS))
    # One overlay after another on the same host: each computed from the model's own weights
    # (the first one removed from the host's copy before the second is applied).
    other = [GenerationInput(seed=5, prompt="a square")]
    ctx.generate("erased", other, overlays=(lora(planted_lora(ctx.models.erased.unet)),))
    assert torch.equal(ctx.generate("erased", other, overlays=(quantize(4, group_size=8),)),
                       fresh.generate("erased", other, overlays=(quantize(4, group_size=8),)))


def test_a_lora_that_does_not_fit_is_a_usage_error(tiny_world: dict[str, Path]) -> None:
    ctx = _context(tiny_world, "local")
    wrong = lora({"down_blocks.0.resnets.0.conv1.lora_A.weight": torch.ones(2, 4),
                  "down_blocks.0.resnets.0.conv1.lora_B.weight": torch.ones(4, 2)})
    with pytest.raises(ErasureInputError, match="not a UNet attention projection"):
        ctx.generate("erased", INPUTS, overlays=(wrong,))
    misshapen = lora({"down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight":
                      torch.ones(2, 5),
                      "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_B.weight":
                      torch.ones(5, 2)})
    with pytest.raises(ErasureInputError, match="does not fit"):
        ctx.generate("erased", INPUTS, overlays=(misshapen,))
    assert Overlay("lora", {"scale": 1.0}).kind == "lora"


@pytest.mark.parametrize("layout", ["peft", "processor", "lora-compatible"])
def test_lora_merges_what_it_says_in_every_layout_and_restores_the_same_objects(
        layout: str) -> None:
    from pytest_erasure.overlays import Overlaid
    from pytest_erasure.testing import tiny_pipeline

    pipe = tiny_pipeline(0)
    path = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_out.0"
    layer = pipe.unet.get_submodule(path)
    generator = torch.Generator().manual_seed(2)
    down = torch.randn(3, layer.in_features, generator=generator)
    up = torch.randn(layer.out_features, 3, generator=generator)
    block = path.removesuffix(".to_out.0")
    keys = {"peft": (f"unet.{path}.lora_A.weight", f"unet.{path}.lora_B.weight"),
            "processor": (f"{block}.processor.to_out_lora.down.weight",
                          f"{block}.processor.to_out_lora.up.weight"),
            "lora-compatible": (f"{path}.lora.down.weight", f"{path}.lora.up.weight")}[layout]
    weights = {keys[0]: down, keys[1]: up, f"{path}.alpha": torch.tensor(6.0)}
    original = layer.weight
    kept = original.detach().clone()
    host = Overlaid()
    with host.applied(lambda role: pipe, (("erased", lora(weights, scale=0.5)),)):
        merged = host.active["erased"].unet.get_submodule(path).weight
        want = kept + 0.5 * (6.0 / 3) * (up @ down)
        assert torch.allclose(merged, want, atol=1e-6) and merged is not original
        assert pipe.unet.get_submodule(path).weight is original  # the loaded model untouched
    assert "erased" not in host.active
    assert pipe.unet.get_submodule(path).weight is original
    assert torch.equal(original, kept)
