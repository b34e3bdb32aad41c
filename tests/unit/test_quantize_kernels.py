"""Real low-bit kernels for the quantize overlay (`overlays/kernels.py`), on this torch's CPU ops.

The int8 and int4 paths must really call torch's kernels (a patched layer's output is the op's
own output on the packed weights, and its forward is not Linear's), multiply by the same
quantized weights quantize-dequantize computes (a transposed weight or a wrong scale breaks the
bounds below), leave the model bit-identical once removed, keep images independent of the
batch, and be keyed apart from quantize-dequantize in the cache.
"""

from __future__ import annotations

import json
from hashlib import sha256
from pathlib import Path

import pytest
import torch

from pytest_erasure.context import Context
from pytest_erasure.errors import ErasureInputError
from pytest_erasure.overlays import Overlaid, kind
from pytest_erasure.overlays.kernels import KernelLinear, pack
from pytest_erasure.overlays.quantize import choose_kernels, dequantized, kernel_note, quantize
from pytest_erasure.records import GenerationInput
from pytest_erasure.session import default_config

INPUTS = [GenerationInput(seed=s, prompt=p) for s, p in ((1, "a circle"), (2, "a red circle"))]


def _context(world: dict[str, Path], batch_size: int = 2) -> Context:
    from pytest_erasure.concepts import load_concepts

    config = default_config(standard_model=world["standard"], erased_model=world["erased"],
                            concepts_file=world["concepts"], no_cache=True, executor="local",
                            steps=3, batch_size=batch_size)
    return Context(config, load_concepts(world["concepts"]))


def _layer(n: int = 32, k: int = 128, seed: int = 0) -> torch.nn.Linear:
    torch.manual_seed(seed)
    return torch.nn.Linear(k, n)


def test_the_int8_layer_is_torchs_int8_kernel_on_the_packed_weights() -> None:
    layer = _layer()
    packed = pack(layer, "int8", 0)
    assert isinstance(packed, KernelLinear) and type(packed).forward is not torch.nn.Linear.forward
    assert packed.q.dtype == torch.int8 and packed.q.shape == layer.weight.shape
    x = torch.randn(5, 128)
    out = packed(x)
    assert torch.equal(out, torch._weight_int8pack_mm(x, packed.q, packed.scale) + layer.bias)
    # the same quantized weight quantize-dequantize computes, not the original, not transposed
    params = quantize(8).params
    reference = torch.nn.functional.linear(x, dequantized(layer.weight, params), layer.bias)
    assert (out - reference).abs().max() < 1e-4
    assert (out - layer(x)).abs().max() > 1e-3  # the rounding is there
    wrong = torch.nn.functional.linear(x, dequantized(layer.weight, params) * 1.01, layer.bias)
    assert (out - wrong).abs().max() > 1e-3  # a 1% scale error is seen


def test_the_int4_layer_is_torchs_cpu_int4_kernel_on_the_packed_weights() -> None:
    layer = _layer(n=32, k=128)
    packed = pack(layer, "4bit", 32)
    assert isinstance(packed, KernelLinear) and packed.packed.dtype == torch.uint8
    x = torch.randn(3, 128)
    out = packed(x)
    assert torch.equal(out, torch._weight_int4pack_mm_for_cpu(x, packed.packed, 32,
                                                              packed.scales_zeros) + layer.bias)
    params = quantize(4, group_size=32).params
    reference = torch.nn.functional.linear(x, dequantized(layer.weight, params), layer.bias)
    assert (out - reference).abs().max() < 1e-4
    other_groups = dequantized(layer.weight, quantize(4, group_size=64).params)
    assert (out - torch.nn.functional.linear(x, other_groups, layer.bias)).abs().max() > 1e-3
    # shapes the CPU kernel cannot take are refused with a reason (and fall back, counted)
    assert "multiple of 16" in str(pack(_layer(n=24, k=128), "4bit", 32))
    assert "in_features" in str(pack(_layer(n=32, k=48), "4bit", 32))
    assert "group size 8" in str(pack(layer, "4bit", 8))


def test_gradients_flow_through_a_kernel_layer_by_the_dequantized_weight() -> None:
    """What textual inversion through a quantized model needs: d(out)/d(x)."""
    packed = pack(_layer(), "int8", 0)
    assert isinstance(packed, KernelLinear)
    x = torch.randn(4, 128, requires_grad=True)
    packed(x).sum().backward()
    assert x.grad is not None
    assert torch.allclose(x.grad, packed.dequantized().sum(0).expand(4, -1), atol=1e-5)


def test_native_images_are_close_to_quantize_dequantize_and_removal_is_exact(
        tiny_world: dict[str, Path]) -> None:
    """Measured here (tiny world, 3 steps, two prompts): native vs quantize-dequantize images
    differ by at most 1 uint8 level for int8 and 0 for int4 (groups of 32), while 4-bit
    quantization itself moves them by 19 levels off the unquantized model: a kernel on the
    wrong weights would break the 2-level bound."""
    ctx = _context(tiny_world)
    plain = ctx.generate("erased", INPUTS)
    originals = {n: m for n, m in ctx.models.erased.unet.named_modules()}
    for bits, group in ((8, 64), (4, 32)):
        slow = ctx.generate("erased", INPUTS, overlays=(quantize(bits, group_size=group),))
        native = quantize(bits, group_size=group, kernels="native")
        fast = ctx.generate("erased", INPUTS, overlays=(native,))
        assert (fast.int() - slow.int()).abs().max() <= 2, bits
        applied = kind("quantize").describe(native)["applied_layers"]["unet"]
        assert applied["kernel"] > 0 and \
            applied["dequantized: Conv2d (no weight-only low-bit conv kernel)"] > 0
    assert (fast.int() - plain.int()).abs().max() > 2  # int4 moves the images: the bound bites
    assert torch.equal(ctx.generate("erased", INPUTS), plain)
    assert all(m is originals[n] for n, m in ctx.models.erased.unet.named_modules())


def test_the_overlay_swaps_linear_modules_and_puts_the_same_objects_back(
        tiny_world: dict[str, Path]) -> None:
    ctx = _context(tiny_world)
    pipe = ctx.models.erased
    overlaid = Overlaid()
    name = "down_blocks.0.attentions.0.transformer_blocks.0.ff.net.0.proj"  # 16 -> 128
    native = quantize(8, kernels="native")
    with overlaid.applied(lambda role: pipe, (("erased", native),)):
        fork = overlaid.active["erased"].unet
        swapped = fork.get_submodule(name)
        assert isinstance(swapped, KernelLinear) and swapped.op == "torch._weight_int8pack_mm"
        assert isinstance(fork.conv_in, torch.nn.Conv2d)  # convs keep their class
        x = torch.randn(2, 7, 16)
        out = swapped(x)
        want = torch.cat([torch._weight_int8pack_mm(p.reshape(-1, 16), swapped.q, swapped.scale)
                          for p in x.split(1)]).reshape(2, 7, 128) + swapped.bias
        assert torch.equal(out, want)
    assert type(fork.get_submodule(name)) is not KernelLinear
    assert not any(isinstance(m, KernelLinear) for m in pipe.unet.modules())


def test_native_images_do_not_depend_on_the_batch(tiny_world: dict[str, Path]) -> None:
    native = (quantize(8, kernels="native"),)
    pairs = _context(tiny_world, 2).generate("erased", INPUTS, overlays=native)
    alone = _context(tiny_world, 1).generate("erased", INPUTS, overlays=native)
    assert torch.equal(pairs, alone)


def test_the_kernel_keys_the_cache_and_dequantize_keys_are_unchanged() -> None:
    def old_key(params: dict[str, object]) -> str:  # Overlay.key before kernels existed
        blob = json.dumps({"kind": "quantize", "params": params, "content": ""},
                          sort_keys=True, separators=(",", ":"))
        return sha256(blob.encode()).hexdigest()

    assert quantize(8).key == old_key({"bits": 8, "components": ["unet"],
                                       "scheme": "per-channel"})
    assert quantize(4, group_size=32).key == old_key(
        {"bits": 4, "components": ["unet"], "scheme": "group", "group_size": 32})
    assert quantize(8, kernels="native").key != quantize(8).key
    assert quantize(4, kernels="native").key != quantize(4).key
    with pytest.raises(ErasureInputError, match="kernels='fast'"):
        quantize(8, kernels="fast")


def test_choosing_kernels_on_this_cpu() -> None:
    assert choose_kernels("auto", quantize(8).params, "cpu", "float32") == "native"
    assert choose_kernels("auto", quantize(4, group_size=64).params, "cpu", "float32") == "native"
    assert choose_kernels("auto", quantize(4, group_size=8).params, "cpu", "float32") == \
        "dequantize"
    assert choose_kernels("auto", quantize(format="nf4").params, "cpu", "float32") == \
        "dequantize"
    assert choose_kernels("dequantize", quantize(8).params, "cpu", "float32") == "dequantize"
    assert choose_kernels("native", quantize(format="bfloat16").params, "cpu", "float32") == \
        "dequantize"  # a 16-bit cast needs no kernel
    with pytest.raises(ErasureInputError, match="is 'native' but this torch .* has no nf4"):
        choose_kernels("native", quantize(format="nf4").params, "cpu", "float32")
    with pytest.raises(ErasureInputError, match="groups of 32, 64, 128, 256 weights, not 8"):
        choose_kernels("native", quantize(4, group_size=8).params, "cpu", "float32")
    with pytest.raises(ErasureInputError, match="--quantize-kernels: is 'fastest'"):
        choose_kernels("fastest", quantize(8).params, "cpu", "float32")
    note = kernel_note(quantize(8, kernels="native").params, "cpu")
    assert note.startswith("torch._weight_int8pack_mm on cpu") and "none on" not in note
    assert "ran no low-bit kernel" in kernel_note(quantize(8).params, "cpu")


def test_the_fp8_layer_is_scaled_mm_with_rowwise_scales() -> None:
    """fp8 quantizes the activations too (per row, e4m3): its output is `_scaled_mm`'s on the
    weight quantize-dequantize computes, within the activations' rounding (e4m3 keeps 3
    mantissa bits: a relative error near 2^-4 per product, far below a weight read in the
    wrong layout's)."""
    layer = _layer(n=32, k=64)
    packed = pack(layer, "fp8-e4m3", 0)
    assert isinstance(packed, KernelLinear) and packed.q.dtype == torch.float8_e4m3fn
    x = torch.randn(4, 64)
    scale_x = x.abs().amax(dim=1, keepdim=True) / 448
    want = torch._scaled_mm((x / scale_x).to(torch.float8_e4m3fn), packed.q.t(),
                            scale_a=scale_x, scale_b=packed.scale.reshape(1, -1),
                            out_dtype=torch.float32) + layer.bias
    assert torch.equal(packed(x), want)
    weight = dequantized(layer.weight, quantize(format="fp8-e4m3").params)
    reference = torch.nn.functional.linear(x, weight, layer.bias)
    error = (packed(x) - reference).abs().max() / reference.abs().max()
    assert error < 0.05
    wrong_layout = torch.nn.functional.linear(x, weight.reshape(64, 32).t(), layer.bias)
    assert (packed(x) - wrong_layout).abs().max() / reference.abs().max() > 0.2
