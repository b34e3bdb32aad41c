"""Cross-attention capture: restores processors, matches softmax(QK^T/sqrt(d)), any latent shape."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_erasure.defenses.attention import CrossAttentionCapture, cross_attention_layers, map_size
from pytest_erasure.testing import tiny_pipeline


@pytest.fixture(scope="module")
def unet():
    return tiny_pipeline(seed=3).unet


def inputs(batch: int, hw: tuple[int, int], seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 4, *hw, generator=g), torch.tensor(500),
            torch.randn(batch, 77, 32, generator=g))


def reference_maps(unet, latents, t, context, tokens, latent_hw):
    """softmax(QK^T / sqrt(d)) from the attn2 inputs, recorded by forward pre-hooks."""
    seen: dict[str, torch.Tensor] = {}
    modules = dict(unet.named_modules())
    hooks = []
    for name in cross_attention_layers(unet):
        def hook(module, args, kwargs, name=name):
            seen[name] = args[0] if args else kwargs["hidden_states"]
        hooks.append(modules[name].register_forward_pre_hook(hook, with_kwargs=True))
    try:
        with torch.no_grad():
            unet(latents, t, encoder_hidden_states=context)
    finally:
        for h in hooks:
            h.remove()
    out = {}
    for name, hidden in seen.items():
        attn = modules[name]
        q, k = attn.to_q(hidden), attn.to_k(context)
        b, n, inner = q.shape
        d = inner // attn.heads
        q = q.view(b, n, attn.heads, d).transpose(1, 2)
        k = k.view(b, -1, attn.heads, d).transpose(1, 2)
        probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1)
        out[name] = probs[..., tokens].mean(dim=(1, 3)).reshape(b, *map_size(n, latent_hw))
    return out


def test_capture_swaps_only_attn2_and_restores(unet):
    before = dict(unet.attn_processors)
    latents, t, context = inputs(1, (16, 16))
    with CrossAttentionCapture(unet, [1], (16, 16)):
        during = unet.attn_processors
        for key, proc in during.items():
            if ".attn2." in key:
                assert proc is not before[key]
            else:
                assert proc is before[key]
        with torch.no_grad():
            unet(latents, t, encoder_hidden_states=context)
    assert unet.attn_processors == before


def test_capture_restores_after_an_exception(unet):
    before = dict(unet.attn_processors)
    with pytest.raises(RuntimeError, match="boom"), CrossAttentionCapture(unet, [1], (16, 16)):
        raise RuntimeError("boom")
    assert unet.attn_processors == before


@pytest.mark.parametrize("chunk_elements", [1, 4 * 77 * 10, 1 << 22])
def test_capture_matches_reference_softmax(unet, chunk_elements):
    latents, t, context = inputs(2, (16, 16), seed=1)
    tokens = [1, 4, 5]
    expected = reference_maps(unet, latents, t, context, tokens, (16, 16))
    with torch.no_grad(), CrossAttentionCapture(unet, tokens, (16, 16),
                                                chunk_elements=chunk_elements) as capture:
        unet(latents, t, encoder_hidden_states=context)
    assert capture.maps.keys() == expected.keys()
    for name, got in capture.maps.items():
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, expected[name], rtol=1e-5, atol=1e-6)


def test_capture_leaves_the_unet_output_bit_identical(unet):
    latents, t, context = inputs(2, (16, 16), seed=2)
    with torch.no_grad():
        plain = unet(latents, t, encoder_hidden_states=context).sample
        with CrossAttentionCapture(unet, [2], (16, 16)):
            captured = unet(latents, t, encoder_hidden_states=context).sample
    assert torch.equal(plain, captured)


def test_capture_non_square_latent(unet):
    latents, t, context = inputs(3, (12, 20), seed=4)
    with torch.no_grad(), CrossAttentionCapture(unet, [1], (12, 20)) as capture:
        unet(latents, t, encoder_hidden_states=context)
    shapes = {tuple(m.shape) for m in capture.maps.values()}
    assert shapes == {(3, 12, 20), (3, 6, 10)}
    expected = reference_maps(unet, latents, t, context, [1], (12, 20))
    for name, got in capture.maps.items():
        torch.testing.assert_close(got, expected[name], rtol=1e-5, atol=1e-6)


def test_resolutions_select_layers(unet):
    latents, t, context = inputs(1, (16, 16))
    with torch.no_grad(), CrossAttentionCapture(unet, [1], (16, 16), resolutions=(8,)) as cap:
        unet(latents, t, encoder_hidden_states=context)
    assert [tuple(m.shape) for m in cap.maps.values()] == [(1, 8, 8)]
    assert list(cap.maps) == ["mid_block.attentions.0.transformer_blocks.0.attn2"]


def test_token_index_outside_the_sequence_is_an_error(unet):
    before = dict(unet.attn_processors)
    latents, t, context = inputs(1, (16, 16))
    with pytest.raises(ValueError, match="outside"), torch.no_grad(), \
            CrossAttentionCapture(unet, [77], (16, 16)):
        unet(latents, t, encoder_hidden_states=context)
    assert unet.attn_processors == before


def test_bfloat16_unet_gives_float32_maps():
    bf = tiny_pipeline(seed=3).unet.to(torch.bfloat16)
    latents, t, context = inputs(1, (16, 16))
    with torch.no_grad(), CrossAttentionCapture(bf, [1], (16, 16)) as capture:
        bf(latents.bfloat16(), t, encoder_hidden_states=context.bfloat16())
    for m in capture.maps.values():
        assert m.dtype == torch.float32
        assert torch.isfinite(m).all()


def test_sd14_layout_map_sizes():
    # SD v1.4 at 512x512: query lengths 4096/1024/256/64.
    assert [map_size(n, (64, 64)) for n in (4096, 1024, 256, 64)] == [
        (64, 64), (32, 32), (16, 16), (8, 8)]
    # 512x768 (portrait) and an odd latent (diffusers' stride-2 convs round up).
    assert map_size(64 * 96 // 4, (64, 96)) == (32, 48)
    assert map_size(8 * 9, (15, 17)) == (8, 9)
    with pytest.raises(ValueError):
        map_size(100, (64, 64))


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 200), st.integers(1, 200), st.integers(0, 5))
def test_map_size_inverts_the_downsampling(height, width, level):
    h, w = math.ceil(height / 2**level), math.ceil(width / 2**level)
    assert map_size(h * w, (height, width)) == (h, w)
